"""The pool's crash recovery, on a stand-in for pebble's pool that breaks on demand: a pool
that breaks as a whole keeps the results that arrived, retries what was in flight one video
at a time, and records the video that breaks a pool alone as failed."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import pytest
from pebble import ProcessExpired

from vidact.data.prepare import pool
from vidact.data.prepare.options import PrepareOptions, VideoJob, VideoResult
from vidact.errors import VidactError


class BreakingPool:
    """Runs each job at once, unless its key says otherwise: "break" breaks the pool (every
    task from then on fails with BrokenProcessPool, as pebble fails them all), "die" kills
    only its own worker (ProcessExpired)."""

    def __init__(self, log: list[list[str]]) -> None:
        self.broken = False
        self.scheduled: list[str] = []
        log.append(self.scheduled)

    @property
    def active(self) -> bool:
        return not self.broken

    def schedule(
        self, function: Callable[..., VideoResult], args: tuple[Any, ...], timeout: object = None
    ) -> Future:
        job: VideoJob = args[0]
        self.scheduled.append(job.key)
        future: Future[VideoResult] = Future()
        if job.key.startswith("break"):
            self.broken = True
        if self.broken:
            future.set_exception(BrokenProcessPool("a worker died"))
        elif job.key.startswith("die"):
            future.set_exception(ProcessExpired("Abnormal termination", code=-11))
        else:
            future.set_result(function(*args))
        return future

    def stop(self) -> None:
        pass

    def join(self) -> None:
        pass


def _run(keys: list[str], monkeypatch: pytest.MonkeyPatch) -> tuple[dict[str, str], list]:
    pools: list[list[str]] = []
    monkeypatch.setattr(pool, "start_pool", lambda *args: BreakingPool(pools))
    monkeypatch.setattr(pool, "prepare_video", lambda job, *rest: VideoResult(job.key, "done"))
    jobs = [VideoJob(key, f"{key}.mp4") for key in keys]
    results = pool.run_jobs(jobs, Path("out"), PrepareOptions(), 2, None)
    return {result.key: result.status for result in results}, pools


def test_a_broken_pool_retries_its_videos_one_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    statuses, pools = _run(["a", "break", "c", "d", "e", "f"], monkeypatch)
    assert statuses == {k: "done" for k in "acdef"} | {"break": "failed"}
    # 2 x 2 workers in flight; a's result is kept. The suspects run alone, in order: the
    # first breaks the next pool too (failed), the others then run in a third pool.
    assert pools == [["a", "break", "c", "d"], ["break"], ["c", "d", "e", "f"]]


def test_a_worker_that_dies_fails_only_its_video(monkeypatch: pytest.MonkeyPatch) -> None:
    statuses, pools = _run(["a", "die", "c"], monkeypatch)
    assert statuses == {"a": "done", "die": "failed", "c": "done"}
    assert len(pools) == 1  # the pool carries on


def test_workers_that_cannot_start_stop_the_run_with_one_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(VidactError, match="exited as they started"):
        _run(["break", "b", "c"], monkeypatch)
