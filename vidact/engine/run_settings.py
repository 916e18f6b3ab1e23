"""Settings checked before a run creates anything, and the ones it prints at start.

`check_settings` runs before the run folder exists, so that a run which cannot start
(`train.amp: fp16` on a CPU, `train.sync_bn` without GPUs) leaves nothing behind.
`effective_batch_line` states the batch that one optimiser step sees,
batch_size x processes x `train.accumulate_steps`, and the learning rate that goes with
it. `convert_sync_bn` turns BatchNorm layers into SyncBatchNorm under torchrun.
"""

from __future__ import annotations

import torch
from torch import nn

from vidact import console
from vidact.engine.distributed import DistInfo
from vidact.errors import VidactError
from vidact.recipe import Recipe


def check_settings(recipe: Recipe, info: DistInfo, device: torch.device) -> None:
    """Raise for settings this machine cannot run; say when one has no effect."""
    cfg = recipe.train
    if cfg.amp == "fp16" and device.type == "cpu":
        raise VidactError("train.amp: fp16 needs a CUDA device; use bf16 on the CPU")
    if cfg.sync_bn and info.enabled and device.type == "cpu":
        raise VidactError(
            "train.sync_bn: SyncBatchNorm runs on GPUs only; remove it for a CPU run "
            "(each process then keeps its own BatchNorm statistics)"
        )
    if cfg.sync_bn and not info.enabled:
        console.info("train.sync_bn: one process, nothing to synchronise (plain BatchNorm)")


def effective_batch_line(recipe: Recipe, world: int) -> str:
    """The start-of-run line on the effective batch and its learning rate."""
    cfg, lr = recipe.train, recipe.optim.lr
    batch = cfg.batch_size * world * cfg.accumulate_steps
    return (
        f"effective batch {batch} = {cfg.batch_size} clips x {world} process(es) x "
        f"{cfg.accumulate_steps} accumulated step(s); optim.lr {lr:g} is the rate of that "
        f"batch ({lr / batch:.3g} per clip: by the linear scaling rule, batch 256 would "
        f"take lr {lr * 256 / batch:.3g})"
    )


def convert_sync_bn(model: nn.Module, recipe: Recipe, info: DistInfo) -> nn.Module:
    """`model` with SyncBatchNorm layers when `train.sync_bn` and torchrun ask for it."""
    if not (recipe.train.sync_bn and info.enabled):
        return model
    converted = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    console.info("train.sync_bn: BatchNorm statistics are computed over every process's batch")
    return converted
