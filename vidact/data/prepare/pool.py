"""The process pool that runs `prepare_video` over many videos (parent side).

pebble's `ProcessPool`, a maintained library over the standard library's processes: a
worker that dies (a decoder segfault, the OOM killer) fails only the video it was running
(`ProcessExpired`) and is replaced; `stop()` ends the workers at once (Ctrl-C, an error);
and a task may carry a timeout (a per-video time limit, not used yet). A pool that breaks
as a whole (`BrokenProcessPool`) is replaced too: the videos it had in flight are retried
one at a time, and one that breaks a pool alone is recorded as failed.

Workers come from a fork server where the platform has one (Linux; Python 3.14's default
there), else they are spawned; never plain fork: forking a process after OpenCV's thread
pool has run deadlocks. The fork server imports the worker's modules once (numpy, OpenCV,
decord, vidact.data.prepare: ~0.3 s of CPU) and forks every worker from that state. Each
worker then imports the parent's main script as `__mp_main__`, as with spawn: a script
that starts prepare must do so under `if __name__ == "__main__":`, or its workers fail as
they start and prepare stops with one line saying so.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import threading
from collections import deque
from collections.abc import Generator, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from concurrent.futures.process import BrokenProcessPool
from multiprocessing.context import BaseContext
from pathlib import Path

from pebble import ProcessExpired, ProcessPool

from vidact import console
from vidact.data.prepare import worker
from vidact.data.prepare.options import ExtraStep, PrepareOptions, VideoJob, VideoResult
from vidact.data.prepare.worker import init_worker, prepare_video
from vidact.errors import VidactError

WORKER_DIED = "the worker died while reading it (decoder crash or out of memory)"

# The fork server's environment. numpy's OpenBLAS starts a thread per core that spins
# ~0.1 s after the import: in the fork server, on the start-up's critical path. Workers
# use no BLAS, and forked workers never have those threads anyway.
_SERVER_ENVIRONMENT = {"OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS", "1")}


def died(job: VideoJob) -> VideoResult:
    return VideoResult(job.key, "failed", reason=WORKER_DIED)


def pool_context() -> BaseContext:
    """forkserver (preloading the worker module) where the platform has it, else spawn."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([worker.__name__, "decord"])  # decord: where installed
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


def start_pool(workers: int) -> ProcessPool:
    """A pool whose processes start now, in the background, so that their start-up (the
    fork server's imports) overlaps the caller's own work (the size estimate)."""
    pool = ProcessPool(workers, initializer=init_worker, context=pool_context())

    def start() -> None:
        # An error here (no processes can start) is raised again by the first schedule(),
        # in the caller's thread.
        with contextlib.suppress(Exception), _environment(_SERVER_ENVIRONMENT):
            _ = pool.active  # starts the workers (and the fork server, on first use)

    threading.Thread(target=start, name="vidact-pool-start", daemon=True).start()
    return pool


def stop_pool(pool: ProcessPool) -> None:
    """End the pool's workers now, even in the middle of a video."""
    pool.stop()
    pool.join()


def run_jobs(
    jobs: Sequence[VideoJob],
    out: Path,
    options: PrepareOptions,
    workers: int,
    extra_step: ExtraStep | None,
    started: ProcessPool | None = None,
) -> Generator[VideoResult, None, None]:
    """Results in completion order. workers == 0 runs in this process (debugging, tests);
    otherwise a pool of `workers` processes (`started`, if given, is used first). Closing
    the generator (or an exception in the caller) stops the pool's workers at once."""
    if workers <= 0:
        for job in jobs:
            yield prepare_video(job, out, options, extra_step)
        return
    pending = deque(jobs)
    suspects: deque[VideoJob] = deque()  # in flight when a pool broke: run one at a time
    first = True
    while pending or suspects:
        pool, started = started or start_pool(workers), None
        try:
            batch = _PoolRun(pool, workers, out, options, extra_step)
            yield from batch.results(pending, suspects)
        finally:
            stop_pool(pool)
        if batch.lost and first and not batch.answered:
            raise VidactError(
                "the worker processes exited as they started (see the error above); a "
                'script that runs prepare must do so under `if __name__ == "__main__":`'
            )
        first = False
        if len(batch.lost) == 1:
            yield died(batch.lost[0])
        elif batch.lost:
            suspects.extend(batch.lost)
            console.warn(
                f"a worker process died; retrying its {len(batch.lost)} videos one at a time"
            )


class _PoolRun:
    """One pool's share of a run: jobs in, results out, and what it lost if it broke."""

    def __init__(
        self,
        pool: ProcessPool,
        workers: int,
        out: Path,
        options: PrepareOptions,
        extra_step: ExtraStep | None,
    ) -> None:
        self.pool, self.workers = pool, workers
        self.args = (out, options, extra_step)
        self.in_flight: dict[Future[VideoResult], VideoJob] = {}
        self.sent: dict[VideoJob, int] = {}  # the order jobs went to the pool
        self.lost: list[VideoJob] = []  # in flight when the pool broke
        self.answered = False  # some worker finished (or died on) a video

    def results(
        self, pending: deque[VideoJob], suspects: deque[VideoJob]
    ) -> Generator[VideoResult, None, None]:
        """Until both queues are empty, or the pool breaks (then `lost` says what was in
        flight). Suspects go one at a time, alone in the pool."""
        while pending or suspects or self.in_flight:
            limit = 1 if suspects else 2 * self.workers
            while len(self.in_flight) < limit and (suspects or pending):
                queue = suspects if suspects else pending
                job = queue.popleft()
                try:
                    future = self.pool.schedule(prepare_video, (job, *self.args))
                except RuntimeError:
                    if self.pool.active:  # not a broken pool: no process can start here
                        raise
                    queue.appendleft(job)  # the pool broke since the last results
                    yield from self._drain()
                    return
                self.in_flight[future] = job
                self.sent[job] = len(self.sent)
            done, _ = wait(self.in_flight, return_when=FIRST_COMPLETED)
            for finished in done:
                job = self.in_flight.pop(finished)
                try:
                    result = finished.result()
                except ProcessExpired:  # its worker died on this very video
                    result = died(job)
                except BrokenProcessPool:
                    self.lost.append(job)
                    yield from self._drain()
                    return
                self.answered = True
                yield result

    def _drain(self) -> Generator[VideoResult, None, None]:
        """A broken pool: the results that arrived are kept, the rest are lost."""
        wait(self.in_flight)  # a broken pool fails every task at once
        for future, job in self.in_flight.items():
            error = future.exception()
            if error is None or isinstance(error, ProcessExpired):
                self.answered = True
                yield future.result() if error is None else died(job)
            else:
                self.lost.append(job)
        self.in_flight.clear()
        self.lost.sort(key=self.sent.__getitem__)  # retried in the order they were sent
