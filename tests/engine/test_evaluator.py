"""vidact evaluate: score averaging by hand, single view = validation, ensembles, bad
videos, resume, the CLI, --profile, and 1 vs 2 gloo processes."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from torch import nn
from torch.utils.data import DataLoader
from typer.testing import CliRunner

import tests.engine.tiny  # noqa: F401  (registers tiny_test_net)
from tests.conftest import write_video
from tests.engine.gloo import act_as_torchrun_rank, free_port
from tests.engine.test_trainer import make_recipe
from vidact.cli import app
from vidact.data.manifest import Sample, read_manifest, write_label_map, write_manifest
from vidact.data.video import read_frames
from vidact.data.views import VideoViews
from vidact.engine.checkpoint import load_checkpoint, save_checkpoint
from vidact.engine.evaluator import EvalResult, evaluate, read_cache
from vidact.engine.trainer import build_datasets, build_model_for, train, validate
from vidact.errors import VidactError
from vidact.models import list_models, register_model
from vidact.recipe import recipe_from_dict

runner = CliRunner()


class MeanLinearNet(nn.Module):
    """logits = fc(per-channel mean of the clip): a model whose outputs we can compute."""

    def __init__(self, num_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.fc = nn.Linear(3, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.mean(dim=(2, 3, 4)))


def mean_linear_test_net(
    *, num_classes: int, num_frames: int | None = None, dropout: float = 0.0, weights: None = None
) -> MeanLinearNet:
    del num_frames, weights
    return MeanLinearNet(num_classes, dropout)


if "mean_linear_test_net" not in list_models():
    register_model("mean_linear_test_net")(mean_linear_test_net)


@pytest.fixture(scope="module")
def trained(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """best.pt of a tiny model trained one epoch (with EMA) on the synthetic dataset."""
    out = tmp_path_factory.mktemp("eval_runs")
    recipe = make_recipe(synthetic_root, out, train__epochs=1, train__ema=True, eval__batch_size=5)
    return train(recipe).run_dir / "checkpoints" / "best.pt"


def _headline(result: EvalResult) -> dict[str, Any]:
    keys = ("top1", "top5", "mean_class_accuracy", "videos", "confusion", "per_class")
    return {k: result.metrics[k] for k in keys}


# ------------------------------------------------------------------ score averaging


def _controlled_checkpoint(
    path: Path, root: Path, weight: torch.Tensor, bias: torch.Tensor, labels: str = "abc"
) -> Path:
    recipe = recipe_from_dict(
        {
            "name": "mean",
            "model": {"name": "mean_linear_test_net"},
            "data": {"root": str(root), "num_frames": 3, "short_side": 32, "input_size": 24,
                     "num_workers": 0},
            "eval": {"batch_size": 4},
        }
    )  # fmt: skip
    net = MeanLinearNet(len(labels))
    with torch.no_grad():
        net.fc.weight.copy_(weight)
        net.fc.bias.copy_(bias)
    state = {"model": net.state_dict(), "ema": None, "recipe": recipe.to_dict()}
    save_checkpoint(path, {**state, "labels": list(labels), "metrics": {}})
    return path


@pytest.mark.parametrize("average", ["softmax", "logits"])
def test_fused_scores_equal_a_hand_computation(tmp_path: Path, average: str) -> None:
    rng = np.random.default_rng(0)
    root = tmp_path / "data"
    frames = rng.integers(0, 256, (8, 32, 48, 3), dtype=np.uint8)
    write_video(root / "v.mp4", frames)
    write_manifest(root / "val.jsonl", [Sample("v.mp4", 1, "b", 8)])
    write_label_map(root / "labels.txt", ["a", "b", "c"])
    weights = [torch.tensor(rng.normal(size=(3, 3)), dtype=torch.float32) for _ in range(2)]
    biases = [torch.tensor(rng.normal(size=3), dtype=torch.float32) for _ in range(2)]
    ckpts = [
        _controlled_checkpoint(tmp_path / f"m{i}.pt", root, weights[i], biases[i]) for i in (0, 1)
    ]

    result = evaluate(ckpts, clips=2, crops="3", average=average, out=tmp_path / "out")

    # By hand: 8 frames, 3-frame clips at 2 uniform starts: room 5 -> starts 1 and 4.
    # 32 x 48 frames at short side 32 need no resize; 24 px crops along the width at
    # lefts 0, 12, 24, top 4. The model sees per-channel means of the normalised crop.
    decoded = read_frames(root / "v.mp4", range(8)).astype(np.float64)
    mean = np.array([0.485, 0.456, 0.406]) * 255
    std = np.array([0.229, 0.224, 0.225]) * 255
    fused = np.zeros(3)
    for weight, bias in zip(weights, biases, strict=True):
        per_view = []
        for start in (1, 4):
            for left in (0, 12, 24):
                crop = decoded[start : start + 3, 4:28, left : left + 24]
                channel_means = (crop.reshape(-1, 3).mean(axis=0) - mean) / std
                per_view.append(weight.double().numpy() @ channel_means + bias.double().numpy())
        logits = np.array(per_view)
        if average == "softmax":
            probs = np.exp(logits - logits.max(axis=1, keepdims=True))
            fused += (probs / probs.sum(axis=1, keepdims=True)).mean(axis=0) / 2
        else:
            fused += logits.mean(axis=0) / 2
    assert result.scores.shape == (1, 3)
    # Softmax averaging scores the log of the mean probability (ranked without ties).
    scores = np.exp(result.scores[0]) if average == "softmax" else result.scores[0]
    np.testing.assert_allclose(scores, fused, rtol=1e-4, atol=1e-5)
    assert result.metrics["top1"] == (100.0 if fused.argmax() == 1 else 0.0)
    if average == "softmax":
        assert result.metrics["loss"] == pytest.approx(-np.log(fused[1]), rel=1e-4)
    else:
        assert "loss" not in result.metrics
    rows = list(csv.reader((tmp_path / "out" / "predictions.csv").open()))
    assert rows[0][:6] == ["video", "label", "label_class", "top1", "top1_class", "top1_score"]
    best = np.argsort(-fused, kind="stable")
    assert rows[1][:5] == ["v.mp4", "1", "b", str(best[0]), "abc"[best[0]]]
    assert rows[1][6:8] == [str(best[1]), "abc"[best[1]]]
    assert float(rows[1][5]) == pytest.approx(float(result.scores[0][best[0]]), rel=1e-5)


def test_a_saturated_model_ranks_like_training_validation(tmp_path: Path) -> None:
    """Softmax scores of a saturated model round to exactly 0 and 1: ranked as they are,
    the ties fall to the lowest class ids (top-5 0% where validation said 100%)."""
    rng = np.random.default_rng(1)
    root = tmp_path / "data"
    frames = rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    write_video(root / "v.mp4", frames)
    samples = [Sample("v.mp4", label, "abcdefgh"[label], 6) for label in (6, 7)]
    write_manifest(root / "val.jsonl", samples)
    write_manifest(root / "train.jsonl", samples)
    write_label_map(root / "labels.txt", list("abcdefgh"))
    # logits = bias: class 3 first, then 6, 7, 5, 4 (the rest far below): softmax gives
    # class 3 probability 1.0 and the others exactly 0.0 in float32 and float64.
    bias = torch.tensor([-3000, -3000, -3000, 0, -1400, -1300, -1000, -1200.0])
    ckpt = _controlled_checkpoint(
        tmp_path / "m.pt", root, torch.zeros(8, 3), bias, labels="abcdefgh"
    )
    result = evaluate([ckpt], out=tmp_path / "out")
    assert result.metrics["top1"] == 0.0 and result.metrics["top5"] == 100.0
    # Training's validation on the same checkpoint and clips agrees on every metric.
    state = load_checkpoint(ckpt)
    recipe = recipe_from_dict(state["recipe"])
    model = build_model_for(recipe, 8)
    model.load_state_dict(state["model"])
    _, val = build_datasets(recipe, root, 8)
    validated = validate(model, DataLoader(val, batch_size=2), torch.device("cpu"))
    _assert_metrics_agree(result, validated)
    rows = list(csv.reader((tmp_path / "out" / "predictions.csv").open()))
    assert [rows[1][3 + 3 * r] for r in range(5)] == ["3", "6", "7", "5", "4"]


def _assert_metrics_agree(result: EvalResult, validated: dict[str, float]) -> None:
    """Every metric training's validation reports, as a one-view evaluation reports it."""
    assert set(validated) == {"val_loss", "val_top1", "val_top5", "val_count", "val_bad_videos"}
    assert validated["val_bad_videos"] == 0  # evaluate would have failed a bad video
    metrics = result.metrics
    assert metrics["top1"] == pytest.approx(validated["val_top1"])
    assert metrics["top5"] == pytest.approx(validated["val_top5"])
    assert metrics["loss"] == pytest.approx(validated["val_loss"], rel=1e-5)
    assert metrics["videos"] == validated["val_count"]


# ------------------------------------------------------------ trained tiny model


def test_one_centre_view_reproduces_training_validation(trained: Path, tmp_path: Path) -> None:
    state = load_checkpoint(trained)
    result = evaluate([trained], clips=1, crops="1", out=tmp_path / "eval")
    assert result.metrics["ema"] == [True]
    validated = {k: v for k, v in state["metrics"].items() if k.startswith("val_")}
    _assert_metrics_agree(result, validated)
    # The same scores as the EMA model on the validation loader's clips.
    recipe = recipe_from_dict(state["recipe"])
    _, val = build_datasets(recipe, Path(recipe.data.root), 4)
    model = build_model_for(recipe, 4)
    ema = {k.removeprefix("module."): v for k, v in state["ema"].items() if k != "n_averaged"}
    model.load_state_dict(ema)
    model.eval()
    with torch.no_grad():
        logits = model(torch.stack([val[i]["clip"] for i in range(len(val))]))
    expected = logits.log_softmax(1).numpy()
    np.testing.assert_allclose(result.scores, expected, rtol=1e-5, atol=1e-5)
    assert result.videos == [s.path for s in val.samples]
    # --no-ema evaluates the raw weights: other scores, and its own cache.
    raw = evaluate([trained], clips=1, crops="1", use_ema=False, out=tmp_path / "eval")
    assert raw.metrics["ema"] == [False] and raw.resumed == 0
    assert not np.allclose(raw.scores, result.scores)


def test_bad_videos_are_reported_and_excluded(trained: Path, tmp_path: Path) -> None:
    root = tmp_path / "data"
    shutil.copytree(Path(load_checkpoint(trained)["recipe"]["data"]["root"]), root)
    samples = read_manifest(root / "val.jsonl")
    (root / samples[1].path).write_bytes(b"garbage, not a video")
    (root / samples[3].path).unlink()
    out = tmp_path / "eval"
    args = ["evaluate", str(trained), "--crops", "3", "--set", f"data.root={root}", "-o", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "2 scored (0 from the cache), 2 failed" in result.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["videos"] == 2 and metrics["failed"] == 2
    failed = {f["video"]: f["reason"] for f in metrics["failed_videos"]}
    assert set(failed) == {samples[1].path, samples[3].path}
    assert "file not found" in failed[samples[3].path]
    assert sum(m["videos"] for m in metrics["per_class"]) == 2
    rows = list(csv.reader((out / "predictions.csv").open()))
    assert [r[0] for r in rows[1:]] == [samples[0].path, samples[2].path]
    assert (out / "confusion.png").stat().st_size > 0
    assert (out / "per_class.csv").read_text().splitlines()[0].startswith("class_id,class")


def test_an_interrupted_evaluation_resumes_from_cached_scores(
    trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    options: dict[str, Any] = {"split": "train", "clips": 2, "crops": "3", "save_every": 4}
    straight = evaluate([trained], out=tmp_path / "straight", **options)
    assert straight.metrics["videos"] == 20

    real = VideoViews.load_views
    loaded: list[int] = []

    def interrupting(self: VideoViews, sample: Sample, index: int) -> Any:
        if len(loaded) == 11:
            raise KeyboardInterrupt
        loaded.append(index)
        return real(self, sample, index)

    monkeypatch.setattr(VideoViews, "load_views", interrupting)
    with pytest.raises(KeyboardInterrupt):
        evaluate([trained], out=tmp_path / "eval", **options)
    (cache,) = (tmp_path / "eval" / "cache").iterdir()
    done = read_cache(cache)
    assert 8 <= len(done) <= 11 and set(done) <= set(loaded)

    loaded.clear()
    monkeypatch.setattr(
        VideoViews, "load_views", lambda self, s, i: loaded.append(i) or real(self, s, i)
    )
    resumed = evaluate([trained], out=tmp_path / "eval", **options)
    assert resumed.resumed == len(done) and resumed.scored_now == 20 - len(done)
    assert sorted(loaded) == sorted(set(range(20)) - set(done))  # nothing decoded twice
    assert _headline(resumed) == _headline(straight)
    np.testing.assert_allclose(resumed.scores, straight.scores, rtol=1e-5, atol=1e-6)
    # Other settings are other work: their own cache, nothing reused.
    loaded.clear()
    other = evaluate([trained], out=tmp_path / "eval", **{**options, "clips": 1})
    assert other.resumed == 0 and len(loaded) == 20
    assert len(list((tmp_path / "eval" / "cache").iterdir())) == 2


def test_ensemble_averages_the_models_scores(trained: Path, tmp_path: Path) -> None:
    single = evaluate([trained], crops="3", out=tmp_path / "a")
    raw = evaluate([trained], crops="3", use_ema=False, out=tmp_path / "b")
    both = evaluate([trained, trained], crops="3", out=tmp_path / "c", use_ema=None)
    np.testing.assert_allclose(both.scores, single.scores, rtol=1e-6)
    copy = tmp_path / "copy.pt"
    state = load_checkpoint(trained)
    save_checkpoint(copy, {**state, "ema": None})
    mixed = evaluate([trained, copy], crops="3", out=tmp_path / "d")
    # An ensemble of the EMA and the raw weights: the mean of the two probability tables.
    mean = (np.exp(single.scores) + np.exp(raw.scores)) / 2
    np.testing.assert_allclose(np.exp(mixed.scores), mean, rtol=1e-5)


def test_profile_reports_params_gflops_per_view_and_video_and_latency(
    trained: Path, tmp_path: Path
) -> None:
    args = ["evaluate", str(trained), "--clips", "2", "--crops", "10", "--profile"]
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "p")])
    assert result.exit_code == 0, result.output
    assert "2 clips x 10 crops" in result.stdout and "0.000498 x 20" in result.stdout
    (row,) = json.loads((tmp_path / "p" / "metrics.json").read_text())["profile"]
    # tiny_test_net on 3 x 3 x 24 x 24: conv3d 3->8, kernel 2x3x3 -> 8 x 2 x 24 x 24 outputs
    # of 3 x 2 x 3 x 3 multiply-adds each, plus the 8 -> 4 linear layer.
    per_view = 8 * 2 * 24 * 24 * 3 * 2 * 3 * 3 + 8 * 4
    assert row["gflops_per_view"] * 1e9 == pytest.approx(per_view)
    assert row["views"] == 20 and row["gflops_per_video"] == pytest.approx(20 * per_view / 1e9)
    assert row["gflops"] == "0.000498 x 20"
    assert row["params"] == 3 * 8 * 18 + 8 + 2 * 8 + 8 * 4 + 4
    assert row["latency_ms_per_video"] > 0 and row["seconds_per_video_end_to_end"] > 0


def test_user_errors(trained: Path, tmp_path: Path) -> None:
    plain = tmp_path / "plain.pt"
    torch.save(load_checkpoint(trained)["model"], plain)
    with pytest.raises(VidactError, match="plain state_dict has no recipe"):
        evaluate([plain])
    with pytest.raises(VidactError, match="--crops: crops must be 1, 3, 10 or random:K"):
        evaluate([trained], crops="7")
    with pytest.raises(VidactError, match="nope.jsonl: manifest not found"):
        evaluate([trained], split="nope")
    result = runner.invoke(app, ["evaluate", str(trained), "--crops", "5"])
    assert result.exit_code == 2 and "error: --crops" in result.output


# ----------------------------------------------------------------- 2 processes over gloo


def _eval_worker(rank: int, world: int, port: int, ckpt: str, out: str) -> None:
    act_as_torchrun_rank(rank, world, port)
    result = evaluate([Path(ckpt)], split="train", clips=2, crops="3", out=Path(out), save_every=3)
    torch.save({"scored_now": result.scored_now, "metrics": result.metrics}, f"{out}/r{rank}.pt")
    from vidact.engine import distributed

    distributed.teardown()


@pytest.mark.slow
def test_two_gloo_processes_give_the_single_process_metrics(trained: Path, tmp_path: Path) -> None:
    root = tmp_path / "data"
    shutil.copytree(Path(load_checkpoint(trained)["recipe"]["data"]["root"]), root)
    samples = read_manifest(root / "train.jsonl")
    (root / samples[7].path).write_bytes(b"garbage")  # a failure on rank 1 (7 % 2)
    ckpt = tmp_path / "best.pt"
    state = load_checkpoint(trained)
    state["recipe"]["data"]["root"] = str(root)
    save_checkpoint(ckpt, state)

    single = evaluate([ckpt], split="train", clips=2, crops="3", out=tmp_path / "one")
    out = tmp_path / "two"
    mp.spawn(_eval_worker, args=(2, free_port(), str(ckpt), str(out)), nprocs=2)
    ranks = [torch.load(out / f"r{r}.pt", weights_only=False) for r in (0, 1)]
    assert [r["scored_now"] for r in ranks] == [10, 9]  # 20 videos, one bad; no padding
    assert ranks[1]["metrics"] == {}  # only rank 0 reports
    two = ranks[0]["metrics"]
    assert two["videos"] == 19 and two["failed"] == 1
    assert two["failed_videos"][0]["video"] == samples[7].path
    for key in ("top1", "top5", "mean_class_accuracy", "confusion", "per_class"):
        assert two[key] == single.metrics[key], key
    (cache,) = (out / "cache").iterdir()
    scores = read_cache(cache)
    assert sorted(scores) == [i for i in range(20) if i != 7]
    one = read_cache(next((tmp_path / "one" / "cache").iterdir()))
    for index, row in one.items():
        np.testing.assert_allclose(scores[index], row, rtol=1e-5, atol=1e-6)
    rows = list(csv.reader((out / "predictions.csv").open()))
    assert len(rows) == 20  # header + 19 videos, each once
