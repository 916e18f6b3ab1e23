"""Frame-accurate reading with PyAV (FFmpeg's libraries, shipped inside the `av` wheel).

Frame i of a video is the i-th frame in presentation order, as a sequential decode returns
it. PyAV exposes what makes random access exact: every packet's presentation timestamp
(pts) and key-frame flag, read by demuxing alone (no decoding). Frame i is the packet with
the i-th smallest pts; to read it we seek to the last key frame at or before it and decode
forward, keeping the frames whose pts we want. Sorted unique indices are read in one pass:
a new seek happens only when the next wanted frame lies past a later key frame than the
one decoding has reached.

A stream whose packets lack timestamps, or repeat one (some AVI files), cannot be indexed
this way; it is read by one sequential decode from the start, counting frames, which is
exact by definition and slower.

Hand-written because no library does it: PyAV seeks to key frames only, and torchvision's
`read_video` selects by seconds, not by frame index.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vidact.errors import VideoReadError


@dataclass(frozen=True)
class PacketIndex:
    """The presentation order of a video stream, from one demux pass."""

    pts: list[int] | None  # sorted pts of frame 0, 1, ...; None: no usable timestamps
    keys: list[int]  # indices (presentation order) of the key frames
    count: int  # frames in the stream
    fps: float
    width: int
    height: int


def open_container(path: Path) -> Any:
    """`path` opened by PyAV, its first video stream decoding in one thread (raises
    VideoReadError when it is not a video)."""
    import av

    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as exc:
        raise VideoReadError(path, f"not a readable video ({_reason(exc)})") from None
    if not container.streams.video:
        container.close()
        raise VideoReadError(path, "not a readable video (no video stream)")
    stream = container.streams.video[0]
    stream.codec_context.thread_count = 1  # loaders parallelise over workers
    return container


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:160]


def index_packets(path: Path) -> PacketIndex:
    """Demux every packet of the first video stream (no decoding)."""
    import av

    container = open_container(path)
    try:
        stream = container.streams.video[0]
        stamps: list[int | None] = []
        key_stamps: list[int | None] = []
        try:
            for packet in container.demux(stream):
                if packet.size == 0:  # the flush packet at the end
                    continue
                stamps.append(packet.pts)
                if packet.is_keyframe:
                    key_stamps.append(packet.pts)
        except av.error.FFmpegError as exc:
            if not stamps:
                raise VideoReadError(path, f"not a readable video ({_reason(exc)})") from None
        rate = stream.average_rate or stream.guessed_rate or 0
        width, height = int(stream.codec_context.width), int(stream.codec_context.height)
    finally:
        container.close()
    if not stamps or width <= 0 or height <= 0:
        raise VideoReadError(path, "the video has no decodable frames")
    usable = None not in stamps and len(set(stamps)) == len(stamps)
    pts = sorted(s for s in stamps if s is not None) if usable else None
    keys = [bisect.bisect_left(pts, k) for k in key_stamps if k is not None] if pts else [0]
    return PacketIndex(pts, sorted(set(keys)) or [0], len(stamps), float(rate), width, height)


def read_pyav(path: Path, indices: list[int], index: PacketIndex | None = None) -> np.ndarray:
    """Frames `indices` (any order, repeats allowed) as uint8 RGB (len(indices), H, W, 3)."""
    index = index or index_packets(path)
    if max(indices) >= index.count:
        raise VideoReadError(
            path, f"frame {max(indices)} requested but the video has {index.count}"
        )
    unique = sorted(set(indices))
    if index.pts is None:
        decoded = _read_sequential(path, unique)
    else:
        decoded = _read_by_pts(path, unique, index.pts, index.keys)
    position = {frame: row for row, frame in enumerate(unique)}
    return np.ascontiguousarray(np.stack([decoded[position[i]] for i in indices]))


def _read_by_pts(path: Path, unique: list[int], pts: list[int], keys: list[int]) -> list[Any]:
    """Decode the frames `unique` (sorted) by seeking to key frames and matching pts."""
    import av

    container = open_container(path)
    out: list[Any] = []
    try:
        stream = container.streams.video[0]
        frames = None
        reached = -1  # presentation index of the last frame decoded
        for wanted in unique:
            key = keys[bisect.bisect_right(keys, wanted) - 1]
            if frames is None or key > reached:
                container.seek(pts[key], stream=stream, backward=True, any_frame=False)
                frames = container.decode(stream)
            reached = _decode_until(path, frames, pts, wanted, out)
    except av.error.FFmpegError as exc:
        raise VideoReadError(path, f"decoding failed: {_reason(exc)}") from None
    finally:
        container.close()
    return out


def _decode_until(path: Path, frames: Any, pts: list[int], wanted: int, out: list[Any]) -> int:
    """Decode from `frames` up to frame `wanted`, appending it to `out`; its index back."""
    target = pts[wanted]
    for frame in frames:
        if frame.pts is None:
            raise VideoReadError(path, "decoded a frame without a timestamp")
        if frame.pts == target:
            out.append(frame.to_ndarray(format="rgb24"))
            return wanted
        if frame.pts > target:
            break
    raise VideoReadError(path, f"frame {wanted} could not be decoded (truncated?)")


def _read_sequential(path: Path, unique: list[int]) -> list[Any]:
    """Decode from the start, counting frames, up to the last of `unique` (sorted)."""
    import av

    container = open_container(path)
    out: list[Any] = []
    wanted = iter(unique)
    next_wanted = next(wanted)
    try:
        for position, frame in enumerate(container.decode(container.streams.video[0])):
            if position == next_wanted:
                out.append(frame.to_ndarray(format="rgb24"))
                next_wanted = next(wanted, -1)
                if next_wanted < 0:
                    return out
    except av.error.FFmpegError as exc:
        raise VideoReadError(path, f"decoding failed: {_reason(exc)}") from None
    finally:
        container.close()
    raise VideoReadError(path, f"frame {next_wanted} could not be decoded (truncated?)")
