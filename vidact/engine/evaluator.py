"""Evaluation: multi-clip x multi-crop testing, ensembles, resumable per-video scores.

`evaluate([ckpt, ...])` rebuilds each model from the recipe inside its checkpoint (EMA
weights when present and asked for), cuts every test view of a video from one decode
(vidact.data.views), runs the views of consecutive videos through the model in full
batches, averages each video's views (softmax by default, logits as an option) and,
for an ensemble, averages the models' video scores (CT-Net EN). Settings not given
come from the `eval` section of each checkpoint's recipe.

Scores that do not tie: with softmax averaging a video's score is the LOG of its mean
probability (computed from log-softmax with logsumexp), which ranks classes as the mean
probability does, but where a saturated model's probabilities round to exactly 0 and 1
the log-probabilities still differ: ranking the probabilities themselves let such ties
fall to the lowest class ids (a top-5 of 0% where training's validation, which ranks
logits, said 25%). With one view it ranks as the logits do, so a one-view evaluation
reproduces training's validation on every metric, its loss (the mean negative
log-likelihood, `loss` in metrics.json) included. With `average: logits` the score is
the mean logit.

Resume (vidact.engine.score_cache): per-video scores are cached under
`<out>/cache/<key>/`, one small .npz shard per `save_every` videos, written atomically;
the key is a hash of everything that changes a score (checkpoint bytes, EMA, views,
averaging, and the data: manifest, root, each video's size and time), so a re-run
with the same settings scores only the videos still missing, and other settings or
other data get their own cache. Videos that failed to decode are not
cached: a re-run tries them again.

Distributed (torchrun): rank r scores the videos with `index % world == r`, each video
exactly once, no padding; ranks write their own shards to the (shared) output folder,
and rank 0 reads them all after a barrier, so its metrics are those of one process.

`evaluate` reads as its steps: `load_members`, the cache folder, `score_videos`, the
ensemble average (`_fuse`), the metrics, `profile_members` (--profile), the reports.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from pydantic import ValidationError
from torch import nn
from torch.utils.data import DataLoader

from vidact import console
from vidact.data.class_order import check_checkpoint_classes
from vidact.data.dataset import one_opencv_thread
from vidact.data.manifest import Sample, load_manifest, read_label_map
from vidact.data.views import VideoViews, ViewSpec
from vidact.engine import distributed, report
from vidact.engine.checkpoint import FORMAT, load_checkpoint
from vidact.engine.profile import count_macs, count_params, measure_latency
from vidact.engine.score_cache import (
    CACHE_VERSION,
    cache_folder,
    create_cache,
    data_identity,
    read_cache,
    sha256_file,
    write_shard,
)
from vidact.engine.trainer import build_model_for
from vidact.errors import VidactError, pydantic_reason
from vidact.recipe import EvalConfig, Recipe, load_recipe, recipe_from_dict

__all__ = ["EvalResult", "Member", "evaluate", "load_member", "profile_members", "read_cache"]


@dataclass
class Member:
    """One checkpoint of the evaluation (an ensemble has several)."""

    path: Path
    recipe: Recipe
    eval: EvalConfig  # the recipe's eval section with the caller's settings applied
    labels: list[str]
    model: nn.Module
    spec: ViewSpec
    ema: bool  # True when the EMA weights are the ones evaluated
    digest: str  # sha256 of the checkpoint file


@dataclass
class EvalResult:
    out_dir: Path
    split: str
    metrics: dict[str, Any]  # empty on ranks other than 0
    videos: list[str] = field(default_factory=list)  # scored videos, manifest order
    # (videos, classes): the log of the mean probability, or the mean logit (_SCORE)
    scores: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    labels: list[int] = field(default_factory=list)
    class_names: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (video, reason)
    scored_now: int = 0  # videos scored by this run (the rest came from the cache)
    resumed: int = 0
    views: list[str] = field(default_factory=list)  # per checkpoint: "4 clips x 3 crops"
    profile: list[dict[str, Any]] | None = None
    files: dict[str, Path] = field(default_factory=dict)
    seconds: float = 0.0


# ------------------------------------------------------------------------------- loading


def _eval_config(recipe: Recipe, settings: dict[str, Any], path: Path) -> EvalConfig:
    try:
        return EvalConfig(**{**recipe.eval.model_dump(), **settings})
    except ValidationError as exc:
        error = exc.errors()[0]
        option = "--" + str(error["loc"][0]).replace("_", "-")
        message = pydantic_reason(str(error["msg"]))
        raise VidactError(f"{option}: {message} (evaluating {path})") from None


def load_member(
    path: Path,
    settings: dict[str, Any],
    use_ema: bool | None,
    overrides: tuple[str, ...] = (),
    recipe_file: Path | None = None,
) -> Member:
    """Rebuild the model of checkpoint `path` with its weights, and its view spec."""
    if recipe_file is not None:
        return _member_from_recipe(path, recipe_file, settings, overrides)
    state = load_checkpoint(path)
    if state.get("format") != FORMAT or "recipe" not in state or "labels" not in state:
        raise VidactError(
            f"{path}: a plain state_dict has no recipe or label map; evaluate needs a "
            "checkpoint written by `vidact train`, or give a recipe with --recipe (the "
            "authors' released CT-Net / TSN checkpoints)"
        )
    recipe = recipe_from_dict(state["recipe"], overrides, source=f"{path} (recipe)")
    cfg = _eval_config(recipe, settings, path)
    labels = list(state["labels"])
    # The checkpoint holds every weight: never fetch pretrained ones while building.
    for key, value in recipe.model.kwargs().items():
        if key.endswith("weights") and isinstance(value, str):
            setattr(recipe.model, key, None)
    model = build_model_for(recipe, len(labels))
    want_ema = cfg.ema if use_ema is None else use_ema
    weights = state["model"]
    ema = bool(want_ema and state.get("ema"))
    if ema:
        weights = {k.removeprefix("module."): v for k, v in state["ema"].items()}
        weights.pop("n_averaged", None)
    elif use_ema:
        console.info(f"{path}: no EMA weights in the checkpoint; using the model's weights")
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise VidactError(
            f"{path}: its weights do not fit model '{recipe.model.name}' ({first})"
        ) from None
    spec = ViewSpec.from_recipe(recipe.data, cfg)
    return Member(path, recipe, cfg, labels, model.eval(), spec, ema, sha256_file(path))


def _member_from_recipe(
    path: Path, recipe_file: Path, settings: dict[str, Any], overrides: tuple[str, ...]
) -> Member:
    """A file without a recipe (the authors' released checkpoint) evaluated with the model,
    data and label map of `recipe_file`; it loads as `model.weights`, which refuses another
    class count with one line."""
    recipe = load_recipe(recipe_file, list(overrides))
    recipe.model.weights = str(path)
    cfg = _eval_config(recipe, settings, path)
    labels = read_label_map(Path(recipe.data.root) / recipe.data.label_map)
    model = build_model_for(recipe, len(labels))
    spec = ViewSpec.from_recipe(recipe.data, cfg)
    return Member(path, recipe, cfg, labels, model.eval(), spec, False, sha256_file(path))


def split_manifest(recipe: Recipe, split: str) -> Path:
    """val -> data.val_manifest, train -> data.train_manifest, else <split>.jsonl (or a
    manifest file name), under data.root."""
    root = Path(recipe.data.root)
    named = {"val": recipe.data.val_manifest, "train": recipe.data.train_manifest}
    if split in named:
        return root / named[split]
    return root / (split if split.endswith(".jsonl") else f"{split}.jsonl")


def default_out(checkpoint: Path, split: str) -> Path:
    """<run folder>/eval/<split>; the run folder holds checkpoints/<name>.pt."""
    parent = checkpoint.parent
    run = parent.parent if parent.name == "checkpoints" else parent
    return run / "eval" / Path(split).stem


# ------------------------------------------------------------------------------- scoring


class _Scorer:
    """Runs one model over view tensors in full batches, whatever video they come from,
    and averages each video's views once all of them are scored."""

    def __init__(
        self, member: Member, batch_size: int, device: torch.device, amp: str, average: str
    ) -> None:
        self.model, self.views_per_video = member.model, member.spec.num_views
        self.batch_size, self.device, self.amp, self.average = batch_size, device, amp, average
        self.pending: list[torch.Tensor] = []
        self.owners: list[int] = []  # the video of each pending view
        self.outputs: dict[int, list[torch.Tensor]] = {}
        self.done: dict[int, np.ndarray] = {}

    def add(self, video: int, views: torch.Tensor) -> None:
        self.pending.append(views)
        self.owners += [video] * len(views)
        if len(self.owners) >= self.batch_size:
            self.run(full_batches_only=True)

    @torch.inference_mode()
    def run(self, full_batches_only: bool = False) -> None:
        if not self.owners:
            return
        views = torch.cat(self.pending)
        size = self.batch_size
        end = len(views) - len(views) % size if full_batches_only else len(views)
        dtype = torch.bfloat16 if self.amp == "bf16" else torch.float16
        for start in range(0, end, size):
            batch = views[start : start + size].to(self.device, non_blocking=True)
            with torch.autocast(self.device.type, dtype=dtype, enabled=self.amp != "none"):
                logits = self.model(batch).float().cpu()
            for row, video in zip(logits, self.owners[start : start + size], strict=True):
                self.outputs.setdefault(video, []).append(row)
        self.pending = [views[end:]] if end < len(views) else []
        self.owners = self.owners[end:]
        for video in [v for v, rows in self.outputs.items() if len(rows) == self.views_per_video]:
            logits = torch.stack(self.outputs.pop(video)).double()
            if self.average == "softmax":  # log of the mean softmax (module docstring)
                scores = log_mean_exp(logits.log_softmax(dim=1).numpy())
            else:
                scores = logits.mean(dim=0).numpy()
            self.done[video] = scores


def log_mean_exp(log_values: np.ndarray) -> np.ndarray:
    """log(mean(exp(x))) over axis 0, without underflow: the log of the mean probability
    of rows of log-probabilities (views of a video, models of an ensemble)."""
    log_values = np.asarray(log_values, dtype=np.float64)
    return np.logaddexp.reduce(log_values, axis=0) - math.log(len(log_values))


def _collect(scorers: list[_Scorer], into: dict[int, np.ndarray]) -> None:
    """Move the videos that every model has scored into `into` as (models, classes)."""
    for video in [v for v in scorers[0].done if all(v in s.done for s in scorers)]:
        into[video] = np.stack([s.done.pop(video) for s in scorers]).astype(np.float32)


def _gather_failures(failed: list[tuple[int, str]]) -> list[tuple[int, str]]:
    if not (dist.is_available() and dist.is_initialized()):
        return failed
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, failed)
    return sorted(item for part in parts for item in part)


# ------------------------------------------------------------------------------ evaluate


def evaluate(
    checkpoints: list[Path],
    *,
    split: str | None = None,
    clips: int | None = None,
    crops: str | None = None,
    crop_size: int | None = None,
    short_side: int | None = None,
    average: str | None = None,
    use_ema: bool | None = None,
    out: Path | None = None,
    profile: bool = False,
    overrides: tuple[str, ...] = (),
    save_every: int = 32,
    recipe: Path | None = None,
) -> EvalResult:
    """Evaluate one checkpoint, or fuse several (an ensemble), on a split; see the module
    docstring. Settings left None come from each checkpoint's recipe (`eval` section);
    `overrides` ("data.root=/data/k400") change those recipes first. `recipe`: the recipe
    of checkpoints that have none (the authors' released files, `vidact.models.released`)."""
    start_time = time.perf_counter()
    if not checkpoints:
        raise VidactError("give at least one checkpoint to evaluate")
    info = distributed.setup()
    device = distributed.device_for(info)
    given = {"split": split, "clips": clips, "crops": crops, "crop_size": crop_size}
    given |= {"short_side": short_side, "average": average}
    settings = {k: v for k, v in given.items() if v is not None}
    members = load_members(checkpoints, settings, use_ema, tuple(overrides), recipe)
    first = members[0]
    check_checkpoint_classes(  # a recipe's label map is the one given: only the order is known
        first.path, None if recipe else first.labels,
        Path(first.recipe.data.root) / first.recipe.data.label_map, "evaluate",
    )  # fmt: skip
    cfg = first.eval
    manifest = split_manifest(first.recipe, cfg.split)
    samples = load_manifest(manifest, check_files=False, num_classes=len(first.labels))
    out_dir = Path(out) if out is not None else default_out(first.path, cfg.split)

    cache = _open_cache(members, manifest, samples, out_dir, info.is_main)
    cached = read_cache(cache)
    todo = [i for i in range(len(samples)) if i not in cached and i % info.world == info.rank]
    if info.is_main and cached:
        console.info(f"resuming: {len(cached)} of {len(samples)} videos already scored ({cache})")
    amp = first.recipe.train.amp if device.type == "cuda" else "none"
    loop_start = time.perf_counter()
    scored, failed = score_videos(members, samples, todo, cache, device, amp, save_every)
    loop_seconds = time.perf_counter() - loop_start
    all_failed = _gather_failures(failed)
    distributed.barrier()
    result = EvalResult(out_dir, cfg.split, {}, scored_now=scored, resumed=len(cached))
    result.views = [m.spec.describe() for m in members]
    if not info.is_main:
        return result

    _fuse(result, read_cache(cache), samples, all_failed, manifest, first.labels, cfg.average)
    if profile:
        result.profile = profile_members(members, device, amp)
        if scored:  # decode + views + forward, as this run went (rank 0's share)
            for row in result.profile:
                row["seconds_per_video_end_to_end"] = loop_seconds / scored
    result.metrics = _metrics(result, members, manifest)
    fused, labels = result.scores, np.array(result.labels, dtype=np.int64)
    result.files = report.write_reports(
        out_dir, result.metrics, result.videos, fused, labels, result.class_names
    )
    result.seconds = time.perf_counter() - start_time
    return result


def load_members(
    checkpoints: list[Path], settings: dict[str, Any], use_ema: bool | None,
    overrides: tuple[str, ...], recipe: Path | None = None,
) -> list[Member]:  # fmt: skip
    """Every checkpoint's member; an ensemble's members must share one label map."""
    members = [load_member(Path(p), settings, use_ema, overrides, recipe) for p in checkpoints]
    first = members[0]
    for member in members[1:]:
        if member.labels != first.labels:
            raise VidactError(
                f"{member.path}: its classes differ from those of {first.path}; an ensemble "
                "needs models trained on the same label map"
            )
    return members


def _open_cache(
    members: list[Member], manifest: Path, samples: list[Sample], out_dir: Path, is_main: bool
) -> Path:
    """The cache folder of these settings and data (created by rank 0; every rank waits)."""
    first = members[0]
    paths = [p for s in samples for p in (s.path, s.flow) if p is not None]
    key_data = {
        "version": CACHE_VERSION,
        **data_identity(manifest, Path(first.recipe.data.root), paths),
        "average": first.eval.average,
        "score": _SCORE[first.eval.average],  # caches of probabilities are not reused
        "seed": first.recipe.train.seed,
        "models": [{"sha256": m.digest, "ema": m.ema, **m.spec.key()} for m in members],
    }
    cache = cache_folder(out_dir, key_data)
    if is_main:
        create_cache(cache, {**key_data, "checkpoints": [str(m.path) for m in members]})
    distributed.barrier()
    return cache


def score_videos(
    members: list[Member], samples: list[Sample], todo: list[int], cache: Path,
    device: torch.device, amp: str, save_every: int,
) -> tuple[int, list[tuple[int, str]]]:  # fmt: skip
    """Score the videos `todo` with every member, a shard every `save_every` videos
    (also when interrupted). Returns (videos scored, [(index, reason) that failed])."""
    first = members[0]
    data, cfg = first.recipe.data, first.eval
    for member in members:
        member.model.to(device)
    scorers = [_Scorer(m, cfg.batch_size, device, amp, cfg.average) for m in members]
    videos = VideoViews(
        samples, data.root, [m.spec for m in members], todo, first.recipe.train.seed,
        data.video_backend,
    )  # fmt: skip
    workers = min(data.num_workers, len(todo))
    loader = DataLoader(
        videos, batch_size=None, num_workers=workers, prefetch_factor=2 if workers else None,
        worker_init_fn=one_opencv_thread if workers else None,
    )  # fmt: skip
    failed: list[tuple[int, str]] = []
    unsaved: dict[int, np.ndarray] = {}
    scored = 0
    try:
        with console.progress_task(f"evaluating {cfg.split}", total=len(todo)) as advance:
            for item in loader:
                if item["error"]:
                    failed.append((item["index"], item["error"]))
                    console.warn(f"skipped a video that failed to decode: {item['error']}")
                else:
                    for scorer, views in zip(scorers, item["views"], strict=True):
                        scorer.add(item["index"], views)
                    _collect(scorers, unsaved)
                advance(status=f"{len(failed)} failed" if failed else "")
                if len(unsaved) >= save_every:
                    scored += len(unsaved)
                    write_shard(cache, unsaved)
            for scorer in scorers:
                scorer.run()
            _collect(scorers, unsaved)
    finally:  # also on Ctrl-C: what is scored stays scored
        scored += len(unsaved)
        write_shard(cache, unsaved)
    return scored, failed


def _fuse(
    result: EvalResult, scores: dict[int, np.ndarray], samples: list[Sample],
    failed: list[tuple[int, str]], manifest: Path, class_names: list[str], average: str,
) -> None:  # fmt: skip
    """Fill `result` with the video scores, averaged over the models (CT-Net's EN): their
    mean probability (as a log) with softmax averaging, their mean logit otherwise."""
    bad = {index for index, _ in failed}
    missing = [s.path for i, s in enumerate(samples) if i not in scores and i not in bad]
    if missing:
        raise VidactError(f"{len(missing)} videos have no scores (first: {missing[0]}); re-run")
    kept = [i for i in range(len(samples)) if i in scores]
    if not kept:
        raise VidactError(
            f"{manifest}: none of its {len(samples)} videos could be decoded (first: "
            f"{failed[0][1]}); check data.root (--set data.root=...) and the videos"
        )
    result.videos = [samples[i].path for i in kept]
    fuse = log_mean_exp if average == "softmax" else (lambda s: s.mean(axis=0))
    result.scores = np.stack([fuse(scores[i].astype(np.float64)) for i in kept])
    result.labels = [samples[i].label for i in kept]
    result.class_names = class_names
    result.failed = [(samples[i].path, reason) for i, reason in failed]


def _metrics(result: EvalResult, members: list[Member], manifest: Path) -> dict[str, Any]:
    """metrics.json: the settings, top-1/top-5/per class, failures and profile."""
    labels = np.array(result.labels, dtype=np.int64)
    metrics = report.compute_metrics(result.scores, labels, len(result.class_names))
    for entry in metrics["per_class"]:
        entry["class"] = result.class_names[entry["id"]]
    average = members[0].eval.average
    if average == "softmax" and len(labels):  # training's val_loss: mean cross-entropy
        metrics["loss"] = -float(result.scores[np.arange(len(labels)), labels].mean())
    return {
        "split": result.split,
        "manifest": str(manifest),
        "checkpoints": [str(m.path) for m in members],
        "ema": [m.ema for m in members],
        "views": result.views,
        "average": average,
        "score": _SCORE[average],
        **metrics,
        "failed": len(result.failed),
        "failed_videos": [{"video": v, "reason": r} for v, r in result.failed],
        "profile": result.profile,
    }


# What a video's score is (metrics.json "score", predictions.csv's topK_score).
_SCORE = {"softmax": "log of the mean softmax probability", "logits": "mean logit"}


def _gflops(macs: float) -> str:
    value = macs / 1e9
    return f"{value:.0f}" if value >= 100 else f"{value:.3g}"


def profile_members(
    members: list[Member], device: torch.device, amp: str = "none"
) -> list[dict[str, Any]]:
    """Parameters, GFLOPs (multiply-adds, as the papers count them) per view and per
    video, and the measured forward latency of one video's views on `device`. Every
    registered model family is profiled in tests/engine/test_profile.py."""
    rows = []
    for member in members:
        spec = member.spec
        view_shape = (spec.channels, spec.num_frames, spec.crop_size, spec.crop_size)
        # Counted on the evaluated model itself (one view's forward pass, a fraction of the
        # latency runs below), not on a meta-device copy: the representation-flow layer
        # reads its Sobel values and opens an autocast region, neither of which a meta
        # tensor allows.
        macs = count_macs(member.model, (1, *view_shape))
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
        latency = measure_latency(
            member.model, (spec.num_views, *view_shape), warmup=1, repeats=3, device=device,
            autocast_dtype=dtype,
        )  # fmt: skip
        rows.append(
            {
                "checkpoint": str(member.path),
                "model": member.recipe.model.name,
                "input": "x".join(str(d) for d in view_shape),
                "params": count_params(member.model),
                "views": spec.num_views,
                "gflops_per_view": macs / 1e9,
                "gflops_per_video": macs * spec.num_views / 1e9,
                "gflops": f"{_gflops(macs)} x {spec.num_views}",
                "latency_ms_per_video": 1000.0 * latency.median,
                "device": str(device),
            }
        )
    return rows
