"""Frame decode and encode for the worker: the readers (decord, PyAV, OpenCV, a frame
folder), each yielding the selected frames of one video in order, and the writers (resized
JPEG frames, an MPEG-4 video, quantised TV-L1 flow images fed frame by frame)."""

from __future__ import annotations

import errno
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import cv2
import numpy as np

from vidact.data.frame_folder import image_problem, scan_folder
from vidact.data.prepare.options import (
    PrepareOptions,
    VideoJob,
    iter_indices,
    output_size,
    select_indices,
)
from vidact.data.video import FLOW_TEMPLATES, FRAME_TEMPLATE, decord_available, default_backend
from vidact.errors import VidactError, VideoReadError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")


class DecodeError(Exception):
    """A reader could not produce the frames (the video, not the disk, is at fault)."""


def short_reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:200]


def check_image(path: Path) -> None:
    """A frame image whose header or end is not whole fails its video, naming the frame."""
    problem = image_problem(path)
    if problem:
        raise DecodeError(f"frame {path.name} is {problem}")


def folder_images(folder: Path, pattern: str | None = None) -> list[Path]:
    """The images of a frame folder in frame order (`vidact.data.frame_folder`: the
    numbered sequence detected, or `pattern`); [] when it holds none."""
    try:
        sequence = scan_folder(folder, pattern)
    except VideoReadError:
        return []
    return [sequence.path(i) for i in range(len(sequence))]


class Frames:
    """The selected frames of one source, in order, as uint8 arrays (RGB if `rgb`).
    `warning`, once iterated, says e.g. why fewer frames came than the header lists."""

    rgb = False
    fps = 0.0
    warning = ""  # something the user should know about a source that was read

    def __iter__(self) -> Iterator[np.ndarray]:
        raise NotImplementedError


class _DLPackFrame:
    """A decord frame's DLPack capsule, in the form `numpy.from_dlpack` takes."""

    __slots__ = ("capsule",)

    def __init__(self, capsule: object) -> None:
        self.capsule = capsule

    def __dlpack__(self, stream: object = None, **_: object) -> object:
        return self.capsule

    def __dlpack_device__(self) -> tuple[int, int]:
        return (1, 0)  # kDLCPU, device 0


def decord_to_numpy(frame: Any) -> np.ndarray:
    """A read-only numpy view of a decord frame, sharing its memory (`asnumpy()` copies:
    40 us per 640x272 frame, 3% of decode + resize + encode). Where that fails (an old
    numpy), the copy."""
    try:
        return np.from_dlpack(cast(Any, _DLPackFrame(frame.to_dlpack())))
    except (AttributeError, TypeError, BufferError):
        return frame.asnumpy()


class DecordFrames(Frames):
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
            raise DecodeError(f"decord could not open it: {short_reason(exc)}") from None
        indices = select_indices(total, self.fps, self.target_fps, self.job.start, self.job.end)
        position = 0  # index of the frame next() returns
        try:
            for index in indices:
                if index > position:
                    reader.skip_frames(index - position)
                frame = decord_to_numpy(reader.next())
                position = index + 1
                yield frame
        except Exception as exc:  # includes StopIteration when the stream ends early
            raise DecodeError(
                f"decord stopped at frame {position} of {total}: {short_reason(exc)}"
            ) from None
        finally:
            del reader


class OpenCVFrames(Frames):
    rgb = False

    def __init__(self, path: str, job: VideoJob, fps: float | None) -> None:
        self.path, self.job, self.target_fps = path, job, fps

    def __iter__(self) -> Iterator[np.ndarray]:
        capture = cv2.VideoCapture(self.path)
        if not capture.isOpened():
            capture.release()
            raise DecodeError("OpenCV could not open it (corrupt, truncated or not a video)")
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
                        break
                    position += 1
                ok, frame = capture.read() if position == index else (False, None)
                if not ok or frame is None:  # the real end: fewer frames than the header says
                    if total != sys.maxsize:
                        self.warning = truncation(position, total)
                    return
                position += 1
                yield frame
        finally:
            capture.release()


class PyAVFrames(Frames):
    """One sequential PyAV decode: frame i is the i-th frame decoded (exact by definition,
    like OpenCV's reader below), with FFmpeg's libraries from the `av` wheel."""

    rgb = True

    def __init__(self, path: str, job: VideoJob, fps: float | None) -> None:
        self.path, self.job, self.target_fps = path, job, fps

    def __iter__(self) -> Iterator[np.ndarray]:
        import av

        from vidact.data.video_pyav import open_container

        try:
            container = open_container(Path(self.path))
        except VideoReadError as exc:
            raise DecodeError(f"PyAV could not open it: {exc.reason}") from None
        try:
            stream = container.streams.video[0]
            self.fps = float(stream.average_rate or 0.0)
            listed = max(int(stream.frames or 0), header_frames(self.path))
            total = listed if listed > 0 else sys.maxsize  # no count: to the stream's end
            wanted = iter_indices(total, self.fps, self.target_fps, self.job.start, self.job.end)
            index, position = next(wanted, None), 0
            if index is None:
                return
            try:
                for frame in container.decode(stream):
                    if position == index:
                        yield frame.to_ndarray(format="rgb24")
                        index = next(wanted, None)
                        if index is None:
                            return
                    position += 1
            except av.error.FFmpegError as exc:  # a broken packet: the end, as for OpenCV
                if position == 0:
                    raise DecodeError(f"PyAV could not decode it: {short_reason(exc)}") from None
            if index is not None and total != sys.maxsize:
                self.warning = truncation(position, listed)
        finally:
            container.close()


def truncation(decoded: int, listed: int) -> str:
    """The warning for a video that decodes fewer frames than its header lists."""
    return (
        f"truncated: {decoded} of the {listed} frames its header lists decode (the rest is cut off)"
    )


def header_frames(path: str) -> int:
    """The frame count the container's header lists (0 when OpenCV cannot open it). A
    reader may count fewer, from the packets that are really there (PyAV); the header
    still says what a truncated file lost."""
    capture = cv2.VideoCapture(path)
    try:
        return max(0, int(capture.get(cv2.CAP_PROP_FRAME_COUNT))) if capture.isOpened() else 0
    finally:
        capture.release()


def decodable_frames(path: str, listed: int) -> int:
    """The frames of `path` a reader can decode, where its header lists `listed`: all of
    them if the last one decodes (one seek), else as many as a sequential decode gives. A
    truncated file keeps the header of what was cut off."""
    capture = cv2.VideoCapture(path)
    try:
        if not capture.isOpened() or listed <= 0:
            return listed  # only decord reads it: its count stands
        capture.set(cv2.CAP_PROP_POS_FRAMES, listed - 1)
        if capture.grab() and capture.get(cv2.CAP_PROP_POS_FRAMES) >= listed:
            return listed
    finally:
        capture.release()
    capture = cv2.VideoCapture(path)
    try:
        count = 0
        while count < listed and capture.grab():
            count += 1
        return count
    finally:
        capture.release()


class FolderFrames(Frames):
    rgb = False

    def __init__(self, path: str, job: VideoJob, fps: float | None) -> None:
        self.job, self.target_fps = job, fps
        self.fps = float(job.folder_fps or 0.0)
        try:  # any numbered image sequence, or the one --frame-pattern names
            sequence = scan_folder(path, job.frame_pattern)
        except VideoReadError as exc:
            raise DecodeError(exc.reason) from None
        self.images = [sequence.path(i) for i in range(len(sequence))]
        self.warning = sequence.describe_gaps()
        self.indices = select_indices(
            len(self.images), self.fps, self.target_fps, self.job.start, self.job.end
        )

    def selected(self) -> list[Path]:
        return [self.images[i] for i in self.indices]

    def __iter__(self) -> Iterator[np.ndarray]:
        for path in self.selected():
            check_image(path)
            frame = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if frame is None:
                raise DecodeError(f"{path.name} is not a readable image")
            yield frame


def frame_readers(job: VideoJob, options: PrepareOptions) -> list[tuple[str, Callable[[], Frames]]]:
    """The readers to try in turn: decord then OpenCV (auto), or just the one chosen.
    They read forward, where every backend is exact (PyAV is never needed for that)."""
    if job.folder_fps is not None:
        return [("frames", lambda: FolderFrames(job.source, job, options.fps))]
    choice = options.backend or default_backend()
    readers: list[tuple[str, Callable[[], Frames]]] = []
    if choice in ("auto", "decord") and decord_available():
        readers.append(("decord", lambda: DecordFrames(job.source, job, options.fps)))
    if choice == "pyav":
        readers.append(("pyav", lambda: PyAVFrames(job.source, job, options.fps)))
    if choice in ("auto", "opencv"):
        readers.append(("opencv", lambda: OpenCVFrames(job.source, job, options.fps)))
    if not readers:
        raise VidactError(f"video backend {choice!r} is not available; use auto, pyav or opencv")
    return readers


# ------------------------------------------------------------------ writers

VIDEO_FOURCC = "mp4v"  # MPEG-4 Part 2: OpenCV's pip builds write it, decord reads it
FLOW_CHUNK = 32  # flow pairs computed per compute_flow call (bounds a worker's memory)
FLOW_QUALITY = 95  # JPEG quality of the flow images (OpenCV's default, as denseflow writes)


def to_bgr(frame: np.ndarray, size: tuple[int, int], rgb: bool) -> np.ndarray:
    if (frame.shape[1], frame.shape[0]) != size:
        frame = cv2.resize(frame, size, interpolation=cv2.INTER_LINEAR)
    return cv2.cvtColor(frame, cv2.COLOR_RGB2BGR) if rgb else frame


def write_bytes(path: str | Path, data: np.ndarray) -> None:
    """One encoded image to a new file, with the fewest system calls (open, write, close).

    Written in the calling thread: benchmarks/prepare.py measured writer threads costing
    0.3 ms of CPU per frame in hand-offs (pipeline 73% of the bare work, against 84%
    written inline). Slow disks are covered by more worker processes, not threads."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
    try:
        view = data.data.cast("B")  # the encoded bytes, not a copy
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


def encode_flow_image(image: np.ndarray) -> np.ndarray:
    """One quantised flow component (H, W) uint8 -> JPEG bytes (as a uint8 array)."""
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, FLOW_QUALITY])
    if not ok:
        raise DecodeError("OpenCV could not JPEG-encode a flow image")
    return np.asarray(data)


class FlowWriter:
    """TV-L1 flow of the frames fed to it, written into `folder` as quantised JPEG pairs
    `x_00001.jpg`/`y_00001.jpg` (pair t: frame t -> t + 1, 1-based). Frames arrive one at
    a time, already resized; flow is computed every FLOW_CHUNK pairs, so a long video
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
            raise DecodeError(
                f"frame {self.pairs + len(self.gray) + 1} is {frame.shape[1]}x{frame.shape[0]}, "
                f"the ones before {self.gray[-1].shape[1]}x{self.gray[-1].shape[0]}: "
                "flow needs frames of one size"
            )
        self.gray.append(frame)
        if len(self.gray) > FLOW_CHUNK:
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
                write_bytes(self.folder / template.format(self.pairs), data)
                self.bytes += data.size
        del self.gray[:-1]  # the last frame starts the next chunk's first pair

    def finish(self) -> tuple[int, int]:
        """Flow of the frames still buffered; (pairs, bytes) written in all."""
        if len(self.gray) >= 2:
            self._flush()
        if self.pairs == 0:
            raise DecodeError("a single frame: TV-L1 flow needs at least 2")
        return self.pairs, self.bytes


def write_frames(
    frames: Frames, folder: Path, options: PrepareOptions, flow: FlowWriter | None = None
) -> tuple[int, int]:
    """Resize + JPEG-encode every frame into `folder` (and feed `flow`); (frames, bytes)."""
    if isinstance(frames, FolderFrames):
        check_image(frames.images[0])  # never open a FIFO
        first = cv2.imread(str(frames.images[0]), cv2.IMREAD_UNCHANGED)
        height, width = first.shape[:2] if first is not None else (0, 0)
        if first is not None and output_size(width, height, options.short_side) == (width, height):
            return copy_frames(frames.selected(), folder, flow)
    params = [cv2.IMWRITE_JPEG_QUALITY, options.quality]
    template = os.path.join(folder, FRAME_TEMPLATE)
    count = total = 0
    size: tuple[int, int] | None = None
    for frame in frames:
        if size is None:
            size = output_size(frame.shape[1], frame.shape[0], options.short_side)
        bgr = to_bgr(frame, size, frames.rgb)
        ok, data = cv2.imencode(".jpg", bgr, params)
        if not ok:
            raise DecodeError(f"OpenCV could not JPEG-encode frame {count}")
        if flow is not None:
            flow.add(bgr, rgb=False)
        count += 1
        write_bytes(template.format(count), data)
        total += data.size
    return count, total


def copy_frames(
    images: list[Path], folder: Path, flow: FlowWriter | None = None
) -> tuple[int, int]:
    """JPEG frames that need no resizing are copied byte for byte (no second JPEG loss);
    `flow` gets them decoded."""
    total = 0
    for number, image in enumerate(images, start=1):
        check_image(image)  # a byte copy decodes nothing: a bad frame must not pass
        is_jpeg = image.suffix.lower() in (".jpg", ".jpeg")
        if flow is not None or not is_jpeg:
            frame = cv2.imread(str(image), cv2.IMREAD_COLOR)
            if frame is None:
                raise DecodeError(f"{image.name} is not a readable image")
            if flow is not None:
                flow.add(frame, rgb=False)
            if not is_jpeg:
                cv2.imwrite(str(folder / FRAME_TEMPLATE.format(number)), frame)
        if is_jpeg:
            shutil.copyfile(image, folder / FRAME_TEMPLATE.format(number))
        total += (folder / FRAME_TEMPLATE.format(number)).stat().st_size
    return len(images), total


def write_video(
    frames: Frames, target: Path, options: PrepareOptions, flow: FlowWriter | None = None
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
            bgr = to_bgr(frame, size, frames.rgb)
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
        raise DecodeError(f"the re-encoded video is unreadable: {exc}") from None
    return count, target.stat().st_size


def feed_flow(frames: Frames, options: PrepareOptions, flow: FlowWriter) -> int:
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
