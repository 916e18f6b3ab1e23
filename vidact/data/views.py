"""Test views: N temporally uniform clips x spatial crops, built from ONE decode per video.

Geometry is decided on the frame as if it had been resized so that its short side is
`short_side`, then mapped back to source pixels (as in training and validation, see
transforms.py). One view is cropped and resized straight to `crop_size`; several views
are cut from the frames resized once (`cut_boxes`), as the papers' test code does. The
crop is a `crop_size` square (smaller only if the resized frame is smaller):

- "1":        the centre crop (the validation view);
- "3":        three crops along the long side — left, centre, right of a landscape frame
              (top, centre, bottom of a portrait one), centred across; as in Non-local
              and CT-Net, which take 3 crops of 256 x 256 after a 256 short-side resize;
- "10":       the four corners and the centre, then the same five flipped horizontally
              (torchvision's `ten_crop` order);
- "random:K": K crop positions drawn uniformly over the resized frame, from a generator
              seeded per video (the representation-flow paper's 25 random crops).

The crops setting is parsed once, into `vidact.data.crops.Crops`; a `ViewSpec` holds the
`ClipSpec` of its clips (`ViewSpec.from_recipe` reads both recipe sections).

Views are ordered clip-major: clip 0 with every crop, then clip 1, ... A video's
frames — the union of the indices of every clip, for every model of an ensemble — are
decoded once by `read_frames`; every view is cut from that one array.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from vidact.constants import IMAGENET_MEAN, IMAGENET_STD
from vidact.data.crops import CENTRE_CROP, Crops
from vidact.data.dataset import ClipSpec
from vidact.data.manifest import Sample
from vidact.data.sampling import segment_range, uniform_clip_indices
from vidact.data.transforms import Box, ClipTransform, _to_source, center_box, crop_resize, mirror
from vidact.data.video import frame_rate, read_clip, read_flow_frames
from vidact.errors import VideoReadError

if TYPE_CHECKING:
    from vidact.recipe import DataConfig, EvalConfig


@dataclass(frozen=True)
class View:
    """One spatial view: a crop box in source pixels, and whether it is mirrored."""

    box: Box
    flip: bool = False


def view_boxes(
    height: int,
    width: int,
    short_side: int,
    crop_size: int,
    crops: Crops,
    rng: np.random.Generator | None = None,
) -> list[View]:
    """The spatial views of a `height` x `width` frame (see the module docstring).

    "random:K" draws from `rng` (required); the other kinds are deterministic.
    """
    kind, count = crops.kind, crops.count
    if kind == "centre":
        return [View(center_box(height, width, short_side, crop_size))]
    ratio = short_side / min(height, width)
    rh, rw = height * ratio, width * ratio
    c = min(crop_size, rh, rw)
    free_h, free_w = rh - c, rw - c
    corners: list[tuple[float, float]]  # (top, left) in resized pixels
    if kind == "three":
        if rw >= rh:  # landscape (or square): along the width
            corners = [(free_h / 2, 0.0), (free_h / 2, free_w / 2), (free_h / 2, free_w)]
        else:  # portrait: along the height
            corners = [(0.0, free_w / 2), (free_h / 2, free_w / 2), (free_h, free_w / 2)]
    elif kind == "ten":
        corners = [(0.0, 0.0), (0.0, free_w), (free_h, 0.0), (free_h, free_w)]
        corners.append((free_h / 2, free_w / 2))
    else:
        if rng is None:
            raise ValueError("random crops need a generator")
        corners = [
            (float(rng.random()) * free_h, float(rng.random()) * free_w) for _ in range(count)
        ]
    views = [View(_to_source((top, left, c, c), ratio, height, width)) for top, left in corners]
    if kind == "ten":
        views += [View(v.box, flip=True) for v in views]
    return views


@dataclass(frozen=True)
class ViewSpec:
    """How one model of an evaluation sees a video: its clips, crops and input."""

    clip: ClipSpec  # frames per clip, sampler, stride, modality
    clips: int = 1
    crops: Crops = CENTRE_CROP
    crop_size: int = 224
    short_side: int = 256
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD

    @classmethod
    def from_recipe(cls, data: DataConfig, cfg: EvalConfig) -> ViewSpec:
        """The test views of a recipe: its data section's clips, its eval section's views
        (crop size and short side default to the training input size and short side)."""
        return cls(
            clip=ClipSpec.from_recipe(data),
            clips=cfg.clips,
            crops=Crops.parse(cfg.crops),
            crop_size=cfg.crop_size or data.input_size,
            short_side=cfg.short_side or data.short_side,
            mean=tuple(data.mean),
            std=tuple(data.std),
        )

    @property
    def num_frames(self) -> int:
        return self.clip.num_frames

    @property
    def modality(self) -> str:
        return self.clip.modality

    @property
    def num_views(self) -> int:
        return self.clips * self.crops.count

    @property
    def channels(self) -> int:
        return {"rgb": 3, "flow": 2, "rgb+flow": 5}[self.modality]

    def describe(self) -> str:
        """ "4 clips x 3 crops"."""
        return f"{self.clips} clip{'s' * (self.clips > 1)} x {self.crops.describe()}"

    def key(self) -> dict[str, Any]:
        """Every field that changes a score, flat (the evaluator's cache key)."""
        clip = self.clip
        return {
            "num_frames": clip.num_frames,
            "sampler": clip.sampler,
            "frame_stride": clip.frame_stride,
            "clips": self.clips,
            "crops": str(self.crops),
            "crop_size": self.crop_size,
            "short_side": self.short_side,
            "modality": clip.modality,
            "mean": self.mean,
            "std": self.std,
        }

    def clip_indices(self, num_frames: int, first: int = 0) -> list[np.ndarray]:
        """Frame indices of each test clip in the frames [first, first + num_frames) (an
        untrimmed video's segment); flow frame t is the flow from t to t + 1."""
        clip = self.clip
        usable = max(num_frames - 1, 1) if "flow" in clip.modality else num_frames
        clips = uniform_clip_indices(
            clip.sampler, usable, clip.num_frames, clip.frame_stride, self.clips
        )
        return [first + c for c in clips]


def build_views(
    frames: np.ndarray,
    rows: Sequence[np.ndarray],
    views: Sequence[View],
    crop_size: int,
    transform: ClipTransform,
) -> Tensor:
    """All views of one source: float (len(rows) * len(views), C, T, S, S), clip-major.

    `frames` is the one decoded array (F, H, W, C); `rows[k]` selects clip k's frames
    from it. The boxes are cut by `cut_boxes`; a flipped view reuses the crop of the same
    box, and flipping flow also mirrors its x channel (as ClipTransform does).
    """
    channels = frames.shape[-1]
    out = torch.empty(
        len(rows) * len(views),
        channels,
        len(rows[0]) if rows else 0,
        crop_size,
        crop_size,
        dtype=torch.float32,  # what normalize returns, whatever torch's default dtype
    )
    for r, row in enumerate(rows):
        cut = cut_boxes(frames[row], [view.box for view in views], crop_size)
        for v, view in enumerate(views):
            clip = cut[view.box]
            if view.flip:
                clip = mirror(clip, transform.modality)
            # each view normalised straight into its row of the result: no stack copy
            transform.normalize(clip.permute(1, 0, 2, 3), out=out[r * len(views) + v])
    return out


def cut_boxes(frames: np.ndarray, boxes: Sequence[Box], crop_size: int) -> dict[Box, Tensor]:
    """Each distinct box of `frames` (T, H, W, C), resized to `crop_size`: uint8
    (T, C, S, S) views.

    One box is cropped and resized: the validation transform's pixels. Several boxes of
    one size are cut from the whole frames resized once at their scale, as the test
    pipelines of CT-Net, mmaction2 and PySlowFast resize the frame and then cut crops.
    Each view's offset is rounded to a whole resized pixel, so it moves by at most half a
    resized pixel from its box; the filter sees the pixels around a crop as a resize of
    the whole frame does. For 3 crops of a 720p clip this is one resize of 1280 x 720
    pixels (torch's fast path for a contiguous frame) instead of three of 630 x 630.
    """
    distinct = list(dict.fromkeys(boxes))
    if len(distinct) == 1 or len({box[2:] for box in distinct}) > 1:
        return {box: crop_resize(frames, box, crop_size) for box in distinct}
    height, width = frames.shape[1:3]
    scale_y, scale_x = crop_size / distinct[0][2], crop_size / distinct[0][3]
    out_h, out_w = round(height * scale_y), round(width * scale_x)
    resized = crop_resize(frames, (0, 0, height, width), (out_h, out_w))
    cut = {}
    for top, left, h, w in distinct:
        y = min(round(top * scale_y), out_h - crop_size)
        x = min(round(left * scale_x), out_w - crop_size)
        cut[(top, left, h, w)] = resized[..., y : y + crop_size, x : x + crop_size]
    return cut


def _segmented(sample: Sample) -> bool:
    return sample.start is not None or sample.end is not None


class VideoViews(Dataset[dict[str, Any]]):
    """Every test view of each video, for one or more ViewSpecs (an ensemble).

    Item `j` is the video `indices[j]` of `samples`: a dict with `index` (into
    `samples`), `views` (one (V, C, T, S, S) tensor per spec, [] when it failed) and
    `error` ("" or "path: reason"). A video that fails to decode never raises.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        root: str | Path,
        specs: Sequence[ViewSpec],
        indices: Sequence[int] | None = None,
        seed: int = 0,
        backend: str | None = None,
    ) -> None:
        self.samples = samples
        self.root = Path(root)
        self.specs = list(specs)
        self.indices = list(range(len(samples))) if indices is None else list(indices)
        self.seed = seed
        self.backend = backend

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, j: int) -> dict[str, Any]:
        index = self.indices[j]
        try:
            views = self.load_views(self.samples[index], index)
        except VideoReadError as exc:
            return {"index": index, "views": [], "error": f"{exc.path}: {exc.reason}"}
        return {"index": index, "views": views, "error": ""}

    def segment_clips(self, sample: Sample, num_frames: int, fps: float) -> list[list[np.ndarray]]:
        """Every spec's clips, from the sample's [start, end) segment (or the whole video)."""
        try:
            first, stop = segment_range(num_frames, fps, sample.start, sample.end)
        except ValueError as exc:
            raise VideoReadError(self.root / sample.path, str(exc)) from None
        return [spec.clip_indices(stop - first, first) for spec in self.specs]

    def load_views(self, sample: Sample, index: int) -> list[Tensor]:
        """Decode `sample` once per source and cut every spec's views from it."""
        video = self.root / sample.path
        uses = {source: any(source in s.modality for s in self.specs) for source in ("rgb", "flow")}
        if uses["flow"] and sample.flow is None:
            raise VideoReadError(video, "no TV-L1 flow folder in the manifest")
        clips: list[list[np.ndarray]] = []

        def needed(source: str) -> list[int]:
            users = [c for s, c in zip(self.specs, clips, strict=True) if source in s.modality]
            return sorted({int(i) for per_spec in users for clip in per_spec for i in clip})

        def pick(num_frames: int, fps: float) -> list[int]:
            clips[:] = self.segment_clips(sample, min(num_frames, sample.num_frames), fps)
            return needed("rgb")

        decoded: dict[str, tuple[np.ndarray, dict[int, int]]] = {}
        if uses["rgb"]:  # one opening of the video: the segment needs its frame rate
            frames = read_clip(video, pick, self.backend)
            decoded["rgb"] = frames, {frame: row for row, frame in enumerate(needed("rgb"))}
        else:
            fps = frame_rate(video, self.backend) if _segmented(sample) else 0.0
            clips[:] = self.segment_clips(sample, sample.num_frames, fps)
        if uses["flow"]:
            flow_needed = needed("flow")
            frames = read_flow_frames(self.root / str(sample.flow), flow_needed)
            decoded["flow"] = frames, {frame: row for row, frame in enumerate(flow_needed)}
        result = []
        for spec, spec_clips in zip(self.specs, clips, strict=True):
            parts = []
            for source, (frames, position) in decoded.items():
                if source not in spec.modality:
                    continue
                rows = [np.array([position[int(i)] for i in clip]) for clip in spec_clips]
                # The same seed for both streams: RGB and flow get the same random crops.
                rng = np.random.default_rng([self.seed, index])
                height, width = frames.shape[1:3]
                views = view_boxes(height, width, spec.short_side, spec.crop_size, spec.crops, rng)
                transform = ClipTransform(
                    train=False, modality=source, mean=spec.mean, std=spec.std
                )
                parts.append(build_views(frames, rows, views, spec.crop_size, transform))
            result.append(parts[0] if len(parts) == 1 else torch.cat(parts, dim=1))
        return result
