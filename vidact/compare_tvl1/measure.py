"""One video measured: TV-L1, rep-flow and flow-of-flow computed and timed, then EPE and
cosine against TV-L1 and against stored ground truth (`VideoResult`)."""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from vidact.compare_tvl1.device import one_thread, sync
from vidact.compare_tvl1.inputs import InputItem, load_gt, read_clip, resize_frames
from vidact.compare_tvl1.layers import FlowLayerSpec, flow_of_flow, representation_flow
from vidact.errors import VidactError
from vidact.flow.backends import compute_flow, to_gray
from vidact.flow.metrics import border_mask, cosine_similarity, endpoint_error
from vidact.flow.tvl1 import TVL1Params
from vidact.models.rep_flow import RepresentationFlow

MOVING_PX = 0.1  # cosine similarity only where both flows move more than this (px)


@dataclass
class VideoResult:
    """One video's measures. Times in ms; EPE in pixels; cosine in [-1, 1]."""

    path: str
    frames: int
    height: int
    width: int
    border: int  # pixels left out along the edges in every measure
    tvl1_ms: float
    repflow_ms: float
    fof_ms: float
    epe_vs_tvl1: float
    cos_vs_tvl1: float | None
    gt_pairs: list[int] = field(default_factory=list)
    gt_magnitude: float | None = None  # mean |ground truth| (= the EPE of zero flow)
    tvl1_epe_gt: float | None = None
    repflow_epe_gt: float | None = None
    tvl1_cos_gt: float | None = None
    repflow_cos_gt: float | None = None

    @property
    def pairs(self) -> int:
        return self.frames - 1

    @property
    def tvl1_ms_per_pair(self) -> float:
        return self.tvl1_ms / self.pairs

    @property
    def repflow_ms_per_pair(self) -> float:
        return self.repflow_ms / self.pairs

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["pairs"] = self.pairs
        d["tvl1_ms_per_pair"] = self.tvl1_ms_per_pair
        d["repflow_ms_per_pair"] = self.repflow_ms_per_pair
        return {k: finite(v) for k, v in d.items()}


def finite(value: Any) -> Any:
    """NaN/inf -> None, so report.json is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _cos(flow: np.ndarray, ref: np.ndarray, mask: np.ndarray) -> float | None:
    value = cosine_similarity(flow, ref, mask, eps=MOVING_PX)
    return None if math.isnan(value) else value


@dataclass
class Computed:
    item: InputItem
    frames: np.ndarray
    tvl1: np.ndarray
    rep: np.ndarray
    fof: np.ndarray
    gt: tuple[list[int], np.ndarray] | None
    result: VideoResult


def compare_video(
    item: InputItem,
    *,
    backend: str,
    params: TVL1Params,
    spec: FlowLayerSpec,
    layer: RepresentationFlow,
    device: torch.device,
    max_frames: int,
    short_side: int | None,
    border: int | None,
) -> Computed:
    frames, first = read_clip(item, max_frames)
    if short_side is not None:
        frames = resize_frames(frames, short_side)
    t, h, w = frames.shape[:3]

    start = time.perf_counter()
    tvl1 = compute_flow(frames, backend=backend, params=params)
    tvl1_ms = (time.perf_counter() - start) * 1e3

    with one_thread(device):
        sync(device)
        start = time.perf_counter()
        gray, _ = to_gray(frames)
        rep = representation_flow(gray, layer, spec.gain, device)
        sync(device)
        rep_ms = (time.perf_counter() - start) * 1e3

        start = time.perf_counter()
        fof = flow_of_flow(rep, layer, spec.gain, device)
        sync(device)
        fof_ms = (time.perf_counter() - start) * 1e3

    margin = _border(h, w, border)
    mask = border_mask(h, w, margin)
    result = VideoResult(
        path=str(item.path),
        frames=t,
        height=h,
        width=w,
        border=margin,
        tvl1_ms=tvl1_ms,
        repflow_ms=rep_ms,
        fof_ms=fof_ms,
        epe_vs_tvl1=endpoint_error(rep, tvl1, mask),
        cos_vs_tvl1=_cos(rep, tvl1, mask),
    )
    gt = load_gt(item, first, t, h, w)
    if gt is not None:
        pairs, exact = gt
        result.gt_pairs = pairs
        result.gt_magnitude = endpoint_error(np.zeros_like(exact), exact, mask)
        result.tvl1_epe_gt = endpoint_error(tvl1[pairs], exact, mask)
        result.repflow_epe_gt = endpoint_error(rep[pairs], exact, mask)
        result.tvl1_cos_gt = _cos(tvl1[pairs], exact, mask)
        result.repflow_cos_gt = _cos(rep[pairs], exact, mask)
    return Computed(item, frames, tvl1, rep, fof, gt, result)


def _border(height: int, width: int, border: int | None) -> int:
    """The margin left out of every measure: default 1/16 of the short side, at least 2."""
    if border is None:
        return max(2, min(height, width) // 16)
    if border < 0 or 2 * border >= min(height, width):
        raise VidactError(
            f"--border {border}: must be >= 0 and leave pixels inside a {width}x{height} frame"
        )
    return border
