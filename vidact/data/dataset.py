"""torch Datasets over manifests, and the (distributed-aware) DataLoader builder.

Reproducibility: the sampler yields `(epoch, index)` pairs, and every random choice of
a sample (temporal offset, crop, flip) comes from a generator seeded by
(seed, epoch, index). A clip is therefore the same whatever the number of workers or
processes, and a resumed run sees exactly the clips an uninterrupted run would.

Bad videos: a sample whose video fails to decode is replaced by another sample (chosen
from the same seeded generator); the batch carries the names of the videos that failed
so the trainer can log each once and count them. Training never stops for one.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from vidact.data.manifest import Sample
from vidact.data.sampling import sample_indices, segment_range
from vidact.data.transforms import ClipTransform
from vidact.data.video import frame_rate, read_clip, read_flow_frames, read_frames
from vidact.errors import VideoReadError

if TYPE_CHECKING:
    from vidact.recipe import DataConfig

# How many replacement samples to try before giving up on a batch slot.
_MAX_REPLACEMENTS = 10


@dataclass(frozen=True)
class ClipSpec:
    """How clips are cut from a video."""

    num_frames: int = 16
    sampler: str = "consecutive"
    frame_stride: int = 1
    modality: str = "rgb"  # rgb | flow | rgb+flow
    video_backend: str | None = None

    @classmethod
    def from_recipe(cls, data: DataConfig) -> ClipSpec:
        """The clips of a recipe's data section (for training, validation and the test
        views alike)."""
        return cls(
            data.num_frames, data.sampler, data.frame_stride, data.modality, data.video_backend
        )


class ClipDataset(Dataset[dict[str, Any]]):
    """Clips of the videos in a manifest. Items are dicts:

    `clip` float (C, T, S, S); `label` int; `index` int; `failed` the paths that failed to
    decode while producing this item, joined by newlines ("" when none).
    """

    def __init__(
        self,
        samples: list[Sample],
        root: str | Path,
        spec: ClipSpec,
        transform: ClipTransform,
        seed: int = 0,
    ) -> None:
        self.samples = samples
        self.root = Path(root)
        self.spec = spec
        self.transform = transform
        self.seed = seed
        self.flow_transform = dataclasses.replace(transform, modality="flow")

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        rng = np.random.default_rng([self.seed, epoch, index]) if self.transform.train else None
        failed: list[str] = []
        current = index
        for _ in range(_MAX_REPLACEMENTS):
            try:
                clip = self.load_clip(self.samples[current], rng)
                return {
                    "clip": clip,
                    "label": self.samples[current].label,
                    "index": current,
                    "failed": "\n".join(failed),
                }
            except VideoReadError as exc:
                failed.append(f"{exc.path}: {exc.reason}")
                pick = rng if rng is not None else np.random.default_rng([self.seed, index])
                current = int(pick.integers(len(self.samples)))
        raise VideoReadError(
            self.root, f"{_MAX_REPLACEMENTS} videos in a row failed to decode; check the dataset"
        )

    def load_clip(self, sample: Sample, rng: np.random.Generator | None) -> torch.Tensor:
        """Decode and transform one clip of `sample` (raises VideoReadError). An untrimmed
        video's clip comes from its [start, end) segment only."""
        spec = self.spec
        video = self.root / sample.path
        if "flow" in spec.modality and sample.flow is None:
            raise VideoReadError(video, "no TV-L1 flow folder in the manifest")
        if spec.modality == "flow":
            fps = frame_rate(video, spec.video_backend) if _segmented(sample) else 0.0
            indices = self.clip_indices(sample, sample.num_frames, fps, rng)
            return self.flow_transform(self.read_flow(sample, indices), rng)
        frames, indices = self.read_rgb(sample, rng)
        if spec.modality == "rgb":
            return self.transform(frames, rng)
        flow = self.read_flow(sample, indices)
        state = rng.bit_generator.state if rng is not None else None
        flow_clip = self.flow_transform(flow, rng)
        if rng is not None and state is not None:  # RGB gets exactly the flow's crop/flip
            rng.bit_generator.state = state
        return torch.cat([self.transform(frames, rng), flow_clip], dim=0)

    def clip_indices(
        self, sample: Sample, num_frames: int, fps: float, rng: np.random.Generator | None
    ) -> list[int]:
        """The clip's frame indices in the video's [start, end) segment (the whole video
        when the sample has none). Flow frame t is the flow from frame t to t + 1, so a
        clip with flow stays one frame short of the segment's end."""
        spec = self.spec
        try:
            first, stop = segment_range(num_frames, fps, sample.start, sample.end)
        except ValueError as exc:
            raise VideoReadError(self.root / sample.path, str(exc)) from None
        usable = max(stop - first - 1, 1) if "flow" in spec.modality else stop - first
        picked = sample_indices(spec.sampler, usable, spec.num_frames, spec.frame_stride, rng)
        return (first + picked).tolist()

    def read_rgb(
        self, sample: Sample, rng: np.random.Generator | None
    ) -> tuple[np.ndarray, list[int]]:
        """One clip's RGB frames and their indices, with one opening of the video."""
        video, backend = self.root / sample.path, self.spec.video_backend
        if not _segmented(sample):  # the indices need no frame rate
            indices = self.clip_indices(sample, sample.num_frames, 0.0, rng)
            return read_frames(video, indices, backend), indices
        state = rng.bit_generator.state if rng is not None else None
        picked: list[int] = []

        def pick(num_frames: int, fps: float) -> list[int]:
            if rng is not None and state is not None:  # the same draw if a fallback re-picks
                rng.bit_generator.state = state
            picked[:] = self.clip_indices(sample, min(num_frames, sample.num_frames), fps, rng)
            return picked

        return read_clip(video, pick, backend), picked

    def read_flow(self, sample: Sample, indices: list[int]) -> np.ndarray:
        return read_flow_frames(self.root / str(sample.flow), indices)


def _segmented(sample: Sample) -> bool:
    return sample.start is not None or sample.end is not None


class EpochBatchSampler(Sampler[list[tuple[int, int]]]):
    """Batches of `(epoch, index)` pairs, sharded across ranks, each sample exactly once.

    The epoch's permutation (seeded by seed and epoch) is dealt out rank r, r + W, ...
    Every rank then cuts its shard into the SAME number of batches, of near-equal size
    (at most `batch_size`), so DDP ranks always take the same number of steps and no
    sample is padded in or dropped. `set_epoch(e, start_batch=k)` skips the first k
    batches, for resuming in the middle of an epoch.
    """

    def __init__(
        self,
        size: int,
        batch_size: int,
        shuffle: bool,
        seed: int = 0,
        rank: int = 0,
        world: int = 1,
    ) -> None:
        super().__init__()
        if size < world:
            raise ValueError(f"{size} samples cannot be shared by {world} processes")
        self.size, self.batch_size, self.shuffle, self.seed = size, batch_size, shuffle, seed
        self.rank, self.world = rank, world
        self.epoch = 0
        self.start_batch = 0

    @property
    def batches_per_epoch(self) -> int:
        largest_shard = math.ceil(self.size / self.world)
        return min(math.ceil(largest_shard / self.batch_size), self.size // self.world)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def shard(self) -> list[int]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.size, generator=generator).tolist()
        else:
            order = list(range(self.size))
        return order[self.rank :: self.world]

    def batches(self) -> list[list[int]]:
        return [chunk.tolist() for chunk in np.array_split(self.shard(), self.batches_per_epoch)]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for batch in self.batches()[self.start_batch :]:
            yield [(self.epoch, index) for index in batch]

    def __len__(self) -> int:
        return max(self.batches_per_epoch - self.start_batch, 0)


def one_opencv_thread(worker_id: int) -> None:
    """DataLoader `worker_init_fn`: torch runs one thread per worker, and so should
    OpenCV's resizes and image decoding (else each worker starts a pool of its own)."""
    del worker_id
    cv2.setNumThreads(1)


def build_loader(
    dataset: ClipDataset,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int = 0,
    workers: int = 0,
    pin_memory: bool = False,
    rank: int = 0,
    world: int = 1,
) -> DataLoader[dict[str, Any]]:
    """A DataLoader whose `.batch_sampler` is an EpochBatchSampler (call set_epoch).

    The loader has its own generator, so creating iterators never consumes the global
    torch RNG: a resumed run draws exactly the random numbers an uninterrupted one would.
    """
    batches = EpochBatchSampler(len(dataset), batch_size, shuffle, seed, rank, world)
    return DataLoader(
        dataset,
        batch_sampler=batches,
        num_workers=workers,
        pin_memory=pin_memory and torch.cuda.is_available(),
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None,
        worker_init_fn=one_opencv_thread if workers > 0 else None,
        generator=torch.Generator().manual_seed(seed),
    )
