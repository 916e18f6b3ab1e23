"""The evaluation and training pictures: confusion matrix and curves.png (matplotlib)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

import tests.engine.tiny  # noqa: F401  (registers tiny_test_net)
from tests.engine.test_trainer import make_recipe
from vidact import console
from vidact.engine import curves, trainer
from vidact.engine.confusion import (
    LISTING,
    NAMED_CLASSES,
    confusion_figure,
    top_confusions,
    write_confusion_png,
)
from vidact.engine.curves import CURVES, curves_figure, update_curves, write_curves
from vidact.engine.report import compute_metrics, write_reports


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) of a PNG that PIL reads completely (fails on anything else)."""
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.load()
        return image.size


def _texts(labels: Any) -> list[str]:
    return [label.get_text() for label in labels]


def _listing(figure: Any) -> str:
    (axes,) = [ax for ax in figure.axes if ax.get_label() == LISTING]
    return "\n".join(t.get_text() for t in axes.texts)


def _confusions_by_loops(confusion: np.ndarray, count: int) -> list[tuple[int, int]]:
    """The literal definition: every off-diagonal cell with videos, most first."""
    cells = [
        (-int(confusion[t, p]), t, p)
        for t in range(len(confusion))
        for p in range(len(confusion))
        if t != p and confusion[t, p] > 0
    ]
    return [(t, p) for _, t, p in sorted(cells)[:count]]


def test_top_confusions_match_the_literal_definition() -> None:
    rng = np.random.default_rng(1)
    for k in (1, 3, 12):
        confusion = rng.integers(0, 4, (k, k)) * (rng.random((k, k)) < 0.5)
        for count in (1, 5, 200):
            assert top_confusions(confusion, count) == _confusions_by_loops(confusion, count)


@pytest.mark.parametrize("classes", [5, NAMED_CLASSES])
def test_confusion_matrix_names_its_classes(tmp_path: Path, classes: int) -> None:
    rng = np.random.default_rng(0)
    confusion = rng.integers(0, 3, (classes, classes)) + np.diag(np.full(classes, 9))
    names = [f"class_{i}" for i in range(classes)]
    figure = confusion_figure(confusion, names)
    matrix = figure.axes[0]
    assert _texts(matrix.get_yticklabels()) == names  # rows: true classes
    assert _texts(matrix.get_xticklabels()) == names  # columns: predicted classes
    image = matrix.get_images()[0].get_array()
    assert np.allclose(image, confusion / confusion.sum(axis=1, keepdims=True))
    assert any(ax.get_label() == "<colorbar>" for ax in figure.axes)
    listing = _listing(figure)
    first_true, first_predicted = top_confusions(confusion, 1)[0]
    assert f"1. {names[first_true]}\n    -> {names[first_predicted]}:" in listing
    width, height = png_size(write_confusion_png(tmp_path / "c.png", confusion, names))
    assert 600 <= width <= 3000 and 500 <= height <= 2500


def test_a_large_confusion_matrix_lists_its_confusions_instead_of_axis_names(
    tmp_path: Path,
) -> None:
    classes = NAMED_CLASSES + 20
    confusion = np.diag(np.full(classes, 4))
    confusion[7, 99] = 3  # the one confusion, named in the list beside the matrix
    names = [f"action {i}" for i in range(classes)]
    figure = confusion_figure(confusion, names)
    assert "action 7" not in _texts(figure.axes[0].get_yticklabels())
    listing = _listing(figure)
    assert "1. action 7\n    -> action 99: 3 (43%)" in listing
    assert png_size(write_confusion_png(tmp_path / "c.png", confusion, names))[0] >= 1000


def test_evaluation_reports_write_a_confusion_png(tmp_path: Path) -> None:
    scores = np.eye(3)[[0, 1, 2, 2]]
    labels = np.array([0, 1, 2, 1])
    metrics = compute_metrics(scores, labels, 3)
    paths = write_reports(tmp_path, metrics, ["a", "b", "c", "d"], scores, labels, ["x", "y", "z"])
    assert png_size(paths["confusion"])[0] >= 600


def _history(epochs: int) -> list[dict[str, Any]]:
    return [
        {
            "epoch": e, "step": 5 * e, "train_loss": 2.0 / e, "train_top1": 10.0 * e,
            "lr": 0.1 / e, "val_loss": 2.5 / e, "val_top1": 12.0 * e,
        }
        for e in range(1, epochs + 1)
    ]  # fmt: skip


def test_curves_draw_every_metric_against_epochs(tmp_path: Path) -> None:
    history = _history(4)
    del history[1]["val_loss"], history[1]["val_top1"]  # train.val_every = 2 skips a val
    figure = curves_figure(history)
    drawn = {
        (ax.get_title(), line.get_label()): (list(line.get_xdata()), list(line.get_ydata()))
        for ax in figure.axes
        for line in ax.get_lines()
    }
    for title, key, word in [
        ("loss", "train_loss", "train"),
        ("loss", "val_loss", "val"),
        ("top-1", "train_top1", "train"),
        ("top-1", "val_top1", "val"),
        ("learning rate", "lr", "lr"),
    ]:
        expected = [(m["epoch"], m[key]) for m in history if key in m]
        assert drawn[(title, word)] == ([e for e, _ in expected], [v for _, v in expected])
    steps = figure.axes[0].child_axes[0]  # the optimiser-step axis on top
    assert steps.get_xlabel() == "optimiser step"
    width, height = png_size(write_curves(tmp_path, history))
    assert width >= 1200 and height >= 350


def test_a_failure_to_draw_the_curves_is_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    warnings: list[str] = []
    monkeypatch.setattr(console, "warn", warnings.append)
    update_curves(tmp_path, [{"epoch": 1, "train_loss": "not a number"}])
    assert len(warnings) == 1 and "could not draw" in warnings[0] and CURVES in warnings[0]
    assert not (tmp_path / CURVES).exists()


def test_curves_png_is_redrawn_after_each_epoch_of_a_run(
    synthetic_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[int, bytes, int]] = []  # (epoch, curves.png, epochs in metrics.jsonl)
    end_epoch = trainer.end_epoch

    def spy(run: Any, state: Any, metrics: dict[str, Any]) -> None:
        end_epoch(run, state, metrics)
        lines = (run.run_dir / "metrics.jsonl").read_text().splitlines()
        seen.append((state.epoch, (run.run_dir / CURVES).read_bytes(), len(lines)))

    monkeypatch.setattr(trainer, "end_epoch", spy)
    drawn: list[int] = []
    original = curves.curves_figure
    monkeypatch.setattr(
        curves, "curves_figure", lambda h, t="": drawn.append(len(h)) or original(h, t)
    )
    result = trainer.train(make_recipe(synthetic_root, tmp_path / "runs", train__epochs=3))
    assert [(epoch, lines) for epoch, _, lines in seen] == [(1, 1), (2, 2), (3, 3)]
    assert drawn == [1, 2, 3]
    assert len({png for _, png, _ in seen}) == 3  # a new picture each epoch
    assert png_size(result.run_dir / CURVES)[0] >= 1200
    assert json.loads((result.run_dir / "metrics.jsonl").read_text().splitlines()[-1])["epoch"] == 3
