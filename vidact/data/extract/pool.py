"""The process pool that runs `extract_video` over many videos (parent side): started in
the background from a fork server, restarted when a decoder crash kills a worker."""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections import deque
from collections.abc import Generator, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from multiprocessing.context import BaseContext
from pathlib import Path

from vidact import console
from vidact.data.extract import forkserver_main, worker
from vidact.data.extract.options import ExtraStep, PrepareOptions, VideoJob, VideoResult
from vidact.data.extract.worker import _init_worker, extract_video


def _pool_context() -> BaseContext:
    """forkserver where the platform has it (Python 3.14's default on Linux), else spawn.

    Never plain fork: forking this process after OpenCV's thread pool has run deadlocks.
    The fork server is a fresh process that imports the worker's modules once (numpy,
    OpenCV, decord: ~0.25 s of CPU) and this process's main script (`forkserver_main`),
    and forks every worker from that state, where spawn pays the imports again in each
    worker. It lives as long as this process, so a second pool (after a worker crash, or
    the next prepare call) starts in milliseconds."""
    import multiprocessing
    from multiprocessing import forkserver, spawn

    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([worker.__name__, "decord", forkserver_main.__name__])
    # What a spawned worker is told about __main__ (and sys.path), for forkserver_main.
    sent = spawn.get_preparation_data("vidact-worker")
    keys = ("sys_path", "init_main_from_name", "init_main_from_path")
    main = {key: sent[key] for key in keys if key in sent}
    server_environment = {
        forkserver_main.ENV: json.dumps(main),
        # numpy's OpenBLAS starts a thread per core that spins ~0.1 s after the import:
        # in the fork server, on the start-up's critical path (perf: 0.05-0.1 s of CPU a
        # run). Workers use no BLAS; forked workers never have those threads anyway.
        "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS", "1"),
    }
    with _environment(server_environment):
        forkserver.ensure_running()  # starts it now (if not running) with this environment
    return context


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """os.environ with `values` set, restored afterwards."""
    previous = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


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
