"""`vidact compare-tvl1`: classic TV-L1 against the representation-flow layer, on frames.

For every consecutive frame pair of a video (or of a few videos of a prepared dataset):

- the TV-L1 flow (`vidact.flow.compute_flow`, any backend), the reference;
- the representation-flow layer's flow (Algorithm 1 of Piergiovanni & Ryoo, CVPR 2019,
  `vidact.models.rep_flow.RepresentationFlow`) on the grayscale frames (BT.601, 0-255, the
  same conversion TV-L1 gets), all pairs of a video in one batched call;
- the flow-of-flow: the same layer applied to consecutive rep-flow fields. It runs on the
  *magnitude* of each field, min-max normalised to [0, 255] over the clip (section 3.2),
  which gives one displayable motion field per pair of fields: the motion of the motion
  pattern. (Inside the networks, FoF runs on every flow channel separately; on a single
  grayscale input that would give one field per flow component, which cannot be drawn as
  one picture.) Field t is the flow between rep-flow t and t + 1 (frames t, t+1, t+2).

The layer's parameters are either the paper's initial values (tau 0.25, lambda 0.15,
theta 0.3, divergence [-1, 1], the printed Sobel kernels) or those of the first flow layer
of a checkpoint. Units:

- Paper values (default): the layer runs with ``normalize_sobel=True``, so it is
  single-scale TV-L1 in pixels with the same tau, lambda, theta as the TV-L1 reference.
- A checkpoint (or ``printed_sobel=True``): the layer runs exactly as inside the network,
  with the unnormalised (printed or learned) Sobel kernels, and its output is multiplied by
  the Sobel gain 8 to give pixels. That is *not* the same as the learned tau, lambda, theta
  with normalised kernels: with a kernel of gain g, the layer equals the normalised one
  with tau, lambda and theta each multiplied by g, output divided by g (exactly; a test
  checks it). The report lists the values as stored and these pixel-unit equivalents.

Measures (per video and averaged): end-point error and cosine similarity of rep-flow
against TV-L1 and, when the video has stored ground truth (the synthetic dataset's val
videos), of both methods against it on the stored pairs; all over a border-masked
region. Times per pair and per video for each method.

Pictures: ``panel.png`` (RGB | TV-L1 | rep-flow | flow-of-flow [| ground truth], like the
paper's Figures 1 and 5) for one pair of the first video, and ``clip.gif`` over all its
pairs. Table-9-style timing: a flow CNN that must first run TV-L1 (``flow_resnet34``) against
the rep-flow network (``repflow_resnet34``), end to end on the same clip (32x224x224 by
default). Everything goes to ``report.json``.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from PIL import Image

from vidact import console
from vidact.atomic import atomic_path, atomic_write_text
from vidact.data.manifest import Sample, read_manifest
from vidact.data.video import FRAME_TEMPLATE, probe, read_frames
from vidact.errors import VidactError, VideoReadError
from vidact.flow.backends import compute_flow, resolve_backend, to_gray
from vidact.flow.metrics import border_mask, cosine_similarity, endpoint_error
from vidact.flow.tvl1 import TVL1Params
from vidact.flow.visualize import flow_to_color, make_panel
from vidact.models.rep_flow import (
    DIV_X,
    DIV_Y,
    ITERATIONS,
    LAMBDA,
    SOBEL_GAIN,
    SOBEL_X,
    SOBEL_Y,
    TAU,
    THETA,
    RepresentationFlow,
)

__all__ = [
    "DEFAULT_TIMING_SHAPE",
    "CompareResult",
    "FlowLayerSpec",
    "VideoResult",
    "checkpoint_layer",
    "compare_tvl1",
    "flow_of_flow",
    "paper_layer",
    "parse_shape",
    "representation_flow",
    "time_table9",
]

DEFAULT_TIMING_SHAPE = (32, 224, 224)  # Table 9: "a batch of videos with size 32x224x224"
DEFAULT_VIDEOS = 4  # videos sampled from a prepared dataset
DEFAULT_MAX_FRAMES = 32  # consecutive frames read per video (31 pairs)
MOVING_PX = 0.1  # cosine similarity only where both flows move more than this (px)
PIXEL_BUDGET = 1 << 22  # pairs x H x W per layer call (bounds the layer's memory)
TILE_HEIGHT = (192, 360)  # picture tiles are scaled to this height range
GIF_FRAME_MS = 250
TIMING_CLASSES = 400  # classifier size of the timed networks (Kinetics-400)
_MEAN = (0.485, 0.456, 0.406)  # ImageNet statistics (the recipes' default normalisation)
_STD = (0.229, 0.224, 0.225)
_LAYER_KEYS = ("tau", "lam", "theta", "div_x", "div_y", "sobel_x", "sobel_y")
_MANIFEST_ORDER = ("val", "test", "train")  # which manifest of a dataset folder, by default


# ------------------------------------------------------------------------ the flow layer


@dataclass(frozen=True)
class FlowLayerSpec:
    """Which representation-flow layer compare-tvl1 runs, and in which units.

    values: tau, lam, theta (floats), div_x, div_y (2), sobel_x, sobel_y (3x3) as used.
    normalize_sobel: False = the layer as inside the networks (unnormalised Sobel, output
        multiplied by `gain` = 8 to give pixels); True = normalised kernels, pixels directly.
    """

    source: str
    iterations: int
    normalize_sobel: bool
    values: dict[str, Any]
    changed: tuple[str, ...] = ()  # parameters that differ from the paper's initial values
    learn: str | None = None  # the network's `learn` setting, when the recipe says

    @property
    def gain(self) -> float:
        return 1.0 if self.normalize_sobel else SOBEL_GAIN

    def pixel_equivalent(self) -> dict[str, float]:
        """tau, lambda, theta of the normalised-Sobel (pixel-unit) layer that computes the
        same flow: each multiplied by the kernel gain (1 when already normalised)."""
        g = self.gain
        return {k: float(self.values[k]) * g for k in ("tau", "lam", "theta")}

    def build(self, device: torch.device | str = "cpu") -> RepresentationFlow:
        v = self.values
        layer = RepresentationFlow(
            iterations=self.iterations,
            learn="none",
            normalize_sobel=self.normalize_sobel,
            tau=float(v["tau"]),
            lam=float(v["lam"]),
            theta=float(v["theta"]),
            sobel_x=v["sobel_x"],
            sobel_y=v["sobel_y"],
            div_x=v["div_x"],
            div_y=v["div_y"],
            checkpoint=False,
        )
        return layer.to(device).eval()

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "iterations": self.iterations,
            "sobel": "normalised (/8, pixels)" if self.normalize_sobel else "as in the network, x8",
            "values": self.values,
            "pixel_equivalent": self.pixel_equivalent(),
            "changed_from_paper": list(self.changed),
            "learn": self.learn,
            "flow_of_flow": "the layer on the clip-normalised magnitude of the rep-flow fields",
        }


def _paper_values() -> dict[str, Any]:
    return {
        "tau": TAU,
        "lam": LAMBDA,
        "theta": THETA,
        "div_x": list(DIV_X),
        "div_y": list(DIV_Y),
        "sobel_x": [list(r) for r in SOBEL_X],
        "sobel_y": [list(r) for r in SOBEL_Y],
    }


def paper_layer(iterations: int = ITERATIONS, *, printed_sobel: bool = False) -> FlowLayerSpec:
    """The paper's initial parameters (Algorithm 1; the classic TV-L1 tau, lambda, theta).

    printed_sobel: run with the printed (unnormalised) kernels as an untrained network layer
    does, output x8; default: normalised kernels, i.e. single-scale TV-L1 in pixels."""
    _check_iterations(iterations)
    return FlowLayerSpec(
        source="paper initial values",
        iterations=iterations,
        normalize_sobel=not printed_sobel,
        values=_paper_values(),
    )


def _check_iterations(iterations: int) -> None:
    if iterations < 1:
        raise VidactError(f"--iters {iterations}: the flow layer needs at least 1 iteration")


def checkpoint_layer(path: str | Path, iterations: int | None = None) -> FlowLayerSpec:
    """The first representation-flow layer of a checkpoint's model (its tau, lambda,
    theta, divergence and Sobel tensors, learned or not, read from the state_dict by name).

    iterations: default the checkpoint recipe's `model.iterations`, else the paper's 20.
    The layer runs with the network's Sobel setting (`model.normalize_sobel`, default off).
    """
    from vidact.engine.checkpoint import load_checkpoint

    path = Path(path)
    data = load_checkpoint(path)
    state = data.get("model")
    if not isinstance(state, dict):
        raise VidactError(f"{path}: the checkpoint has no model state_dict")
    prefix = _first_flow_prefix(state)
    if prefix is None:
        raise VidactError(
            f"{path}: no representation-flow layer in this model (no '*.tau', '*.lam', "
            "'*.theta', '*.div_x', ... weights); pass a checkpoint of a repflow_* model, "
            "or leave out --checkpoint to use the paper's initial values"
        )
    values: dict[str, Any] = {}
    shapes = {"div_x": (2,), "div_y": (2,), "sobel_x": (3, 3), "sobel_y": (3, 3)}
    for key in _LAYER_KEYS:
        tensor = state[prefix + key].detach().to(torch.float64).cpu()
        want = shapes.get(key, ())
        if tuple(tensor.shape) != want:
            raise VidactError(
                f"{path}: {prefix + key} has shape {tuple(tensor.shape)}, expected {want}; "
                "is this a vidact representation-flow checkpoint?"
            )
        values[key] = tensor.item() if not want else tensor.tolist()
    model_cfg = (data.get("recipe") or {}).get("model") or {}
    if iterations is None:
        iterations = int(model_cfg.get("iterations", ITERATIONS))
    _check_iterations(iterations)
    learn = model_cfg.get("learn")
    paper = _paper_values()
    changed = tuple(
        k for k in _LAYER_KEYS if not np.allclose(np.asarray(values[k]), np.asarray(paper[k]))
    )
    return FlowLayerSpec(
        source=f"{path} ({prefix.rstrip('.') or 'top level'})",
        iterations=iterations,
        normalize_sobel=bool(model_cfg.get("normalize_sobel", False)),
        values=values,
        changed=changed,
        learn=None if learn is None else str(learn),
    )


def _first_flow_prefix(state: dict[str, Any]) -> str | None:
    """The name prefix of the first RepresentationFlow in a state_dict (module order)."""
    for key in state:
        if key == "tau" or key.endswith(".tau"):
            prefix = key[: -len("tau")]
            if all(prefix + k in state for k in _LAYER_KEYS):
                return prefix
    return None


@contextlib.contextmanager
def _one_thread(device: torch.device) -> Iterator[None]:
    """One torch intra-op thread on CPU (restored after): the layer's ops are small, and
    with 2 threads on a busy CPU every op can stall on a descheduled OpenMP thread (we
    measured 10-60x slower runs of the layer; the TV-L1 torch backend does the same)."""
    if device.type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def representation_flow(
    gray: np.ndarray,
    layer: RepresentationFlow,
    gain: float = 1.0,
    device: torch.device | str = "cpu",
) -> np.ndarray:
    """The layer's flow between consecutive maps of `gray` (T, H, W) on a 0-255 scale ->
    float32 (T-1, H, W, 2) in pixels (x right, y down, frame t to t+1), times `gain`.

    All pairs go through the layer in batches of about `PIXEL_BUDGET` pixels."""
    dev = torch.device(device)
    t, h, w = gray.shape
    out = np.empty((max(t - 1, 0), h, w, 2), np.float32)
    if t < 2:
        return out
    x = torch.from_numpy(np.ascontiguousarray(gray, dtype=np.float32)).to(dev)
    step = max(1, PIXEL_BUDGET // (h * w))
    with torch.inference_mode():
        for s in range(0, t - 1, step):
            e = min(s + step, t - 1)
            flow = layer(x[s:e, None], x[s + 1 : e + 1, None])  # (B, 2, H, W)
            if gain != 1.0:
                flow = flow * gain
            out[s:e] = flow.permute(0, 2, 3, 1).float().cpu().numpy()
    return out


def flow_of_flow(
    flow: np.ndarray,
    layer: RepresentationFlow,
    gain: float = 1.0,
    device: torch.device | str = "cpu",
) -> np.ndarray:
    """The layer applied to consecutive flow fields (P, H, W, 2) -> (P-1, H, W, 2).

    Input maps: the magnitude of each field, min-max normalised to [0, 255] over the whole
    clip (one range for all, so brightness constancy means the same at every pair)."""
    mag = np.sqrt(np.square(flow.astype(np.float32)).sum(-1))
    lo, hi = (float(mag.min()), float(mag.max())) if mag.size else (0.0, 0.0)
    scaled = (mag - lo) / max(hi - lo, 1e-6) * 255.0
    return representation_flow(scaled.astype(np.float32), layer, gain, device)


# ------------------------------------------------------------------------------ inputs


@dataclass(frozen=True)
class _Item:
    path: Path
    name: str
    gt_flow: Path | None = None
    start: float | None = None


def _is_frame_folder(path: Path) -> bool:
    return (path / FRAME_TEMPLATE.format(1)).is_file()


def _pick_manifest(root: Path, split: str | None) -> Path:
    if split is not None:
        name = split if split.endswith(".jsonl") else f"{split}.jsonl"
        path = root / name
        if not path.is_file():
            found = ", ".join(sorted(p.name for p in root.glob("*.jsonl"))) or "none"
            raise VidactError(f"{path}: no such manifest (found: {found}); check --split")
        return path
    for name in _MANIFEST_ORDER:
        if (root / f"{name}.jsonl").is_file():
            return root / f"{name}.jsonl"
    manifests = sorted(root.glob("*.jsonl"))
    if not manifests:
        raise VidactError(f"{root}: no *.jsonl manifest here")
    return manifests[0]


def _item(root: Path, sample: Sample) -> _Item:
    gt = root / sample.gt_flow if sample.gt_flow else None
    return _Item(root / sample.path, sample.path, gt, sample.start)


def _spread(count: int, k: int) -> list[int]:
    """k indices spread evenly over range(count) (all of them when k >= count)."""
    if k >= count:
        return list(range(count))
    return sorted({round(float(x)) for x in np.linspace(0, count - 1, k)})


def _sample_of(video: Path, levels: int = 4) -> tuple[Path, Sample] | None:
    """The manifest record of `video` in a dataset folder above it, if there is one."""
    target = video.resolve()
    for root in list(video.resolve().parents)[:levels]:
        for manifest in sorted(root.glob("*.jsonl")):
            try:
                samples = read_manifest(manifest)
            except VidactError:
                continue
            for sample in samples:
                if (root / sample.path).resolve() == target:
                    return root, sample
    return None


def resolve_input(
    path: str | Path, num_videos: int = DEFAULT_VIDEOS, split: str | None = None
) -> tuple[str, list[_Item]]:
    """INPUT -> (kind, items): "video", "frames" (a JPEG frame folder) or "dataset" (a
    prepared dataset folder: `num_videos` spread over a manifest, val first)."""
    path = Path(path)
    if not path.exists():
        raise VidactError(f"{path}: not found; pass a video, a frame folder or a dataset folder")
    if path.is_file():
        found = _sample_of(path)
        if found is not None:
            root, sample = found
            return "video", [_item(root, sample)]
        return "video", [_Item(path, path.name)]
    if _is_frame_folder(path):
        return "frames", [_Item(path, path.name)]
    if any(path.glob("*.jsonl")):
        if num_videos < 1:
            raise VidactError(f"--videos {num_videos}: must be at least 1")
        manifest = _pick_manifest(path, split)
        samples = read_manifest(manifest)
        if not samples:
            raise VidactError(f"{manifest}: manifest is empty")
        return "dataset", [_item(path, samples[i]) for i in _spread(len(samples), num_videos)]
    raise VidactError(
        f"{path}: a folder must hold video frames ({FRAME_TEMPLATE.format(1)}, ...) or a "
        "prepared dataset (*.jsonl manifests, e.g. from `vidact prepare synthetic`)"
    )


def _read_clip(item: _Item, max_frames: int) -> tuple[np.ndarray, int]:
    """Up to `max_frames` consecutive frames from the item's start -> (frames, first index)."""
    info = probe(item.path)
    first = 0
    if item.start is not None and info.fps > 0:
        first = max(0, min(round(item.start * info.fps), info.num_frames - 2))
    count = min(max_frames, info.num_frames - first)
    if count < 2:
        raise VideoReadError(item.path, f"has {info.num_frames} frame(s); flow needs at least 2")
    return read_frames(item.path, range(first, first + count)), first


def _resize_frames(frames: np.ndarray, short_side: int) -> np.ndarray:
    h, w = frames.shape[1:3]
    scale = short_side / min(h, w)
    if scale == 1.0:
        return frames
    size = (max(2, round(w * scale)), max(2, round(h * scale)))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    return np.stack([cv2.resize(f, size, interpolation=interp) for f in frames])


def _resize_flow(flow: np.ndarray, height: int, width: int) -> np.ndarray:
    """(P, h, w, 2) flow in pixels -> (P, height, width, 2), vectors rescaled."""
    h, w = flow.shape[1:3]
    if (h, w) == (height, width):
        return flow
    sx, sy = width / w, height / h
    out = np.stack([cv2.resize(f, (width, height), interpolation=cv2.INTER_LINEAR) for f in flow])
    out[..., 0] *= sx
    out[..., 1] *= sy
    return out.astype(np.float32)


def _load_gt(
    item: _Item, first: int, count: int, height: int, width: int
) -> tuple[list[int], np.ndarray] | None:
    """Stored exact flow of the pairs inside the frames read -> (pair indices relative to
    the first frame read, (G, H, W, 2) flow), or None."""
    if item.gt_flow is None:
        return None
    if not item.gt_flow.is_file():
        console.warn(f"{item.gt_flow}: ground-truth flow missing; compared with TV-L1 only")
        return None
    with np.load(item.gt_flow) as data:
        pairs = [int(p) for p in data["pairs"]]
        flow = np.asarray(data["flow"], np.float32)
    keep = [i for i, p in enumerate(pairs) if first <= p and p + 1 < first + count]
    if not keep:
        return None
    flow = _resize_flow(flow[keep], height, width)
    return [pairs[i] - first for i in keep], flow


# ----------------------------------------------------------------------------- per video


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
        return {k: _finite(v) for k, v in d.items()}


def _finite(value: Any) -> Any:
    """NaN/inf -> None, so report.json is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _cos(flow: np.ndarray, ref: np.ndarray, mask: np.ndarray) -> float | None:
    value = cosine_similarity(flow, ref, mask, eps=MOVING_PX)
    return None if math.isnan(value) else value


@dataclass
class _Computed:
    item: _Item
    frames: np.ndarray
    tvl1: np.ndarray
    rep: np.ndarray
    fof: np.ndarray
    gt: tuple[list[int], np.ndarray] | None
    result: VideoResult


def _compare_video(
    item: _Item,
    *,
    backend: str,
    params: TVL1Params,
    spec: FlowLayerSpec,
    layer: RepresentationFlow,
    device: torch.device,
    max_frames: int,
    short_side: int | None,
    border: int | None,
) -> _Computed:
    frames, first = _read_clip(item, max_frames)
    if short_side is not None:
        frames = _resize_frames(frames, short_side)
    t, h, w = frames.shape[:3]

    start = time.perf_counter()
    tvl1 = compute_flow(frames, backend=backend, params=params)
    tvl1_ms = (time.perf_counter() - start) * 1e3

    with _one_thread(device):
        _sync(device)
        start = time.perf_counter()
        gray, _ = to_gray(frames)
        rep = representation_flow(gray, layer, spec.gain, device)
        _sync(device)
        rep_ms = (time.perf_counter() - start) * 1e3

        start = time.perf_counter()
        fof = flow_of_flow(rep, layer, spec.gain, device)
        _sync(device)
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
    gt = _load_gt(item, first, t, h, w)
    if gt is not None:
        pairs, exact = gt
        result.gt_pairs = pairs
        result.gt_magnitude = endpoint_error(np.zeros_like(exact), exact, mask)
        result.tvl1_epe_gt = endpoint_error(tvl1[pairs], exact, mask)
        result.repflow_epe_gt = endpoint_error(rep[pairs], exact, mask)
        result.tvl1_cos_gt = _cos(tvl1[pairs], exact, mask)
        result.repflow_cos_gt = _cos(rep[pairs], exact, mask)
    return _Computed(item, frames, tvl1, rep, fof, gt, result)


def _border(height: int, width: int, border: int | None) -> int:
    """The margin left out of every measure: default 1/16 of the short side, at least 2."""
    if border is None:
        return max(2, min(height, width) // 16)
    if border < 0 or 2 * border >= min(height, width):
        raise VidactError(
            f"--border {border}: must be >= 0 and leave pixels inside a {width}x{height} frame"
        )
    return border


# ------------------------------------------------------------------------------ pictures


def _scale(*flows: np.ndarray) -> float:
    """Shared colour scale: the largest 99th-percentile magnitude among `flows`."""
    best = 0.0
    for f in flows:
        if f.size:
            best = max(best, float(np.percentile(np.sqrt(np.square(f).sum(-1)), 99)))
    return best if best > 0 else 1.0


def _tile_height(height: int) -> int:
    return int(min(max(height, TILE_HEIGHT[0]), TILE_HEIGHT[1]))


def _blank(height: int, width: int) -> np.ndarray:
    return np.full((height, width, 3), 210, np.uint8)


def _panel(
    rgb: np.ndarray,
    tiles: Sequence[tuple[str, np.ndarray | None, float]],
    title: str,
) -> np.ndarray:
    """RGB then one colour-coded tile per (title, flow or None for a grey tile, scale)."""
    h, w = rgb.shape[:2]
    images = [rgb]
    titles = [title]
    for name, flow, scale in tiles:
        images.append(_blank(h, w) if flow is None else flow_to_color(flow, max_flow=scale))
        titles.append(name)
    return make_panel(images, titles, height=_tile_height(h))


def _default_pair(pairs: int, gt: tuple[list[int], np.ndarray] | None) -> int:
    """The middle ground-truth pair if any, else the middle pair; one with a flow-of-flow."""
    candidates = gt[0] if gt is not None else list(range(pairs))
    with_fof = [p for p in candidates if p < pairs - 1] or candidates
    return with_fof[len(with_fof) // 2]


def _write_pictures(c: _Computed, out: Path, pair: int | None, iterations: int) -> dict[str, Any]:
    pairs = c.rep.shape[0]
    if pair is None:
        pair = _default_pair(pairs, c.gt)
    elif not 0 <= pair < pairs:
        raise VidactError(
            f"--pair {pair}: {c.item.path} has pairs 0..{pairs - 1} in the frames read"
        )
    rep_name = f"rep-flow ({iterations} it.)"
    gt_flow = None
    if c.gt is not None and pair in c.gt[0]:
        gt_flow = c.gt[1][c.gt[0].index(pair)]
    fof = c.fof[pair] if pair < c.fof.shape[0] else None
    # One colour scale for every flow of the panel, set by the references (TV-L1, ground
    # truth): rep-flow vectors beyond it are drawn saturated and darkened.
    scale = _scale(c.tvl1[pair], *([] if gt_flow is None else [gt_flow]))
    fof_scale = _scale(fof) if fof is not None else 1.0
    tiles: list[tuple[str, np.ndarray | None, float]] = [
        ("TV-L1", c.tvl1[pair], scale),
        (rep_name, c.rep[pair], scale),
        ("flow-of-flow", fof, fof_scale),
    ]
    if gt_flow is not None:
        tiles.append(("ground truth", gt_flow, scale))
    panel = _panel(c.frames[pair], tiles, f"RGB, pair {pair}")
    with atomic_path(out / "panel.png") as tmp:
        Image.fromarray(panel).save(tmp, format="PNG")

    clip_scale = _scale(c.tvl1)
    clip_fof_scale = _scale(c.fof)
    images = []
    for t in range(pairs):
        tiles = [
            ("TV-L1", c.tvl1[t], clip_scale),
            (rep_name, c.rep[t], clip_scale),
            ("flow-of-flow", c.fof[t] if t < c.fof.shape[0] else None, clip_fof_scale),
        ]
        images.append(Image.fromarray(_panel(c.frames[t], tiles, f"RGB {t}")))
    with atomic_path(out / "clip.gif") as tmp:
        images[0].save(
            tmp,
            format="GIF",
            save_all=True,
            append_images=images[1:],
            duration=GIF_FRAME_MS,
            loop=0,
        )
    return {
        "panel": "panel.png",
        "clip": "clip.gif",
        "video": str(c.item.path),
        "pair": pair,
        "panel_tiles": ["RGB", "TV-L1", "rep-flow", "flow-of-flow"]
        + (["ground truth"] if gt_flow is not None else []),
        "panel_max_flow_px": scale,
        "panel_fof_max": fof_scale,
        "clip_max_flow_px": clip_scale,
        "clip_fof_max": clip_fof_scale,
    }


# ------------------------------------------------------------------------ Table-9 timing


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
        _sync(device)
        start = time.perf_counter()
        run()
        _sync(device)
        best = min(best, (time.perf_counter() - start) * 1e3)
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
    mean = torch.tensor(_MEAN, device=dev).view(1, 3, 1, 1, 1)
    std = torch.tensor(_STD, device=dev).view(1, 3, 1, 1, 1)
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
        tv_best = cnn_best = total_best = math.inf
        for _ in range(repeats):
            _sync(dev)
            start = time.perf_counter()
            flow = tvl1()
            mid = time.perf_counter()
            flow_cnn(flow)
            _sync(dev)
            end = time.perf_counter()
            if end - start < total_best:
                tv_best, cnn_best, total_best = mid - start, end - mid, end - start
        rep_total = _best_ms(rep_cnn, repeats, dev)
    flow_total = total_best * 1e3
    return {
        "shape": list(shape),
        "device": str(dev),
        "torch_threads": torch.get_num_threads(),
        "backend": name,
        "repeats": repeats,
        "flow_cnn": {
            "model": "flow_resnet34 (stack 1) after TV-L1",
            "tvl1_ms": tv_best * 1e3,
            "cnn_ms": cnn_best * 1e3,
            "total_ms": flow_total,
        },
        "repflow_cnn": {
            "model": f"repflow_resnet34 ({iterations} iterations)",
            "total_ms": rep_total,
        },
        "ratio": flow_total / rep_total,
    }


# ------------------------------------------------------------------------------ pipeline


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
    """Compare TV-L1 with the representation-flow layer on `input` (see the module doc).

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
