"""The files of `vidact predict`: predictions.jsonl / .csv, and per video with --window a
JSON of the per-window scores and a timeline picture (matplotlib, Agg canvas).

Every file is written atomically under the output folder; per-video files are named after
the video (`<stem>.windows.json`, `<stem>.timeline.png`), with `-2`, `-3` ... when two
videos share a name.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vidact.atomic import atomic_path, atomic_write_text

if TYPE_CHECKING:
    from vidact.engine.predict import VideoPrediction, Windows

__all__ = ["unique_stems", "write_predictions", "write_timeline", "write_windows_json"]

TIMELINE_CLASSES = 5  # classes drawn on a timeline: those with the highest peak score


def unique_stems(videos: list[str]) -> list[str]:
    """A file-name stem per video: its name without extension, `-N` added on a clash."""
    used: dict[str, int] = {}
    stems = []
    for video in videos:
        stem = Path(video).stem or "video"
        used[stem] = used.get(stem, 0) + 1
        stems.append(stem if used[stem] == 1 else f"{stem}-{used[stem]}")
    return stems


def _top_entries(prediction: VideoPrediction) -> list[dict[str, Any]]:
    return [{"id": i, "class": name, "score": score} for i, name, score in prediction.top]


def write_predictions(
    out_dir: Path, videos: list[VideoPrediction], failed: list[tuple[str, str]], views: str
) -> dict[str, Path]:
    """predictions.jsonl (one line per video, failures with their reason) and
    predictions.csv (video, rank, class_id, class, score; one row per top-k class)."""
    lines = [json.dumps({"video": p.video, "views": views, "top": _top_entries(p)}) for p in videos]
    lines += [json.dumps({"video": video, "error": reason}) for video, reason in failed]
    jsonl = out_dir / "predictions.jsonl"
    atomic_write_text(jsonl, "".join(line + "\n" for line in lines))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["video", "rank", "class_id", "class", "score"])
    for prediction in videos:
        for number, (class_id, name, score) in enumerate(prediction.top, start=1):
            writer.writerow([prediction.video, number, class_id, name, f"{score:.6f}"])
    table = out_dir / "predictions.csv"
    atomic_write_text(table, buffer.getvalue())
    return {"predictions": jsonl, "predictions_csv": table}


def write_windows_json(path: Path, video: str, windows: Windows, class_names: list[str]) -> Path:
    """Every window's [start, end) in frames and seconds and its score for every class."""
    rows = [
        {
            "start_frame": start,
            "end_frame": end,
            "start": round(seconds[0], 4),
            "end": round(seconds[1], 4),
            "scores": [round(float(s), 6) for s in scores],
        }
        for (start, end), seconds, scores in zip(
            windows.frames, windows.seconds(), windows.scores, strict=True
        )
    ]
    data = {"video": video, "fps": windows.fps, "classes": class_names, "windows": rows}
    atomic_write_text(path, json.dumps(data, indent=1) + "\n")
    return path


def timeline_classes(scores: np.ndarray, count: int = TIMELINE_CLASSES) -> list[int]:
    """The classes a timeline draws: the `count` highest peaks over the windows."""
    peaks = scores.max(axis=0)
    return [int(i) for i in np.argsort(-peaks, kind="stable")[:count]]


def write_timeline(
    path: Path, video: str, windows: Windows, class_names: list[str], score_name: str
) -> Path:
    """Time (window centre, seconds) on x, the top classes' window scores as lines."""
    from matplotlib.figure import Figure  # no pyplot: no global state, the Agg canvas

    centres = [(start + end) / 2 for start, end in windows.seconds()]
    figure = Figure(figsize=(8, 3.2), dpi=100, layout="constrained")
    axes = figure.subplots()
    for class_id in timeline_classes(windows.scores):
        axes.plot(centres, windows.scores[:, class_id], marker="o", markersize=3,
                  label=class_names[class_id])  # fmt: skip
    axes.set_xlabel("time (s, window centre)")
    axes.set_ylabel(score_name)
    if score_name == "softmax score":
        axes.set_ylim(-0.02, 1.02)
    axes.set_title(Path(video).name, fontsize=10)
    axes.grid(alpha=0.3)
    axes.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png")
    return path
