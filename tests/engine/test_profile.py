"""vidact.engine.profile: parameter counts, MACs via FlopCounterMode, latency."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vidact.engine.profile import (
    Latency,
    count_macs,
    count_params,
    count_params_and_macs,
    measure_latency,
)


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
