"""optim.policy: tsn gives the parameter groups of the TSN / CT-Net authors' code."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vidact.engine.optim import build_optimizer, param_groups
from vidact.errors import VidactError
from vidact.models import build_model
from vidact.recipe import OptimConfig


def _groups(model: nn.Module, **cfg: object) -> dict[str, tuple[float, float]]:
    """parameter name -> (lr, weight decay) of its group."""
    config = OptimConfig(lr=0.02, weight_decay=5e-4, **cfg)  # type: ignore[arg-type]
    return {
        name: (group["lr"], group["weight_decay"])
        for group in param_groups(model, config)
        for name in group["names"]
    }


def test_tsn_policy_by_module_type() -> None:
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, bias=True), nn.BatchNorm2d(4), nn.Conv1d(4, 4, 1), nn.Linear(4, 2)
    )
    groups = _groups(model, policy="tsn")
    assert groups == {
        "0.weight": (0.02, 5e-4),  # first conv: 1x, decay (RGB)
        "0.bias": (0.04, 0.0),  # conv biases: 2x, no decay
        "1.weight": (0.02, 0.0),  # BatchNorm: 1x, no decay
        "1.bias": (0.02, 0.0),
        "2.weight": (0.02, 5e-4),
        "2.bias": (0.04, 0.0),
        "3.weight": (0.1, 5e-4),  # classifier weight: 5x, decay
        "3.bias": (0.2, 0.0),  # classifier bias: 10x, no decay
    }
    vidact = _groups(model)
    assert vidact["3.weight"] == (0.02, 5e-4) and vidact["0.bias"] == (0.02, 0.0)


def test_tsn_policy_on_ctnet_skips_frozen_parameters() -> None:
    with torch.device("meta"):
        model = build_model("ctnet_resnet50", 174, freeze="released")
    groups = _groups(model, policy="tsn")
    assert groups["fc.weight"] == (0.1, 5e-4) and groups["fc.bias"] == (0.2, 0.0)
    assert groups["stages.3.1.ct.ops.0.spatial.weight"] == (0.02, 5e-4)
    assert groups["stages.3.1.ct.ops.0.temporal_att.bn.weight"] == (0.02, 0.0)
    assert "stem.0.weight" not in groups and "stages.0.0.conv1.weight" not in groups
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    counted = sum(p.numel() for n, p in model.named_parameters() if n in groups)
    assert counted == trainable == 20_959_150 - 15_063_360
    optimizer = build_optimizer(model, OptimConfig(policy="tsn"))
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(groups)


def test_tsn_policy_refuses_a_module_it_has_no_rule_for() -> None:
    with pytest.raises(VidactError, match=r"no rule for the parameters of 1 \(PReLU\)"):
        _groups(nn.Sequential(nn.Linear(2, 2), nn.PReLU()), policy="tsn")
