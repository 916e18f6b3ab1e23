"""Videos whose frames carry their own index, written with PyAV in the codecs that make
random access hard: H.264 and MPEG-4 Part 2 with B-frames, and a variable frame rate.

Each frame's top half is a 2 x 4 grid of black/white blocks, the binary index (8 bits,
frames 0..255), large enough to survive lossy coding; the bottom half is a texture that
moves one pixel a frame, so that the encoder predicts across frames (B-frames really
reference their neighbours).
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

BITS = 8
_ROWS, _COLS = 2, 4


def numbered_frames(count: int, height: int = 48, width: int = 64) -> np.ndarray:
    """uint8 RGB (count, height, width, 3); frame i encodes i."""
    if count > 1 << BITS:
        raise ValueError(f"at most {1 << BITS} frames")
    frames = np.zeros((count, height, width, 3), np.uint8)
    texture = np.random.default_rng(0).integers(0, 256, (height - height // 2, 3 * width, 3))
    block_h, block_w = (height // 2) // _ROWS, width // _COLS
    for i in range(count):
        shift = i % (2 * width)
        frames[i, height // 2 :] = texture[:, shift : shift + width]
        for bit in range(BITS):
            if (i >> bit) & 1:
                row, col = divmod(bit, _COLS)
                frames[
                    i, row * block_h : (row + 1) * block_h, col * block_w : (col + 1) * block_w
                ] = 255
    return frames


def index_of(frame: np.ndarray) -> int:
    """Invert `numbered_frames` (reads the centre of each block)."""
    height, width = frame.shape[:2]
    block_h, block_w = (height // 2) // _ROWS, width // _COLS
    index = 0
    for bit in range(BITS):
        row, col = divmod(bit, _COLS)
        block = frame[
            row * block_h + 3 : (row + 1) * block_h - 3, col * block_w + 3 : (col + 1) * block_w - 3
        ]
        index |= int(block.mean() > 128) << bit
    return index


def write_pyav(
    path: Path,
    frames: np.ndarray,
    codec: str = "libx264",
    options: dict[str, str] | None = None,
    fps: int = 25,
    durations_ms: list[int] | None = None,
) -> Path:
    """Encode RGB `frames` with PyAV. `durations_ms`: per-frame display durations (a
    variable frame rate: the pts are set by hand, in milliseconds)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = frames.shape[1:3]
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = options or {}
        if durations_ms is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
        pts = 0
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            if durations_ms is not None:
                frame.pts, frame.time_base = pts, Fraction(1, 1000)
                pts += durations_ms[i % len(durations_ms)]
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


# The files of the exactness tests: name -> (codec, encoder options, durations in ms).
KINDS: dict[str, tuple[str, dict[str, str], list[int] | None]] = {
    "h264_bframes": ("libx264", {"bf": "3", "g": "12", "crf": "18"}, None),
    "mpeg4_bframes": ("mpeg4", {"bf": "2", "g": "12", "qscale": "2"}, None),
    "h264_vfr": ("libx264", {"bf": "2", "g": "10", "crf": "18"}, [40, 40, 80]),
}


def write_kind(path: Path, kind: str, count: int = 100) -> Path:
    codec, options, durations = KINDS[kind]
    return write_pyav(path, numbered_frames(count), codec, options, durations_ms=durations)
