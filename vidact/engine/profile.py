"""Model cost: parameter counts, multiply-accumulates (MACs) and latency.

MACs are what video papers call "FLOPs" (CT-Net, TSM, SlowFast, ...): one multiply-add of
a convolution or a linear layer counts once. They are measured with
`torch.utils.flop_counter.FlopCounterMode`, which records 2 FLOPs per multiply-add of the
matrix-shaped aten ops (`convolution`, `mm`, `addmm`, `bmm`, `baddbmm`, attention) and
nothing else, so `count_macs` divides its total by 2. Batch norm, activations, pooling,
element-wise products and bias additions are not counted, as in the papers. Grouped and
depthwise convolutions count what they compute (the weight's `in_channels / groups`).

Counting needs shapes only: build the model under `torch.device("meta")` and nothing is
allocated or computed, so even a 16-frame ResNet-101 video model counts in well under a
second::

    with torch.device("meta"):
        model = build_model("ctnet_resnet50", num_classes=174, num_frames=8)
    params, macs = count_params_and_macs(model, (1, 3, 8, 256, 256))

Not the representation-flow networks: their flow layer compares its Sobel kernels with
the printed values and opens an autocast region, neither of which a meta tensor allows;
count those on a real device (`vidact evaluate --profile` counts on the evaluated model).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = [
    "Latency",
    "count_macs",
    "count_params",
    "count_params_and_macs",
    "measure_latency",
]


def count_params(model: nn.Module, *, trainable_only: bool = False) -> int:
    """Number of parameter elements (shared parameters once; buffers never)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _model_device(model: nn.Module) -> torch.device:
    for param in model.parameters():
        return param.device
    for buffer in model.buffers():
        return buffer.device
    return torch.device("cpu")


def count_macs(
    model: nn.Module,
    input_shape: Sequence[int],
    *,
    dtype: torch.dtype = torch.float32,
) -> int:
    """Multiply-accumulates of one forward pass on a zero input of `input_shape`.

    `input_shape` includes the batch dimension, e.g. (1, 3, 8, 256, 256) for one clip of a
    video model; the count is for the whole batch. The input is created on the model's
    device (the meta device costs nothing). The model runs in eval mode without autograd
    and is put back in its previous mode afterwards.
    """
    device = _model_device(model)
    x = torch.zeros(tuple(input_shape), dtype=dtype, device=device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2


def count_params_and_macs(
    model: nn.Module,
    input_shape: Sequence[int],
    *,
    dtype: torch.dtype = torch.float32,
) -> tuple[int, int]:
    """(parameters, MACs of one forward pass on `input_shape`); see `count_macs`."""
    return count_params(model), count_macs(model, input_shape, dtype=dtype)


@dataclass(frozen=True)
class Latency:
    """Wall-clock seconds of repeated calls: `times` holds every timed call."""

    times: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def best(self) -> float:
        """The fastest call: the least disturbed by other processes on a shared machine."""
        return min(self.times)


def measure_latency(
    model: nn.Module,
    input_shape: Sequence[int],
    *,
    backward: bool = False,
    warmup: int = 2,
    repeats: int = 5,
    device: torch.device | str | None = None,
    memory_format: torch.memory_format | None = None,
    autocast_dtype: torch.dtype | None = None,
) -> Latency:
    """Time forward (and, with `backward=True`, backward) passes on a random input.

    The model is used as it is (train or eval mode is the caller's choice); with
    `backward=False` autograd is off. `memory_format` (e.g. `torch.channels_last`)
    converts the input; `autocast_dtype` runs under `torch.autocast` on the input's device.
    CUDA work is synchronised before each clock read.
    """
    dev = torch.device(device) if device is not None else _model_device(model)
    x = torch.randn(tuple(input_shape), device=dev)
    if memory_format is not None:
        x = x.contiguous(memory_format=memory_format)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    def step() -> None:
        with torch.autocast(dev.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            out = model(x)
        if backward:
            out.float().sum().backward()
            model.zero_grad(set_to_none=True)

    times: list[float] = []
    with torch.set_grad_enabled(backward):
        for i in range(warmup + repeats):
            sync()
            start = time.perf_counter()
            step()
            sync()
            if i >= warmup:
                times.append(time.perf_counter() - start)
    return Latency(tuple(times))
