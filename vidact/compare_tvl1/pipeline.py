"""`compare_tvl1`: the whole comparison over the input's videos, the summary, the
pictures and timing, and ``report.json`` (`CompareResult`)."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vidact import console
from vidact.atomic import atomic_write_text
from vidact.compare_tvl1.device import one_thread
from vidact.compare_tvl1.inputs import DEFAULT_VIDEOS, InputItem, resolve_input
from vidact.compare_tvl1.layers import (
    FlowLayerSpec,
    checkpoint_layer,
    paper_layer,
    representation_flow,
)
from vidact.compare_tvl1.measure import MOVING_PX, Computed, VideoResult, compare_video, finite
from vidact.compare_tvl1.pictures import write_pictures
from vidact.compare_tvl1.timing import DEFAULT_TIMING_SHAPE, time_table9
from vidact.errors import VidactError, VideoReadError
from vidact.flow.backends import resolve_backend
from vidact.flow.tvl1 import TVL1Params
from vidact.models.rep_flow import ITERATIONS, RepresentationFlow

DEFAULT_MAX_FRAMES = 32  # consecutive frames read per video (31 pairs)


@dataclass
class CompareResult:
    """What `compare_tvl1` measured and wrote."""

    out_dir: Path
    kind: str  # "video", "frames" or "dataset"
    backend: str
    layer: FlowLayerSpec
    videos: list[VideoResult]
    failed: list[tuple[str, str]]
    summary: dict[str, Any]
    pictures: dict[str, Any]
    timing: dict[str, Any] | None
    seconds: float
    report: dict[str, Any]

    @property
    def report_path(self) -> Path:
        return self.out_dir / "report.json"

    @property
    def panel_path(self) -> Path:
        return self.out_dir / "panel.png"

    @property
    def gif_path(self) -> Path:
        return self.out_dir / "clip.gif"


def _mean(values: Sequence[float | None]) -> float | None:
    kept = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(kept)) if kept else None


def _summary(videos: list[VideoResult]) -> dict[str, Any]:
    pairs = sum(v.pairs for v in videos)
    with_gt = [v for v in videos if v.tvl1_epe_gt is not None]
    return {
        "videos": len(videos),
        "pairs": pairs,
        "epe_vs_tvl1": _mean([v.epe_vs_tvl1 for v in videos]),
        "cos_vs_tvl1": _mean([v.cos_vs_tvl1 for v in videos]),
        "videos_with_gt": len(with_gt),
        "gt_magnitude": _mean([v.gt_magnitude for v in with_gt]),
        "tvl1_epe_gt": _mean([v.tvl1_epe_gt for v in with_gt]),
        "repflow_epe_gt": _mean([v.repflow_epe_gt for v in with_gt]),
        "tvl1_cos_gt": _mean([v.tvl1_cos_gt for v in with_gt]),
        "repflow_cos_gt": _mean([v.repflow_cos_gt for v in with_gt]),
        "tvl1_ms_per_pair": sum(v.tvl1_ms for v in videos) / pairs,
        "repflow_ms_per_pair": sum(v.repflow_ms for v in videos) / pairs,
        "fof_ms_per_pair": sum(v.fof_ms for v in videos) / pairs,
        "tvl1_ms_per_video": float(np.mean([v.tvl1_ms for v in videos])),
        "repflow_ms_per_video": float(np.mean([v.repflow_ms for v in videos])),
    }


def default_out(input: str | Path) -> Path:
    """runs/compare-tvl1/<input name>."""
    return Path("runs") / "compare-tvl1" / (Path(input).resolve().stem or "input")


def compare_tvl1(
    input: str | Path,
    *,
    checkpoint: str | Path | None = None,
    iters: int | None = None,
    backend: str = "auto",
    out: str | Path | None = None,
    num_videos: int = DEFAULT_VIDEOS,
    split: str | None = None,
    max_frames: int = DEFAULT_MAX_FRAMES,
    short_side: int | None = None,
    pair: int | None = None,
    border: int | None = None,
    printed_sobel: bool = False,
    params: TVL1Params | None = None,
    device: torch.device | str | None = None,
    timing_shape: tuple[int, int, int] | None = DEFAULT_TIMING_SHAPE,
    timing_repeats: int = 1,
) -> CompareResult:
    """Compare TV-L1 with the representation-flow layer on `input` (see the package doc).

    input: a video file, a JPEG frame folder, or a prepared dataset folder (then
        `num_videos` videos spread over its `split` manifest: val, test, train by default).
    checkpoint: take the first flow layer's parameters from this checkpoint; default the
        paper's initial values. iters: layer iterations (default: the checkpoint recipe's,
        else 20). printed_sobel: with paper values, run as an untrained network layer.
    backend, params: TV-L1 backend and parameters (`compute_flow`).
    max_frames: consecutive frames read per video; short_side: resize frames first.
    pair: the pair drawn in panel.png (default: a middle ground-truth pair, else the middle
        one); border: pixels left out along the edges in every measure (default H/16).
    timing_shape: (T, H, W) of the Table-9-style timing, or None to skip it.
    Writes report.json, panel.png and clip.gif to `out` (default runs/compare-tvl1/<name>).
    """
    started = time.perf_counter()
    _check_settings(max_frames, short_side, timing_shape)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    methods = _Methods(
        resolve_backend(backend),
        params or TVL1Params.opencv_cpu(),
        _layer_spec(checkpoint, iters, printed_sobel),
        dev,
    )
    kind, items = resolve_input(input, num_videos, split)
    out_dir = Path(out) if out is not None else default_out(input)
    out_dir.mkdir(parents=True, exist_ok=True)

    videos, failed, shown = _compare_videos(items, kind, methods, max_frames, short_side, border)
    if shown is None:
        raise VidactError(
            f"{input}: none of the {len(items)} video(s) could be read "
            f"(first: {failed[0][0]}: {failed[0][1]})"
        )
    pictures = write_pictures(shown, out_dir, pair, methods.spec.iterations)
    timing = None
    if timing_shape is not None:
        timing = _table9(shown, timing_shape, methods, timing_repeats)

    summary = _summary(videos)
    seconds = time.perf_counter() - started
    report = {
        "input": str(input),
        "kind": kind,
        "tvl1": {"backend": methods.backend, "params": asdict(methods.params)},
        "repflow": methods.spec.to_json(),
        "device": str(dev),
        "layer_torch_threads": 1 if dev.type == "cpu" else None,
        "cosine_min_px": MOVING_PX,
        "summary": {k: finite(v) for k, v in summary.items()},
        "videos": [v.to_json() for v in videos],
        "failed": [{"path": p, "reason": r} for p, r in failed],
        "pictures": pictures,
        "timing": timing,
        "seconds": seconds,
    }
    atomic_write_text(out_dir / "report.json", json.dumps(report, indent=2) + "\n")
    return CompareResult(
        out_dir, kind, methods.backend, methods.spec, videos, failed, summary, pictures,
        timing, seconds, report,
    )  # fmt: skip


def _check_settings(
    max_frames: int, short_side: int | None, timing_shape: tuple[int, int, int] | None
) -> None:
    if max_frames < 2:
        raise VidactError(f"--frames {max_frames}: flow needs at least 2 frames")
    if short_side is not None and short_side < 16:
        raise VidactError(f"--short-side {short_side}: must be at least 16 pixels")
    if timing_shape is not None and (
        len(timing_shape) != 3 or timing_shape[0] < 2 or min(timing_shape[1:]) < 32
    ):
        raise VidactError(f"timing shape {timing_shape}: need T >= 2 and H, W >= 32")


def _layer_spec(
    checkpoint: str | Path | None, iters: int | None, printed_sobel: bool
) -> FlowLayerSpec:
    """The checkpoint's first flow layer, or the paper's initial values."""
    if checkpoint is None:
        return paper_layer(ITERATIONS if iters is None else iters, printed_sobel=printed_sobel)
    if printed_sobel:
        console.debug("--printed-sobel is implied by --checkpoint")
    return checkpoint_layer(checkpoint, iters)


@dataclass
class _Methods:
    """The two flows compared: TV-L1 (backend, params) and the layer (spec) on `device`."""

    backend: str
    params: TVL1Params
    spec: FlowLayerSpec
    device: torch.device
    layer: RepresentationFlow = field(init=False)

    def __post_init__(self) -> None:
        self.layer = self.spec.build(self.device)
        with one_thread(self.device):  # warm-up
            representation_flow(
                np.zeros((2, 32, 32), np.float32), self.layer, self.spec.gain, self.device
            )


def _compare_videos(
    items: list[InputItem],
    kind: str,
    methods: _Methods,
    max_frames: int,
    short_side: int | None,
    border: int | None,
) -> tuple[list[VideoResult], list[tuple[str, str]], Computed | None]:
    """Every item compared: (results, failed (path, reason), the first one computed).

    A dataset skips a video that cannot be read; a single video or folder raises."""
    videos: list[VideoResult] = []
    failed: list[tuple[str, str]] = []
    shown: Computed | None = None
    title = f"compare-tvl1 ({methods.backend})"
    with console.progress_task(title, total=len(items)) as advance:
        for item in items:
            try:
                computed = compare_video(
                    item, backend=methods.backend, params=methods.params, spec=methods.spec,
                    layer=methods.layer, device=methods.device, max_frames=max_frames,
                    short_side=short_side, border=border,
                )  # fmt: skip
            except VideoReadError as exc:
                if kind != "dataset":
                    raise
                failed.append((str(item.path), exc.reason))
                console.warn(f"skipped {item.path}: {exc.reason}")
                advance(status=f"{item.name}: failed")
                continue
            videos.append(computed.result)
            shown = shown or computed
            advance(status=item.name)
    return videos, failed, shown


def _table9(
    shown: Computed, shape: tuple[int, int, int], methods: _Methods, repeats: int
) -> dict[str, Any]:
    t, h, w = shape
    console.info(f"Table-9 timing at {t}x{h}x{w} (TV-L1 + flow CNN, then rep-flow CNN)")
    return time_table9(
        shown.frames, shape, backend=methods.backend, params=methods.params,
        iterations=methods.spec.iterations, repeats=repeats, device=methods.device,
    )  # fmt: skip
