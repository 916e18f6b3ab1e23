"""Parameter groups, optimisers and learning-rate schedules from the recipe.

- SGD with momentum 0.9 (both papers). Weight decay skips BN and bias parameters unless
  `optim.decay_norm_and_bias` asks for it.
- The representation-flow parameters (tau, lambda, theta, divergence and Sobel kernels)
  learn at `optim.flow_lr_mult` x lr: 0.01 in the rep-flow appendix A.
- `optim.lr_mults` gives any parameter-name prefix its own multiplier.
- `optim.policy: tsn` replaces these rules with the parameter groups of the TSN code that
  the CT-Net authors train with (their `get_optim_policies`, fc_lr5 on: from ImageNet).
  By module: Linear weights 5x lr with decay, Linear biases 10x without; other
  convolution weights 1x with decay, their biases 2x without; BatchNorm weights and
  biases 1x without decay. Another module type with parameters is an error, as theirs.
  `lr_mults` still multiply on top.
- Schedules are per iteration: step decay (rep-flow: x0.1 every 50 epochs) or cosine,
  each with an optional linear warm-up (CT-Net: 10 epochs).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from vidact.errors import VidactError
from vidact.recipe import OptimConfig, ScheduleConfig


def _flow_parameter_ids(model: nn.Module) -> set[int]:
    from vidact.models.rep_flow import flow_parameters

    return {id(p) for p in flow_parameters(model)}


_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def tsn_policy(model: nn.Module) -> dict[str, tuple[float, bool]]:
    """Parameter name -> (lr multiplier, weight decay on) of the TSN policy (module doc)."""
    rules: dict[str, tuple[float, bool]] = {}
    for module_name, module in model.named_modules():
        own = list(module.named_parameters(recurse=False))
        if not own:
            continue
        if isinstance(module, nn.Linear):
            table = {"weight": (5.0, True), "bias": (10.0, False)}
        elif isinstance(module, _CONVS):
            table = {"weight": (1.0, True), "bias": (2.0, False)}
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            table = {"weight": (1.0, False), "bias": (1.0, False)}
        else:
            raise VidactError(
                f"optim.policy tsn has no rule for the parameters of {module_name} "
                f"({type(module).__name__}); use optim.policy: vidact for this model"
            )
        for name, _ in own:
            rules[f"{module_name}.{name}" if module_name else name] = table[name]
    return rules


def param_groups(model: nn.Module, cfg: OptimConfig) -> list[dict[str, Any]]:
    """Trainable parameters grouped by (lr multiplier, weight decay)."""
    flow_ids = _flow_parameter_ids(model)
    tsn = tsn_policy(model) if cfg.policy == "tsn" else None
    groups: dict[tuple[float, float], list[nn.Parameter]] = {}
    names: dict[tuple[float, float], list[str]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        mult = 1.0
        for prefix, value in cfg.lr_mults.items():
            if name.startswith(prefix) or name.startswith(f"module.{prefix}"):
                mult = value
        is_flow = id(param) in flow_ids
        if is_flow:
            mult *= cfg.flow_lr_mult
        no_decay = param.ndim <= 1 and not cfg.decay_norm_and_bias
        decay = 0.0 if (no_decay or is_flow) else cfg.weight_decay
        if tsn is not None:
            policy_mult, decays = tsn[name]
            mult, decay = mult * policy_mult, cfg.weight_decay if decays else 0.0
        key = (mult, decay)
        groups.setdefault(key, []).append(param)
        names.setdefault(key, []).append(name)
    return [
        {
            "params": params,
            "lr": cfg.lr * mult,
            "lr_mult": mult,
            "weight_decay": decay,
            "names": names[(mult, decay)],
        }
        for (mult, decay), params in groups.items()
    ]


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg)
    for group in groups:
        group.pop("names")
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(
        groups,
        lr=cfg.lr,
        momentum=cfg.momentum,
        nesterov=cfg.nesterov,
        weight_decay=cfg.weight_decay,
    )


def lr_factor(cfg: ScheduleConfig, epochs: int, steps_per_epoch: int) -> Callable[[int], float]:
    """Multiplier of the base lr at iteration `step` (0-based)."""
    total = max(epochs * steps_per_epoch, 1)
    warmup = round(cfg.warmup_epochs * steps_per_epoch)
    milestones = [m * steps_per_epoch for m in (cfg.milestones or [])]

    def factor(step: int) -> float:
        if cfg.name == "cosine":
            progress = min(max(step - warmup, 0) / max(total - warmup, 1), 1.0)
            floor = cfg.min_lr_ratio
            value = floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
        elif cfg.name == "step":
            if milestones:
                passed = sum(step >= m for m in milestones)
            else:
                passed = step // (cfg.step_epochs * steps_per_epoch)
            value = cfg.gamma**passed
        else:
            value = 1.0
        if step < warmup:
            start = cfg.warmup_start_factor
            value *= start + (1 - start) * step / warmup
        return value

    return factor


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: ScheduleConfig, epochs: int, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR stepped once per iteration (each group keeps its lr multiplier)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(cfg, epochs, steps_per_epoch))
