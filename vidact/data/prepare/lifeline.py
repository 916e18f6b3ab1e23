"""Worker processes that end with the process that started them, however it ends.

A pool's workers outlive a parent that is killed (kill -9, the OOM killer) or that dies of
a SIGTERM it does not handle: they are re-parented to PID 1 and go on writing into OUT,
and the fork server and the resource tracker wait for them. `die_with(pid)`, run first in
every worker, ends the worker (SIGKILL to itself) the moment process `pid` ends; the fork
server and the resource tracker then see their last client go and exit on their own.

Hand-written because neither the standard library nor pebble offers it. Two mechanisms:
- a thread blocked on a pidfd of `pid` (Linux 5.3+, `os.pidfd_open`): readable exactly
  when that process exits, with no polling and no PID-reuse race; elsewhere the thread
  checks every POLL_SECONDS whether `pid` still exists;
- `prctl(PR_SET_PDEATHSIG, SIGKILL)` on Linux (`parent_death_signal`), for processes whose
  direct parent is the one to follow. The kernel sends it when the *thread* that forked
  the process ends, so it is only for processes forked by a main thread (the fork
  server's workers are).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import signal
import sys
import threading
import time

POLL_SECONDS = 0.5  # where there is no pidfd: how often the parent's life is checked
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def parent_death_signal() -> bool:
    """Ask the kernel to SIGKILL this process when its parent (thread) ends; True where
    that took effect (Linux)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _wait_pidfd(fd: int) -> None:
    with contextlib.suppress(InterruptedError):
        select.select([fd], [], [])
    _kill_self()


def _poll(pid: int) -> None:
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            _kill_self()
        except PermissionError:  # alive, another user's (cannot be our parent, but keep on)
            pass
        time.sleep(POLL_SECONDS)


def die_with(pid: int) -> None:
    """End this process as soon as process `pid` ends (at once if it already has)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        _kill_self()
        return
    except (AttributeError, OSError):  # not Linux 5.3+: poll
        threading.Thread(target=_poll, args=(pid,), name="vidact-lifeline", daemon=True).start()
        return
    threading.Thread(target=_wait_pidfd, args=(fd,), name="vidact-lifeline", daemon=True).start()
