"""The disk check before a run: what the videos will write, estimated from a sample of
them, against the free space of OUT."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from vidact import console
from vidact.data.frame_folder import image_problem
from vidact.data.prepare.faults import source_problem
from vidact.data.prepare.frames import (
    VIDEO_FOURCC,
    DecodeError,
    encode_flow_image,
    folder_images,
    to_bgr,
)
from vidact.data.prepare.options import PrepareOptions, VideoJob, output_size, select_indices
from vidact.errors import VidactError

_ESTIMATE_SAMPLES = 12  # videos decoded to estimate the output size
_DISK_MARGIN = 1.10  # the estimate is a sample; ask for 10% more than it says
_FLOW_ESTIMATE_PAIRS = 3  # videos of the estimate sample whose flow is actually computed


@dataclass(frozen=True)
class DiskEstimate:
    bytes: int  # everything, flow included
    sampled: int  # videos decoded to estimate it
    free: int
    flow_bytes: int = 0  # the TV-L1 flow images' share of `bytes`


def _estimate_one(job: VideoJob, options: PrepareOptions, workdir: Path) -> float | None:
    """Estimated output bytes of one video: its kept frames x the encoded size of a few."""
    from vidact.data.video import probe_and_read

    if job.folder_fps is not None:
        images = folder_images(Path(job.source))
        if not images or image_problem(images[0]):  # never open a FIFO
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

        def picks(num_frames: int) -> list[int]:
            if options.mode == "frames":  # the key frames at or before 1/3 and 2/3
                return [num_frames * (i + 1) // 3 for i in range(2)]
            return list(range(min(16, num_frames)))  # a video's first GOP or so

        info, frames = probe_and_read(
            job.source, picks, backend=options.backend, key_frames=options.mode == "frames"
        )
        kept = len(select_indices(info.num_frames, info.fps, options.fps, job.start, job.end))
        width, height = info.width, info.height
    if options.mode == "frames":
        size = output_size(width, height, options.short_side)
        params = [cv2.IMWRITE_JPEG_QUALITY, options.quality]
        sizes = [cv2.imencode(".jpg", to_bgr(f, size, True), params)[1].size for f in frames]
        return kept * float(np.mean(sizes))
    size = output_size(width, height, options.short_side, even=True)
    path = workdir / "estimate.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*VIDEO_FOURCC), 25.0, size)
    for frame in frames:
        writer.write(to_bgr(frame, size, True))
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
        readable = images and not image_problem(images[0])
        first = cv2.imread(str(images[0]), cv2.IMREAD_COLOR) if readable else None
        if first is None:
            return 0.0, None
        height, width = first.shape[:2]

        def load(picks: list[int]) -> np.ndarray:
            if any(image_problem(images[i]) for i in picks):
                raise DecodeError("an image of the frame folder is unreadable")
            gray = [cv2.imread(str(images[i]), cv2.IMREAD_GRAYSCALE) for i in picks]
            if any(g is None for g in gray):
                raise DecodeError("an image of the frame folder is unreadable")
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
    # never a FIFO (opening one blocks), a directory named like a video, an empty file
    present = [
        job for job in jobs if source_problem(job.source, job.folder_fps is not None) is None
    ]
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
