"""The training engine: runs, resume equivalence, signals, NaN, fine-tuning, bad videos."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp

import tests.engine.tiny  # noqa: F401  (registers tiny_test_net)
from tests.engine.gloo import act_as_torchrun_rank, free_port
from vidact.data.manifest import read_manifest, write_manifest
from vidact.engine.checkpoint import load_checkpoint
from vidact.engine.trainer import TrainingStopped, train
from vidact.errors import VidactError
from vidact.recipe import Recipe, recipe_from_dict


def make_recipe(root: Path, out: Path, **changes: Any) -> Recipe:
    data: dict[str, Any] = {
        "name": "t",
        "model": {"name": "tiny_test_net", "dropout": 0.5},
        "data": {
            "root": str(root),
            "num_frames": 3,
            "short_side": 32,
            "input_size": 24,
            "num_workers": 0,
        },
        "optim": {"lr": 0.05},
        "train": {"epochs": 2, "batch_size": 4, "deterministic": True},
        "output": {"dir": str(out)},
    }
    for key, value in changes.items():
        section, _, name = key.partition("__")
        data.setdefault(section, {})[name] = value
    return recipe_from_dict(data)


def _state_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(
        torch.allclose(a[k].float(), b[k].float(), rtol=1e-6, atol=1e-7) for k in a
    )


def test_run_folder_metrics_and_checkpoint_contents(synthetic_root: Path, tmp_path: Path) -> None:
    result = train(make_recipe(synthetic_root, tmp_path / "runs"))
    run = result.run_dir
    assert run.parent == tmp_path / "runs" / "t"
    assert (run / "recipe.yaml").is_file() and (run / "log.txt").is_file()
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines] == [1, 2]
    assert all(m["train_clips"] == 20 and m["val_count"] == 4 for m in lines)
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert state["epoch"] == 2 and state["labels"][0] == "translate_right"
    assert recipe_from_dict(state["recipe"]) == make_recipe(synthetic_root, tmp_path / "runs")
    assert {"optimizer", "scheduler", "rng", "metrics", "ema"} <= state.keys()
    assert (run / "checkpoints" / "best.pt").is_file()


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(
    synthetic_root: Path, tmp_path: Path
) -> None:
    straight = train(make_recipe(synthetic_root, tmp_path / "a", train__ema=True))
    first = train(make_recipe(synthetic_root, tmp_path / "b", train__ema=True, train__epochs=1))
    assert first.epochs_done == 1
    resumed = train(make_recipe(synthetic_root, tmp_path / "b", train__ema=True), resume="auto")
    assert resumed.run_dir == first.run_dir and resumed.epochs_done == 2
    a = load_checkpoint(straight.run_dir / "checkpoints" / "last.pt")
    b = load_checkpoint(resumed.run_dir / "checkpoints" / "last.pt")
    assert _state_close(a["model"], b["model"])
    assert _state_close(a["ema"], b["ema"])
    lines = (resumed.run_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2]


def test_signal_saves_a_checkpoint_mid_epoch_and_resume_finishes(
    synthetic_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vidact.data.dataset import ClipDataset

    calls = {"n": 0}
    real = ClipDataset.__getitem__

    def interrupting(self: ClipDataset, key: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 9:  # during the third batch of epoch 1
            signal.raise_signal(signal.SIGTERM)
        return real(self, key)

    monkeypatch.setattr(ClipDataset, "__getitem__", interrupting)
    recipe = make_recipe(synthetic_root, tmp_path / "runs")
    with pytest.raises(TrainingStopped, match="resume with --resume auto"):
        train(recipe)
    monkeypatch.setattr(ClipDataset, "__getitem__", real)
    run = next((tmp_path / "runs" / "t").iterdir())
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    # The step in progress (the third) is finished, then the run stops between steps.
    assert (state["epoch"], state["batch_in_epoch"]) == (0, 3)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored
    result = train(recipe, resume="auto")
    assert result.epochs_done == 2 and result.run_dir == run


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_checkpoint(
    synthetic_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recipe = make_recipe(synthetic_root, tmp_path / "runs", train__epochs=1)
    first = train(recipe)
    before = (first.run_dir / "checkpoints" / "last.pt").read_bytes()
    import tests.engine.tiny as tiny

    def nan_forward(self: Any, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).flatten(1)) * float("nan")

    monkeypatch.setattr(tiny.TinyVideoNet, "forward", nan_forward)
    with pytest.raises(VidactError, match="the loss became nan at epoch 2, step 6.*last good"):
        train(make_recipe(synthetic_root, tmp_path / "runs", train__epochs=2), resume="auto")
    assert (first.run_dir / "checkpoints" / "last.pt").read_bytes() == before


def test_bad_videos_are_skipped_counted_and_never_fatal(
    synthetic_root: Path, tmp_path: Path
) -> None:
    import shutil

    root = tmp_path / "data"
    shutil.copytree(synthetic_root, root)
    samples = read_manifest(root / "train.jsonl")
    (root / samples[0].path).write_bytes(b"garbage")
    (root / samples[5].path).unlink()
    write_manifest(root / "train.jsonl", samples)
    (root / samples[5].path).write_text("")  # present but empty: passes the manifest check
    result = train(make_recipe(root, tmp_path / "runs", train__epochs=1))
    assert result.bad_videos == 2
    assert result.last_metrics["train_clips"] == 20


def test_finetune_replaces_the_head_and_can_freeze_the_backbone(
    synthetic_root: Path, tmp_path: Path
) -> None:
    from vidact.data.sources.synthetic import SyntheticSpec, make_synthetic_dataset

    source = train(make_recipe(synthetic_root, tmp_path / "src", train__epochs=1))
    other = make_synthetic_dataset(
        tmp_path / "other", SyntheticSpec(classes=3, videos_per_class=4, frames=6, size=32), 1
    ).out
    ckpt = source.run_dir / "checkpoints" / "best.pt"
    tuned = train(
        make_recipe(other, tmp_path / "ft", train__epochs=1, train__freeze="backbone"),
        init_from=ckpt,
    )
    assert tuned.model is not None and tuned.model.fc.out_features == 3
    old = load_checkpoint(ckpt)["model"]
    new = tuned.model.state_dict()
    assert torch.equal(old["features.0.weight"], new["features.0.weight"])  # frozen
    plain = tmp_path / "plain.pth"
    torch.save(old, plain)  # a plain state_dict works too
    again = train(make_recipe(other, tmp_path / "ft2", train__epochs=1), init_from=plain)
    assert not torch.equal(old["features.0.weight"], again.model.state_dict()["features.0.weight"])


def test_user_errors(synthetic_root: Path, tmp_path: Path) -> None:
    with pytest.raises(VidactError, match="model.num_classes is 7 but .* has 4 classes"):
        train(make_recipe(synthetic_root, tmp_path, model__num_classes=7))
    with pytest.raises(VidactError, match="fp16 needs a CUDA device"):
        train(make_recipe(synthetic_root, tmp_path, train__amp="fp16", train__epochs=1))
    with pytest.raises(VidactError, match="no checkpoint there"):
        train(make_recipe(synthetic_root, tmp_path), resume=str(tmp_path / "nowhere.pt"))


def test_bf16_autocast_on_cpu_trains(synthetic_root: Path, tmp_path: Path) -> None:
    result = train(make_recipe(synthetic_root, tmp_path, train__amp="bf16", train__epochs=1))
    assert result.epochs_done == 1 and "val_top1" in result.last_metrics


# ----------------------------------------------------------------- 2 processes over gloo


def _ddp_worker(rank: int, world: int, port: int, root: str, out: str) -> None:
    act_as_torchrun_rank(rank, world, port)
    recipe = make_recipe(Path(root), Path(out) / "runs", train__batch_size=3)
    result = train(recipe, output=Path(out) / "run")
    assert result.model is not None
    torch.save(result.model.state_dict(), Path(out) / f"rank{rank}.pt")
    from vidact.engine import distributed

    distributed.teardown()


@pytest.mark.slow
def test_two_gloo_processes_end_with_identical_weights(
    synthetic_root: Path, tmp_path: Path
) -> None:
    mp.spawn(_ddp_worker, args=(2, free_port(), str(synthetic_root), str(tmp_path)), nprocs=2)
    a = torch.load(tmp_path / "rank0.pt")
    b = torch.load(tmp_path / "rank1.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    # 20 training clips over 2 ranks: every clip exactly once per epoch; val counted once.
    assert all(m["train_clips"] == 20 and m["val_count"] == 4 for m in lines)
    assert not (tmp_path / "runs").exists()  # only the chosen run folder, written by rank 0


# ------------------------------------------- train.log_every, max_bad_video_fraction, keep_last


def test_step_log_line_has_loss_lr_rate_and_etas(monkeypatch: pytest.MonkeyPatch) -> None:
    import vidact.engine.step_log as step_log

    now = {"t": 100.0}
    monkeypatch.setattr(step_log.time, "perf_counter", lambda: now["t"])
    log = step_log.StepLog(every=5, epoch=0, epochs=3, steps_per_epoch=10, enabled=True)
    now["t"] = 110.0  # 5 batches in 10 s: 2 s a step
    assert log.line(step=4, batch=4, loss=1.0, lr=0.1, clips=40) is None  # not due
    # 5 steps left in this epoch (10 s), then 2 more epochs of 10 steps (40 s).
    assert log.line(step=5, batch=5, loss=1.23456, lr=0.1, clips=40) == (
        "epoch 1/3, step 5/10: loss 1.235, lr 1.00e-01, 4.0 clips/s, ETA epoch 0:00:10, run 0:00:50"
    )
    resumed = step_log.StepLog(5, 2, 3, 10, first_batch=6, enabled=True)  # last epoch
    now["t"] = 118.0  # 4 batches (7..10) in 8 s
    assert resumed.line(30, 10, 0.5, 0.001, 16).endswith("ETA epoch 0:00:00, run 0:00:00")
    assert step_log.StepLog(1, 0, 1, 10, enabled=False).line(1, 1, 0.0, 0.1, 4) is None


def test_log_every_prints_progress_lines_only_without_a_progress_bar(
    synthetic_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import re

    from vidact import console

    result = train(make_recipe(synthetic_root, tmp_path / "a", train__log_every=2))
    lines = re.findall(
        r"epoch (\d)/2, step (\d)/5: loss \d+\.\d{3}, lr \S+, \S+ clips/s, "
        r"ETA epoch \d+:\d\d:\d\d, run \d+:\d\d:\d\d",
        (result.run_dir / "log.txt").read_text(),
    )
    # 5 steps an epoch, global steps 2, 4, 6, 8, 10.
    assert lines == [("1", "2"), ("1", "4"), ("2", "1"), ("2", "3"), ("2", "5")]
    monkeypatch.setattr(console, "progress_drawn", lambda: True)  # a terminal: the bar
    drawn = train(make_recipe(synthetic_root, tmp_path / "b", train__log_every=2))
    assert "clips/s" not in (drawn.run_dir / "log.txt").read_text()


def _with_bad_videos(synthetic_root: Path, tmp_path: Path, bad: list[int]) -> Path:
    import shutil

    root = tmp_path / "data"
    shutil.copytree(synthetic_root, root)
    for index in bad:
        (root / read_manifest(root / "train.jsonl")[index].path).write_bytes(b"garbage")
    return root


def test_max_bad_video_fraction_stops_training_with_a_clear_line(
    synthetic_root: Path, tmp_path: Path
) -> None:
    root = _with_bad_videos(synthetic_root, tmp_path, [0, 5])  # 2 of 20 clips
    # 2 failures > 0.05 x 20: stops during epoch 1, before any checkpoint.
    recipe = make_recipe(root, tmp_path / "runs", train__max_bad_video_fraction=0.05)
    with pytest.raises(VidactError, match=r"decode failures in epoch 1, more than train\."):
        train(recipe)
    assert not list((tmp_path / "runs").rglob("*.pt"))
    with pytest.raises(VidactError, match="max_bad_video_fraction = 0 of its 20 clips"):
        train(make_recipe(root, tmp_path / "zero", train__max_bad_video_fraction=0.0))
    # 2 failures are not more than 0.1 x 20; fraction 1 never stops.
    for fraction in (0.1, 1.0):
        kept = make_recipe(root, tmp_path / f"ok{fraction}", train__max_bad_video_fraction=fraction)
        assert train(kept).epochs_done == 2


def test_keep_last_keeps_that_many_epoch_checkpoints(synthetic_root: Path, tmp_path: Path) -> None:
    recipe = make_recipe(synthetic_root, tmp_path / "runs", train__epochs=3, output__keep_last=2)
    run = train(recipe).run_dir / "checkpoints"
    names = sorted(p.name for p in run.iterdir())
    assert names == ["best.pt", "epoch-0002.pt", "epoch-0003.pt", "last.pt"]
    assert load_checkpoint(run / "epoch-0002.pt")["epoch"] == 2
    last, third = load_checkpoint(run / "last.pt"), load_checkpoint(run / "epoch-0003.pt")
    assert third["epoch"] == 3 and _state_close(third["model"], last["model"])
    # Resuming with a smaller count prunes the older ones; 0 (the default) keeps none.
    more = make_recipe(synthetic_root, tmp_path / "runs", train__epochs=4, output__keep_last=1)
    train(more, resume="auto")
    assert sorted(p.name for p in run.iterdir()) == ["best.pt", "epoch-0004.pt", "last.pt"]
    plain = train(make_recipe(synthetic_root, tmp_path / "plain", train__epochs=1))
    assert sorted(p.name for p in (plain.run_dir / "checkpoints").iterdir()) == [
        "best.pt",
        "last.pt",
    ]
    with pytest.raises(VidactError, match="'output.keep_last' must be an integer, got True"):
        make_recipe(synthetic_root, tmp_path, output__keep_last=True)
