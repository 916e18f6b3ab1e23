"""The NaN guard: nothing non-finite becomes a "last good" or a best checkpoint.

A run that diverges shows it first in its loss (checked every step, before the
optimiser step), but a high learning rate can also leave a finite loss with infinite
BatchNorm running variances, NaN weights or a NaN validation loss. Before a checkpoint
is written, `check_finite` looks at every parameter and buffer of the model (and its EMA
copy) and at the validation loss; when anything is not finite the run stops with
`Diverged`, and the previous checkpoints stay as they were.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from vidact.errors import VidactError


class Diverged(VidactError):
    """The run diverged: a loss, weight or statistic is NaN or infinite."""


def non_finite_tensors(models: Iterable[tuple[str, nn.Module]]) -> list[str]:
    """Names ("model: features.1.running_var") of the floating-point parameters and
    buffers that hold a NaN or an infinity."""
    bad = []
    for label, model in models:
        tensors = [*model.named_parameters(), *model.named_buffers()]
        for name, tensor in tensors:
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                bad.append(f"{label}: {name}")
    return bad


def check_finite(
    models: Iterable[tuple[str, nn.Module]], metrics: dict[str, Any], where: str, advice: str
) -> None:
    """Raise `Diverged` when a weight, a buffer or the validation loss is not finite."""
    problems = []
    loss = metrics.get("val_loss")
    if loss is not None and not math.isfinite(loss):
        problems.append(f"the validation loss is {loss}")
    bad = non_finite_tensors(models)
    if bad:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        problems.append(f"{len(bad)} tensors are not finite ({', '.join(bad[:3])}{more})")
    if problems:
        raise Diverged(f"the run diverged at {where}: {'; '.join(problems)}; {advice}")
