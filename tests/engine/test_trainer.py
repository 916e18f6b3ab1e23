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
    assert (state["epoch"], state["batch_in_epoch"]) == (0, 2)
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
