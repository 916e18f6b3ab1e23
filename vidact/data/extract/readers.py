"""Frame sources for the worker: decord, OpenCV, or a JPEG frame folder, each yielding the
selected frames of one video in order."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import cv2
import numpy as np

from vidact.data.extract.options import PrepareOptions, VideoJob, iter_indices, select_indices
from vidact.data.video import decord_available, default_backend
from vidact.errors import VidactError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")


class _DecodeError(Exception):
    """A reader could not produce the frames (the video, not the disk, is at fault)."""


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:200]


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


class _DLPackFrame:
    """A decord frame's DLPack capsule, in the form `numpy.from_dlpack` takes."""

    __slots__ = ("capsule",)

    def __init__(self, capsule: object) -> None:
        self.capsule = capsule

    def __dlpack__(self, stream: object = None, **_: object) -> object:
        return self.capsule

    def __dlpack_device__(self) -> tuple[int, int]:
        return (1, 0)  # kDLCPU, device 0


def _decord_to_numpy(frame: Any) -> np.ndarray:
    """A read-only numpy view of a decord frame, sharing its memory (`asnumpy()` copies:
    40 us per 640x272 frame, 3% of decode + resize + encode). Where that fails (an old
    numpy), the copy."""
    try:
        return np.from_dlpack(cast(Any, _DLPackFrame(frame.to_dlpack())))
    except (AttributeError, TypeError, BufferError):
        return frame.asnumpy()


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
                frame = _decord_to_numpy(reader.next())
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
