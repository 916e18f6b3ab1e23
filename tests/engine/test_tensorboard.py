"""output.tensorboard: the event files hold metrics.jsonl's scalars and the recipe."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip(
    "tensorboard", reason="the tensorboard extra: pip install 'vidact[tensorboard]'"
)
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import tests.engine.tiny  # noqa: F401  (registers tiny_test_net)
from tests.engine.test_trainer import make_recipe
from vidact import console
from vidact.engine import tensorboard, trainer
from vidact.engine.tensorboard import FOLDER, INSTALL, open_tensorboard
from vidact.errors import VidactError


def _events(run_dir: Path) -> EventAccumulator:
    events = EventAccumulator(str(run_dir / FOLDER), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    return events


def test_events_hold_every_metric_per_epoch_and_per_step(
    synthetic_root: Path, tmp_path: Path
) -> None:
    recipe = make_recipe(synthetic_root, tmp_path / "runs", output__tensorboard=True)
    result = trainer.train(recipe)
    events = _events(result.run_dir)
    history = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    for key in ("train_loss", "train_top1", "lr", "val_loss", "val_top1", "val_top5"):
        drawn = [(e.step, e.value) for e in events.Scalars(f"epoch/{key}")]
        assert drawn == [(m["epoch"], pytest.approx(m[key], rel=1e-6)) for m in history]
    steps = history[-1]["step"]
    for key in ("train_loss", "train_top1", "lr"):
        assert [e.step for e in events.Scalars(f"step/{key}")] == list(range(1, steps + 1))
    # The per-step losses of an epoch average (clip-weighted, equal batches) to its loss.
    per_epoch = steps // len(history)
    first = [e.value for e in events.Scalars("step/train_loss")][:per_epoch]
    assert sum(first) / per_epoch == pytest.approx(history[0]["train_loss"], rel=1e-5)
    assert "recipe/text_summary" in events.Tags()["tensors"]
    text = events.Tensors("recipe/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "    name: t" in text and "tiny_test_net" in text


def test_no_events_unless_the_recipe_asks(synthetic_root: Path, tmp_path: Path) -> None:
    result = trainer.train(make_recipe(synthetic_root, tmp_path / "runs", train__epochs=1))
    assert not (result.run_dir / FOLDER).exists()


def test_the_writer_is_closed_when_a_run_fails(
    synthetic_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    closed: list[bool] = []
    close = tensorboard.TensorBoardLog.close
    monkeypatch.setattr(
        tensorboard.TensorBoardLog, "close", lambda self: closed.append(True) or close(self)
    )

    validate = trainer.validate
    calls: list[int] = []

    def failing_validation(*args: Any, **kwargs: Any) -> dict[str, float]:
        calls.append(1)  # the second epoch fails: the first saved a checkpoint, so the
        if len(calls) == 2:  # run folder (and its events) stays
            raise VidactError("validation failed")
        return validate(*args, **kwargs)

    monkeypatch.setattr(trainer, "validate", failing_validation)
    recipe = make_recipe(
        synthetic_root, tmp_path / "runs", output__tensorboard=True, train__epochs=2
    )
    with pytest.raises(VidactError, match="validation failed"):
        trainer.train(recipe)
    assert closed == [True]
    (run_dir,) = (tmp_path / "runs" / "t").iterdir()
    assert "step/train_loss" in _events(run_dir).Tags()["scalars"]  # flushed by the close


def test_without_the_package_one_line_says_how_to_install_it(
    synthetic_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    warnings: list[str] = []
    monkeypatch.setattr(console, "warn", warnings.append)
    recipe = make_recipe(synthetic_root, tmp_path / "runs", output__tensorboard=True)
    assert open_tensorboard(tmp_path / "run", recipe) is None
    assert len(warnings) == 1 and "output.tensorboard" in warnings[0] and INSTALL in warnings[0]
    assert not (tmp_path / "run").exists()
