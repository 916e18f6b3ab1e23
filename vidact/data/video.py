"""Reading frames: video files (decord first, OpenCV as fallback) and frame folders (any
numbered image sequence, `vidact.data.frame_folder`).

Everything returns uint8 RGB arrays of shape (T, H, W, 3). Every failure to read, for
any reason, raises `VideoReadError(path, reason)`.

Rules that keep long training runs healthy:
- A reader lives for one call only. decord leaks memory on long-lived readers and after
  accurate seeks, so no reader is cached across samples.
- Reading a few indices never decodes the whole video: decord seeks; the OpenCV fallback
  decodes forward only up to the last index asked for, and seeks over long gaps.
- decord mis-seeks on some codecs and fails on some files that OpenCV reads. When decord
  raises, the same request is retried with OpenCV before the video is declared bad.

The backend is "auto" (decord, then OpenCV), "decord" or "opencv". The environment
variable VIDACT_VIDEO_BACKEND sets the default for the whole process (e.g. to force the
OpenCV path in tests or on a machine without decord).
"""

from __future__ import annotations

import bisect
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import cv2
import numpy as np

from vidact.data.frame_folder import scan_folder
from vidact.errors import VideoReadError

Backend = Literal["auto", "decord", "opencv"]
T = TypeVar("T")
BACKENDS: tuple[str, ...] = ("auto", "decord", "opencv")
FRAME_TEMPLATE = "img_{:05d}.jpg"  # mmaction2 rawframes naming, 1-based
FLOW_TEMPLATES = ("x_{:05d}.jpg", "y_{:05d}.jpg")  # mmaction2 / denseflow naming, 1-based
# OpenCV: gaps longer than this are crossed with a seek instead of decoding forward.
_SEEK_GAP = 48


@dataclass(frozen=True)
class VideoInfo:
    """What a reader knows about a video before decoding it."""

    num_frames: int
    fps: float
    width: int
    height: int
    backend: str


def default_backend() -> str:
    """The process-wide default backend: $VIDACT_VIDEO_BACKEND or "auto"."""
    value = os.environ.get("VIDACT_VIDEO_BACKEND", "auto").strip().lower() or "auto"
    if value not in BACKENDS:
        raise VideoReadError(
            "$VIDACT_VIDEO_BACKEND", f"unknown backend {value!r}; use one of {', '.join(BACKENDS)}"
        )
    return value


def decord_available() -> bool:
    try:
        import decord  # noqa: F401
    except ImportError:
        return False
    return True


# ----------------------------------------------------------------------------- public API


def probe(path: str | Path, backend: str | None = None) -> VideoInfo:
    """Frames, fps and size of a video file or a JPEG frame folder, without decoding."""
    path = Path(path)
    _check_exists(path)
    if path.is_dir():
        return _probe_folder(path)
    return _with_fallback(path, backend, _probe_decord, _probe_opencv)


def read_frames(path: str | Path, indices: Sequence[int], backend: str | None = None) -> np.ndarray:
    """Frames `indices` (any order, repeats allowed) as uint8 RGB (len(indices), H, W, 3)."""
    path = Path(path)
    _check_exists(path)
    index_list = [int(i) for i in indices]
    if not index_list:
        raise VideoReadError(path, "no frame indices requested")
    if min(index_list) < 0:
        raise VideoReadError(path, f"negative frame index {min(index_list)}")
    if path.is_dir():
        return _read_sequence(path, index_list)
    return _with_fallback(
        path,
        backend,
        lambda p: _read_decord(p, index_list),
        lambda p: _read_opencv(p, index_list),
    )


def probe_and_read(
    path: str | Path,
    pick: Callable[[int], Sequence[int]],
    backend: str | None = None,
    key_frames: bool = False,
) -> tuple[VideoInfo, np.ndarray]:
    """`probe` and `read_frames` of the frames `pick(num_frames)` names, opening the video
    once with decord (the disk estimate samples videos this way: half the cost of two
    calls). The info's size is that of the decoded frames. `key_frames`: with decord,
    read the last key frame at or before each pick instead, which decodes one frame
    rather than a whole group of pictures (a sample for size estimates, not for training)."""
    path = Path(path)
    _check_exists(path)

    def with_opencv(p: Path) -> tuple[VideoInfo, np.ndarray]:
        info = _probe_opencv(p)
        return info, _read_opencv(p, _picked(p, pick, info.num_frames))

    def with_decord(p: Path) -> tuple[VideoInfo, np.ndarray]:
        reader = _open_decord(p)
        try:
            num = len(reader)
            indices = _picked(p, pick, num)
            if key_frames:
                keys = [int(k) for k in reader.get_key_indices()] or [0]
                indices = [keys[max(0, bisect.bisect_right(keys, i) - 1)] for i in indices]
            batch = _decode_batch(reader, indices)
            fps = float(reader.get_avg_fps())
        finally:
            del reader
        return VideoInfo(num, fps, int(batch.shape[2]), int(batch.shape[1]), "decord"), batch

    if path.is_dir():
        info = _probe_folder(path)
        return info, _read_sequence(path, _picked(path, pick, info.num_frames))
    return _with_fallback(path, backend, with_decord, with_opencv)


def _picked(path: Path, pick: Callable[[int], Sequence[int]], num_frames: int) -> list[int]:
    indices = [int(i) for i in pick(num_frames)]
    if not indices or min(indices) < 0 or max(indices) >= num_frames:
        raise VideoReadError(path, f"frames {indices} asked of a video of {num_frames}")
    return indices


def read_all_frames(path: str | Path, backend: str | None = None) -> np.ndarray:
    """Every frame of a video or frame folder (for short clips, previews and tests)."""
    info = probe(path, backend)
    return read_frames(path, range(info.num_frames), backend)


def read_flow_frames(
    folder: str | Path, indices: Sequence[int], templates: tuple[str, str] = FLOW_TEMPLATES
) -> np.ndarray:
    """Quantised flow frames from a folder of x/y JPEG pairs as uint8 (T, H, W, 2)."""
    folder = Path(folder)
    _check_exists(folder)
    if not folder.is_dir():
        raise VideoReadError(folder, "a flow folder must be a directory of x_/y_ JPEG pairs")
    index_list = [int(i) for i in indices]
    planes = [_read_folder(folder, index_list, template, gray=True) for template in templates]
    return np.stack(planes, axis=-1)


def count_flow_frames(folder: str | Path, templates: tuple[str, str] = FLOW_TEMPLATES) -> int:
    """Number of flow pairs in a flow folder."""
    return _count_matching(Path(folder), templates[0])


# -------------------------------------------------------------------------------- helpers


def _check_exists(path: Path) -> None:
    if not path.exists():
        raise VideoReadError(path, "file not found")
    if path.is_file() and path.stat().st_size == 0:
        raise VideoReadError(path, "file is empty (0 bytes)")


def _with_fallback(
    path: Path,
    backend: str | None,
    decord_fn: Callable[[Path], T],
    opencv_fn: Callable[[Path], T],
) -> T:
    choice = backend or default_backend()
    if choice not in BACKENDS:
        raise VideoReadError(path, f"unknown video backend {choice!r}; use auto, decord or opencv")
    if choice == "opencv" or (choice == "auto" and not decord_available()):
        return opencv_fn(path)
    if choice == "decord" and not decord_available():
        raise VideoReadError(path, "decord is not installed; use the opencv backend")
    try:
        return decord_fn(path)
    except Exception as exc:  # decord raises bare RuntimeError/DECORDError for everything
        if choice == "decord":
            raise VideoReadError(path, f"decord could not read it: {_short(exc)}") from None
        decord_reason = _short(exc)
    try:
        return opencv_fn(path)
    except VideoReadError as exc:
        raise VideoReadError(path, f"{exc.reason} (decord: {decord_reason})") from None


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:160]


# decord -----------------------------------------------------------------------------------


def _open_decord(path: Path) -> Any:
    import decord

    # One thread: loaders parallelise over workers; decord's own threads oversubscribe.
    return decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)


def _probe_decord(path: Path) -> VideoInfo:
    reader = _open_decord(path)
    try:
        num = len(reader)
        if num <= 0:
            raise RuntimeError("no frames")
        height, width = reader[0].shape[:2]
        return VideoInfo(num, float(reader.get_avg_fps()), int(width), int(height), "decord")
    finally:
        del reader


def _read_decord(path: Path, indices: list[int]) -> np.ndarray:
    reader = _open_decord(path)
    try:
        num = len(reader)
        if max(indices) >= num:
            raise VideoReadError(path, f"frame {max(indices)} requested but the video has {num}")
        return _decode_batch(reader, indices)
    finally:
        del reader


def _decode_batch(reader: Any, indices: list[int]) -> np.ndarray:
    """Frames `indices` of an open decord reader, each decoded once, in `indices` order."""
    unique = sorted(set(indices))
    return _gather(reader.get_batch(unique).asnumpy(), unique, indices)


# OpenCV -----------------------------------------------------------------------------------


def _open_opencv(path: Path) -> cv2.VideoCapture:
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        capture.release()
        raise VideoReadError(path, "not a readable video (corrupt, truncated or not a video)")
    return capture


def _probe_opencv(path: Path) -> VideoInfo:
    capture = _open_opencv(path)
    try:
        num = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        fps = float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
        width = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH))
        height = int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
        if num <= 0:  # some containers do not store a count: count by grabbing
            num = 0
            while capture.grab():
                num += 1
        if num <= 0 or width <= 0 or height <= 0:
            raise VideoReadError(path, "the video has no decodable frames")
        return VideoInfo(num, fps, width, height, "opencv")
    finally:
        capture.release()


def _read_opencv(path: Path, indices: list[int]) -> np.ndarray:
    unique = sorted(set(indices))
    capture = _open_opencv(path)
    frames: list[np.ndarray] = []
    try:
        position = 0  # index of the next frame grab() returns
        for index in unique:
            if index - position > _SEEK_GAP:
                capture.set(cv2.CAP_PROP_POS_FRAMES, index)
                position = int(capture.get(cv2.CAP_PROP_POS_FRAMES))
            while position < index:
                if not capture.grab():
                    raise VideoReadError(path, f"frame {index} could not be decoded (truncated?)")
                position += 1
            ok, frame = capture.read()
            if not ok or frame is None:
                raise VideoReadError(path, f"frame {index} could not be decoded (truncated?)")
            position += 1
            frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    finally:
        capture.release()
    return _gather(np.stack(frames), unique, indices)


# frame folders ---------------------------------------------------------------------------


def _count_matching(folder: Path, template: str) -> int:
    prefix, _, rest = template.partition("{")
    suffix = rest.partition("}")[2]
    pattern = re.compile(re.escape(prefix) + r"\d+" + re.escape(suffix) + "$")
    return sum(1 for name in os.listdir(folder) if pattern.match(name))


def _probe_folder(folder: Path) -> VideoInfo:
    """Any numbered image sequence (`vidact.data.frame_folder`: img_00001.jpg, 00001.jpg,
    frame_000001.png ...), its pattern detected once per folder."""
    frames = scan_folder(folder)
    first = _imread(frames.path(0), gray=False)
    return VideoInfo(len(frames), 0.0, first.shape[1], first.shape[0], "frames")


def _read_sequence(folder: Path, indices: list[int]) -> np.ndarray:
    """Frames `indices` of a folder's image sequence: frame i is its i-th image."""
    frames = scan_folder(folder)
    if max(indices) >= len(frames):
        raise VideoReadError(
            folder, f"frame {max(indices)} requested but the folder has {len(frames)}"
        )
    unique = sorted(set(indices))
    images = [_imread(frames.path(i), gray=False) for i in unique]
    shapes = {image.shape for image in images}
    if len(shapes) > 1:
        raise VideoReadError(folder, f"frames differ in size: {sorted(shapes)}")
    return _gather(np.stack(images), unique, indices)


def _read_folder(folder: Path, indices: list[int], template: str, gray: bool = False) -> np.ndarray:
    unique = sorted(set(indices))
    frames = [_imread(folder / template.format(i + 1), gray=gray) for i in unique]
    shapes = {f.shape for f in frames}
    if len(shapes) > 1:
        raise VideoReadError(folder, f"frames differ in size: {sorted(shapes)}")
    return _gather(np.stack(frames), unique, indices)


def _imread(path: Path, gray: bool) -> np.ndarray:
    if not path.is_file():
        raise VideoReadError(path, "frame image not found")
    image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE if gray else cv2.IMREAD_COLOR)
    if image is None:
        raise VideoReadError(path, "not a readable image")
    return image if gray else cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _gather(batch: np.ndarray, unique: list[int], indices: list[int]) -> np.ndarray:
    """Reorder decoded `batch` (one frame per sorted unique index) into `indices` order."""
    if unique == indices:
        return np.ascontiguousarray(batch)
    position = {index: row for row, index in enumerate(unique)}
    return np.ascontiguousarray(batch[[position[i] for i in indices]])
