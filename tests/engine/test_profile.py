"""vidact.engine.profile: parameter counts, MACs via FlopCounterMode, latency."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from vidact.data.views import ViewSpec
from vidact.engine.evaluator import Member, profile_members
from vidact.engine.profile import (
    Latency,
    count_macs,
    count_params,
    count_params_and_macs,
    measure_latency,
)
from vidact.engine.trainer import build_model_for
from vidact.models import list_models, model_options
from vidact.recipe import recipe_from_dict


def test_count_params_counts_elements_and_trainable() -> None:
    model = nn.Sequential(nn.Linear(10, 5), nn.BatchNorm1d(5))
    assert count_params(model) == 10 * 5 + 5 + 2 * 5  # BN buffers are not parameters
    model[0].weight.requires_grad_(False)
    assert count_params(model, trainable_only=True) == 5 + 2 * 5


def test_macs_are_conv_and_linear_multiply_adds_only() -> None:
    conv = nn.Conv2d(4, 8, 3, padding=1)
    expected = 2 * 8 * 10 * 10 * 4 * 9  # batch 2, 8 x 10 x 10 outputs, 4 x 3 x 3 each; no bias
    assert count_macs(conv, (2, 4, 10, 10)) == expected
    # BN, ReLU, pooling and element-wise ops add nothing, as in the papers.
    net = nn.Sequential(
        conv, nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2), nn.AdaptiveAvgPool2d(1)
    )
    assert count_macs(net, (2, 4, 10, 10)) == expected
    grouped = nn.Conv3d(8, 8, (3, 1, 1), padding=(1, 0, 0), groups=4, bias=False)
    assert count_macs(grouped, (1, 8, 5, 6, 6)) == 8 * 5 * 6 * 6 * 2 * 3
    assert count_macs(nn.Linear(16, 3), (7, 16)) == 7 * 16 * 3


def test_meta_device_counts_like_cpu_and_mode_is_restored() -> None:
    def build() -> nn.Module:
        return nn.Sequential(nn.Conv2d(3, 6, 5), nn.BatchNorm2d(6), nn.Flatten(), nn.LazyLinear(2))

    cpu = build()
    cpu(torch.zeros(1, 3, 12, 12))  # materialise the lazy layer
    with torch.device("meta"):
        meta = build()
        meta(torch.zeros(1, 3, 12, 12))
    cpu.train()
    assert count_params_and_macs(cpu, (3, 3, 12, 12)) == count_params_and_macs(meta, (3, 3, 12, 12))
    assert cpu.training
    assert count_params(meta) == 3 * 6 * 25 + 6 + 12 + 6 * 8 * 8 * 2 + 2


def test_measure_latency_times_forward_and_backward() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
    lat = measure_latency(model, (2, 3, 8, 8), warmup=1, repeats=3)
    assert isinstance(lat, Latency) and len(lat.times) == 3
    assert 0 < lat.best <= lat.median
    lat = measure_latency(
        model, (2, 3, 8, 8), backward=True, warmup=0, repeats=2, memory_format=torch.channels_last
    )
    assert len(lat.times) == 2 and all(p.grad is None for p in model.parameters())
    with pytest.raises(RuntimeError):
        measure_latency(model, (2, 5, 8, 8), repeats=1)


# ----------------------------------------------- evaluate --profile on every model family


def _family(name: str) -> str:
    """A model name without its depth: tsn_resnet18 and tsn_resnet50 are one family."""
    return re.sub(r"_?\d+$", "", name)


def _depth(name: str) -> int:
    digits = re.search(r"(\d+)$", name)
    return int(digits.group(1)) if digits else 0


def _one_model_per_family() -> list[str]:
    """The shallowest registered model of each family (test-only models left out)."""
    chosen: dict[str, str] = {}
    for name in sorted(list_models(), key=_depth):
        if not name.endswith("_test_net"):
            chosen.setdefault(_family(name), name)
    return sorted(chosen.values())


def _frames(name: str) -> int:
    """6 frames, or what the model needs (the released rep-flow trunk: 11 or more)."""
    return 12 if name == "repflow_released_r50" else 6


def _member(name: str) -> Member:
    """A recipe's member as `evaluate` loads it: 6 frames (`_frames`), 32 px crops,
    random weights."""
    modality = {"flow_": "flow", "two_stream_": "rgb+flow"}
    options: dict[str, Any] = {"name": name}
    if "stack" in model_options(name):
        options["stack"] = 3  # flow stacks of 3 frames: 6 = 2 segments
    recipe = recipe_from_dict(
        {
            "model": options,
            "data": {
                "num_frames": _frames(name),
                "short_side": 32,
                "input_size": 32,
                "modality": next((m for p, m in modality.items() if name.startswith(p)), "rgb"),
            },
        }
    )
    model = build_model_for(recipe, 5).eval()
    spec = ViewSpec.from_recipe(recipe.data, recipe.eval)
    return Member(Path(f"{name}.pt"), recipe, recipe.eval, list("abcde"), model, spec, False, "")


def test_families_are_found() -> None:
    families = {_family(name) for name in _one_model_per_family()}
    assert {"repflow_resnet", "repflow_smallcnn", "ctnet_resnet", "tsn_resnet"} <= families


@pytest.mark.parametrize("name", _one_model_per_family())
def test_profile_runs_on_every_family(name: str) -> None:
    """`evaluate --profile` on one model of each registered family (it crashed on every
    representation-flow model when it counted on a meta-device copy)."""
    member = _member(name)
    (row,) = profile_members([member], torch.device("cpu"))
    channels = member.spec.channels
    assert row["input"] == f"{channels}x{_frames(name)}x32x32" and row["views"] == 1
    assert row["params"] == count_params(member.model) and row["latency_ms_per_video"] > 0
    assert row["gflops_per_view"] > 0
    if not name.startswith("repflow"):  # shapes only: a meta-device copy counts the same
        with torch.device("meta"):
            meta = build_model_for(member.recipe, 5)
        assert count_macs(meta, (1, channels, 6, 32, 32)) == round(row["gflops_per_view"] * 1e9)
