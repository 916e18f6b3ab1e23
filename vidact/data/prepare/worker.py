"""What runs inside a worker process: one video's output, produced atomically and never
raising for a bad video (`prepare_video`), and the worker's set-up (`init_worker`). The
pool that runs it is `pool.py`; the fork server preloads this module once for all
workers."""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import errno
import os
import re
import shutil
import signal
from pathlib import Path

import cv2

from vidact.atomic import atomic_dir, atomic_path
from vidact.data.prepare.decoder_log import send_stderr_to
from vidact.data.prepare.faults import source_problem
from vidact.data.prepare.frames import (
    DecodeError,
    FlowWriter,
    Frames,
    decodable_frames,
    feed_flow,
    frame_readers,
    header_frames,
    short_reason,
    truncation,
    write_frames,
    write_video,
)
from vidact.data.prepare.lifeline import die_with, parent_death_signal
from vidact.data.prepare.options import (
    ExtraStep,
    PrepareOptions,
    VideoJob,
    VideoResult,
    flow_path,
    output_path,
    select_indices,
)
from vidact.data.video import decord_available
from vidact.errors import VideoReadError


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


def remove_debris(job: VideoJob, out: Path, options: PrepareOptions) -> None:
    """The temporary outputs a killed or stopped worker left for `job` (only its own)."""
    if options.mode != "none":
        _remove_debris(out / output_path(job.key, options.mode), options.mode)
    if options.with_flow:
        _remove_debris(out / flow_path(job.key), "frames")


def _probe_source(job: VideoJob, options: PrepareOptions) -> tuple[int, str]:
    """--mode none: the frames a reader decodes from the whole source (the manifest's
    start/end then say which segment the annotation means), and a warning if that is
    fewer than the header lists (a truncated file)."""
    from vidact.data.video import probe

    info = probe(job.source, backend=options.backend)
    frames = listed = info.num_frames
    if info.backend != "frames":
        listed = max(listed, header_frames(job.source))
        frames = decodable_frames(job.source, listed)
    warning = truncation(frames, listed) if frames < listed else ""
    if (job.start is not None or job.end is not None) and not select_indices(
        frames, info.fps, None, job.start, job.end
    ):
        return 0, warning
    return frames, warning


def _write_unit(
    job: VideoJob,
    frames_source: Frames,
    target: Path | None,
    flow_target: Path | None,
    options: PrepareOptions,
    extra_step: ExtraStep | None,
) -> VideoResult:
    """One video's frames (or video) and flow, written as one atomic unit."""
    with contextlib.ExitStack() as stack:
        # Entered in this order, renamed in the reverse one: the flow folder lands
        # first, and the frames (what resume checks first) last.
        tmp = None
        if target is not None and options.mode == "frames":
            tmp = stack.enter_context(atomic_dir(target))
        elif target is not None:
            tmp = stack.enter_context(atomic_path(target))
        flow = None
        if flow_target is not None:
            flow = FlowWriter(stack.enter_context(atomic_dir(flow_target)), options)
        if tmp is None:
            assert flow is not None
            count, size = feed_flow(frames_source, options, flow), 0
        elif options.mode == "frames":
            count, size = write_frames(frames_source, tmp, options, flow=flow)
        else:
            count, size = write_video(frames_source, tmp, options, flow=flow)
        if count == 0:
            raise DecodeError("no frames decoded (or the clip lies outside the video)")
        pairs = 0
        if flow is not None:
            pairs, flow_bytes = flow.finish()
            size += flow_bytes
        if extra_step is not None and tmp is not None:
            size += extra_step(job, tmp)
    return VideoResult(
        job.key, "done", count, size, flow_pairs=pairs, warning=frames_source.warning
    )


def _prepare(
    job: VideoJob, out: Path, options: PrepareOptions, extra_step: ExtraStep | None
) -> VideoResult:
    """`prepare_video` without its last line of defence: OSError and reader errors raise."""
    if options.mode == "none":
        frames, warning = _probe_source(job, options)
        if frames <= 0:
            return VideoResult(job.key, "failed", reason="the clip segment lies outside the video")
        if not options.with_flow:
            return VideoResult(job.key, "done", frames, 0, warning=warning)
        # The manifest indexes the whole file (start/end are recorded, not cut), so the
        # flow covers the whole file too: flow frame t is always frame t -> t + 1.
        job = dataclasses.replace(job, start=None, end=None)
    remove_debris(job, out, options)
    target = None if options.mode == "none" else out / output_path(job.key, options.mode)
    flow_target = out / flow_path(job.key) if options.with_flow else None
    reasons = []
    for name, make in frame_readers(job, options):  # the next reader where one fails
        try:
            return _write_unit(job, make(), target, flow_target, options, extra_step)
        except DecodeError as exc:
            reasons.append(f"{name}: {exc}")
    return VideoResult(job.key, "failed", reason="; ".join(reasons))


def prepare_video(
    job: VideoJob,
    out: str | Path,
    options: PrepareOptions,
    extra_step: ExtraStep | None = None,
) -> VideoResult:
    """Produce one video's output under `out` atomically. Never raises for a bad video."""
    problem = source_problem(job.source, frame_folder=job.folder_fps is not None)
    if problem is not None:
        status, reason = problem
        return VideoResult(job.key, "missing" if status == "missing" else "failed", reason=reason)
    try:
        return _prepare(job, Path(out), options, extra_step)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return VideoResult(job.key, "disk_full", reason=f"disk full: {short_reason(exc)}")
        return VideoResult(job.key, "failed", reason=f"{type(exc).__name__}: {short_reason(exc)}")
    except VideoReadError as exc:
        return VideoResult(job.key, "failed", reason=exc.reason)
    except Exception as exc:  # a bad video must never stop the batch
        return VideoResult(job.key, "failed", reason=f"{type(exc).__name__}: {short_reason(exc)}")


# glibc's mallopt() parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD = 32 << 20  # glibc's maximum on 64-bit
_TRIM_THRESHOLD = 128 << 20


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse instead of returning it to the
    kernel; True where it took effect (glibc), False elsewhere.

    Every decoded, resized and colour-converted frame is a fresh array of 0.2-25 MB. With
    glibc's defaults each one is a new mmap (or a heap top that gets trimmed right after),
    so a worker takes ~100 page faults per 640x272 frame and the kernel zeroes every page
    again: benchmarks/prepare.py measured 1.6 s of system time per 6,000 frames, 20% of
    the work. Here freed blocks below 32 MB are reused and the heap is trimmed only beyond
    128 MB free, so a worker's memory stays at its peak (what it needed anyway)."""
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc-like (macOS has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)
    )


def init_worker(parent: int | None = None, decoder_log: str | None = None) -> None:
    """A worker's set-up: it ends with process `parent` (the run's main process), leaves
    Ctrl-C to it, writes its stderr (the decoders' messages) to `decoder_log`."""
    if parent is not None:
        die_with(parent)
        parent_death_signal()  # and with the fork server, its parent
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops us
    if decoder_log is not None:
        send_stderr_to(decoder_log)
    keep_freed_memory()
    cv2.setNumThreads(1)  # parallelism comes from the pool; OpenCV threads oversubscribe
    if decord_available():  # load it now, while the parent estimates, not on video one
        import decord  # noqa: F401
