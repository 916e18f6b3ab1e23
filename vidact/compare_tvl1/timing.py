"""Table-9-style timing: TV-L1 then a flow CNN against the rep-flow CNN, end to end on
one clip (`time_table9`), and the "TxHxW" clip shape (`parse_shape`)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import cv2
import numpy as np
import torch

from vidact.compare_tvl1.device import sync
from vidact.constants import IMAGENET_MEAN, IMAGENET_STD
from vidact.errors import VidactError
from vidact.flow.backends import compute_flow, resolve_backend
from vidact.flow.tvl1 import TVL1Params
from vidact.models.rep_flow import ITERATIONS

DEFAULT_TIMING_SHAPE = (32, 224, 224)  # Table 9: "a batch of videos with size 32x224x224"
TIMING_CLASSES = 400  # classifier size of the timed networks (Kinetics-400)


def parse_shape(text: str) -> tuple[int, int, int]:
    """Parse "TxHxW", e.g. "32x224x224" -> (32, 224, 224): frames, height, width."""
    parts = text.lower().replace("×", "x").split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) != 3 or values[0] < 2 or min(values[1:]) < 32:
        raise VidactError(
            f"--timing-shape {text!r}: use TxHxW with T >= 2 frames and H, W >= 32, "
            "e.g. 32x224x224 or 8x112x112"
        )
    return values[0], values[1], values[2]


def _timing_clip(frames: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """The input video resized to HxW, played forwards then backwards until T frames."""
    t, h, w = shape
    sized = np.stack([cv2.resize(f, (w, h), interpolation=cv2.INTER_AREA) for f in frames])
    order = list(range(len(sized))) + list(range(len(sized) - 2, 0, -1))
    return np.ascontiguousarray(sized[[order[i % len(order)] for i in range(t)]])


def _best_ms(run: Callable[[], Any], repeats: int, device: torch.device) -> float:
    best = math.inf
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        run()
        sync(device)
        best = min(best, (time.perf_counter() - start) * 1e3)
    return best


def _best_two_step_ms(
    first: Callable[[], Any], second: Callable[[Any], Any], repeats: int, device: torch.device
) -> tuple[float, float, float]:
    """(first ms, second ms, total ms) of the fastest of `repeats` runs of second(first())."""
    best = (math.inf, math.inf, math.inf)
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        middle = first()
        mid = time.perf_counter()
        second(middle)
        sync(device)
        end = time.perf_counter()
        if (end - start) * 1e3 < best[2]:
            best = ((mid - start) * 1e3, (end - mid) * 1e3, (end - start) * 1e3)
    return best


def time_table9(
    frames: np.ndarray,
    shape: tuple[int, int, int] = DEFAULT_TIMING_SHAPE,
    *,
    backend: str = "auto",
    params: TVL1Params | None = None,
    iterations: int = ITERATIONS,
    repeats: int = 1,
    device: torch.device | str | None = None,
) -> dict[str, Any]:
    """Table 9's run-time comparison, end to end on one clip of `shape` (T, H, W).

    flow CNN: TV-L1 on the T RGB frames (the chosen backend), then `flow_resnet34` on
    the T-1 flow fields, each a 2-channel image (stack 1), scores averaged: the same
    per-frame ResNet-34 work as the RGB network, after the flow is computed.
    rep-flow CNN: `repflow_resnet34` (one flow block after block 3, `iterations`) on the
    normalised RGB clip. Both with random weights, batch 1, inference mode; each network
    runs once untimed first; the best of `repeats` timed runs is reported. The clip is the
    given video `frames` resized, played forwards then backwards to T frames.
    """
    from vidact.models import build_model

    if repeats < 1:
        raise VidactError(f"--timing-repeats {repeats}: must be at least 1")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    name = resolve_backend(backend)
    params = params or TVL1Params.opencv_cpu()
    clip = _timing_clip(frames, shape)
    t, h, w = shape

    flow_net = build_model("flow_resnet34", TIMING_CLASSES, stack=1).to(dev).eval()
    rep_net = build_model("repflow_resnet34", TIMING_CLASSES, iterations=iterations)
    rep_net = rep_net.to(dev).eval()
    mean = torch.tensor(IMAGENET_MEAN, device=dev).view(1, 3, 1, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=dev).view(1, 3, 1, 1, 1)
    clip_t = torch.from_numpy(clip)

    def tvl1() -> np.ndarray:
        return compute_flow(clip, backend=name, params=params)

    def flow_cnn(flow: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(flow).to(dev).permute(3, 0, 1, 2).unsqueeze(0)
        return flow_net(x)

    def rep_cnn() -> torch.Tensor:
        x = clip_t.to(dev).permute(3, 0, 1, 2).unsqueeze(0).float().div_(255.0)
        return rep_net((x - mean) / std)

    with torch.inference_mode():
        flow_cnn(np.zeros((t - 1, h, w, 2), np.float32))  # warm-up, untimed
        rep_cnn()
        tv_ms, cnn_ms, flow_total = _best_two_step_ms(tvl1, flow_cnn, repeats, dev)
        rep_total = _best_ms(rep_cnn, repeats, dev)
    return {
        "shape": list(shape),
        "device": str(dev),
        "torch_threads": torch.get_num_threads(),
        "backend": name,
        "repeats": repeats,
        "flow_cnn": {
            "model": "flow_resnet34 (stack 1) after TV-L1",
            "tvl1_ms": tv_ms,
            "cnn_ms": cnn_ms,
            "total_ms": flow_total,
        },
        "repflow_cnn": {
            "model": f"repflow_resnet34 ({iterations} iterations)",
            "total_ms": rep_total,
        },
        "ratio": flow_total / rep_total,
    }
