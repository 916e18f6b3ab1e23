"""`vidact predict --annotate mp4|gif`: the video with its current top class and score
drawn on every frame.

A frame shows the top class of the window whose centre is nearest to it (with no sliding
windows, the video's prediction). Frames are read a chunk at a time with vidact's reader,
the caption is drawn with Pillow, and the frames are encoded with PyAV (H.264 where its
FFmpeg has an encoder, MPEG-4 part 2 otherwise) or saved as a GIF by Pillow (scaled down to
at most `GIF_WIDTH` pixels wide: a GIF holds every frame uncompressed in time).
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from vidact.atomic import atomic_path
from vidact.data.video import read_frames

__all__ = ["captions", "write_annotated"]

GIF_WIDTH = 320
_READ_CHUNK = 64  # frames read at a time
_DEFAULT_FPS = 25.0  # a frame folder's frame rate when none is given


def captions(
    num_frames: int, centres: np.ndarray, texts: list[str]
) -> list[str]:  # fmt: skip
    """The caption of every frame: that of the window whose centre (in frames) is nearest."""
    frame = np.arange(num_frames) + 0.5
    nearest = np.abs(frame[:, None] - centres[None, :]).argmin(axis=1)
    return [texts[i] for i in nearest]


def _frames(path: Path, num_frames: int, backend: str) -> Iterator[np.ndarray]:
    for start in range(0, num_frames, _READ_CHUNK):
        yield from read_frames(path, range(start, min(start + _READ_CHUNK, num_frames)), backend)


@functools.lru_cache(maxsize=32)
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one small bitmap font
        return ImageFont.load_default()


def _draw(frame: np.ndarray, text: str) -> Image.Image:
    """The frame with `text` in white on a dark band along its top edge (the font shrinks
    until the text fits the width)."""
    image = Image.fromarray(frame)
    draw = ImageDraw.Draw(image)
    size = max(8, image.height // 18)
    while size > 6 and draw.textlength(text, font=_font(size)) > image.width - 8:
        size -= 1
    font = _font(size)
    bottom = draw.textbbox((4, 2), text, font=font)[3]
    draw.rectangle((0, 0, image.width, bottom + 3), fill=(0, 0, 0))
    draw.text((4, 2), text, fill=(255, 255, 255), font=font)
    return image


def _write_mp4(target: Path, images: Iterator[Image.Image], fps: float) -> None:
    import av
    from av.video.stream import VideoStream

    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    first = next(images)
    width, height = first.width // 2 * 2, first.height // 2 * 2  # yuv420p: even sizes
    with atomic_path(target) as tmp, av.open(str(tmp), mode="w") as container:
        stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        assert isinstance(stream, VideoStream)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for image in itertools.chain([first], images):
            frame = av.VideoFrame.from_image(image.crop((0, 0, width, height)))
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def _write_gif(target: Path, images: Iterator[Image.Image], fps: float) -> None:
    frames = []
    for image in images:
        if image.width > GIF_WIDTH:
            height = max(1, round(image.height * GIF_WIDTH / image.width))
            image = image.resize((GIF_WIDTH, height), Image.Resampling.BILINEAR)
        frames.append(image)
    with atomic_path(target) as tmp:
        frames[0].save(
            tmp, format="GIF", save_all=True, append_images=frames[1:],
            duration=round(1000 / fps), loop=0,
        )  # fmt: skip


def write_annotated(
    source: Path, target: Path, frame_captions: list[str], fps: float, backend: str
) -> Path:
    """Write `source`'s frames with their captions to `target` (.mp4 or .gif)."""
    fps = fps if fps > 0 else _DEFAULT_FPS
    frames = _frames(source, len(frame_captions), backend)
    images = (_draw(f, text) for f, text in zip(frames, frame_captions, strict=True))
    if target.suffix == ".gif":
        _write_gif(target, images, fps)
    else:
        _write_mp4(target, images, fps)
    return target
