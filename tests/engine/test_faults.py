"""Faults a cluster user meets, in one process: divergence, a kill between checkpoint
writes, a full disk, run folders in use or finished, resumes with changed settings,
bad validation videos, and the settings checked before a run starts."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

import tests.engine.tiny as tiny
from tests.engine.test_trainer import make_recipe
from vidact.cli import app
from vidact.data.manifest import read_manifest
from vidact.engine import checkpoint as checkpoint_module
from vidact.engine import trainer as trainer_module
from vidact.engine.checkpoint import load_checkpoint
from vidact.engine.distributed import DistInfo
from vidact.engine.health import Diverged
from vidact.engine.run_settings import check_settings, convert_sync_bn
from vidact.errors import VidactError

runner = CliRunner()


def _bytes(run: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((run / "checkpoints").glob("*.pt"))}


# ------------------------------------------------------------------- the NaN guard (item 2)


def test_inf_batchnorm_statistics_stop_the_run_before_anything_is_saved(
    synthetic_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = one_epoch_run(synthetic_root, tmp_path)
    before = _bytes(run)
    real = tiny.TinyVideoNet.forward

    def poisoning(self: Any, x: torch.Tensor) -> torch.Tensor:
        out = real(self, x)  # batch statistics in training: the loss stays finite
        self.features[1].running_var.data.fill_(float("inf"))  # .data: autograd unaware
        return out

    monkeypatch.setattr(tiny.TinyVideoNet, "forward", poisoning)
    with pytest.raises(Diverged, match=r"diverged at epoch 2: .*features\.1\.running_var"):
        trainer_module.train(
            make_recipe(synthetic_root, tmp_path / "runs", train__epochs=2),
            resume="auto", output=run,
        )  # fmt: skip
    assert _bytes(run) == before  # neither last.pt nor best.pt took the poisoned weights
    assert [json.loads(x)["epoch"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [1]


def test_a_nan_validation_loss_is_never_saved_as_best_and_the_cli_exits_2(
    synthetic_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = tiny.TinyVideoNet.forward

    def nan_in_eval(self: Any, x: torch.Tensor) -> torch.Tensor:
        out = real(self, x)
        return out if self.training else out * float("nan")

    monkeypatch.setattr(tiny.TinyVideoNet, "forward", nan_in_eval)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(make_recipe(synthetic_root, tmp_path / "runs").to_yaml())
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", str(recipe), "--output", str(out)])
    assert result.exit_code == 2
    assert "the run diverged at epoch 1: the validation loss is nan" in result.output
    assert "Traceback" not in result.output
    assert not out.exists()  # nothing good was ever saved: no run folder is left


# -------------------------------------------------- best.pt / last.pt at every kill point


class _Killed(BaseException):
    """Stands for a kill -9 between two checkpoint writes."""


def test_a_kill_between_checkpoint_writes_leaves_best_and_last_consistent(
    synthetic_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recipe = make_recipe(synthetic_root, tmp_path / "runs", train__epochs=2)
    real = trainer_module.save_checkpoint
    writes: dict[str, Any] = {"n": 0, "kill_at": None}

    def counting(path: Path, state: dict[str, Any]) -> None:
        writes["n"] += 1
        if writes["n"] == writes["kill_at"]:
            raise _Killed
        real(path, state)

    monkeypatch.setattr(trainer_module, "save_checkpoint", counting)
    straight = trainer_module.train(recipe, output=tmp_path / "straight")
    total = writes["n"]  # best.pt and last.pt of epoch 1, last.pt (and best.pt) of epoch 2
    assert total >= 3
    for kill_at in range(1, total + 1):
        writes.update(n=0, kill_at=kill_at)
        run = tmp_path / f"run{kill_at}"
        with pytest.raises(_Killed):
            trainer_module.train(recipe, output=run)
        writes["kill_at"] = None
        _assert_consistent(run)
        (run / "checkpoints").mkdir(parents=True, exist_ok=True)
        (run / "checkpoints" / ".last.x1y2.tmp.pt").write_bytes(b"half a checkpoint")
        trainer_module.train(recipe, resume="auto", output=run)
        assert not list(run.rglob(".*.tmp*"))  # stale temporaries cleaned on start
        for name in ("best.pt", "last.pt"):
            a = load_checkpoint(straight.run_dir / "checkpoints" / name)
            b = load_checkpoint(run / "checkpoints" / name)
            assert (a["epoch"], a["metrics"]["val_top1"]) == (b["epoch"], b["metrics"]["val_top1"])
            assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def _assert_consistent(run: Path) -> None:
    """A last.pt that names a best top-1 has a best.pt that holds it (or a newer one)."""
    if not (run / "checkpoints" / "last.pt").is_file():
        return
    last = load_checkpoint(run / "checkpoints" / "last.pt")
    recorded = last["metrics"]["best_top1"]
    if recorded is not None:
        best = load_checkpoint(run / "checkpoints" / "best.pt")
        assert best["metrics"]["val_top1"] >= recorded and best["epoch"] >= last["epoch"]


def test_a_full_disk_is_one_line_and_keeps_the_previous_checkpoint(
    synthetic_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not Path("/dev/full").exists():
        pytest.skip("needs /dev/full")
    run = one_epoch_run(synthetic_root, tmp_path)
    before = _bytes(run)
    # Every checkpoint write goes to /dev/full: the kernel answers ENOSPC.
    full = Path("/dev/full")
    monkeypatch.setattr(checkpoint_module, "_open_for_write", lambda path: full.open("wb"))
    recipe = make_recipe(synthetic_root, tmp_path / "runs", train__epochs=2)
    with pytest.raises(
        VidactError, match=r"\.pt: the disk is full .* the previous (best|last)\.pt is kept"
    ):
        trainer_module.train(recipe, resume="auto", output=run)
    assert _bytes(run) == before and not list(run.rglob(".*.tmp*"))


def one_epoch_run(root: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    trainer_module.train(make_recipe(root, tmp_path / "runs", train__epochs=1), output=run)
    return run


# ---------------------------------------------------------------- run folders (item 5)


def test_a_finished_run_folder_is_refused_unless_resume_or_overwrite(
    synthetic_root: Path, tmp_path: Path
) -> None:
    run = one_epoch_run(synthetic_root, tmp_path)
    before = _bytes(run)
    recipe = make_recipe(synthetic_root, tmp_path / "runs", train__epochs=1, optim__lr=0.9)
    with pytest.raises(VidactError, match="run folder is not empty .* --resume auto.*--overwrite"):
        trainer_module.train(recipe, output=run)
    assert _bytes(run) == before
    replaced = trainer_module.train(recipe, output=run, overwrite=True)
    assert replaced.epochs_done == 1 and _bytes(run) != before
    assert load_checkpoint(run / "checkpoints" / "last.pt")["recipe"]["optim"]["lr"] == 0.9
    recipe_file = tmp_path / "r.yaml"
    recipe_file.write_text(recipe.to_yaml())
    refused = runner.invoke(app, ["train", str(recipe_file), "--output", str(run)])
    assert refused.exit_code == 2 and "--overwrite" in refused.output
    cli = ["train", str(recipe_file), "--output", str(run), "--overwrite"]
    assert runner.invoke(app, cli).exit_code == 0
    (run / "notes.txt").write_text("mine")
    with pytest.raises(VidactError, match="also holds notes.txt; choose an empty --out"):
        trainer_module.train(recipe, output=run, overwrite=True)
    assert (run / "notes.txt").read_text() == "mine"


def test_two_runs_started_in_the_same_second_get_their_own_folders(
    synthetic_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from datetime import datetime

    from vidact.engine import run_folder

    class Frozen(datetime):
        @classmethod
        def now(cls, tz: Any = None) -> Frozen:
            return cls(2026, 12, 3, 10, 0, 0)

    monkeypatch.setattr(run_folder, "datetime", Frozen)
    recipe = make_recipe(synthetic_root, tmp_path / "runs", train__epochs=1)
    first, second = (trainer_module.train(recipe).run_dir for _ in range(2))
    assert (first.name, second.name) == ("20261203-100000", "20261203-100000-2")


def test_the_run_lock_refuses_a_live_run_and_takes_over_a_dead_ones(
    synthetic_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import socket

    run = one_epoch_run(synthetic_root, tmp_path)
    assert not (run / "run.lock").exists()  # released at the end of the run
    recipe = make_recipe(synthetic_root, tmp_path / "runs", train__epochs=2)
    host = socket.gethostname()
    (run / "run.lock").write_text(json.dumps({"pid": os.getppid(), "host": host}))
    with pytest.raises(VidactError, match=r"another run \(pid \d+ on .*\) is writing"):
        trainer_module.train(recipe, resume="auto", output=run)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], **_text())
    (run / "run.lock").write_text(json.dumps({"pid": int(dead.stdout), "host": host}))
    assert trainer_module.train(recipe, resume="auto", output=run).epochs_done == 2
    assert "taking over the lock of process" in capsys.readouterr().err
    assert not (run / "run.lock").exists()


def _text() -> dict[str, Any]:
    return {"capture_output": True, "text": True, "check": True}


def test_a_run_that_fails_at_start_leaves_no_folder(synthetic_root: Path, tmp_path: Path) -> None:
    recipe = make_recipe(synthetic_root, tmp_path / "runs", train__amp="fp16")
    with pytest.raises(VidactError, match="fp16 needs a CUDA device"):
        trainer_module.train(recipe, output=tmp_path / "a")
    assert not (tmp_path / "a").exists() and not (tmp_path / "runs").exists()
    with pytest.raises(VidactError, match="model.num_classes is 7"):
        trainer_module.train(make_recipe(synthetic_root, tmp_path / "runs", model__num_classes=7))
    assert not (tmp_path / "runs").exists()


# --------------------------------------------------------- resume with changed settings


def test_resume_applies_a_new_learning_rate_and_schedule_and_says_so(
    synthetic_root: Path, tmp_path: Path
) -> None:
    run = one_epoch_run(synthetic_root, tmp_path)
    changed = make_recipe(
        synthetic_root, tmp_path / "runs", train__epochs=3, optim__lr=0.001,
        schedule__name="constant",
    )  # fmt: skip
    trainer_module.train(changed, resume="auto", output=run)
    log = (run / "log.txt").read_text()
    for change in ("optim.lr 0.05 -> 0.001", "schedule.name 'step' -> 'constant'", "epochs 1 -> 3"):
        assert f"resume: {change} (applied)" in log or f"resume: train.{change} (applied)" in log
    last = load_checkpoint(run / "checkpoints" / "last.pt")
    assert {g["lr"] for g in last["optimizer"]["param_groups"]} <= {0.001, 0.001 * 0.01}
    assert "lr: 0.001" in (run / "recipe.yaml").read_text()  # the recipe in force
    lrs = [json.loads(x)["lr"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert lrs[0] == 0.05 and lrs[1:] == [0.001, 0.001]


@pytest.mark.parametrize(
    ("key", "value"), [("data__num_frames", 4), ("train__batch_size", 3), ("model__dropout", 0.1)]
)
def test_resume_refuses_changes_to_the_model_data_or_batch(
    synthetic_root: Path, tmp_path: Path, key: str, value: Any
) -> None:
    run = one_epoch_run(synthetic_root, tmp_path)
    before = _bytes(run)
    changed = make_recipe(synthetic_root, tmp_path / "runs", train__epochs=2, **{key: value})
    with pytest.raises(
        VidactError, match=rf"cannot resume with a changed {key.replace('__', '.')}"
    ):
        trainer_module.train(changed, resume="auto", output=run)
    assert _bytes(run) == before


# ------------------------------------------------------------------------- the smaller ones


def test_bad_validation_videos_are_counted_and_reported(
    synthetic_root: Path, tmp_path: Path
) -> None:
    root = tmp_path / "data"
    shutil.copytree(synthetic_root, root)
    bad = read_manifest(root / "val.jsonl")[1].path
    (root / bad).write_bytes(b"garbage")
    result = trainer_module.train(make_recipe(root, tmp_path / "runs", train__epochs=1))
    assert result.last_metrics["val_bad_videos"] == 1
    log = (result.run_dir / "log.txt").read_text()
    assert f"validation: skipped a video that failed to decode: {root / bad}: " in log
    assert "1 validation clips replaced" in log


def test_a_bad_model_option_on_the_command_line_is_one_line(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["train", "recipes/quickstart.yaml", "--set", "model.flow_channels=-1"]
    )
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "--set model.flow_channels: model 'repflow_smallcnn' option flow_channels=-1" in (
        " ".join(result.output.split())
    )


def test_sync_bn_converts_under_torchrun_and_is_refused_on_cpus(synthetic_root: Path) -> None:
    recipe = make_recipe(synthetic_root, synthetic_root, train__sync_bn=True)
    two = DistInfo(rank=0, world=2)
    with pytest.raises(VidactError, match="train.sync_bn: SyncBatchNorm runs on GPUs only"):
        check_settings(recipe, two, torch.device("cpu"))
    check_settings(recipe, two, torch.device("cuda"))  # allowed there
    model = tiny.TinyVideoNet(4)
    converted = convert_sync_bn(model, recipe, two)
    assert isinstance(converted.features[1], torch.nn.SyncBatchNorm)
    assert not isinstance(convert_sync_bn(tiny.TinyVideoNet(4), recipe, DistInfo()).features[1],
                          torch.nn.SyncBatchNorm)  # fmt: skip
    off = make_recipe(synthetic_root, synthetic_root)
    plain = convert_sync_bn(tiny.TinyVideoNet(4), off, two)
    assert type(plain.features[1]) is torch.nn.BatchNorm3d


def test_accumulate_steps_equals_the_larger_batch(synthetic_root: Path, tmp_path: Path) -> None:
    # Without BatchNorm and dropout, 2 batches of 2 accumulated are one batch of 4.
    common = {"model__batch_norm": False, "model__dropout": 0.0, "train__epochs": 1}
    big = trainer_module.train(
        make_recipe(synthetic_root, tmp_path / "a", train__batch_size=4, **common)
    )
    small = trainer_module.train(
        make_recipe(
            synthetic_root, tmp_path / "b", train__batch_size=2, train__accumulate_steps=2,
            **common,
        )
    )  # fmt: skip
    log = (small.run_dir / "log.txt").read_text()
    assert "effective batch 4 = 2 clips x 1 process(es) x 2 accumulated step(s)" in log
    a, b = big.model.state_dict(), small.model.state_dict()  # type: ignore[union-attr]
    assert all(torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-6) for k in a)
    steps = [load_checkpoint(r.run_dir / "checkpoints" / "last.pt")["step"] for r in (big, small)]
    assert steps == [5, 5]


def test_the_evaluate_score_cache_is_keyed_by_the_data(
    synthetic_root: Path, tmp_path: Path
) -> None:
    import os

    from vidact.engine.evaluator import evaluate

    run = one_epoch_run(synthetic_root, tmp_path)
    best, out = run / "checkpoints" / "best.pt", tmp_path / "eval"
    first = evaluate([best], out=out)
    assert first.scored_now == 4 and evaluate([best], out=out).resumed == 4
    copy = tmp_path / "copy"
    shutil.copytree(synthetic_root, copy)
    moved = evaluate([best], out=out, overrides=("data.root=" + str(copy),))
    assert moved.resumed == 0 and moved.scored_now == 4  # another copy: scored again
    video = copy / read_manifest(copy / "val.jsonl")[2].path
    video.write_bytes(video.read_bytes()[:-100])  # damaged in place
    os.utime(video, ns=(0, 0))
    damaged = evaluate([best], out=out, overrides=("data.root=" + str(copy),))
    assert damaged.resumed == 0
