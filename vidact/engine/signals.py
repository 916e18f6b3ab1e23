"""Stop signals: SIGINT/SIGTERM become a flag the training loop checks between steps.

SLURM, `timeout`, systemd and torchrun signal a whole process group, so a job's
DataLoader workers receive the SIGTERM too. A worker killed by it takes the run down
with a "DataLoader worker ... is killed by signal" traceback before the main process
can save; `shield_workers` therefore makes every worker ignore SIGINT and SIGTERM (the
main process stops them itself when the loader closes, and a worker whose parent died
exits on its own: torch's worker loop watches the parent's pid). A shielded worker also
ignores the SIGTERM with which multiprocessing's exit handler ends daemonic children
before joining them, so persistent workers still alive at interpreter exit (their loader
still referenced, as happened under torchrun) would hang the exit:
`stop_workers` ends them when the run ends, however it ends.

In the main process the first SIGINT or SIGTERM sets `StopSignal.requested`; the loop
finishes the step it is in, saves a resumable checkpoint and exits with
`PREEMPTED_EXIT_CODE`. Further SIGTERMs are ignored (torchrun forwards the one the
whole group already got); a second SIGINT (Ctrl-C twice) stops at once.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable
from typing import Any

from torch.utils.data import DataLoader

from vidact import console

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# `vidact train` exits with this code after a stop signal made it save and stop: distinct
# from 0 (finished), 1 (a bug) and 2 (a user error such as a bad recipe). Resume with
# `--resume auto`. (128 + signal, e.g. 143, would tell a scheduler "killed", not "saved".)
PREEMPTED_EXIT_CODE = 3


class StopSignal:
    """Turns SIGINT/SIGTERM into a flag the loop checks between steps."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignal:
        for sig in STOP_SIGNALS:
            with contextlib.suppress(ValueError):  # not the main thread: no handlers
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            if signum == signal.SIGINT:  # a second Ctrl-C: stop now
                raise KeyboardInterrupt
            return  # the same SIGTERM again, e.g. forwarded by torchrun
        self.requested = True
        name = signal.Signals(signum).name
        console.warn(f"{name}: saving a checkpoint after this step, then stopping")

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def ignore_stop_signals(worker_id: int) -> None:
    """DataLoader `worker_init_fn`: SIGINT and SIGTERM are the main process's business."""
    del worker_id
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def shield_workers(loader: DataLoader[Any]) -> None:
    """Make `loader`'s worker processes ignore stop signals (before it starts them),
    keeping any `worker_init_fn` it already has."""
    previous: Callable[[int], None] | None = loader.worker_init_fn
    if previous is None:
        loader.worker_init_fn = ignore_stop_signals
    elif previous is not ignore_stop_signals:
        loader.worker_init_fn = _Chain(previous)


class _Chain:
    """`ignore_stop_signals`, then the loader's own worker_init_fn (picklable for spawn)."""

    def __init__(self, then: Callable[[int], None]) -> None:
        self.then = then

    def __call__(self, worker_id: int) -> None:
        ignore_stop_signals(worker_id)
        self.then(worker_id)


def stop_workers(loader: DataLoader[Any]) -> None:
    """End `loader`'s persistent workers now, as its iterator's finaliser would (torch
    has no public call for it), instead of whenever the loader is garbage-collected."""
    iterator = getattr(loader, "_iterator", None)
    if iterator is not None:
        shutdown = getattr(iterator, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()
        loader._iterator = None
