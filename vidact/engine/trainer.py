"""The training loop shared by every model: `train(recipe, ...)`, read top to bottom.

Laid out like torchvision's references/video_classification/train.py: `train` builds a
`Run` (model, DDP/EMA wrappers, optimiser, schedule, loaders; `build_run`), resumes a
`RunState` (`resume_run`), then per epoch calls `train_one_epoch`, `validate` and
`end_epoch` (metrics.jsonl, `save_epoch_checkpoints`, the epoch line).

One process, or one per GPU/CPU slot under torchrun (DDP; gloo on CPU, NCCL on GPU).
Only rank 0 writes files and draws the progress display; metrics are summed across ranks.

Per step: forward under autocast (bf16/fp16 when asked), loss, backward through the
GradScaler (fp16 on CUDA), unscale, gradient-norm clip, optimiser step, per-iteration
lr schedule, EMA update; every `train.log_every` steps a progress line where no bar is
drawn (engine/step_log.py). Per epoch: validation every `train.val_every` epochs (top-1,
top-5, single centre clip), metrics.jsonl, checkpoints/last.pt and best.pt, and the
newest `output.keep_last` epoch checkpoints (engine/run_folder.py).

Safety (docs/training.md has the table, tests/engine/test_faults*.py the tests):
checkpoints are atomic and durable, best.pt before last.pt; SIGINT/SIGTERM, to the
process or its whole group, finish the step, save a checkpoint and stop with exit code 3
(engine/signals.py), and the resume is bit-identical; a NaN/inf loss, weight, buffer or
validation loss stops the run before it is saved (engine/health.py); a run folder is
held by a lock and never overwritten without `--overwrite` (engine/run_lock.py); a
resume with changed settings applies or refuses each (engine/resume_check.py); a video
that fails to decode is logged once, replaced, counted, and the run stops once more than
`train.max_bad_video_fraction` of an epoch's clips failed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader

from vidact import console
from vidact.atomic import atomic_write_text
from vidact.data.class_order import check_checkpoint_file
from vidact.data.dataset import ClipDataset, ClipSpec, EpochBatchSampler, build_loader
from vidact.data.manifest import load_manifest, read_label_map
from vidact.data.transforms import ClipTransform
from vidact.engine import distributed, tensorboard
from vidact.engine.checkpoint import (
    BEST,
    LAST,
    load_checkpoint,
    load_matching,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from vidact.engine.curves import update_curves
from vidact.engine.health import Diverged, check_finite
from vidact.engine.optim import build_optimizer, build_scheduler
from vidact.engine.profile import count_params
from vidact.engine.resume_check import (
    apply_hyperparameters,
    check_changes,
    fast_forward,
    hyperparameters,
    recipe_changes,
)
from vidact.engine.run_folder import (
    epoch_checkpoint,
    prune_epoch_checkpoints,
    read_metrics,
    resolve_resume,
    run_folder,
    write_metrics,
)
from vidact.engine.run_lock import check_new_run_folder, held_run_folder
from vidact.engine.run_settings import check_settings, convert_sync_bn, effective_batch_line
from vidact.engine.signals import PREEMPTED_EXIT_CODE, StopSignal, shield_workers, stop_workers
from vidact.engine.step_log import StepLog
from vidact.errors import VidactError
from vidact.models import build_model
from vidact.recipe import Recipe, TrainConfig, recipe_from_dict


class TrainingStopped(VidactError):
    """Raised after a signal made the run save a checkpoint and stop; `vidact train`
    exits with `exit_code` (engine/signals.py: not 2, the code of a user error)."""

    exit_code = PREEMPTED_EXIT_CODE


@dataclass
class TrainResult:
    run_dir: Path
    epochs_done: int
    best_top1: float | None
    last_metrics: dict[str, float]
    seconds: float
    bad_videos: int
    history: list[dict[str, Any]] = field(default_factory=list)
    model: nn.Module | None = None  # the trained model (unwrapped from DDP), on its device


# ----------------------------------------------------------------------------- building


def ensure_dataset(recipe: Recipe) -> Path:
    """The dataset root; generates the synthetic dataset there when the recipe says so."""
    root = Path(recipe.data.root)
    spec = recipe.data.synthetic
    if spec is not None and not (root / recipe.data.train_manifest).is_file():
        from vidact.data.sources.synthetic import SyntheticSpec, make_synthetic_dataset

        console.info(f"generating the synthetic dataset in {root}")
        make_synthetic_dataset(root, SyntheticSpec(**spec.model_dump()))
    return root


def build_model_for(recipe: Recipe, num_classes: int) -> nn.Module:
    """The recipe's model with `num_classes` outputs and the recipe's clip length."""
    kwargs = recipe.model.kwargs()
    kwargs.setdefault("num_frames", recipe.data.num_frames)
    return build_model(recipe.model.name, num_classes, **kwargs)


def build_datasets(recipe: Recipe, root: Path, num_classes: int) -> tuple[ClipDataset, ClipDataset]:
    data = recipe.data
    if data.modality != "rgb":
        from vidact.data.prepare.outputs import check_flow_bound

        check_flow_bound(root, data.flow_bound)  # flow.json, where `vidact prepare` wrote flow
    spec = ClipSpec.from_recipe(data)
    train_transform = ClipTransform.from_recipe(data, train=True)
    train_samples = load_manifest(root / data.train_manifest, num_classes=num_classes)
    val_samples = load_manifest(root / data.val_manifest, num_classes=num_classes)
    seed = recipe.train.seed
    train = ClipDataset(train_samples, root, spec, train_transform, seed)
    val = ClipDataset(
        val_samples, root, spec, dataclasses.replace(train_transform, train=False), seed
    )
    return train, val


def apply_freeze(model: nn.Module, mode: str, fresh: list[str] | None = None) -> None:
    """freeze: "backbone" trains only the parameters that started fresh (the new head)
    — or the final classifier when nothing is fresh; "bn" freezes BatchNorm statistics
    and affine parameters (BN layers stay in eval mode while training)."""
    if mode == "backbone":
        keep = set(fresh or [])
        if not keep:
            last_linear = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1:]
            keep = {f"{n}.weight" for n in last_linear} | {f"{n}.bias" for n in last_linear}
        for name, param in model.named_parameters():
            param.requires_grad_(name in keep)
    elif mode == "bn":
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                for param in module.parameters():
                    param.requires_grad_(False)


def _set_train_mode(model: nn.Module, freeze: str) -> None:
    model.train()
    if freeze == "bn":
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()


# ------------------------------------------------------------------------------ helpers


def _autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager[Any]:
    if amp == "none":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    if device.type == "cpu" and amp == "fp16":
        raise VidactError("train.amp: fp16 needs a CUDA device; use bf16 on the CPU")
    return torch.autocast(device_type=device.type, dtype=dtype)


def _topk_correct(logits: torch.Tensor, labels: torch.Tensor, k: int) -> int:
    k = min(k, logits.shape[1])
    top = logits.topk(k, dim=1).indices
    return int((top == labels[:, None]).any(dim=1).sum().item())


# ---------------------------------------------------------------------- the run's records


@dataclass
class RunState:
    """Where a run is: what a checkpoint stores besides the weights, and the counters."""

    epoch: int = 0  # epochs completed
    batch_in_epoch: int = 0  # batches of the current epoch done (> 0 after a stop)
    step: int = 0  # optimiser steps taken
    best_top1: float | None = None
    history: list[dict[str, Any]] = field(default_factory=list)  # metrics.jsonl
    last_metrics: dict[str, Any] = field(default_factory=dict)
    bad_videos: int = 0  # decode failures seen by this process since the run started
    bad_seen: set[str] = field(default_factory=set)  # each failure is logged once
    # The interrupted epoch's sums before the stop (loss x clips, correct, clips, decode
    # failures of every rank), restored on rank 0 so the epoch's metrics count every batch.
    epoch_sums: list[float] = field(default_factory=lambda: [0.0] * 4)


@dataclass
class Run:
    """What a run builds once: the model with its DDP and EMA wrappers, the optimiser,
    schedule, scaler, loaders, and where it writes."""

    recipe: Recipe
    info: distributed.DistInfo
    device: torch.device
    run_dir: Path
    labels: list[str]
    model: nn.Module  # the plain model (checkpoints hold its state_dict)
    net: nn.Module  # what the step runs: the model, or DDP around it
    ema: AveragedModel | None
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    train_loader: DataLoader[dict[str, Any]]
    val_loader: DataLoader[dict[str, Any]]
    writer: tensorboard.TensorBoardLog | None = None  # output.tensorboard, on rank 0

    @property
    def batches(self) -> EpochBatchSampler:
        return self.train_loader.batch_sampler  # type: ignore[return-value]

    @property
    def eval_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.model

    @property
    def last_path(self) -> Path:
        return self.run_dir / "checkpoints" / LAST


# --------------------------------------------------------------------------------- train


def train(
    recipe: Recipe,
    *,
    resume: str | None = None,
    output: str | Path | None = None,
    init_from: str | Path | None = None,
    overwrite: bool = False,
) -> TrainResult:
    """Train `recipe`. `resume`: "auto" or a checkpoint/run folder; `init_from`: weights
    to fine-tune from (a vidact checkpoint or a plain state_dict; the classifier is
    replaced when the number of classes differs); `overwrite`: replace an earlier run in
    `output` (a new run refuses a non-empty folder otherwise)."""
    start_time = time.perf_counter()
    info = distributed.setup()
    if not info.is_main:  # one voice: rank 0 logs, draws progress and writes files
        console.configure(quiet=True)
    check_settings(recipe, info, distributed.device_for(info))  # before any folder exists
    output_path = Path(output) if output is not None else None
    resume_path = resolve_resume(recipe, resume, output_path)
    if resume == "auto" and resume_path is None:
        console.info("--resume auto: no earlier run of this recipe, starting fresh")
    _seed(recipe.train)
    check_checkpoint_file(  # the checkpoint's classes must be the dataset's, in its order
        resume_path or init_from, Path(recipe.data.root) / recipe.data.label_map,
        "resume" if resume_path is not None else "finetune",
    )  # fmt: skip
    run_dir = run_folder(recipe, output_path, resume_path)
    if info.is_main and resume is None:  # --resume auto in a folder without last.pt: allowed
        check_new_run_folder(run_dir, overwrite)
    run = build_run(recipe, info, run_dir, init_from if resume_path is None else None)
    try:
        with held_run_folder(run_dir, info.is_main, fresh=resume_path is None):
            if info.is_main:
                console.add_log_file(run_dir / "log.txt")
            state = resume_run(run, resume_path) if resume_path is not None else RunState()
            if info.is_main:
                _open_run_folder(run)
            with tensorboard.closing(run.writer):
                train_epochs(run, state)
    finally:  # no worker outlives the run, whether it finished, stopped or failed
        stop_workers(run.train_loader)
        stop_workers(run.val_loader)
    distributed.barrier()
    return TrainResult(
        run_dir=run.run_dir,
        epochs_done=state.epoch,
        best_top1=state.best_top1,
        last_metrics=state.last_metrics,
        seconds=time.perf_counter() - start_time,
        bad_videos=state.bad_videos,
        history=state.history,
        model=run.model,
    )


def train_epochs(run: Run, state: RunState) -> None:
    """The epochs from `state` to `train.epochs`: train, validate, end the epoch."""
    cfg = run.recipe.train
    with StopSignal() as stop:
        while state.epoch < cfg.epochs:
            epoch_start = time.perf_counter()
            sums = train_one_epoch(run, state, stop)
            metrics = _epoch_metrics(run, state, sums, time.perf_counter() - epoch_start)
            if state.epoch % cfg.val_every == 0 or state.epoch == cfg.epochs:
                metrics.update(
                    validate(run.eval_model, run.val_loader, run.device, cfg.amp, state.bad_seen)
                )
            end_epoch(run, state, metrics)
            asked = torch.tensor([float(stop.requested)], device=run.device)
            if state.epoch < cfg.epochs and distributed.all_reduce_sum(asked).item() > 0:
                raise TrainingStopped(
                    f"stopped after epoch {state.epoch}; checkpoint saved in {run.last_path}; "
                    "resume with --resume auto"
                )


def _seed(cfg: TrainConfig) -> None:
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def build_run(
    recipe: Recipe, info: distributed.DistInfo, run_dir: Path, init_from: str | Path | None
) -> Run:
    """The dataset (generated when the recipe says so), model, optimiser and loaders."""
    cfg, data = recipe.train, recipe.data
    device = distributed.device_for(info)
    root = ensure_dataset(recipe) if info.is_main else Path(data.root)
    distributed.barrier()
    labels = read_label_map(root / data.label_map)
    num_classes = recipe.model.num_classes or len(labels)
    if num_classes != len(labels):
        raise VidactError(
            f"model.num_classes is {num_classes} but {root / data.label_map} has "
            f"{len(labels)} classes; remove model.num_classes or fix the label map"
        )
    train_set, val_set = build_datasets(recipe, root, num_classes)
    model = convert_sync_bn(_build_model(recipe, num_classes, device, init_from), recipe, info)
    net: nn.Module = model
    if info.enabled:
        net = DistributedDataParallel(
            model, device_ids=[info.local_rank] if device.type == "cuda" else None
        )
    loaders = [
        build_loader(
            dataset, cfg.batch_size, shuffle=shuffle, seed=cfg.seed, workers=data.num_workers,
            pin_memory=data.pin_memory, rank=info.rank, world=info.world,
        )
        for dataset, shuffle in ((train_set, True), (val_set, False))
    ]  # fmt: skip
    for loader in loaders:
        shield_workers(loader)  # a SIGTERM to the whole group is the main process's to handle
    batches: EpochBatchSampler = loaders[0].batch_sampler  # type: ignore[assignment]
    optimizer = build_optimizer(model, recipe.optim)
    steps = optimizer_steps(batches, cfg)
    scheduler = build_scheduler(optimizer, recipe.schedule, cfg.epochs, steps)
    scaler = torch.amp.GradScaler("cuda", enabled=cfg.amp == "fp16" and device.type == "cuda")
    ema = None
    if cfg.ema:
        ema = AveragedModel(
            model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True
        )
    return Run(
        recipe, info, device, run_dir, labels, model, net, ema, optimizer, scheduler, scaler,
        loaders[0], loaders[1],
    )  # fmt: skip


def _build_model(
    recipe: Recipe, num_classes: int, device: torch.device, init_from: str | Path | None
) -> nn.Module:
    """The recipe's model, fine-tuned from `init_from`, frozen as asked, on `device`."""
    model = build_model_for(recipe, num_classes)
    fresh: list[str] = []
    if init_from is not None:
        source = load_checkpoint(init_from)
        _, fresh = load_matching(model, source["model"])
        console.info(f"fine-tuning from {init_from}: {len(fresh)} tensors start fresh")
    apply_freeze(model, recipe.train.freeze, fresh)
    model.to(device)
    if recipe.train.channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def optimizer_steps(batches: EpochBatchSampler, cfg: TrainConfig) -> int:
    """Optimiser steps per epoch: one per `train.accumulate_steps` batches (and one for
    the rest at the epoch's end)."""
    return math.ceil(batches.batches_per_epoch / cfg.accumulate_steps)


def _open_run_folder(run: Run) -> None:
    """recipe.yaml (the recipe in force, after a resume's changes) and tensorboard in the
    run folder, and the run's first lines."""
    run_dir = run.run_dir
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "recipe.yaml", run.recipe.to_yaml())
    run.writer = tensorboard.open_tensorboard(run_dir, run.recipe)
    console.info(
        f"run folder {run_dir}; {_clips(run.train_loader)} train / "
        f"{_clips(run.val_loader)} val clips, "
        f"{len(run.labels)} classes, {count_params(run.model) / 1e6:.2f}M parameters, "
        f"{run.info.world} process(es) on {run.device}"
    )
    console.info(effective_batch_line(run.recipe, run.info.world))


def _clips(loader: DataLoader[dict[str, Any]]) -> int:
    return len(loader.dataset)  # type: ignore[arg-type]


# -------------------------------------------------------------------- resume, checkpoints


def resume_run(run: Run, path: Path) -> RunState:
    """Load the weights, optimiser, schedule, scaler, EMA and RNG states of `path` (each
    rank its own RNG streams); the run state to continue from (its metrics.jsonl up to
    the checkpoint's epoch). Changed settings are applied or refused (resume_check)."""
    saved = load_checkpoint(path)
    reschedule = check_changes(recipe_changes(saved["recipe"], run.recipe.to_dict()), path)
    if recipe_from_dict(saved["recipe"]).model != run.recipe.model:
        raise VidactError(f"{path}: its model section differs from this recipe's; cannot resume")
    run.model.load_state_dict(saved["model"])
    if run.ema is not None and saved.get("ema") is not None:
        run.ema.load_state_dict(saved["ema"])
    fresh = hyperparameters(run.optimizer)
    run.optimizer.load_state_dict(saved["optimizer"])
    if reschedule:  # the new recipe's rates, on the saved momentum; its schedule at the step
        apply_hyperparameters(run.optimizer, fresh, path)
        fast_forward(run.scheduler, saved["step"])
        console.info(f"resume: lr now {run.optimizer.param_groups[0]['lr']:.3g}")
    else:
        run.scheduler.load_state_dict(saved["scheduler"])
    if saved.get("scaler"):
        run.scaler.load_state_dict(saved["scaler"])
    ranks = saved.get("rng_ranks") or []
    set_rng_state(ranks[run.info.rank] if len(ranks) == run.info.world else saved["rng"])
    state = RunState(
        epoch=saved["epoch"],
        batch_in_epoch=saved.get("batch_in_epoch", 0),
        step=saved["step"],
        best_top1=saved.get("metrics", {}).get("best_top1"),
        history=read_metrics(run.run_dir, saved["epoch"]),
        bad_videos=saved.get("bad_videos", 0),
    )
    if saved.get("epoch_sums") is not None:  # rank 0 carries the sums, every rank the
        sums = [float(x) for x in saved["epoch_sums"]]  # failures (already a total)
        state.epoch_sums = sums if run.info.is_main else [0.0, 0.0, 0.0, sums[3]]
    console.info(f"resuming {path} at epoch {state.epoch + 1}, batch {state.batch_in_epoch}")
    return state


def checkpoint_state(
    run: Run, state: RunState, metrics: dict[str, Any], rng_ranks: list[Any] | None = None
) -> dict[str, Any]:
    """Everything `resume_run` needs (the format is described in engine/checkpoint.py)."""
    return {
        "model": run.model.state_dict(),
        "ema": run.ema.state_dict() if run.ema is not None else None,
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "scaler": run.scaler.state_dict() if run.scaler.is_enabled() else None,
        "epoch": state.epoch,
        "batch_in_epoch": state.batch_in_epoch,
        "step": state.step,
        "rng": rng_state(),
        "rng_ranks": rng_ranks,
        "epoch_sums": state.epoch_sums if state.batch_in_epoch > 0 else None,
        "bad_videos": state.bad_videos,
        "recipe": run.recipe.to_dict(),
        "labels": run.labels,
        "metrics": {**metrics, "best_top1": state.best_top1},
    }


def save_epoch_checkpoints(
    run: Run, state: RunState, improved: bool, rng_ranks: list[Any] | None = None
) -> None:
    """best.pt when `improved`, then last.pt, then the epoch's own checkpoint when
    `output.keep_last` > 0 (the older ones beyond that many are deleted).

    best.pt first: last.pt records the best top-1 only once best.pt is on disk, so a kill
    between the writes leaves a last.pt whose best is in best.pt (and a resume from it
    repeats the epoch and writes best.pt again)."""
    saved = checkpoint_state(run, state, state.last_metrics, rng_ranks)
    if improved:
        save_checkpoint(run.run_dir / "checkpoints" / BEST, saved)
    save_checkpoint(run.last_path, saved)
    keep = run.recipe.output.keep_last
    if keep > 0:
        save_checkpoint(epoch_checkpoint(run.run_dir, state.epoch), saved)
    for path in prune_epoch_checkpoints(run.run_dir, keep):
        console.debug(f"output.keep_last = {keep}: deleted {path}")


# ---------------------------------------------------------------------------- one epoch


def train_one_epoch(run: Run, state: RunState, stop: StopSignal) -> torch.Tensor:
    """Train on the rest of epoch `state.epoch`; the sums (loss x clips, top-1 correct,
    clips) over every rank. A stop signal takes effect between optimiser steps (the
    step in progress is finished, so a resume repeats nothing); a non-finite loss stops
    the run before its step, too many clips that failed to decode at once."""
    cfg, info = run.recipe.train, run.info
    run.batches.set_epoch(state.epoch, state.batch_in_epoch)
    _set_train_mode(run.net, cfg.freeze)
    steps = run.batches.batches_per_epoch
    sums = torch.tensor(state.epoch_sums, dtype=torch.float64)  # loss, correct, count, failed
    state.epoch_sums = [0.0] * 4
    stopping = False
    log = StepLog(cfg.log_every, state.epoch, cfg.epochs, steps, state.batch_in_epoch)
    with console.progress_task(f"epoch {state.epoch + 1}/{cfg.epochs}", total=steps) as advance:
        advance(state.batch_in_epoch)
        for batch in run.train_loader:
            failures = _failures(batch, state)
            boundary = (state.batch_in_epoch + 1) % cfg.accumulate_steps == 0 or (
                state.batch_in_epoch + 1 == steps
            )
            with _no_sync(run, boundary):
                loss, logits, targets = _forward(run, batch)
            loss_value = float(loss.detach())
            # One reduction per step tells every rank about a bad loss, a stop, failures.
            flags = distributed.all_reduce_sum(
                torch.tensor(
                    [float(not math.isfinite(loss_value)), float(stop.requested), failures],
                    device=run.device,
                )
            ).cpu()
            _check_loss(run, state, loss_value, bool(flags[0] > 0))
            stopping = stopping or bool(flags[1] > 0)
            sums[3] += float(flags[2])
            _check_bad_videos(run, state, float(sums[3]))
            with _no_sync(run, boundary):
                run.scaler.scale(loss / cfg.accumulate_steps).backward()
            if boundary:
                _step(run)
                state.step += 1
            state.batch_in_epoch += 1
            count = len(targets)
            correct = _topk_correct(logits.detach(), targets, 1)
            sums[:3] += torch.tensor([loss_value * count, correct, count], dtype=torch.float64)
            if stopping and boundary and state.batch_in_epoch < steps:
                _stop(run, state, sums)
            mean_loss = float(sums[0]) / max(float(sums[2]), 1)
            lr = run.optimizer.param_groups[0]["lr"]
            clips = float(sums[2]) * info.world
            rate = clips / max(time.perf_counter() - log.started, 1e-9)
            advance(status=f"loss {mean_loss:.3f}  lr {lr:.2e}  {rate:.1f} clips/s")
            if boundary:
                log.maybe_log(state.step, state.batch_in_epoch, mean_loss, lr, clips)
                if run.writer is not None:
                    run.writer.step(state.step, loss_value, 100.0 * correct / count, lr)
    distributed.sync_buffers(run.model)
    if stopping:  # the signal came during the epoch's last step: stop after the epoch
        stop.requested = True
    return distributed.all_reduce_sum(sums[:3].to(run.device)).cpu()


def _no_sync(run: Run, boundary: bool) -> contextlib.AbstractContextManager[Any]:
    """DDP reduces gradients only on the backward before an optimiser step."""
    if boundary or not isinstance(run.net, DistributedDataParallel):
        return contextlib.nullcontext()
    return run.net.no_sync()


def _forward(run: Run, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, logits, targets) of one batch, under autocast when asked."""
    cfg = run.recipe.train
    clips = batch["clip"].to(run.device, non_blocking=True)
    targets = batch["label"].to(run.device, non_blocking=True)
    if cfg.channels_last and clips.ndim == 5:
        clips = clips.contiguous(memory_format=torch.channels_last_3d)
    with _autocast(run.device, cfg.amp):
        logits = run.net(clips)
        loss = F.cross_entropy(logits.float(), targets, label_smoothing=cfg.label_smoothing)
    return loss, logits, targets


def _step(run: Run) -> None:
    """Unscale + clip the accumulated gradient's norm, step, schedule, EMA, zero it."""
    clip_norm = run.recipe.optim.clip_grad_norm
    if clip_norm is not None:
        run.scaler.unscale_(run.optimizer)
        nn.utils.clip_grad_norm_(run.model.parameters(), clip_norm)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.scheduler.step()
    if run.ema is not None:
        run.ema.update_parameters(run.model)
    run.optimizer.zero_grad(set_to_none=True)


def _failures(batch: dict[str, Any], state: RunState) -> int:
    """Count (and log once each) the videos of a training batch that failed to decode."""
    count = _log_failures(batch, state.bad_seen, "training")
    state.bad_videos += count
    return count


def _log_failures(batch: dict[str, Any], seen: set[str], split: str) -> int:
    """The number of videos of `batch` that failed to decode; each logged once."""
    lines = [line for line in "\n".join(batch["failed"]).splitlines() if line]
    for line in lines:
        if line not in seen:
            seen.add(line)
            console.warn(f"{split}: skipped a video that failed to decode: {line}")
    return len(lines)


def _check_loss(run: Run, state: RunState, loss: float, any_rank_bad: bool) -> None:
    if any_rank_bad:
        raise Diverged(
            f"the loss became {loss} at epoch {state.epoch + 1}, step {state.step + 1}; "
            f"{_advice(run)}"
        )


def _advice(run: Run) -> str:
    """Where the last good checkpoint is and how to go on from it."""
    lower = f"--set optim.lr={run.recipe.optim.lr / 10:g}"
    if not run.last_path.is_file():
        return f"no checkpoint was saved yet; start again with a lower rate ({lower})"
    return (
        f"the last good checkpoint is {run.last_path}; resume from it with a lower rate "
        f"(--resume auto {lower}) or set optim.clip_grad_norm"
    )


def _models(run: Run) -> list[tuple[str, nn.Module]]:
    """What a checkpoint saves: the model and its EMA copy."""
    return [("model", run.model)] + ([("ema", run.ema)] if run.ema is not None else [])


def _stop(run: Run, state: RunState, sums: torch.Tensor) -> None:
    """A stop signal, between steps: save last.pt mid-epoch (resumable at the next
    batch, with every rank's RNG streams and the epoch's sums so far) and stop."""
    totals = distributed.all_reduce_sum(sums[:3].to(run.device)).cpu()
    state.epoch_sums = [*totals.tolist(), float(sums[3])]  # failures: already summed
    rng_ranks = distributed.gather_objects(rng_state())
    where = f"epoch {state.epoch + 1}, batch {state.batch_in_epoch}"
    check_finite(_models(run), {}, where, _advice(run))
    if run.info.is_main:
        state_dict = checkpoint_state(run, state, state.last_metrics, rng_ranks)
        save_checkpoint(run.last_path, state_dict)
    distributed.barrier()
    raise TrainingStopped(
        f"stopped at {where}; checkpoint saved in {run.last_path}; resume with --resume auto"
    )


def _check_bad_videos(run: Run, state: RunState, failed: float) -> None:
    """train.max_bad_video_fraction: stop once more than that share of the epoch's clips
    failed to decode (1 never stops). Each failure was replaced by another clip."""
    fraction = run.recipe.train.max_bad_video_fraction
    clips = _clips(run.train_loader)
    if fraction < 1 and failed > fraction * clips:
        raise VidactError(
            f"{failed:.0f} decode failures in epoch {state.epoch + 1}, more than "
            f"train.max_bad_video_fraction = {fraction:g} of its {clips} clips (the warnings "
            "above name the videos); fix or remove them, or raise the fraction; the last good "
            f"checkpoint is {run.last_path}"
        )


# ---------------------------------------------------------------------- end of an epoch


def _epoch_metrics(run: Run, state: RunState, sums: torch.Tensor, seconds: float) -> dict[str, Any]:
    """The epoch's training metrics (the counters move on to the next epoch)."""
    state.epoch += 1
    state.batch_in_epoch = 0
    count = max(float(sums[2]), 1.0)
    return {
        "epoch": state.epoch,
        "step": state.step,
        "train_loss": float(sums[0]) / count,
        "train_top1": 100.0 * float(sums[1]) / count,
        "train_clips": int(sums[2]),
        "lr": run.optimizer.param_groups[0]["lr"],
        "epoch_seconds": seconds,
        "bad_videos": state.bad_videos,
    }


def end_epoch(run: Run, state: RunState, metrics: dict[str, Any]) -> None:
    """Best top-1, metrics.jsonl, checkpoints, tensorboard and the epoch's log line;
    nothing is saved when a weight, a buffer or the validation loss is not finite."""
    check_finite(_models(run), metrics, f"epoch {state.epoch}", _advice(run))
    rng_ranks = distributed.gather_objects(rng_state())
    state.last_metrics = metrics
    improved = "val_top1" in metrics and (
        state.best_top1 is None or metrics["val_top1"] > state.best_top1
    )
    if improved:
        state.best_top1 = metrics["val_top1"]
    state.history.append(metrics)
    if not run.info.is_main:
        return
    write_metrics(run.run_dir, state.history)
    update_curves(run.run_dir, state.history, run.recipe.name)
    save_epoch_checkpoints(run, state, improved, rng_ranks)
    if run.writer is not None:
        run.writer.epoch(metrics)
    console.info(_epoch_line(metrics, run.recipe.train.epochs, state.bad_videos))


# ------------------------------------------------------------------------------ validate


@torch.no_grad()
def validate(
    model: nn.Module,
    loader: Any,
    device: torch.device,
    amp: str = "none",
    seen: set[str] | None = None,
) -> dict[str, float]:
    """Top-1/top-5 (single centre clip), mean loss and the clips whose video failed to
    decode (each replaced by another clip, logged once per video in `seen`), summed over
    ranks."""
    was_training = model.training
    model.eval()
    totals = torch.zeros(5, dtype=torch.float64)  # loss sum, top1, top5, count, failed
    seen = set() if seen is None else seen
    for batch in loader:
        clips = batch["clip"].to(device, non_blocking=True)
        labels = batch["label"].to(device, non_blocking=True)
        with _autocast(device, amp):
            logits = model(clips).float()
        totals[0] += float(F.cross_entropy(logits, labels, reduction="sum"))
        totals[1] += _topk_correct(logits, labels, 1)
        totals[2] += _topk_correct(logits, labels, 5)
        totals[3] += len(labels)
        totals[4] += _log_failures(batch, seen, "validation")
    totals = distributed.all_reduce_sum(totals.to(device)).cpu()
    model.train(was_training)
    count = max(float(totals[3]), 1.0)
    return {
        "val_loss": float(totals[0]) / count,
        "val_top1": 100.0 * float(totals[1]) / count,
        "val_top5": 100.0 * float(totals[2]) / count,
        "val_count": float(totals[3]),
        "val_bad_videos": int(totals[4]),
    }


def _epoch_line(metrics: dict[str, Any], epochs: int, bad: int) -> str:
    text = (
        f"epoch {metrics['epoch']}/{epochs}: train loss {metrics['train_loss']:.3f}, "
        f"train top-1 {metrics['train_top1']:.1f}%"
    )
    if "val_top1" in metrics:
        text += f", val top-1 {metrics['val_top1']:.1f}%, top-5 {metrics['val_top5']:.1f}%"
    text += f" ({metrics['epoch_seconds']:.1f} s)"
    if bad:
        text += f", {bad} bad videos skipped so far"
    if metrics.get("val_bad_videos"):
        text += f", {metrics['val_bad_videos']} validation clips replaced (videos failed to decode)"
    return text
