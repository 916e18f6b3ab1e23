"""Resuming with changed settings: say what changes, apply what can be, refuse the rest.

The recipe given to `--resume` is compared key by key with the one stored in the
checkpoint:

- the model, the data (except where it is read from and how fast: `data.root`,
  `num_workers`, `pin_memory`, `video_backend`), the batch, the seed, EMA, freezing and
  the optimiser's kind and parameter groups cannot change in the middle of a run: the
  resume is refused with one line naming them (start a new run, or fine-tune from the
  checkpoint);
- everything else is applied, one line per change: the optimiser's hyper-parameters
  (`optim.lr`, momentum, weight decay, ...) replace the saved ones, the learning-rate
  schedule is rebuilt from the new `schedule` and `train.epochs` at the saved step, and
  the other keys are read where they are used.

The run folder's recipe.yaml and every later checkpoint then hold the recipe that is
really in force.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

from vidact import console
from vidact.errors import VidactError

# Changes that cannot be applied to a run in progress (dotted keys or section prefixes).
FROZEN = (
    "model.",
    "data.",
    "train.batch_size",
    "train.accumulate_steps",
    "train.seed",
    "train.ema",  # not train.ema_decay
    "train.freeze",
    "optim.name",
    "optim.policy",
    "optim.lr_mults",
    "optim.decay_norm_and_bias",
)
MOVABLE_DATA = ("data.root", "data.num_workers", "data.pin_memory", "data.video_backend")
# Changes that make the saved optimiser hyper-parameters and schedule out of date.
RESCHEDULE = ("optim.", "schedule.", "train.epochs")


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"optim": {"lr": 0.1}} -> {"optim.lr": 0.1}."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def recipe_changes(saved: dict[str, Any], current: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """key -> (saved value, current value) for every key whose value differs."""
    old, new = flatten(saved), flatten(current)
    keys = sorted(set(old) | set(new))
    return {k: (old.get(k), new.get(k)) for k in keys if old.get(k) != new.get(k)}


def _frozen(key: str) -> bool:
    if key in MOVABLE_DATA:
        return False
    return any(key == f or (f.endswith(".") and key.startswith(f)) for f in FROZEN)


def check_changes(changes: dict[str, tuple[Any, Any]], path: object) -> bool:
    """Refuse frozen changes; print one line per applied change. True when the optimiser's
    hyper-parameters or the schedule must be rebuilt."""
    refused = [k for k in changes if _frozen(k)]
    if refused:
        shown = ", ".join(f"{k} ({changes[k][0]!r} -> {changes[k][1]!r})" for k in refused[:3])
        more = f" and {len(refused) - 3} more" if len(refused) > 3 else ""
        raise VidactError(
            f"{path}: cannot resume with a changed {shown}{more}; these cannot change in the "
            "middle of a run: undo the change, or start a new run (`vidact finetune --from` "
            "this checkpoint keeps its weights)"
        )
    for key, (old, new) in changes.items():
        console.info(f"resume: {key} {old!r} -> {new!r} (applied)")
    return any(k.startswith(RESCHEDULE) for k in changes)


def hyperparameters(optimizer: torch.optim.Optimizer) -> list[dict[str, Any]]:
    """Each parameter group's settings (everything but its parameters)."""
    return [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]


def apply_hyperparameters(
    optimizer: torch.optim.Optimizer, fresh: list[dict[str, Any]], path: object
) -> None:
    """Put the new recipe's group settings back after loading the saved optimiser state
    (which keeps its momentum / Adam moments)."""
    if len(fresh) != len(optimizer.param_groups):
        raise VidactError(
            f"{path}: the optimiser's parameter groups differ from this recipe's; undo the "
            "optim change or start a new run"
        )
    for group, settings in zip(optimizer.param_groups, fresh, strict=True):
        group.update(settings)


def fast_forward(scheduler: torch.optim.lr_scheduler.LRScheduler, step: int) -> None:
    """Move a freshly built per-iteration schedule to iteration `step` (closed form)."""
    scheduler.last_epoch = step - 1
    with warnings.catch_warnings():  # "lr_scheduler.step() before optimizer.step()"
        warnings.simplefilter("ignore", UserWarning)
        scheduler.step()
