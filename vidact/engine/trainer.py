"""The training loop shared by every model: `train(recipe, ...)`, read top to bottom.

One process, or one per GPU/CPU slot under torchrun (DDP; gloo on CPU, NCCL on GPU).
Only rank 0 writes files and draws the progress display; metrics are summed across ranks.

Per step: forward under autocast (bf16/fp16 when asked), loss, backward through the
GradScaler (fp16 on CUDA), unscale, gradient-norm clip, optimiser step, per-iteration
lr schedule, EMA update. Per epoch: validation every `train.val_every` epochs (top-1,
top-5, single centre clip), metrics.jsonl, checkpoints/last.pt and best.pt.

Safety: checkpoints are atomic; SIGINT/SIGTERM save a checkpoint at the next step and
stop cleanly (resume with `--resume auto`); a NaN/inf loss stops the run and keeps the
last good checkpoint; a video that fails to decode is logged once, replaced, counted.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import json
import math
import signal
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from vidact import console
from vidact.atomic import atomic_write_text
from vidact.data.dataset import ClipDataset, ClipSpec, EpochBatchSampler, build_loader
from vidact.data.manifest import load_manifest, read_label_map
from vidact.data.transforms import ClipTransform
from vidact.engine import distributed
from vidact.engine.checkpoint import (
    BEST,
    LAST,
    find_resume,
    load_checkpoint,
    load_matching,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from vidact.engine.optim import build_optimizer, build_scheduler
from vidact.errors import VidactError
from vidact.models import _REGISTRY, build_model
from vidact.recipe import Recipe, recipe_from_dict


class TrainingStopped(VidactError):
    """Raised after a signal made the run save a checkpoint and stop."""


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
    """The recipe's model with `num_classes` outputs; `num_frames` is passed if accepted."""
    kwargs = recipe.model.kwargs()
    params = inspect.signature(_REGISTRY[recipe.model.name]).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    if "num_frames" in params or takes_any:
        kwargs.setdefault("num_frames", recipe.data.num_frames)
    for key in ("dropout", "weights"):
        if key not in params and not takes_any:
            kwargs.pop(key)
    return build_model(recipe.model.name, num_classes, **kwargs)


def build_datasets(recipe: Recipe, root: Path, num_classes: int) -> tuple[ClipDataset, ClipDataset]:
    data = recipe.data
    if data.modality != "rgb":
        from vidact.data.prepare.outputs import check_flow_bound

        check_flow_bound(root, data.flow_bound)  # flow.json, where `vidact prepare` wrote flow
    spec = ClipSpec(
        data.num_frames, data.sampler, data.frame_stride, data.modality, data.video_backend
    )
    train_transform = ClipTransform(
        train=True,
        input_size=data.input_size,
        short_side=data.short_side,
        crop=data.train_crop,
        scales=tuple(data.scales),
        hflip=data.hflip,
        mean=tuple(data.mean),
        std=tuple(data.std),
        modality="flow" if data.modality == "flow" else "rgb",
    )
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


class _StopSignal:
    """Turns SIGINT/SIGTERM into a flag the loop checks between steps."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopSignal:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread: no handlers
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.requested = True
        console.warn("stop requested: saving a checkpoint after this step")

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


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


@torch.no_grad()
def validate(
    model: nn.Module, loader: Any, device: torch.device, amp: str = "none"
) -> dict[str, float]:
    """Top-1/top-5 (single centre clip) and mean loss, summed over ranks."""
    was_training = model.training
    model.eval()
    totals = torch.zeros(4, dtype=torch.float64)  # loss sum, top1, top5, count
    for batch in loader:
        clips = batch["clip"].to(device, non_blocking=True)
        labels = batch["label"].to(device, non_blocking=True)
        with _autocast(device, amp):
            logits = model(clips).float()
        totals[0] += float(F.cross_entropy(logits, labels, reduction="sum"))
        totals[1] += _topk_correct(logits, labels, 1)
        totals[2] += _topk_correct(logits, labels, 5)
        totals[3] += len(labels)
    totals = distributed.all_reduce_sum(totals.to(device)).cpu()
    model.train(was_training)
    count = max(float(totals[3]), 1.0)
    return {
        "val_loss": float(totals[0]) / count,
        "val_top1": 100.0 * float(totals[1]) / count,
        "val_top5": 100.0 * float(totals[2]) / count,
        "val_count": float(totals[3]),
    }


def _run_dir(recipe: Recipe, output: Path | None, resume: Path | None) -> Path:
    if resume is not None:
        return resume.parent.parent
    if output is not None:
        return output
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path(recipe.output.dir) / recipe.name / stamp


def _resolve_resume(recipe: Recipe, resume: str | None, output: Path | None) -> Path | None:
    if resume is None:
        return None
    if resume != "auto":
        path = Path(resume)
        if path.is_dir():
            path = path / "checkpoints" / LAST
        if not path.is_file():
            raise VidactError(f"--resume {resume}: no checkpoint there")
        return path
    if output is not None:
        found = output / "checkpoints" / LAST
        return found if found.is_file() else None
    return find_resume(Path(recipe.output.dir) / recipe.name)


def _write_metrics(run_dir: Path, history: list[dict[str, Any]]) -> None:
    atomic_write_text(run_dir / "metrics.jsonl", "".join(json.dumps(m) + "\n" for m in history))


def _read_metrics(run_dir: Path, up_to_epoch: int) -> list[dict[str, Any]]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [m for m in lines if m.get("epoch", 0) <= up_to_epoch]


def _tensorboard(run_dir: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional: pip install 'vidact[tensorboard]'
        return None
    return SummaryWriter(str(run_dir / "tensorboard"))


# --------------------------------------------------------------------------------- train


def train(
    recipe: Recipe,
    *,
    resume: str | None = None,
    output: str | Path | None = None,
    init_from: str | Path | None = None,
) -> TrainResult:
    """Train `recipe`. `resume`: "auto" or a checkpoint/run folder; `init_from`: weights
    to fine-tune from (a vidact checkpoint or a plain state_dict; the classifier is
    replaced when the number of classes differs)."""
    start_time = time.perf_counter()
    info = distributed.setup()
    device = distributed.device_for(info)
    if not info.is_main:  # one voice: rank 0 logs, draws progress and writes files
        console.configure(quiet=True)
    cfg = recipe.train
    output_path = Path(output) if output is not None else None
    resume_path = _resolve_resume(recipe, resume, output_path)
    if resume == "auto" and resume_path is None:
        console.info("--resume auto: no earlier run of this recipe, starting fresh")
    run_dir = _run_dir(recipe, output_path, resume_path)

    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False

    root = ensure_dataset(recipe) if info.is_main else Path(recipe.data.root)
    distributed.barrier()
    labels = read_label_map(root / recipe.data.label_map)
    num_classes = recipe.model.num_classes or len(labels)
    if num_classes != len(labels):
        raise VidactError(
            f"model.num_classes is {num_classes} but {root / recipe.data.label_map} has "
            f"{len(labels)} classes; remove model.num_classes or fix the label map"
        )
    train_set, val_set = build_datasets(recipe, root, num_classes)

    model = build_model_for(recipe, num_classes)
    fresh: list[str] = []
    if init_from is not None and resume_path is None:
        source = load_checkpoint(init_from)
        _, fresh = load_matching(model, source["model"])
        console.info(f"fine-tuning from {init_from}: {len(fresh)} tensors start fresh")
    apply_freeze(model, cfg.freeze, fresh)
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    net: nn.Module = model
    if info.enabled:
        net = DistributedDataParallel(
            model, device_ids=[info.local_rank] if device.type == "cuda" else None
        )

    train_loader = build_loader(
        train_set, cfg.batch_size, shuffle=True, seed=cfg.seed, workers=recipe.data.num_workers,
        pin_memory=recipe.data.pin_memory, rank=info.rank, world=info.world,
    )  # fmt: skip
    val_loader = build_loader(
        val_set, cfg.batch_size, shuffle=False, seed=cfg.seed, workers=recipe.data.num_workers,
        pin_memory=recipe.data.pin_memory, rank=info.rank, world=info.world,
    )  # fmt: skip
    batches: EpochBatchSampler = train_loader.batch_sampler  # type: ignore[assignment]
    steps_per_epoch = batches.batches_per_epoch

    optimizer = build_optimizer(model, recipe.optim)
    scheduler = build_scheduler(optimizer, recipe.schedule, cfg.epochs, steps_per_epoch)
    scaler = torch.amp.GradScaler("cuda", enabled=cfg.amp == "fp16" and device.type == "cuda")
    ema = (
        AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True)
        if cfg.ema
        else None
    )

    epoch, batch_in_epoch, step = 0, 0, 0
    best_top1: float | None = None
    history: list[dict[str, Any]] = []
    if resume_path is not None:
        state = load_checkpoint(resume_path)
        model.load_state_dict(state["model"])
        if ema is not None and state.get("ema") is not None:
            ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        epoch, batch_in_epoch, step = state["epoch"], state.get("batch_in_epoch", 0), state["step"]
        best_top1 = state.get("metrics", {}).get("best_top1")
        set_rng_state(state["rng"])
        history = _read_metrics(run_dir, epoch)
        console.info(f"resuming {resume_path} at epoch {epoch + 1}, batch {batch_in_epoch}")
        if recipe_from_dict(state["recipe"]).model != recipe.model:
            raise VidactError(
                f"{resume_path}: its model section differs from this recipe's; cannot resume"
            )

    writer = None
    if info.is_main:
        (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "recipe.yaml", recipe.to_yaml())
        console.add_log_file(run_dir / "log.txt")
        writer = _tensorboard(run_dir)
        console.info(
            f"run folder {run_dir}; {len(train_set)} train / {len(val_set)} val clips, "
            f"{num_classes} classes, {_millions(model)}M parameters, "
            f"{info.world} process(es) on {device}"
        )

    def checkpoint_state(metrics: dict[str, Any]) -> dict[str, Any]:
        return {
            "model": model.state_dict(),
            "ema": ema.state_dict() if ema is not None else None,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler.is_enabled() else None,
            "epoch": epoch,
            "batch_in_epoch": batch_in_epoch,
            "step": step,
            "rng": rng_state(),
            "recipe": recipe.to_dict(),
            "labels": labels,
            "metrics": {**metrics, "best_top1": best_top1},
        }

    bad_seen: set[str] = set()
    bad_total = 0
    last_metrics: dict[str, float] = {}
    eval_model: nn.Module = ema.module if ema is not None else model
    with _StopSignal() as stop:
        while epoch < cfg.epochs:
            batches.set_epoch(epoch, batch_in_epoch)
            _set_train_mode(net, cfg.freeze)
            sums = torch.zeros(3, dtype=torch.float64)  # loss sum, correct, count
            epoch_start = time.perf_counter()
            with console.progress_task(
                f"epoch {epoch + 1}/{cfg.epochs}", total=steps_per_epoch
            ) as advance:
                advance(batch_in_epoch)
                for batch in train_loader:
                    clips = batch["clip"].to(device, non_blocking=True)
                    targets = batch["label"].to(device, non_blocking=True)
                    if cfg.channels_last and clips.ndim == 5:
                        clips = clips.contiguous(memory_format=torch.channels_last_3d)
                    with _autocast(device, cfg.amp):
                        logits = net(clips)
                        loss = F.cross_entropy(
                            logits.float(), targets, label_smoothing=cfg.label_smoothing
                        )
                    loss_value = float(loss.detach())
                    # One reduction per step tells every rank about a bad loss or a stop.
                    flags = distributed.all_reduce_sum(
                        torch.tensor(
                            [float(not math.isfinite(loss_value)), float(stop.requested)],
                            device=device,
                        )
                    )
                    if flags[0] > 0:
                        raise VidactError(
                            f"the loss became {loss_value} at epoch {epoch + 1}, step {step + 1}; "
                            f"the last good checkpoint is {run_dir / 'checkpoints' / LAST} "
                            "(try a lower optim.lr or set optim.clip_grad_norm)"
                        )
                    if flags[1] > 0:
                        if info.is_main:
                            save_checkpoint(
                                run_dir / "checkpoints" / LAST, checkpoint_state(last_metrics)
                            )
                        raise TrainingStopped(
                            f"stopped at epoch {epoch + 1}, batch {batch_in_epoch}; checkpoint "
                            f"saved in {run_dir / 'checkpoints' / LAST}; resume with --resume auto"
                        )
                    optimizer.zero_grad(set_to_none=True)
                    scaler.scale(loss).backward()
                    if recipe.optim.clip_grad_norm is not None:
                        scaler.unscale_(optimizer)
                        nn.utils.clip_grad_norm_(model.parameters(), recipe.optim.clip_grad_norm)
                    scaler.step(optimizer)
                    scaler.update()
                    scheduler.step()
                    if ema is not None:
                        ema.update_parameters(model)
                    step += 1
                    batch_in_epoch += 1
                    sums += torch.tensor(
                        [
                            loss_value * len(targets),
                            _topk_correct(logits.detach(), targets, 1),
                            len(targets),
                        ],
                        dtype=torch.float64,
                    )
                    for line in filter(None, "\n".join(batch["failed"]).splitlines()):
                        bad_total += 1
                        if line not in bad_seen:
                            bad_seen.add(line)
                            console.warn(f"skipped a video that failed to decode: {line}")
                    rate = float(sums[2]) / max(time.perf_counter() - epoch_start, 1e-9)
                    advance(
                        status=f"loss {float(sums[0]) / max(float(sums[2]), 1):.3f}  "
                        f"lr {optimizer.param_groups[0]['lr']:.2e}  {rate * info.world:.1f} clips/s"
                    )
            sums = distributed.all_reduce_sum(sums.to(device)).cpu()
            distributed.sync_buffers(model)
            epoch += 1
            batch_in_epoch = 0
            metrics: dict[str, Any] = {
                "epoch": epoch,
                "step": step,
                "train_loss": float(sums[0]) / max(float(sums[2]), 1.0),
                "train_top1": 100.0 * float(sums[1]) / max(float(sums[2]), 1.0),
                "train_clips": int(sums[2]),
                "lr": optimizer.param_groups[0]["lr"],
                "epoch_seconds": time.perf_counter() - epoch_start,
                "bad_videos": bad_total,
            }
            if epoch % cfg.val_every == 0 or epoch == cfg.epochs:
                metrics.update(validate(eval_model, val_loader, device, cfg.amp))
            last_metrics = metrics
            improved = "val_top1" in metrics and (
                best_top1 is None or metrics["val_top1"] > best_top1
            )
            if improved:
                best_top1 = metrics["val_top1"]
            history.append(metrics)
            if info.is_main:
                _write_metrics(run_dir, history)
                state = checkpoint_state(metrics)
                save_checkpoint(run_dir / "checkpoints" / LAST, state)
                if improved:
                    save_checkpoint(run_dir / "checkpoints" / BEST, state)
                if writer is not None:
                    for key, value in metrics.items():
                        writer.add_scalar(key, value, epoch)
                console.info(_epoch_line(metrics, cfg.epochs, bad_total))
    if writer is not None:
        writer.close()
    distributed.barrier()
    return TrainResult(
        run_dir=run_dir,
        epochs_done=epoch,
        best_top1=best_top1,
        last_metrics=last_metrics,
        seconds=time.perf_counter() - start_time,
        bad_videos=bad_total,
        history=history,
        model=model,
    )


def _millions(model: nn.Module) -> str:
    return f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}"


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
    return text
