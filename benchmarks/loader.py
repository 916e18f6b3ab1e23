"""Throughput of the clip loader against a bare loop on the same videos, and of each
video backend.

    python benchmarks/loader.py                        # every comparison, 5 interleaved repeats
    python benchmarks/loader.py --clips 24 --repeats 1 # quicker
    python benchmarks/loader.py --only views --sizes 640x272
    python benchmarks/loader.py --backends             # frames/s and exactness per backend

The videos are generated once (H.264 with libx264's defaults: B-frames, one key frame
every 250 frames; 10 s at 25 fps, 640x272 and 1280x720) and cached in --cache, with a
TV-L1-like flow folder (x_/y_ JPEG pairs, short side 256) per video.

Comparisons, each vidact against a bare loop doing the same work as anyone would write it:
  rgb, flow, rgb+flow   `ClipDataset` (16 consecutive frames, multiscale crop, flip, 224 px)
                        against: decord `get_batch` (a reader per clip, one thread) or
                        cv2.imread of the flow JPEGs, `cv2.resize` of every uint8 frame to
                        short side 256, a random 224 crop, flip, one float conversion and
                        normalisation;
  views                 `VideoViews` (4 clips x 3 crops of 16 frames), against: one
                        get_batch of the clips' frames, cv2.resize to short side 256, the
                        same 12 crops cut and normalised.
Both decode the same frames (the bare loop takes the clip starts vidact draws: with one
key frame per 250, a clip's decoding cost grows with its start). Each is timed in this
process with one thread, and through a DataLoader with 2 workers (batches of 4). Runs
alternate (bare, vidact, vidact, bare, ...) so that load from other processes hits both
alike; the ratio of the medians is the figure to quote, and the range of the repeats'
ratios says how far to trust it.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from vidact.constants import IMAGENET_MEAN, IMAGENET_STD
from vidact.data.crops import Crops
from vidact.data.dataset import ClipDataset, ClipSpec
from vidact.data.manifest import Sample
from vidact.data.transforms import ClipTransform
from vidact.data.video import read_frames
from vidact.data.views import VideoViews, ViewSpec

FRAMES, SIZE, SHORT = 16, 224, 256
MEAN = np.array(IMAGENET_MEAN, np.float32) * 255
STD = np.array(IMAGENET_STD, np.float32) * 255


# ----------------------------------------------------------------------------- the videos


def make_video(path: Path, width: int, height: int, seconds: int, seed: int) -> None:
    """A blurred colour texture panning under moving discs, H.264 (libx264 defaults)."""
    import av

    rng = np.random.default_rng(seed)
    pad = 96
    noise = rng.integers(0, 255, ((height + pad) // 8, (width + pad) // 8, 3), np.uint8)
    texture = cv2.GaussianBlur(cv2.resize(noise, (width + pad, height + pad)), (0, 0), 2.5)
    part = path.with_suffix(".part.mp4")
    with av.open(str(part), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "veryfast", "crf": "23"}
        for t in range(25 * seconds):
            dx = int(pad / 2 + pad / 2.2 * np.sin(t / 23 + seed))
            dy = int(pad / 2 + pad / 2.2 * np.cos(t / 31 + seed))
            frame = texture[dy : dy + height, dx : dx + width].copy()
            for k in range(3):
                centre = (
                    int(width / 2 + width / 3 * np.sin(t / (11 + 4 * k) + k)),
                    height // (k + 2),
                )
                cv2.circle(frame, centre, 18 + 9 * k, (200, 80 * k, 40), -1)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    part.rename(path)


def make_flow(video: Path, folder: Path) -> int:
    """x_/y_ JPEG pairs at short side 256 (gray frames: the content of flow does not change
    the cost of reading it). Returns the number of pairs."""
    frames = read_frames(video, range(250), backend="pyav")
    part = folder.with_name(folder.name + ".part")
    part.mkdir(parents=True, exist_ok=True)
    height, width = frames.shape[1:3]
    scale = SHORT / min(height, width)
    size = round(width * scale), round(height * scale)
    for i, frame in enumerate(frames[:-1]):
        gray = cv2.resize(cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY), size)
        cv2.imwrite(str(part / f"x_{i + 1:05d}.jpg"), gray)
        cv2.imwrite(str(part / f"y_{i + 1:05d}.jpg"), 255 - gray)
    part.rename(folder)
    return len(frames) - 1


def make_samples(cache: Path, size: tuple[int, int], count: int) -> list[Sample]:
    width, height = size
    samples = []
    for k in range(count):
        name = f"{width}x{height}_{k}"
        video, flow = cache / f"{name}.mp4", cache / "flow" / name
        if not video.exists():
            print(f"  writing {video} ...", flush=True)
            make_video(video, width, height, 10, seed=k)
        if not flow.exists():
            make_flow(video, flow)
        samples.append(Sample(video.name, 0, "a", 250, flow=f"flow/{name}"))
    return samples


# ------------------------------------------------------------------------- the bare loops


def _normalise(clip: np.ndarray, flow: bool) -> torch.Tensor:
    """uint8 (T, H, W, C) -> float (C, T, H, W), once."""
    x = torch.from_numpy(clip).permute(3, 0, 1, 2).float()
    if flow:
        return x / 127.5 - 1.0
    return (x - torch.from_numpy(MEAN).view(3, 1, 1, 1)) / torch.from_numpy(STD).view(3, 1, 1, 1)


def _resized(frames: np.ndarray) -> np.ndarray:
    height, width = frames.shape[1:3]
    scale = SHORT / min(height, width)
    size = round(width * scale), round(height * scale)
    if size == (width, height):
        return frames
    out = [cv2.resize(f, size, interpolation=cv2.INTER_LINEAR) for f in frames]
    return np.stack([o if o.ndim == 3 else o[..., None] for o in out])


def _crop(frames: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    height, width = frames.shape[1:3]
    top, left = int(rng.integers(height - SIZE + 1)), int(rng.integers(width - SIZE + 1))
    clip = frames[:, top : top + SIZE, left : left + SIZE]
    return clip[:, :, ::-1] if rng.random() < 0.5 else clip


def _decord_batch(path: Path, indices: list[int]) -> np.ndarray:
    import decord

    reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
    return reader.get_batch(indices).asnumpy()


def _flow_batch(folder: Path, indices: list[int]) -> np.ndarray:
    planes = [
        np.stack([cv2.imread(str(folder / f"{axis}_{i + 1:05d}.jpg"), 0) for i in indices])
        for axis in "xy"
    ]
    return np.stack(planes, axis=-1)


class BareClips(Dataset[torch.Tensor]):
    """The bare training loop as a Dataset (so that it runs under a DataLoader alike).

    It decodes the frames `frames_of(key)` names: the ones vidact picks for the same key.
    With one key frame per 250, the cost of a clip grows with its start, so clips drawn
    apart would make the two loops' decoding differ by chance."""

    def __init__(
        self,
        samples: list[Sample],
        root: Path,
        modality: str,
        frames_of: Callable[[int], list[int]],
    ) -> None:
        self.samples, self.root, self.modality = samples, root, modality
        self.frames_of = frames_of

    def __len__(self) -> int:
        return 1 << 30

    def __getitem__(self, key: int) -> torch.Tensor:
        sample = self.samples[key % len(self.samples)]
        rng = np.random.default_rng(key)
        indices = self.frames_of(key)
        parts = []
        if "rgb" in self.modality:
            frames = _resized(_decord_batch(self.root / sample.path, indices))
            parts.append(_normalise(np.ascontiguousarray(_crop(frames, rng)), flow=False))
        if "flow" in self.modality:
            flow = _resized(_flow_batch(self.root / str(sample.flow), indices))
            clip = np.ascontiguousarray(_crop(flow, np.random.default_rng(key)))
            parts.append(_normalise(clip, flow=True))
        return torch.cat(parts) if len(parts) > 1 else parts[0]


class BareViews(Dataset[torch.Tensor]):
    """The bare multi-view loop: one decode, resize, the same clips x 3 crops."""

    def __init__(self, samples: list[Sample], root: Path, spec: ViewSpec) -> None:
        self.samples, self.root, self.spec = samples, root, spec

    def __len__(self) -> int:
        return 1 << 30

    def __getitem__(self, key: int) -> torch.Tensor:
        sample = self.samples[key % len(self.samples)]
        clips = self.spec.clip_indices(sample.num_frames)
        needed = sorted({int(i) for clip in clips for i in clip})
        frames = _resized(_decord_batch(self.root / sample.path, needed))
        row = {frame: r for r, frame in enumerate(needed)}
        height, width = frames.shape[1:3]
        top = (height - SIZE) // 2
        lefts = [0, (width - SIZE) // 2, width - SIZE]
        views = []
        for clip in clips:
            picked = frames[[row[int(i)] for i in clip]]
            for left in lefts:
                crop = np.ascontiguousarray(picked[:, top : top + SIZE, left : left + SIZE])
                views.append(_normalise(crop, flow=False))
        return torch.stack(views)


# ------------------------------------------------------------------------------- timing


class Keys(Dataset[Any]):
    """Adapts a dataset to integer keys (ClipDataset takes (epoch, index) pairs)."""

    def __init__(self, inner: Any, size: int, pair: bool) -> None:
        self.inner, self.size, self.pair = inner, size, pair

    def __len__(self) -> int:
        return 1 << 30

    def __getitem__(self, key: int) -> Any:
        return self.inner[(key // self.size, key % self.size) if self.pair else key % self.size]


def _one_thread(_: int = 0) -> None:
    torch.set_num_threads(1)
    cv2.setNumThreads(1)


def clips_per_second(dataset: Dataset[Any], clips: int, workers: int, offset: int) -> float:
    """Items per second over `clips` items (after one warm-up item / batch)."""
    if workers == 0:
        dataset[offset]
        start = time.perf_counter()
        for key in range(offset + 1, offset + 1 + clips):
            dataset[key]
        return clips / (time.perf_counter() - start)
    batch = 4
    keys = list(range(offset, offset + clips + 2 * batch))
    loader = DataLoader(
        dataset, batch_size=batch, sampler=keys, num_workers=workers, worker_init_fn=_one_thread,
        collate_fn=lambda items: len(items),
    )  # fmt: skip
    iterator = iter(loader)
    next(iterator), next(iterator)  # both workers started and warm
    start = time.perf_counter()
    done = sum(iterator)
    return done / (time.perf_counter() - start)


def compare(
    name: str,
    bare: Dataset[Any],
    ours: Dataset[Any],
    clips: int,
    repeats: int,
    workers: int,
) -> tuple[float, float]:
    rates: dict[str, list[float]] = {"bare": [], "vidact": []}
    for r in range(repeats):
        order = [("bare", bare), ("vidact", ours)]
        for label, dataset in order if r % 2 == 0 else order[::-1]:
            rates[label].append(clips_per_second(dataset, clips, workers, offset=1000 * r))
    b, v = statistics.median(rates["bare"]), statistics.median(rates["vidact"])
    pairs = [ours / base for ours, base in zip(rates["vidact"], rates["bare"], strict=True)]
    where = "1 thread" if workers == 0 else f"{workers} workers"
    print(
        f"  {name:<22} {where:<10} bare {b:7.2f} clips/s   vidact {v:7.2f}   ratio {v / b:.2f}"
        f"   (repeats {min(pairs):.2f}-{max(pairs):.2f})"
    )
    return b, v


def run_loader(args: argparse.Namespace, samples: list[Sample], root: Path) -> None:
    transform = ClipTransform(train=True, input_size=SIZE, short_side=SHORT)
    view_spec = ViewSpec(ClipSpec(FRAMES), clips=4, crops=Crops.parse("3"), crop_size=SIZE)
    cases: list[tuple[str, Callable[[], tuple[Dataset[Any], Dataset[Any]]]]] = []
    for modality in ("rgb", "flow", "rgb+flow"):
        spec = ClipSpec(FRAMES, "consecutive", modality=modality)

        def make(modality: str = modality, spec: ClipSpec = spec) -> Any:
            ours = ClipDataset(samples, root, spec, transform, seed=0)

            def frames_of(key: int, ours: ClipDataset = ours) -> list[int]:
                epoch, index = divmod(key, len(samples))  # as Keys below
                rng = np.random.default_rng([ours.seed, epoch, index])  # as ClipDataset
                return ours.clip_indices(samples[index], samples[index].num_frames, 0.0, rng)

            bare = BareClips(samples, root, modality, frames_of)
            return bare, Keys(ours, len(samples), pair=True)

        cases.append((modality, make))
    cases.append(
        (
            "views 4x3",
            lambda: (
                BareViews(samples, root, view_spec),
                Keys(VideoViews(samples, root, [view_spec]), len(samples), pair=False),
            ),
        )
    )
    for name, make in cases:
        if args.only and name.split()[0] != args.only:
            continue
        bare, ours = make()
        for workers in (0, 2):
            # timed runs of seconds: a flow clip takes ~20 ms, a video's 12 views ~0.5 s
            per_run = {"flow": 4 * args.clips, "views 4x3": max(4, args.clips // 4)}
            count = per_run.get(name, args.clips)
            compare(name, bare, ours, count, args.repeats, workers)


def run_backends(samples: list[Sample], root: Path, clips: int) -> None:
    """Frames/s of random 16-frame clips per backend, and bit-exactness of those frames
    against a sequential decode by the same backend."""
    from vidact.data import video

    for backend in ("decord", "pyav", "opencv"):
        frames_read, seconds, exact = 0, 0.0, True
        for sample in samples:
            path = root / sample.path
            reference = video.read_frames(path, range(sample.num_frames), backend="pyav")
            if backend != "pyav":
                sequential = video.read_frames(path, range(sample.num_frames), backend=backend)
                reference = sequential
            rng = np.random.default_rng(0)
            for _ in range(max(1, clips // len(samples))):
                start = int(rng.integers(sample.num_frames - FRAMES))
                indices = list(range(start, start + FRAMES))
                t0 = time.perf_counter()
                got = video.read_frames(path, indices, backend=backend)
                seconds += time.perf_counter() - t0
                frames_read += FRAMES
                exact &= bool(np.array_equal(got, reference[indices]))
        print(f"  {backend:<8} {frames_read / seconds:8.1f} frames/s   exact: {exact}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--clips", type=int, default=32, help="clips per timed run (flow: 4x, views: / 4)"
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sizes", default="640x272,1280x720")
    parser.add_argument("--videos", type=int, default=2, help="videos per size")
    parser.add_argument("--only", default="", help="rgb | flow | rgb+flow | views")
    parser.add_argument("--backends", action="store_true", help="time each video backend")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "vidact-bench")
    args = parser.parse_args()
    _one_thread()
    args.cache.mkdir(parents=True, exist_ok=True)
    for text in args.sizes.split(","):
        width, height = (int(v) for v in text.split("x"))
        samples = make_samples(args.cache, (width, height), args.videos)
        print(f"{width}x{height}, {len(samples)} videos of 250 frames (H.264, B-frames, GOP 250):")
        if args.backends:
            run_backends(samples, args.cache, args.clips)
        else:
            run_loader(args, samples, args.cache)


if __name__ == "__main__":
    main()
