"""Evaluation metrics and the files an evaluation writes.

From per-video scores (N, K) and labels (N,): top-1, top-5, mean class accuracy,
per-class accuracy and the confusion matrix (rows: true class, columns: predicted).
Files, each written atomically: metrics.json, predictions.csv, per_class.csv and
confusion.png (drawn with matplotlib by engine/confusion.py: rows normalised to recall,
so a perfect model is a bright diagonal whatever the class sizes).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from vidact.atomic import atomic_write_text
from vidact.engine.confusion import write_confusion_png

TOP_K = 5


def ranked(scores: np.ndarray, k: int = TOP_K) -> np.ndarray:
    """The `k` best class ids per row, best first (ties go to the lower id)."""
    return np.argsort(-scores, axis=1, kind="stable")[:, : min(k, scores.shape[1])]


def compute_metrics(scores: np.ndarray, labels: np.ndarray, num_classes: int) -> dict[str, Any]:
    """Top-1/top-5/mean class accuracy (percent), per-class accuracy, confusion matrix."""
    labels = np.asarray(labels, dtype=np.int64)
    top = ranked(scores)
    predicted = top[:, 0] if len(top) else np.zeros(0, np.int64)
    confusion = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    counts = confusion.sum(axis=1)
    correct = np.diag(confusion)
    present = counts > 0
    per_class = np.full(num_classes, np.nan)
    per_class[present] = correct[present] / counts[present]
    count = max(len(labels), 1)
    return {
        "top1": 100.0 * float((predicted == labels).sum()) / count,
        "top5": 100.0 * float((top == labels[:, None]).any(axis=1).sum()) / count,
        # Classes without videos in this split are left out of the mean.
        "mean_class_accuracy": 100.0 * float(per_class[present].mean()) if present.any() else 0.0,
        "videos": len(labels),
        "per_class": [
            {
                "id": k,
                "videos": int(counts[k]),
                "correct": int(correct[k]),
                "accuracy": None if not present[k] else 100.0 * float(per_class[k]),
            }
            for k in range(num_classes)
        ],
        "confusion": confusion.tolist(),
    }


def write_reports(
    out: Path,
    metrics: dict[str, Any],
    videos: list[str],
    scores: np.ndarray,
    labels: np.ndarray,
    class_names: list[str],
) -> dict[str, Path]:
    """metrics.json, predictions.csv, per_class.csv and confusion.png under `out`."""
    paths = {
        "metrics": out / "metrics.json",
        "predictions": out / "predictions.csv",
        "per_class": out / "per_class.csv",
        "confusion": out / "confusion.png",
    }
    atomic_write_text(paths["metrics"], json.dumps(metrics, indent=1) + "\n")

    top = ranked(scores)
    k = top.shape[1]
    rows: list[list[Any]] = []
    for video, label, ids, row in zip(videos, labels, top, scores, strict=True):
        cells: list[Any] = [video, int(label), class_names[int(label)]]
        for rank in range(k):
            cells += [int(ids[rank]), class_names[ids[rank]], f"{float(row[ids[rank]]):.6g}"]
        rows.append(cells)
    header = ["video", "label", "label_class"]
    for rank in range(1, k + 1):
        header += [f"top{rank}", f"top{rank}_class", f"top{rank}_score"]
    atomic_write_text(paths["predictions"], _csv([header, *rows]))

    per_class = [["class_id", "class", "videos", "correct", "accuracy"]]
    for entry in metrics["per_class"]:
        accuracy = entry["accuracy"]
        per_class.append(
            [
                entry["id"],
                class_names[entry["id"]],
                entry["videos"],
                entry["correct"],
                "" if accuracy is None else f"{accuracy:.2f}",
            ]
        )
    atomic_write_text(paths["per_class"], _csv(per_class))

    write_confusion_png(paths["confusion"], np.asarray(metrics["confusion"]), class_names)
    return paths


def _csv(rows: list[list[Any]]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue()
