"""The process pool that runs `prepare_video` over many videos (parent side).

pebble's `ProcessPool`, a maintained library over the standard library's processes: a
worker that dies (a decoder segfault, the OOM killer) fails only the video it was running
(`ProcessExpired`) and is replaced; `stop()` ends the workers at once (Ctrl-C, an error);
and each task carries a timeout (`--video-timeout`): a decoder that hangs fails its video
and its worker is replaced (this also closes pebble's rare race in which a task whose
worker died is never resolved). A pool that breaks as a whole (`BrokenProcessPool`) is
replaced too: the videos it had in flight are retried one at a time, and one that breaks a
pool alone is recorded as failed. A worker ended by SIGTERM or SIGINT from outside (a
signal to the whole process group, as SLURM and systemd send) fails nothing: its video is
given back to the queue, and the parent, which got the same signal, stops the run.

Every worker ends with the parent (`lifeline.die_with`, also when the parent is killed with
SIGKILL) and sends its stderr, where the decoders write, to OUT/.prepare/decoders.log.

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
import signal
import threading
from collections import deque
from collections.abc import Callable, Generator, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from multiprocessing.context import BaseContext
from pathlib import Path

from pebble import ProcessExpired, ProcessPool

from vidact import console
from vidact.data.prepare import worker
from vidact.data.prepare.options import ExtraStep, PrepareOptions, VideoJob, VideoResult
from vidact.data.prepare.worker import init_worker, prepare_video, remove_debris
from vidact.errors import VidactError

WORKER_DIED = "the worker died while reading it (decoder crash or out of memory)"
WAIT_SECONDS = 0.2  # how often the parent looks up from the results for a stop request
_SIGNALLED = {-signal.SIGTERM, -signal.SIGINT}  # exit codes of workers stopped from outside

# The fork server's environment. numpy's OpenBLAS starts a thread per core that spins
# ~0.1 s after the import: in the fork server, on the start-up's critical path. Workers
# use no BLAS, and forked workers never have those threads anyway.
_SERVER_ENVIRONMENT = {"OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS", "1")}


def died(job: VideoJob) -> VideoResult:
    return VideoResult(job.key, "failed", reason=WORKER_DIED)


def timed_out(job: VideoJob, seconds: float) -> VideoResult:
    reason = f"not finished within --video-timeout {seconds:g} s (a decoder that hangs?)"
    return VideoResult(job.key, "failed", reason=reason)


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


def start_pool(workers: int, decoder_log: Path | None = None) -> ProcessPool:
    """A pool whose processes start now, in the background, so that their start-up (the
    fork server's imports) overlaps the caller's own work (the size estimate). Workers end
    with this process and write their stderr to `decoder_log` (None: keep it)."""
    log = None if decoder_log is None else str(decoder_log)
    pool = ProcessPool(
        workers, initializer=init_worker, initargs=(os.getpid(), log), context=pool_context()
    )

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


@dataclass(frozen=True)
class PoolSettings:
    """How the pool runs each video: `video_timeout` seconds at most (None: no limit),
    `stopping()` True once the run is asked to stop, `decoder_log` for workers' stderr."""

    video_timeout: float | None = None
    stopping: Callable[[], bool] = lambda: False
    decoder_log: Path | None = None


def run_jobs(
    jobs: Sequence[VideoJob],
    out: Path,
    options: PrepareOptions,
    workers: int,
    extra_step: ExtraStep | None,
    started: ProcessPool | None = None,
    settings: PoolSettings = PoolSettings(),
) -> Generator[VideoResult, None, None]:
    """Results in completion order. workers == 0 runs in this process (debugging, tests;
    no time limit); otherwise a pool of `workers` processes (`started`, if given, is used
    first). Once `settings.stopping()`, no video is started, the finished ones are given
    and the ones in progress dropped (the next run redoes them). Closing the generator
    (or an exception in the caller) stops the pool's workers at once."""
    if workers <= 0:
        for job in jobs:
            if settings.stopping():
                return
            yield prepare_video(job, out, options, extra_step)
        return
    pending = deque(jobs)
    suspects: deque[VideoJob] = deque()  # in flight when a pool broke: run one at a time
    first = True
    while (pending or suspects) and not settings.stopping():
        pool, started = started or start_pool(workers, settings.decoder_log), None
        try:
            batch = _PoolRun(pool, workers, (out, options, extra_step), settings)
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
        args: tuple[Path, PrepareOptions, ExtraStep | None],
        settings: PoolSettings,
    ) -> None:
        self.pool, self.workers = pool, workers
        self.args, self.settings = args, settings
        self.in_flight: dict[Future[VideoResult], VideoJob] = {}
        self.sent: dict[VideoJob, int] = {}  # the order jobs went to the pool
        self.lost: list[VideoJob] = []  # in flight when the pool broke
        self.answered = False  # some worker finished (or died on) a video

    def _fill(self, pending: deque[VideoJob], suspects: deque[VideoJob]) -> bool:
        """Send jobs until enough are in flight; False if the pool turned out broken."""
        limit = 1 if suspects else 2 * self.workers
        while len(self.in_flight) < limit and (suspects or pending):
            queue = suspects if suspects else pending
            job = queue.popleft()
            try:
                future = self.pool.schedule(
                    prepare_video, (job, *self.args), timeout=self.settings.video_timeout
                )
            except RuntimeError:
                if self.pool.active:  # not a broken pool: no process can start here
                    raise
                queue.appendleft(job)  # the pool broke since the last results
                return False
            self.in_flight[future] = job
            self.sent[job] = len(self.sent)
        return True

    def results(
        self, pending: deque[VideoJob], suspects: deque[VideoJob]
    ) -> Generator[VideoResult, None, None]:
        """Until both queues are empty, or the pool breaks (then `lost` says what was in
        flight), or the run is asked to stop (then the videos already finished are given,
        the ones in progress dropped: the caller stops the pool). Suspects go one at a
        time, alone in the pool."""
        while pending or suspects or self.in_flight:
            if self.settings.stopping():
                yield from self._finished()
                return
            if not self._fill(pending, suspects):
                yield from self._drain()
                return
            done, _ = wait(self.in_flight, timeout=WAIT_SECONDS, return_when=FIRST_COMPLETED)
            for finished in done:
                job = self.in_flight.pop(finished)
                try:
                    result = finished.result()
                except TimeoutError:  # pebble has ended its worker
                    remove_debris(job, *self.args[:2])
                    result = timed_out(job, self.settings.video_timeout or 0.0)
                except ProcessExpired as exc:  # its worker died on this very video
                    remove_debris(job, *self.args[:2])
                    if exc.exitcode in _SIGNALLED:  # stopped from outside: not the video's fault
                        pending.appendleft(job)
                        continue
                    result = died(job)
                except BrokenProcessPool:
                    self.lost.append(job)
                    yield from self._drain()
                    return
                self.answered = True
                yield result

    def _finished(self) -> Generator[VideoResult, None, None]:
        """The results that have arrived, on a stop."""
        for future in [f for f in self.in_flight if f.done() and f.exception() is None]:
            del self.in_flight[future]
            yield future.result()

    def _drain(self) -> Generator[VideoResult, None, None]:
        """A broken pool: the results that arrived are kept, the rest are lost."""
        wait(self.in_flight)  # a broken pool fails every task at once
        for future, job in self.in_flight.items():
            error = future.exception()
            if isinstance(error, TimeoutError):
                yield timed_out(job, self.settings.video_timeout or 0.0)
            elif error is None or isinstance(error, ProcessExpired):
                self.answered = True
                yield future.result() if error is None else died(job)
            else:
                self.lost.append(job)
        self.in_flight.clear()
        self.lost.sort(key=self.sent.__getitem__)  # retried in the order they were sent
