"""`compare_tvl1`: the whole comparison over the input's videos, the summary, the
pictures and timing, and ``report.json`` (`CompareResult`)."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vidact import console
from vidact.atomic import atomic_write_text
from vidact.compare.device import _one_thread
from vidact.compare.inputs import DEFAULT_VIDEOS, resolve_input
from vidact.compare.layers import (
    FlowLayerSpec,
    checkpoint_layer,
    paper_layer,
    representation_flow,
)
from vidact.compare.measure import MOVING_PX, VideoResult, _compare_video, _Computed, _finite
from vidact.compare.pictures import _write_pictures
from vidact.compare.timing import DEFAULT_TIMING_SHAPE, time_table9
from vidact.errors import VidactError, VideoReadError
from vidact.flow.backends import resolve_backend
from vidact.flow.tvl1 import TVL1Params
from vidact.models.rep_flow import ITERATIONS

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
    if max_frames < 2:
        raise VidactError(f"--frames {max_frames}: flow needs at least 2 frames")
    if short_side is not None and short_side < 16:
        raise VidactError(f"--short-side {short_side}: must be at least 16 pixels")
    if timing_shape is not None and (
        len(timing_shape) != 3 or timing_shape[0] < 2 or min(timing_shape[1:]) < 32
    ):
        raise VidactError(f"timing shape {timing_shape}: need T >= 2 and H, W >= 32")
    name = resolve_backend(backend)
    params = params or TVL1Params.opencv_cpu()
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if checkpoint is not None:
        if printed_sobel:
            console.debug("--printed-sobel is implied by --checkpoint")
        spec = checkpoint_layer(checkpoint, iters)
    else:
        spec = paper_layer(ITERATIONS if iters is None else iters, printed_sobel=printed_sobel)
    layer = spec.build(dev)
    with _one_thread(dev):  # warm-up
        representation_flow(np.zeros((2, 32, 32), np.float32), layer, spec.gain, dev)
    kind, items = resolve_input(input, num_videos, split)
    out_dir = Path(out) if out is not None else default_out(input)
    out_dir.mkdir(parents=True, exist_ok=True)

    videos: list[VideoResult] = []
    failed: list[tuple[str, str]] = []
    shown: _Computed | None = None
    with console.progress_task(f"compare-tvl1 ({name})", total=len(items)) as advance:
        for item in items:
            try:
                computed = _compare_video(
                    item,
                    backend=name,
                    params=params,
                    spec=spec,
                    layer=layer,
                    device=dev,
                    max_frames=max_frames,
                    short_side=short_side,
                    border=border,
                )
            except VideoReadError as exc:
                if kind != "dataset":
                    raise
                failed.append((str(item.path), exc.reason))
                console.warn(f"skipped {item.path}: {exc.reason}")
                advance(status=f"{item.name}: failed")
                continue
            videos.append(computed.result)
            if shown is None:
                shown = computed
            advance(status=item.name)
    if shown is None:
        raise VidactError(
            f"{input}: none of the {len(items)} video(s) could be read "
            f"(first: {failed[0][0]}: {failed[0][1]})"
        )
    pictures = _write_pictures(shown, out_dir, pair, spec.iterations)

    timing = None
    if timing_shape is not None:
        t, h, w = timing_shape
        console.info(f"Table-9 timing at {t}x{h}x{w} (TV-L1 + flow CNN, then rep-flow CNN)")
        timing = time_table9(
            shown.frames,
            timing_shape,
            backend=name,
            params=params,
            iterations=spec.iterations,
            repeats=timing_repeats,
            device=dev,
        )

    summary = _summary(videos)
    seconds = time.perf_counter() - started
    report = {
        "input": str(input),
        "kind": kind,
        "tvl1": {"backend": name, "params": asdict(params)},
        "repflow": spec.to_json(),
        "device": str(dev),
        "layer_torch_threads": 1 if dev.type == "cpu" else None,
        "cosine_min_px": MOVING_PX,
        "summary": {k: _finite(v) for k, v in summary.items()},
        "videos": [v.to_json() for v in videos],
        "failed": [{"path": p, "reason": r} for p, r in failed],
        "pictures": pictures,
        "timing": timing,
        "seconds": seconds,
    }
    atomic_write_text(out_dir / "report.json", json.dumps(report, indent=2) + "\n")
    return CompareResult(
        out_dir=out_dir,
        kind=kind,
        backend=name,
        layer=spec,
        videos=videos,
        failed=failed,
        summary=summary,
        pictures=pictures,
        timing=timing,
        seconds=seconds,
        report=report,
    )
