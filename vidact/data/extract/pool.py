"""The process pool that runs `extract_video` over many videos (parent side): started in
the background from a fork server, restarted when a decoder crash kills a worker."""

from __future__ import annotations

import os
import sys
import threading
from collections import deque
from collections.abc import Generator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from multiprocessing.context import BaseContext
from pathlib import Path

from vidact import console
from vidact.data.extract import worker
from vidact.data.extract.options import ExtraStep, PrepareOptions, VideoJob, VideoResult
from vidact.data.extract.worker import _init_worker, extract_video


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
    preload = [worker.__name__, "decord"] + [m for m in ("vidact.cli",) if m in sys.modules]
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
