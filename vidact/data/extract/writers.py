"""What the worker writes for one video: resized JPEG frames, an MPEG-4 video, and the
quantised TV-L1 flow images fed frame by frame."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import cv2
import numpy as np

from vidact.data.extract.options import PrepareOptions, output_size
from vidact.data.extract.readers import _DecodeError, _FolderFrames, _Frames
from vidact.data.video import FLOW_TEMPLATES, FRAME_TEMPLATE
from vidact.errors import VidactError

VIDEO_FOURCC = "mp4v"  # MPEG-4 Part 2: OpenCV's pip builds write it, decord reads it
_FLOW_CHUNK = 32  # flow pairs computed per compute_flow call (bounds a worker's memory)
_FLOW_QUALITY = 95  # JPEG quality of the flow images (OpenCV's default, as denseflow writes)


def _to_bgr(frame: np.ndarray, size: tuple[int, int], rgb: bool) -> np.ndarray:
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
                write_bytes(self.folder / template.format(self.pairs), data)
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
        write_bytes(template.format(count), data)
        total += data.size
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
