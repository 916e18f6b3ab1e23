"""One video's output, produced atomically and never raising for a bad video
(`extract_video`), and the process pool that runs it over many videos."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import re
import shutil
import signal
import sys
import threading
from collections import deque
from collections.abc import Generator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from multiprocessing.context import BaseContext
from pathlib import Path

import cv2

from vidact import console
from vidact.atomic import atomic_dir, atomic_path
from vidact.data.extract.options import (
    ExtraStep,
    PrepareOptions,
    VideoJob,
    VideoResult,
    flow_path,
    output_path,
    select_indices,
)
from vidact.data.extract.readers import _DecodeError, _readers, _short
from vidact.data.extract.writers import _feed_flow, _FlowWriter, _write_frames, _write_video
from vidact.data.video import decord_available
from vidact.errors import VideoReadError

MISSING = "missing"


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


def _pool_context() -> BaseContext:
    """forkserver where the platform has it (Python 3.14's default on Linux), else spawn.

    Never plain fork: forking this process after OpenCV's thread pool has run deadlocks.
    The fork server is a fresh process that imports the worker's modules once (numpy,
    OpenCV, decord: ~0.25 s of CPU) and forks every worker from that state, where spawn
    pays the imports again in each worker. It lives as long as this process, so a second
    pool (after a worker crash, or the next prepare call) starts in milliseconds."""
    import multiprocessing

    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    # Each worker also runs the parent's main script (as spawn does); for the vidact
    # command that imports vidact.cli, so the server imports it once for all of them.
    preload = [__name__, "decord"] + [m for m in ("vidact.cli",) if m in sys.modules]
    context.set_forkserver_preload(preload)  # a module that fails to import is skipped
    return context


def _start_pool(workers: int) -> ProcessPoolExecutor:
    """A pool whose processes start now, in the background, so that their start-up (the
    fork server's imports: submit() blocks until they are done) overlaps our own work."""
    pool = ProcessPoolExecutor(workers, mp_context=_pool_context(), initializer=_init_worker)

    def start() -> None:
        try:
            for _ in range(workers):
                pool.submit(os.getpid)
        except Exception:  # the first real submit raises it again, in the caller's thread
            pass

    threading.Thread(target=start, name="vidact-pool-start", daemon=True).start()
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
