"""compare-tvl1's INPUT: a video, a frame folder or a prepared dataset -> the videos to
compare; their frames and, where the dataset stores it, their ground-truth flow."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from vidact import console
from vidact.data.manifest import Sample, read_manifest
from vidact.data.video import FRAME_TEMPLATE, probe, read_frames
from vidact.errors import VidactError, VideoReadError

DEFAULT_VIDEOS = 4  # videos sampled from a prepared dataset
_MANIFEST_ORDER = ("val", "test", "train")  # which manifest of a dataset folder, by default


@dataclass(frozen=True)
class InputItem:
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


def _item(root: Path, sample: Sample) -> InputItem:
    gt = root / sample.gt_flow if sample.gt_flow else None
    return InputItem(root / sample.path, sample.path, gt, sample.start)


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
) -> tuple[str, list[InputItem]]:
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
        return "video", [InputItem(path, path.name)]
    if _is_frame_folder(path):
        return "frames", [InputItem(path, path.name)]
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


def read_clip(item: InputItem, max_frames: int) -> tuple[np.ndarray, int]:
    """Up to `max_frames` consecutive frames from the item's start -> (frames, first index)."""
    info = probe(item.path)
    first = 0
    if item.start is not None and info.fps > 0:
        first = max(0, min(round(item.start * info.fps), info.num_frames - 2))
    count = min(max_frames, info.num_frames - first)
    if count < 2:
        raise VideoReadError(item.path, f"has {info.num_frames} frame(s); flow needs at least 2")
    return read_frames(item.path, range(first, first + count)), first


def resize_frames(frames: np.ndarray, short_side: int) -> np.ndarray:
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


def load_gt(
    item: InputItem, first: int, count: int, height: int, width: int
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
