"""The scalable prepare pipeline shared by every dataset source.

`prepare(dataset, videos, annotations, out, ...)` reads a dataset's annotations through its
source module (`vidact.data.sources.<name>`) and hands the records to
`prepare_dataset(source, out, options, ...)`, which does the work:

    OUT/
      labels.txt                    label map, line i = class i
      <split>.jsonl                 manifests (vidact.data.manifest.Sample per line)
      <split>_rawframes.txt         --mode frames: mmaction2 list `frames/<key> <frames> <label>`
      <split>_videos.txt            --mode videos/none: mmaction2 list `<path> <label>`
      frames/<key>/img_00001.jpg    --mode frames: JPEG frames, short side resized, 1-based
      videos/<key>.mp4              --mode videos: short-side resized MPEG-4 videos
      flow/<key>/x_00001.jpg, y_...  --flow tvl1: quantised TV-L1 flow, pair t = frame t -> t+1
      flow.json                     --flow tvl1: the bound and encoding of the flow images
      <split>_flow.txt              --flow tvl1: mmaction2 list `flow/<key> <pairs> <label>`
      failures.jsonl                every video that failed or is missing, with the reason
      prepare.json                  the settings; a re-run with other settings is refused
      .prepare/done-<tag>.jsonl     what is finished (key, frames, bytes), appended live
      .prepare/failed-<tag>.jsonl   what failed in the last run of that shard

Manifest paths are relative to OUT (the manifest's folder), so OUT can be moved as a
whole. With `--mode none` nothing is copied: the manifests point at the original videos
through a relative path from OUT (`../kinetics/train/...`); moving OUT then needs
moving the videos alongside, or re-running prepare (it only probes).

Resume: every video is written into a temporary sibling and renamed when complete
(`vidact.atomic`), then appended to the done record. A re-run skips what the record
lists and whose output exists, retries failures and missing videos, and removes the
debris a killed run left for the videos it redoes.

Shards: `shard=(k, n)` takes every n-th video (k = 1..n) of the sorted list of outputs,
so n machines (or a SLURM array) writing into one shared OUT split the work exactly.
Each shard keeps its own done/failed record (`<tag>` = `3of8`, or `all` without a
shard). Whichever run finds every video of the dataset accounted for (done or failed,
by any shard) writes the manifests, the lists and failures.jsonl; re-running without a
shard afterwards is always safe and only rewrites them.

Workers decode with decord (OpenCV when decord cannot read a file), one thread each,
in a pool of processes over videos. Frames are resized before encoding (INTER_LINEAR,
never upscaled) and JPEG-encoded by OpenCV. A worker never raises: every problem with a
video becomes a line in failures.jsonl. Only a full disk stops the run.

Flow (`PrepareOptions(flow="tvl1")`): the worker also converts each frame it writes (after
the short-side resize, before JPEG or MPEG-4 coding) to grayscale and feeds it to TV-L1
(`vidact.flow.compute_flow`, chunks of _FLOW_CHUNK pairs so memory stays bounded), and
writes the flow quantised with `quantize_flow(flow, bound)` as x_/y_ JPEG pairs into a
temporary `flow/<key>` renamed into place just before the frames (or video) are: frames
and flow of a video are one atomic, resumable unit, and a video counts as finished only
when both exist. With `--mode none` the worker decodes the whole original video (at the
short side) for the flow alone. A torch backend runs with one intra-op thread per
worker process, as OpenCV does: parallelism comes from the pool.

Extension point: `extra_step(job, output)` runs inside the worker after a video's frames
or video are written and before they are renamed into place, so anything it writes next
to them (e.g. optical flow) is part of the same atomic, resumable unit. It returns the
bytes it wrote and must be a picklable top-level function.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import math
import os
import re
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter, deque
from collections.abc import Callable, Generator, Iterator, Sequence
from concurrent.futures import (
    FIRST_COMPLETED,
    Future,
    ProcessPoolExecutor,
    ThreadPoolExecutor,
    wait,
)
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np

from vidact import console
from vidact.atomic import atomic_dir, atomic_path, atomic_write_text
from vidact.data.manifest import Sample, write_label_map, write_manifest
from vidact.data.sources.common import (
    SourceDataset,
    SourceRecord,
    check_unique_keys,
    first_few,
    read_class_list,
    restrict_classes,
)
from vidact.data.video import FLOW_TEMPLATES, FRAME_TEMPLATE, decord_available, default_backend
from vidact.errors import VidactError, VideoReadError

MODES = ("none", "frames", "videos")
FLOWS = ("none", "tvl1")
FLOW_BACKENDS = ("auto", "torch", "opencv", "opencv-cuda")  # vidact.flow.backends.BACKENDS
DATASETS = ("kinetics", "hmdb51", "ucf101", "sthv1", "sthv2", "folder")
STATE_DIR = ".prepare"
SETTINGS_FILE = "prepare.json"
FAILURES_FILE = "failures.jsonl"
LABELS_FILE = "labels.txt"
FLOW_INFO_FILE = "flow.json"
VIDEO_FOURCC = "mp4v"  # MPEG-4 Part 2: OpenCV's pip builds write it, decord reads it
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
MISSING = "missing"
_ESTIMATE_SAMPLES = 12  # videos decoded to estimate the output size
_DISK_MARGIN = 1.10  # the estimate is a sample; ask for 10% more than it says
_WRITER_THREADS = 2  # per worker process: file writes overlap decoding and encoding
_WRITES_IN_FLIGHT = 32  # encoded frames waiting to be written, per worker
_FLOW_CHUNK = 32  # flow pairs computed per compute_flow call (bounds a worker's memory)
_FLOW_QUALITY = 95  # JPEG quality of the flow images (OpenCV's default, as denseflow writes)
_FLOW_ESTIMATE_PAIRS = 3  # videos of the estimate sample whose flow is actually computed

Status = Literal["done", "failed", "missing", "disk_full"]


# ------------------------------------------------------------------------------ options


@dataclass(frozen=True)
class PrepareOptions:
    """What to write for each video."""

    mode: str = "frames"
    short_side: int = 256  # resize so that the short side is this (never upscale); 0 keeps
    fps: float | None = None  # resample to this frame rate (never up); None keeps every frame
    quality: int = 90  # JPEG quality of --mode frames
    backend: str | None = None  # "auto" (decord, then OpenCV), "decord", "opencv"
    flow: str = "none"  # "tvl1": also write quantised TV-L1 flow under flow/<key>/
    flow_backend: str = "auto"  # vidact.flow.compute_flow's backend
    flow_bound: float = 20.0  # +-bound px maps onto [0, 255]

    @property
    def with_flow(self) -> bool:
        return self.flow != "none"

    def validate(self) -> None:
        problems = []
        if self.mode not in MODES:
            problems.append(f"--mode must be one of {', '.join(MODES)}, not {self.mode!r}")
        if self.short_side < 0:
            problems.append("--short-side must be 0 (keep the size) or a number of pixels")
        if self.fps is not None and self.fps <= 0:
            problems.append("--fps must be positive")
        if not 1 <= self.quality <= 100:
            problems.append("--quality must be between 1 and 100")
        if self.mode == "none" and self.fps is not None:
            problems.append("--fps needs --mode frames or videos (--mode none copies nothing)")
        if self.flow not in FLOWS:
            problems.append(f"--flow must be one of {', '.join(FLOWS)}, not {self.flow!r}")
        if self.flow_backend not in FLOW_BACKENDS:
            problems.append(
                f"--flow-backend must be one of {', '.join(FLOW_BACKENDS)}, "
                f"not {self.flow_backend!r}"
            )
        if not (self.flow_bound > 0 and math.isfinite(self.flow_bound)):
            problems.append("--flow-bound must be a positive number of pixels")
        if problems:
            raise VidactError("; ".join(problems))

    def settings(self, dataset: str) -> dict[str, Any]:
        """What a resumed run must share with the first one."""
        values: dict[str, Any] = {"dataset": dataset, "mode": self.mode}
        if self.mode != "none":
            values |= {"short_side": self.short_side, "fps": self.fps}
        if self.mode == "frames":
            values["quality"] = self.quality
        if self.with_flow:  # the backend may differ between runs: all solve the same problem
            values |= {"flow": self.flow, "flow_bound": self.flow_bound}
            values.setdefault("short_side", self.short_side)  # --mode none: flow's size
        return values


@dataclass(frozen=True)
class VideoJob:
    """One output to produce: what the worker needs, and nothing else."""

    key: str
    source: str
    start: float | None = None
    end: float | None = None
    folder_fps: float | None = None  # the source is a JPEG frame folder at this rate


@dataclass(frozen=True)
class VideoResult:
    key: str
    status: Status
    num_frames: int = 0
    bytes: int = 0  # everything written for the video, flow included
    reason: str = ""
    flow_pairs: int = 0


ExtraStep = Callable[[VideoJob, Path], int]


def output_path(key: str, mode: str) -> str:
    """Where `key`'s output lives, relative to OUT ("" for --mode none)."""
    if mode == "frames":
        return f"frames/{key}"
    if mode == "videos":
        return f"videos/{key}.mp4"
    return ""


def flow_path(key: str) -> str:
    """Where `key`'s TV-L1 flow folder lives, relative to OUT."""
    return f"flow/{key}"


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """ "K/N" -> (K, N), 1 <= K <= N."""
    if text is None or not text.strip():
        return None
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not match:
        raise VidactError(f"--shard must look like K/N (e.g. 3/8), not {text!r}")
    k, n = int(match[1]), int(match[2])
    if n < 1 or not 1 <= k <= n:
        raise VidactError(
            f"--shard {text}: K counts from 1 to N; with a SLURM array --array=0-{max(n - 1, 0)} "
            "use $((SLURM_ARRAY_TASK_ID + 1))"
        )
    return k, n


def select_shard(items: Sequence[Any], shard: tuple[int, int] | None) -> list[Any]:
    """Every n-th item starting at item k-1: n shards partition `items` exactly."""
    if shard is None:
        return list(items)
    k, n = shard
    return list(items[k - 1 :: n])


def iter_indices(
    num_frames: int,
    source_fps: float,
    fps: float | None = None,
    start: float | None = None,
    end: float | None = None,
) -> Iterator[int]:
    """Which source frames to keep, lazily: the [start, end) segment resampled to `fps`."""
    first, stop = 0, num_frames
    if source_fps > 0:
        if start is not None:
            first = min(num_frames, max(0, math.floor(start * source_fps + 1e-6)))
        if end is not None:
            stop = min(num_frames, max(first, math.ceil(end * source_fps - 1e-6)))
    if fps is None or source_fps <= 0 or fps >= source_fps:
        yield from range(first, stop)
        return
    step = source_fps / fps
    k = 0
    while (index := first + math.floor(k * step + 1e-6)) < stop:
        yield index
        k += 1


def select_indices(
    num_frames: int,
    source_fps: float,
    fps: float | None = None,
    start: float | None = None,
    end: float | None = None,
) -> list[int]:
    """`iter_indices` as a list."""
    return list(iter_indices(num_frames, source_fps, fps, start, end))


def output_size(width: int, height: int, short_side: int, even: bool = False) -> tuple[int, int]:
    """(width, height) with the short side at `short_side` (0 or smaller: unchanged)."""
    if short_side > 0 and min(width, height) > short_side:
        scale = short_side / min(width, height)
        if width <= height:
            width, height = short_side, max(1, round(height * scale))
        else:
            width, height = max(1, round(width * scale)), short_side
    if even:
        width, height = max(2, width - width % 2), max(2, height - height % 2)
    return width, height


# ------------------------------------------------------------------------------ readers


class _DecodeError(Exception):
    """A reader could not produce the frames (the video, not the disk, is at fault)."""


def folder_images(folder: Path) -> list[Path]:
    """The images of a JPEG frame folder in frame order (numbers in the names)."""

    def number(name: str) -> tuple[int, str]:
        digits = re.findall(r"\d+", name)
        return (int(digits[-1]) if digits else -1, name)

    names = [
        name
        for name in os.listdir(folder)
        if name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")
    ]
    return [folder / name for name in sorted(names, key=number)]


class _Frames:
    """The selected frames of one source, in order, as uint8 arrays (RGB if `rgb`)."""

    rgb = False
    fps = 0.0

    def __iter__(self) -> Iterator[np.ndarray]:
        raise NotImplementedError


class _DecordFrames(_Frames):
    rgb = True

    def __init__(self, path: str, job: VideoJob, fps: float | None) -> None:
        self.path, self.job, self.target_fps = path, job, fps

    def __iter__(self) -> Iterator[np.ndarray]:
        import decord

        try:
            reader = decord.VideoReader(self.path, ctx=decord.cpu(0), num_threads=1)
            total = len(reader)
            self.fps = float(reader.get_avg_fps() or 0.0)
        except Exception as exc:  # decord raises bare RuntimeError/DECORDError
            raise _DecodeError(f"decord could not open it: {_short(exc)}") from None
        indices = select_indices(total, self.fps, self.target_fps, self.job.start, self.job.end)
        position = 0  # index of the frame next() returns
        try:
            for index in indices:
                if index > position:
                    reader.skip_frames(index - position)
                frame = reader.next().asnumpy()
                position = index + 1
                yield frame
        except Exception as exc:  # includes StopIteration when the stream ends early
            raise _DecodeError(
                f"decord stopped at frame {position} of {total}: {_short(exc)}"
            ) from None
        finally:
            del reader


class _OpenCVFrames(_Frames):
    rgb = False

    def __init__(self, path: str, job: VideoJob, fps: float | None) -> None:
        self.path, self.job, self.target_fps = path, job, fps

    def __iter__(self) -> Iterator[np.ndarray]:
        capture = cv2.VideoCapture(self.path)
        if not capture.isOpened():
            capture.release()
            raise _DecodeError("OpenCV could not open it (corrupt, truncated or not a video)")
        try:
            self.fps = float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
            total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
            if total <= 0:  # some containers store no count: read to the end of the stream
                total = sys.maxsize
            wanted = iter_indices(total, self.fps, self.target_fps, self.job.start, self.job.end)
            position = 0
            for index in wanted:
                while position < index:
                    if not capture.grab():
                        return  # the real end of the stream: fewer frames than the header says
                    position += 1
                ok, frame = capture.read()
                if not ok or frame is None:
                    return
                position += 1
                yield frame
        finally:
            capture.release()


class _FolderFrames(_Frames):
    rgb = False

    def __init__(self, path: str, job: VideoJob, fps: float | None) -> None:
        self.job, self.target_fps = job, fps
        self.fps = float(job.folder_fps or 0.0)
        self.images = folder_images(Path(path)) if Path(path).is_dir() else []
        if not self.images:
            raise _DecodeError("the frame folder holds no images")
        self.indices = select_indices(
            len(self.images), self.fps, self.target_fps, self.job.start, self.job.end
        )

    def selected(self) -> list[Path]:
        return [self.images[i] for i in self.indices]

    def __iter__(self) -> Iterator[np.ndarray]:
        for path in self.selected():
            frame = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if frame is None:
                raise _DecodeError(f"{path.name} is not a readable image")
            yield frame


def _readers(job: VideoJob, options: PrepareOptions) -> list[tuple[str, Callable[[], _Frames]]]:
    """The readers to try in turn: decord then OpenCV (auto), or just one."""
    if job.folder_fps is not None:
        return [("frames", lambda: _FolderFrames(job.source, job, options.fps))]
    choice = options.backend or default_backend()
    readers: list[tuple[str, Callable[[], _Frames]]] = []
    if choice in ("auto", "decord") and decord_available():
        readers.append(("decord", lambda: _DecordFrames(job.source, job, options.fps)))
    if choice in ("auto", "opencv"):
        readers.append(("opencv", lambda: _OpenCVFrames(job.source, job, options.fps)))
    if not readers:
        raise VidactError(f"video backend {choice!r} is not available; use auto or opencv")
    return readers


# ------------------------------------------------------------------------------ writers


def _to_bgr(frame: np.ndarray, size: tuple[int, int], rgb: bool) -> np.ndarray:
    if (frame.shape[1], frame.shape[0]) != size:
        frame = cv2.resize(frame, size, interpolation=cv2.INTER_LINEAR)
    return cv2.cvtColor(frame, cv2.COLOR_RGB2BGR) if rgb else frame


def encode_flow_image(image: np.ndarray) -> np.ndarray:
    """One quantised flow component (H, W) uint8 -> JPEG bytes (as a uint8 array)."""
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, _FLOW_QUALITY])
    if not ok:
        raise _DecodeError("OpenCV could not JPEG-encode a flow image")
    return np.asarray(data)


class _FlowWriter:
    """TV-L1 flow of the frames fed to it, written into `folder` as quantised JPEG pairs
    `x_00001.jpg`/`y_00001.jpg` (pair t: frame t -> t + 1, 1-based). Frames arrive one at
    a time, already resized; flow is computed every _FLOW_CHUNK pairs, so a long video
    never sits in memory whole."""

    def __init__(self, folder: Path, options: PrepareOptions) -> None:
        self.folder = folder
        self.backend = options.flow_backend
        self.bound = options.flow_bound
        self.gray: list[np.ndarray] = []
        self.pairs = 0
        self.bytes = 0

    def add(self, frame: np.ndarray, rgb: bool) -> None:
        """One frame: (H, W, 3) RGB if `rgb` else BGR, or (H, W) gray; uint8."""
        if frame.ndim == 3:
            frame = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY if rgb else cv2.COLOR_BGR2GRAY)
        if self.gray and frame.shape != self.gray[-1].shape:
            raise _DecodeError(
                f"frame {self.pairs + len(self.gray) + 1} is {frame.shape[1]}x{frame.shape[0]}, "
                f"the ones before {self.gray[-1].shape[1]}x{self.gray[-1].shape[0]}: "
                "flow needs frames of one size"
            )
        self.gray.append(frame)
        if len(self.gray) > _FLOW_CHUNK:
            self._flush()

    def _flush(self) -> None:
        from vidact.flow.backends import compute_flow, quantize_flow

        # workers=1: one torch thread on a CPU (the pool's processes are the parallelism).
        flow = compute_flow(np.stack(self.gray), backend=self.backend, workers=1)
        planes = quantize_flow(flow, self.bound)
        for x, y in zip(*planes, strict=True):
            self.pairs += 1
            for template, image in zip(FLOW_TEMPLATES, (x, y), strict=True):
                data = encode_flow_image(image)
                data.tofile(self.folder / template.format(self.pairs))
                self.bytes += data.size
        del self.gray[:-1]  # the last frame starts the next chunk's first pair

    def finish(self) -> tuple[int, int]:
        """Flow of the frames still buffered; (pairs, bytes) written in all."""
        if len(self.gray) >= 2:
            self._flush()
        if self.pairs == 0:
            raise _DecodeError("a single frame: TV-L1 flow needs at least 2")
        return self.pairs, self.bytes


def _write_frames(
    frames: _Frames, folder: Path, options: PrepareOptions, flow: _FlowWriter | None = None
) -> tuple[int, int]:
    """Resize + JPEG-encode every frame into `folder` (and feed `flow`); (frames, bytes)."""
    if isinstance(frames, _FolderFrames):
        first = cv2.imread(str(frames.images[0]), cv2.IMREAD_UNCHANGED)
        height, width = first.shape[:2] if first is not None else (0, 0)
        if first is not None and output_size(width, height, options.short_side) == (width, height):
            return _copy_frames(frames.selected(), folder, flow)
    params = [cv2.IMWRITE_JPEG_QUALITY, options.quality]
    template = os.path.join(folder, FRAME_TEMPLATE)
    count = total = 0
    size: tuple[int, int] | None = None
    # Files are written by threads while the next frames decode and encode (both release
    # the GIL): on a busy disk or a network file system, creating a file costs as much
    # as encoding it. At most _WRITES_IN_FLIGHT encoded frames wait in memory.
    with ThreadPoolExecutor(_WRITER_THREADS) as writers:
        writes: deque[Future[None]] = deque()
        for frame in frames:
            if size is None:
                size = output_size(frame.shape[1], frame.shape[0], options.short_side)
            bgr = _to_bgr(frame, size, frames.rgb)
            ok, data = cv2.imencode(".jpg", bgr, params)
            if not ok:
                raise _DecodeError(f"OpenCV could not JPEG-encode frame {count}")
            if flow is not None:
                flow.add(bgr, rgb=False)
            count += 1
            writes.append(writers.submit(data.tofile, template.format(count)))
            total += data.size
            if len(writes) >= _WRITES_IN_FLIGHT:
                writes.popleft().result()  # re-raises a failed write (e.g. a full disk)
        for write in writes:
            write.result()
    return count, total


def _copy_frames(
    images: list[Path], folder: Path, flow: _FlowWriter | None = None
) -> tuple[int, int]:
    """JPEG frames that need no resizing are copied byte for byte (no second JPEG loss);
    `flow` gets them decoded."""
    total = 0
    for number, image in enumerate(images, start=1):
        is_jpeg = image.suffix.lower() in (".jpg", ".jpeg")
        if flow is not None or not is_jpeg:
            frame = cv2.imread(str(image), cv2.IMREAD_COLOR)
            if frame is None:
                raise _DecodeError(f"{image.name} is not a readable image")
            if flow is not None:
                flow.add(frame, rgb=False)
            if not is_jpeg:
                cv2.imwrite(str(folder / FRAME_TEMPLATE.format(number)), frame)
        if is_jpeg:
            shutil.copyfile(image, folder / FRAME_TEMPLATE.format(number))
        total += (folder / FRAME_TEMPLATE.format(number)).stat().st_size
    return len(images), total


def _write_video(
    frames: _Frames, target: Path, options: PrepareOptions, flow: _FlowWriter | None = None
) -> tuple[int, int]:
    """Resize + re-encode into an MPEG-4 file (and feed `flow`); (decodable frames, bytes)."""
    writer: cv2.VideoWriter | None = None
    count = 0
    try:
        for frame in frames:
            if writer is None:
                size = output_size(frame.shape[1], frame.shape[0], options.short_side, even=True)
                fps = frames.fps if frames.fps > 0 else 25.0
                if options.fps is not None:
                    fps = min(fps, options.fps)
                writer = cv2.VideoWriter(
                    str(target), cv2.VideoWriter.fourcc(*VIDEO_FOURCC), fps, size
                )
                if not writer.isOpened():
                    raise OSError(
                        errno.EIO, f"OpenCV cannot write {VIDEO_FOURCC} video to {target}"
                    )
            bgr = _to_bgr(frame, size, frames.rgb)
            writer.write(bgr)
            if flow is not None:
                flow.add(bgr, rgb=False)
            count += 1
    finally:
        if writer is not None:
            writer.release()
    if count == 0:
        return 0, 0
    from vidact.data.video import probe

    try:  # the manifest needs what a reader will decode, not what was handed to the encoder
        count = probe(target, backend=options.backend).num_frames
    except VidactError as exc:
        raise _DecodeError(f"the re-encoded video is unreadable: {exc}") from None
    return count, target.stat().st_size


def _feed_flow(frames: _Frames, options: PrepareOptions, flow: _FlowWriter) -> int:
    """--mode none: resize every frame and feed it to `flow` alone; the frames decoded."""
    count = 0
    size: tuple[int, int] | None = None
    for frame in frames:
        if size is None:
            size = output_size(frame.shape[1], frame.shape[0], options.short_side)
        if (frame.shape[1], frame.shape[0]) != size:
            frame = cv2.resize(frame, size, interpolation=cv2.INTER_LINEAR)
        flow.add(frame, rgb=frames.rgb)
        count += 1
    return count


# ------------------------------------------------------------------------------ worker


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:200]


def _remove_debris(target: Path, mode: str) -> None:
    """Delete the temporary siblings a killed run left for `target` (only this key's)."""
    if not target.parent.is_dir():
        return
    if mode == "frames":
        pattern = re.compile(r"^\." + re.escape(target.name) + r"\.[A-Za-z0-9_]{8}\.tmp$")
    else:
        pattern = re.compile(
            r"^\."
            + re.escape(target.stem)
            + r"\.[A-Za-z0-9_]{8}\.tmp"
            + re.escape(target.suffix)
            + "$"
        )
    for name in os.listdir(target.parent):
        if pattern.match(name):
            path = target.parent / name
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)


def _probe_source(job: VideoJob, options: PrepareOptions) -> int:
    """--mode none: the frames a reader decodes from the whole source (the manifest's
    start/end then say which segment the annotation means)."""
    from vidact.data.video import probe

    info = probe(job.source, backend=options.backend)
    if (job.start is not None or job.end is not None) and not select_indices(
        info.num_frames, info.fps, None, job.start, job.end
    ):
        return 0
    return info.num_frames


def extract_video(
    job: VideoJob,
    out: str | Path,
    options: PrepareOptions,
    extra_step: ExtraStep | None = None,
) -> VideoResult:
    """Produce one video's output under `out` atomically. Never raises for a bad video."""
    if not os.path.exists(job.source):
        return VideoResult(job.key, "missing", reason=MISSING)
    try:
        if options.mode == "none":
            frames = _probe_source(job, options)
            if frames <= 0:
                return VideoResult(
                    job.key, "failed", reason="the clip segment lies outside the video"
                )
            if not options.with_flow:
                return VideoResult(job.key, "done", frames, 0)
            # The manifest indexes the whole file (start/end are recorded, not cut), so
            # the flow covers the whole file too: flow frame t is always frame t -> t + 1.
            job = dataclasses.replace(job, start=None, end=None)
            target = None
        else:
            target = Path(out) / output_path(job.key, options.mode)
            _remove_debris(target, options.mode)
        flow_target = Path(out) / flow_path(job.key) if options.with_flow else None
        if flow_target is not None:
            _remove_debris(flow_target, "frames")
        reasons = []
        for name, make in _readers(job, options):
            try:
                frames_source = make()
                with contextlib.ExitStack() as stack:
                    # Entered in this order, renamed in the reverse one: the flow folder
                    # lands first, and the frames (what resume checks first) last.
                    tmp = None
                    if target is not None and options.mode == "frames":
                        tmp = stack.enter_context(atomic_dir(target))
                    elif target is not None:
                        tmp = stack.enter_context(atomic_path(target))
                    flow = None
                    if flow_target is not None:
                        flow = _FlowWriter(stack.enter_context(atomic_dir(flow_target)), options)
                    if tmp is None:
                        assert flow is not None
                        count, size = _feed_flow(frames_source, options, flow), 0
                    elif options.mode == "frames":
                        count, size = _write_frames(frames_source, tmp, options, flow=flow)
                    else:
                        count, size = _write_video(frames_source, tmp, options, flow=flow)
                    if count == 0:
                        raise _DecodeError("no frames decoded (or the clip lies outside the video)")
                    pairs = 0
                    if flow is not None:
                        pairs, flow_bytes = flow.finish()
                        size += flow_bytes
                    if extra_step is not None and tmp is not None:
                        size += extra_step(job, tmp)
                return VideoResult(job.key, "done", count, size, flow_pairs=pairs)
            except _DecodeError as exc:
                reasons.append(f"{name}: {exc}")
        return VideoResult(job.key, "failed", reason="; ".join(reasons))
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return VideoResult(job.key, "disk_full", reason=f"disk full: {_short(exc)}")
        return VideoResult(job.key, "failed", reason=f"{type(exc).__name__}: {_short(exc)}")
    except VideoReadError as exc:
        return VideoResult(job.key, "failed", reason=exc.reason)
    except Exception as exc:  # a bad video must never stop the batch
        return VideoResult(job.key, "failed", reason=f"{type(exc).__name__}: {_short(exc)}")


def _init_worker() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops us
    cv2.setNumThreads(1)  # parallelism comes from the pool; OpenCV threads oversubscribe
    if decord_available():  # load it now, while the parent estimates, not on video one
        import decord  # noqa: F401


def _start_pool(workers: int) -> ProcessPoolExecutor:
    """A pool whose processes start now, so that their imports overlap our own work."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")  # never fork a process with live threads
    pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker)
    for _ in range(workers):
        pool.submit(os.getpid)
    return pool


def _run_jobs(
    jobs: Sequence[VideoJob],
    out: Path,
    options: PrepareOptions,
    workers: int,
    extra_step: ExtraStep | None,
    started: ProcessPoolExecutor | None = None,
) -> Generator[VideoResult, None, None]:
    """Results in completion order. workers == 0 runs in this process (debugging, tests);
    otherwise a pool of `workers` processes (`started`, if given, is used first)."""
    if workers <= 0:
        for job in jobs:
            yield extract_video(job, out, options, extra_step)
        return
    pending = deque(jobs)
    suspects: deque[VideoJob] = deque()  # in flight when a worker died: run one at a time
    while pending or suspects:
        pool, started = started or _start_pool(workers), None
        in_flight: dict[Future[VideoResult], VideoJob] = {}
        finished = False
        try:
            try:
                while pending or suspects or in_flight:
                    limit = 1 if suspects else 2 * workers
                    while len(in_flight) < limit and (suspects or pending):
                        job = suspects.popleft() if suspects else pending.popleft()
                        future = pool.submit(extract_video, job, out, options, extra_step)
                        in_flight[future] = job
                    done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                    for future in done:
                        result = future.result()
                        del in_flight[future]
                        yield result
            except BrokenProcessPool:
                # A decoder crashed (segfault) or the kernel killed a worker. Results that
                # arrived are kept; a video alone in flight is the culprit; several become
                # suspects that the next pool runs one at a time.
                lost = []
                for future, job in in_flight.items():
                    if future.done() and not future.cancelled() and future.exception() is None:
                        yield future.result()
                    else:
                        lost.append(job)
                if len(lost) == 1:
                    reason = "the worker died while reading it (decoder crash or out of memory)"
                    yield VideoResult(lost[0].key, "failed", reason=reason)
                else:
                    suspects.extend(lost)
                    console.warn(
                        f"a worker process died; retrying its {len(lost)} videos one at a time"
                    )
            finished = not (pending or suspects)
        finally:
            if not finished:  # interrupted (Ctrl-C, error, generator closed) or restarting
                for process in list(getattr(pool, "_processes", {}).values()):
                    process.terminate()
            pool.shutdown(wait=finished, cancel_futures=True)


# ------------------------------------------------------------------------------ estimate


@dataclass(frozen=True)
class DiskEstimate:
    bytes: int  # everything, flow included
    sampled: int  # videos decoded to estimate it
    free: int
    flow_bytes: int = 0  # the TV-L1 flow images' share of `bytes`


def _estimate_one(job: VideoJob, options: PrepareOptions, workdir: Path) -> float | None:
    """Estimated output bytes of one video: its kept frames x the encoded size of a few."""
    from vidact.data.video import probe, read_frames

    if job.folder_fps is not None:
        images = folder_images(Path(job.source))
        if not images:
            return None
        kept = len(select_indices(len(images), job.folder_fps, options.fps, job.start, job.end))
        first = cv2.imread(str(images[0]), cv2.IMREAD_COLOR)
        if first is None:
            return None
        height, width = first.shape[:2]
        if options.mode == "frames" and output_size(width, height, options.short_side) == (
            width,
            height,
        ):
            return kept * float(np.mean([p.stat().st_size for p in images[:8]]))
        frames = np.stack([cv2.cvtColor(first, cv2.COLOR_BGR2RGB)])
    else:
        info = probe(job.source, backend=options.backend)
        kept = len(select_indices(info.num_frames, info.fps, options.fps, job.start, job.end))
        count = 2 if options.mode == "frames" else min(16, info.num_frames)
        if options.mode == "frames":
            picks = [info.num_frames * (i + 1) // (count + 1) for i in range(count)]
        else:
            picks = list(range(count))
        frames = read_frames(job.source, picks, backend=options.backend)
        width, height = frames.shape[2], frames.shape[1]
    if options.mode == "frames":
        size = output_size(width, height, options.short_side)
        params = [cv2.IMWRITE_JPEG_QUALITY, options.quality]
        sizes = [cv2.imencode(".jpg", _to_bgr(f, size, True), params)[1].size for f in frames]
        return kept * float(np.mean(sizes))
    size = output_size(width, height, options.short_side, even=True)
    path = workdir / "estimate.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*VIDEO_FOURCC), 25.0, size)
    for frame in frames:
        writer.write(_to_bgr(frame, size, True))
    writer.release()
    per_frame = path.stat().st_size / len(frames) if path.is_file() else 0.0
    return kept * per_frame


def _estimate_flow_one(
    job: VideoJob, options: PrepareOptions, measure: bool
) -> tuple[float, float | None]:
    """(flow pixels the video will write: pairs x width x height at the output size,
    JPEG bytes per such pixel measured on one real pair of its frames if `measure`)."""
    from vidact.data.video import probe, read_frames
    from vidact.flow.backends import compute_flow, quantize_flow

    load: Callable[[list[int]], np.ndarray]
    if job.folder_fps is not None:
        images = folder_images(Path(job.source))
        kept = select_indices(len(images), job.folder_fps, options.fps, job.start, job.end)
        first = cv2.imread(str(images[0]), cv2.IMREAD_COLOR) if images else None
        if first is None:
            return 0.0, None
        height, width = first.shape[:2]

        def load(picks: list[int]) -> np.ndarray:
            gray = [cv2.imread(str(images[i]), cv2.IMREAD_GRAYSCALE) for i in picks]
            if any(g is None for g in gray):
                raise _DecodeError("an image of the frame folder is unreadable")
            return np.stack([g for g in gray if g is not None])

    else:
        info = probe(job.source, backend=options.backend)
        if options.mode == "none":  # the whole file (see extract_video)
            kept = list(range(info.num_frames))
        else:
            kept = select_indices(info.num_frames, info.fps, options.fps, job.start, job.end)
        width, height = info.width, info.height

        def load(picks: list[int]) -> np.ndarray:
            rgb = read_frames(job.source, picks, backend=options.backend)
            return np.stack([cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY) for frame in rgb])

    if len(kept) < 2:
        return 0.0, None
    size = output_size(width, height, options.short_side, even=options.mode == "videos")
    pixels = float((len(kept) - 1) * size[0] * size[1])
    if not measure:
        return pixels, None
    middle = len(kept) // 2
    gray = load([kept[middle - 1], kept[middle]])
    gray = np.stack([cv2.resize(g, size, interpolation=cv2.INTER_LINEAR) for g in gray])
    flow = compute_flow(gray, backend=options.flow_backend, workers=1)
    x, y = quantize_flow(flow, options.flow_bound)
    pair_bytes = encode_flow_image(x[0]).size + encode_flow_image(y[0]).size
    return pixels, pair_bytes / (size[0] * size[1])


def estimate_output_bytes(
    jobs: Sequence[VideoJob], out: Path, options: PrepareOptions, samples: int = _ESTIMATE_SAMPLES
) -> DiskEstimate:
    """Estimate what `jobs` will write, from frame counts and the encoded size of a few
    frames of `samples` videos spread over the list. With flow, the flow of one frame pair
    of each of the first _FLOW_ESTIMATE_PAIRS sampled videos is computed and encoded, and
    its bytes per pixel scale every sampled video's pairs x pixels."""
    usage = shutil.disk_usage(out)
    present = [job for job in jobs if os.path.exists(job.source)]
    if (options.mode == "none" and not options.with_flow) or not present:
        return DiskEstimate(0, 0, usage.free)
    step = max(1, len(present) // samples)
    chosen = present[::step][:samples]
    sizes = []
    flow_pixels: list[float] = []
    flow_rates: list[float] = []  # bytes per flow pixel, measured
    with tempfile.TemporaryDirectory(prefix="vidact-estimate-") as workdir:
        for job in chosen:
            if options.mode != "none":
                try:
                    value = _estimate_one(job, options, Path(workdir))
                except Exception:  # a bad sample says nothing about the others
                    value = None
                if value is not None:
                    sizes.append(value)
            if options.with_flow:
                try:
                    measure = len(flow_rates) < _FLOW_ESTIMATE_PAIRS
                    pixels, rate = _estimate_flow_one(job, options, measure)
                except Exception:
                    continue
                flow_pixels.append(pixels)
                if rate is not None:
                    flow_rates.append(rate)
    frames_bytes = float(np.mean(sizes)) * len(present) if sizes else 0.0
    flow_bytes = 0.0
    if flow_pixels and flow_rates:
        flow_bytes = float(np.mean(flow_pixels)) * float(np.mean(flow_rates)) * len(present)
    sampled = max(len(sizes), len(flow_pixels))
    if not sampled:
        return DiskEstimate(0, 0, usage.free)
    return DiskEstimate(int(frames_bytes + flow_bytes), sampled, usage.free, int(flow_bytes))


def check_disk(estimate: DiskEstimate, out: Path, videos: int) -> None:
    need = int(estimate.bytes * _DISK_MARGIN)
    if need > estimate.free:
        raise VidactError(
            f"{out}: this needs about {console.human_bytes(need)} for {videos} videos "
            f"(estimated from {estimate.sampled} of them) but only "
            f"{console.human_bytes(estimate.free)} is free; free some space, choose another "
            "--out, lower --short-side or --quality, or pass --no-disk-check"
        )


# ------------------------------------------------------------------------------ state


def _read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """Records of a JSON Lines file; a line cut short by a killed run is ignored."""
    with contextlib.suppress(FileNotFoundError), path.open(encoding="utf-8") as handle:
        for line in handle:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and isinstance(record.get("key"), str):
                yield record


class _State:
    """The done and failed records of every shard under OUT/.prepare/."""

    def __init__(self, out: Path, shard: tuple[int, int] | None) -> None:
        self.dir = out / STATE_DIR
        self.tag = "all" if shard is None else f"{shard[0]}of{shard[1]}"
        self.done_file = self.dir / f"done-{self.tag}.jsonl"
        self.failed_file = self.dir / f"failed-{self.tag}.jsonl"

    def done(self) -> dict[str, dict[str, Any]]:
        records: dict[str, dict[str, Any]] = {}
        for path in sorted(self.dir.glob("done-*.jsonl")):
            for record in _read_jsonl(path):
                records[record["key"]] = record
        return records

    def failed(self) -> dict[str, dict[str, Any]]:
        records: dict[str, dict[str, Any]] = {}
        for path in sorted(self.dir.glob("failed-*.jsonl")):
            for record in _read_jsonl(path):
                records[record["key"]] = record
        return records


# ------------------------------------------------------------------------------ summary


@dataclass(frozen=True)
class PrepareSummary:
    """What a prepare run did (this shard) and where the dataset stands (all shards)."""

    dataset: str
    out: Path
    mode: str
    shard: tuple[int, int] | None
    classes: int
    total: int  # videos in this run's selection (this shard)
    done: int  # finished by this run
    skipped: int  # already finished before this run
    failed: int  # unreadable videos in this run
    missing: int  # videos not found in this run
    frames_written: int
    bytes_written: int
    bytes_on_disk: int  # every finished output of the dataset (from the done records)
    estimated_bytes: int
    seconds: float
    manifests: dict[str, int]  # split -> samples written; empty while shards are pending
    pending: int  # videos of the dataset not yet accounted for (other shards still running)
    missing_examples: list[str] = field(default_factory=list)
    failure_examples: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    flow: str = "none"
    flow_backend: str = ""  # the concrete backend this run used ("" without flow)
    flow_bound: float = 20.0
    flow_pairs_written: int = 0  # x/y JPEG pairs written by this run
    estimated_flow_bytes: int = 0

    @property
    def videos_per_second(self) -> float:
        return (self.done + self.failed) / self.seconds if self.seconds > 0 else 0.0

    @property
    def frames_per_second(self) -> float:
        return self.frames_written / self.seconds if self.seconds > 0 else 0.0

    @property
    def flow_pairs_per_second(self) -> float:
        return self.flow_pairs_written / self.seconds if self.seconds > 0 else 0.0


# ------------------------------------------------------------------------------ pipeline


def _check_settings(out: Path, settings: dict[str, Any]) -> None:
    path = out / SETTINGS_FILE
    if path.is_file():
        try:
            previous = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            raise VidactError(f"{path}: unreadable; delete it to start over") from None
        if previous != settings:
            changed = sorted(
                k for k in settings.keys() | previous.keys() if previous.get(k) != settings.get(k)
            )
            described = ", ".join(
                f"{k} {previous.get(k)!r} -> {settings.get(k)!r}" for k in changed
            )
            raise VidactError(
                f"{out} was prepared with other settings ({described}); use another --out, "
                "or the same settings to resume"
            )
        return
    atomic_write_text(path, json.dumps(settings, indent=2) + "\n")


def _jobs(source: SourceDataset) -> list[VideoJob]:
    unique: dict[str, SourceRecord] = {}
    for record in source.records():
        unique.setdefault(record.key, record)
    return [
        VideoJob(
            key=key,
            source=str(record.video),
            start=record.start,
            end=record.end,
            folder_fps=source.frame_folder_fps,
        )
        for key, record in sorted(unique.items())
    ]


def _manifest_path(record: SourceRecord, mode: str, out_real: str) -> str:
    if mode != "none":
        return output_path(record.key, mode)
    source = os.path.realpath(record.video)
    try:
        return Path(os.path.relpath(source, out_real)).as_posix()
    except ValueError:  # another drive (Windows): only an absolute path works
        return Path(source).as_posix()


def _write_outputs(
    source: SourceDataset,
    out: Path,
    options: PrepareOptions,
    done: dict[str, dict[str, Any]],
    failed: dict[str, dict[str, Any]],
) -> dict[str, int]:
    """Manifests, mmaction2 lists and failures.jsonl for the whole dataset."""
    out_real = os.path.realpath(out)
    counts = {}
    for split, records in source.splits.items():
        samples = []
        lines = []
        flow_lines: list[str] = []
        for record in records:
            entry = done.get(record.key)
            if entry is None:
                continue
            path = _manifest_path(record, options.mode, out_real)
            keep_segment = options.mode == "none"
            flow = flow_path(record.key) if options.with_flow else None
            samples.append(
                Sample(
                    path=path,
                    label=record.label,
                    label_name=record.label_name,
                    num_frames=int(entry["frames"]),
                    start=record.start if keep_segment else None,
                    end=record.end if keep_segment else None,
                    flow=flow,
                )
            )
            if options.mode == "frames":
                lines.append(f"{path} {int(entry['frames'])} {record.label}")
            else:
                lines.append(f"{path} {record.label}")
            if flow is not None:
                pairs = int(entry.get("flow", int(entry["frames"]) - 1))
                flow_lines.append(f"{flow} {pairs} {record.label}")
        counts[split] = write_manifest(out / f"{split}.jsonl", samples)
        list_name = f"{split}_rawframes.txt" if options.mode == "frames" else f"{split}_videos.txt"
        atomic_write_text(out / list_name, "".join(line + "\n" for line in lines))
        if options.with_flow:
            atomic_write_text(out / f"{split}_flow.txt", "".join(f"{x}\n" for x in flow_lines))
    failures = []
    seen = set()
    for record in source.records():
        if record.key in done or record.key in seen or record.key not in failed:
            continue
        seen.add(record.key)
        failures.append(
            json.dumps(
                {
                    "key": record.key,
                    "video": str(record.video),
                    "reason": failed[record.key]["reason"],
                },
                ensure_ascii=False,
            )
        )
    atomic_write_text(out / FAILURES_FILE, "".join(line + "\n" for line in failures))
    return counts


def _finished_on_disk(key: str, out: Path, options: PrepareOptions) -> bool:
    if options.with_flow and not (out / flow_path(key)).is_dir():
        return False
    return options.mode == "none" or (out / output_path(key, options.mode)).exists()


def _flow_info(options: PrepareOptions) -> dict[str, Any]:
    """OUT/flow.json: what a reader needs to turn the flow images back into pixels."""
    from vidact.flow.tvl1 import TVL1Params

    return {
        "algorithm": options.flow,
        "bound": options.flow_bound,
        "quantisation": "q = round((clip(f, -bound, bound) + bound) * 255 / (2 * bound)); "
        "f = q * 2 * bound / 255 - bound (vidact.flow.dequantize_flow)",
        "templates": list(FLOW_TEMPLATES),
        "pairs": "pair t (1-based) is the flow from frame t to frame t + 1, x right, y down",
        "gray": "BT.601 luma of the frames after the short-side resize, before JPEG coding",
        "jpeg_quality": _FLOW_QUALITY,
        "params": dataclasses.asdict(TVL1Params.opencv_cpu()),
    }


def read_flow_info(root: str | Path) -> dict[str, Any] | None:
    """The flow.json of a prepared dataset folder, or None where prepare wrote no flow."""
    path = Path(root) / FLOW_INFO_FILE
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError) as exc:
        raise VidactError(f"{path}: unreadable ({_short(exc)}); re-run prepare") from None
    if not isinstance(info, dict) or not isinstance(info.get("bound"), int | float):
        raise VidactError(f"{path}: has no numeric 'bound'; re-run prepare")
    return info


def check_flow_bound(root: str | Path, bound: float) -> None:
    """Refuse to read flow quantised with another bound than `bound` (a recipe's
    data.flow_bound): the network would see every motion scaled by the ratio."""
    info = read_flow_info(root)
    if info is None or math.isclose(float(info["bound"]), bound, rel_tol=1e-6):
        return
    prepared = float(info["bound"])
    raise VidactError(
        f"{Path(root) / FLOW_INFO_FILE}: the flow was quantised with a bound of +-{prepared:g} "
        f"px but the recipe's data.flow_bound is {bound:g}; set data.flow_bound: {prepared:g} "
        f"(--set data.flow_bound={prepared:g}) or prepare again with --flow-bound {bound:g}"
    )


@dataclass
class _Tally:
    """What one run did, result by result."""

    counts: Counter[str] = field(default_factory=Counter)
    frames: int = 0
    bytes: int = 0
    flow_pairs: int = 0
    missing: list[str] = field(default_factory=list)  # file names
    failures: list[str] = field(default_factory=list)  # "key: reason"


def _process(
    todo: Sequence[VideoJob],
    out: Path,
    options: PrepareOptions,
    state: _State,
    results: Iterator[VideoResult],
    description: str,
) -> _Tally:
    """Consume `results`: record each in the done/failed logs, drive the progress bar."""
    tally = _Tally()
    source_of = {job.key: job.source for job in todo}
    start = time.perf_counter()
    with (
        console.progress_task(description, total=len(todo)) as advance,
        state.done_file.open("a", encoding="utf-8") as done_log,
        state.failed_file.open("a", encoding="utf-8") as failed_log,
    ):
        for result in results:
            if result.status == "disk_full":
                raise VidactError(
                    f"{out}: {result.reason} while writing {result.key}; free some space "
                    "and re-run the same command (finished videos are kept)"
                )
            tally.counts[result.status] += 1
            if result.status == "done":
                tally.frames += result.num_frames
                tally.bytes += result.bytes
                tally.flow_pairs += result.flow_pairs
                entry: dict[str, Any] = {"key": result.key, "frames": result.num_frames}
                entry["bytes"] = result.bytes
                if options.with_flow:
                    entry["flow"] = result.flow_pairs
                done_log.write(json.dumps(entry, ensure_ascii=False) + "\n")
                done_log.flush()  # a killed run keeps every line written so far
            else:
                video = source_of[result.key]
                if result.status == "missing":
                    tally.missing.append(Path(video).name)
                else:
                    tally.failures.append(f"{result.key}: {result.reason}")
                entry = {"key": result.key, "video": video, "reason": result.reason}
                failed_log.write(json.dumps(entry, ensure_ascii=False) + "\n")
                failed_log.flush()
            elapsed = max(time.perf_counter() - start, 1e-9)
            videos = tally.counts["done"] + tally.counts["failed"]
            status = f"{videos / elapsed:.1f} videos/s, {tally.frames / elapsed:.0f} frames/s"
            if options.with_flow:
                status += f", {tally.flow_pairs / elapsed:.1f} flow pairs/s"
            advance(status=status)
    return tally


def prepare_dataset(
    source: SourceDataset,
    out: str | Path,
    options: PrepareOptions | None = None,
    *,
    workers: int | None = None,
    shard: tuple[int, int] | None = None,
    check_free_space: bool = True,
    extra_step: ExtraStep | None = None,
) -> PrepareSummary:
    """Extract (or just probe) every video of `source` into `out`; resumable, shardable.

    `workers`: processes (default one per core; 0 runs in this process). `shard`: (k, n)
    to do only every n-th video. `check_free_space`: refuse when the estimated output
    does not fit. `extra_step`: see the module docstring.
    """
    options = options or PrepareOptions()
    options.validate()
    if source.frame_folders and options.mode == "none":
        raise VidactError(
            f"{source.name} ships JPEG frames named 00001.jpg, which vidact does not read in "
            "place; use --mode frames (copies or resizes them to img_00001.jpg)"
        )
    check_unique_keys(source)
    if options.with_flow:
        from vidact.flow.backends import resolve_backend

        # "auto" is settled here, once: every worker then runs the same backend.
        options = dataclasses.replace(options, flow_backend=resolve_backend(options.flow_backend))
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise VidactError(f"{out}: exists and is not a folder; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    _check_settings(out, options.settings(source.name))
    write_label_map(out / LABELS_FILE, source.classes)
    if options.with_flow:
        atomic_write_text(out / FLOW_INFO_FILE, json.dumps(_flow_info(options), indent=2) + "\n")

    jobs = _jobs(source)
    if not jobs:
        raise VidactError(f"{source.name}: the annotations list no videos (check --classes)")
    if not any(os.path.exists(job.source) for job in jobs):
        raise VidactError(
            f"none of the {len(jobs)} videos of {source.name} were found (the first is expected "
            f"at {jobs[0].source}); check --videos"
        )
    selected = select_shard(jobs, shard)
    state = _State(out, shard)
    state.dir.mkdir(parents=True, exist_ok=True)
    done_before = state.done()
    todo = [
        job
        for job in selected
        if not (job.key in done_before and _finished_on_disk(job.key, out, options))
    ]
    skipped = len(selected) - len(todo)
    workers = (os.cpu_count() or 1) if workers is None else workers
    description = source.name + " " + options.mode
    if options.with_flow:
        description += f" + {options.flow} ({options.flow_backend})"
    if shard is not None:
        description += f" {shard[0]}/{shard[1]}"

    # The worker processes start (and import) while this process estimates the output.
    pool = _start_pool(workers) if workers > 0 and todo else None
    try:
        estimate = estimate_output_bytes(todo, out, options)
        if estimate.bytes:
            flow_share = ""
            if estimate.flow_bytes:
                flow_share = f" (flow {console.human_bytes(estimate.flow_bytes)})"
            console.info(
                f"{len(todo)} videos to prepare ({skipped} already done); estimated output "
                f"{console.human_bytes(estimate.bytes)}{flow_share}, "
                f"{console.human_bytes(estimate.free)} free"
            )
        if check_free_space:
            check_disk(estimate, out, len(todo))
        start = time.perf_counter()
        state.failed_file.write_text("", encoding="utf-8")  # this run retries every failure
        results = _run_jobs(todo, out, options, workers, extra_step, started=pool)
        try:
            tally = _process(todo, out, options, state, results, description)
        finally:
            results.close()  # stops the worker pool if we leave early
        seconds = time.perf_counter() - start
    finally:
        if pool is not None:  # the pool was never used (disk check), or is already shut down
            pool.shutdown(wait=False, cancel_futures=True)

    done_all = {
        key: entry for key, entry in state.done().items() if _finished_on_disk(key, out, options)
    }
    failed_all = {key: entry for key, entry in state.failed().items() if key not in done_all}
    pending = sum(1 for job in jobs if job.key not in done_all and job.key not in failed_all)
    manifests = _write_outputs(source, out, options, done_all, failed_all) if not pending else {}
    notes = list(source.notes)
    if tally.missing:
        notes.append(
            f"missing videos: {len(tally.missing)} ({first_few(sorted(tally.missing))}); "
            f"listed in {out / FAILURES_FILE}"
        )
    if pending:
        notes.append(
            f"videos not done yet (other shards): {pending}; the last shard to finish "
            "writes the manifests, or re-run without --shard when all are done"
        )
    on_disk = sum(int(done_all[job.key].get("bytes", 0)) for job in jobs if job.key in done_all)
    return PrepareSummary(
        dataset=source.name,
        out=out,
        mode=options.mode,
        shard=shard,
        classes=len(source.classes),
        total=len(selected),
        done=tally.counts["done"],
        skipped=skipped,
        failed=tally.counts["failed"],
        missing=tally.counts["missing"],
        frames_written=tally.frames,
        bytes_written=tally.bytes,
        bytes_on_disk=on_disk,
        estimated_bytes=estimate.bytes,
        seconds=seconds,
        manifests=manifests,
        pending=pending,
        missing_examples=sorted(tally.missing)[:5],
        failure_examples=tally.failures[:5],
        notes=notes,
        flow=options.flow,
        flow_backend=options.flow_backend if options.with_flow else "",
        flow_bound=options.flow_bound,
        flow_pairs_written=tally.flow_pairs,
        estimated_flow_bytes=estimate.flow_bytes,
    )


# ------------------------------------------------------------------------------ datasets


def load_source(
    dataset: str,
    videos: str | Path,
    annotations: str | Path | None = None,
    *,
    val_fraction: float = 0.0,
    seed: int = 0,
) -> SourceDataset:
    """A dataset's records per split, from its official annotation files."""
    if dataset == "folder":
        from vidact.data.sources.folder import load_folder

        return load_folder(videos, val_fraction=val_fraction, seed=seed)
    if dataset not in DATASETS:
        raise VidactError(f"unknown dataset {dataset!r}; use one of {', '.join(DATASETS)}")
    if annotations is None:
        raise VidactError(f"{dataset} needs --annotations (the official annotation files)")
    loaders: dict[str, Callable[[str | Path, str | Path], SourceDataset]]
    from vidact.data.sources.hmdb51 import load_hmdb51
    from vidact.data.sources.kinetics import load_kinetics
    from vidact.data.sources.something import load_sthv1, load_sthv2
    from vidact.data.sources.ucf101 import load_ucf101

    loaders = {
        "kinetics": load_kinetics,
        "hmdb51": load_hmdb51,
        "ucf101": load_ucf101,
        "sthv1": load_sthv1,
        "sthv2": load_sthv2,
    }
    return loaders[dataset](videos, annotations)


def prepare(
    dataset: str,
    videos: str | Path,
    annotations: str | Path | None,
    out: str | Path,
    *,
    mode: str = "frames",
    short_side: int = 256,
    fps: float | None = None,
    quality: int = 90,
    workers: int | None = None,
    shard: tuple[int, int] | str | None = None,
    classes: str | Path | None = None,
    check_free_space: bool = True,
    val_fraction: float = 0.0,
    seed: int = 0,
    backend: str | None = None,
    flow: str = "none",
    flow_backend: str = "auto",
    flow_bound: float = 20.0,
) -> PrepareSummary:
    """`vidact prepare <dataset>`: annotations + videos -> manifests, label map, outputs.

    `flow="tvl1"` also writes TV-L1 flow (see the module docstring) with `flow_backend`
    ("auto", "torch", "opencv", "opencv-cuda"), quantised with +-`flow_bound` px."""
    options = PrepareOptions(
        mode=mode,
        short_side=short_side,
        fps=fps,
        quality=quality,
        backend=backend,
        flow=flow,
        flow_backend=flow_backend,
        flow_bound=flow_bound,
    )
    options.validate()
    shard_spec = parse_shard(shard) if isinstance(shard, str) or shard is None else shard
    source = load_source(dataset, videos, annotations, val_fraction=val_fraction, seed=seed)
    if classes is not None:
        source = restrict_classes(source, read_class_list(classes), str(classes))
    return prepare_dataset(
        source,
        out,
        options,
        workers=workers,
        shard=shard_spec,
        check_free_space=check_free_space,
    )


__all__ = [
    "DATASETS",
    "FLOWS",
    "FLOW_BACKENDS",
    "FLOW_INFO_FILE",
    "MODES",
    "DiskEstimate",
    "PrepareOptions",
    "PrepareSummary",
    "VideoJob",
    "VideoResult",
    "check_flow_bound",
    "estimate_output_bytes",
    "extract_video",
    "flow_path",
    "iter_indices",
    "load_source",
    "output_path",
    "parse_shard",
    "prepare",
    "prepare_dataset",
    "read_flow_info",
    "select_indices",
    "select_shard",
]
