"""What prepare does when something other than a video's pixels goes wrong: a source that
is no regular file (checked before anything opens it), a stop signal (SIGINT, SIGTERM), and
the exit code that tells a script how the run went.

Exit codes of `vidact prepare` (docs/datasets.md, "When things go wrong"):

    0    every video of the selection is prepared, or the failed and missing ones are at
         most --max-failed of them (default 0.1)
    2    a user error (a bad option, annotation file or --out): nothing was started
    3    more than --max-failed of the videos failed or are missing (failures.jsonl)
    4    not one video could be prepared
    130  stopped by SIGINT (Ctrl-C), 143 stopped by SIGTERM: what was finished is
         recorded; the same command resumes
"""

from __future__ import annotations

import os
import signal
import stat
import threading
from dataclasses import dataclass
from types import FrameType, TracebackType
from typing import Any

from vidact.data.frame_folder import not_a_regular_file
from vidact.errors import VidactError

EXIT_OK = 0
EXIT_TOO_MANY_FAILED = 3
EXIT_NOTHING_PREPARED = 4
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
MAX_FAILED = 0.1  # --max-failed: Kinetics always misses some YouTube videos

MISSING = "missing"
EMPTY = "empty (0 bytes)"
A_DIRECTORY = "a directory, not a video"


def source_problem(path: str, frame_folder: bool = False) -> tuple[str, str] | None:
    """(status, reason) for a source no reader should open, from its metadata alone (a
    FIFO blocks whoever opens it): missing, a directory (unless `frame_folder`), not a
    regular file, empty. None for a regular, non-empty file (or a folder of frames)."""
    try:
        info = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return "missing", MISSING
    except OSError as exc:
        return "failed", f"cannot be read: {exc.strerror or exc}"
    if stat.S_ISDIR(info.st_mode):
        return None if frame_folder else ("failed", A_DIRECTORY)
    if frame_folder:
        return "failed", "a file, not a folder of frames"
    if special := not_a_regular_file(info.st_mode):
        return "failed", special
    if info.st_size == 0:
        return "failed", EMPTY
    return None


class StopNow(BaseException):
    """Raised by a stop signal where the run cannot stop between videos (workers=0, or a
    second signal): a BaseException, so that no `except Exception` swallows it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class PrepareStopped(VidactError):
    """The run was stopped by a signal; what it finished is recorded."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum  # the shell's convention: 130 SIGINT, 143 SIGTERM


class StopSignals:
    """While entered (in the main thread), SIGINT and SIGTERM ask the run to stop after the
    videos in flight (`signum` is then set); with `at_once`, or on a second signal, they
    raise StopNow. Elsewhere (another thread) nothing is installed."""

    def __init__(self, at_once: bool) -> None:
        self.at_once = at_once
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def requested(self) -> bool:
        return self.signum is not None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        first = self.signum is None
        self.signum = self.signum or signum
        if self.at_once or not first:
            raise StopNow(self.signum)

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for number in STOP_SIGNALS:
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous.clear()


def stopped(signum: int, finished: int, in_all: int, total: int) -> PrepareStopped:
    """The one line a stopped run ends with."""
    name = signal.Signals(signum).name
    return PrepareStopped(
        f"stopped by {name}: {finished} videos finished in this run and recorded "
        f"({in_all} of {total} done in all); run the same command again to resume",
        signum,
    )


@dataclass(frozen=True)
class Outcome:
    """How a finished run went, for a script: the exit code and, unless 0, why."""

    code: int
    message: str = ""


def outcome(total: int, prepared: int, failed: int, max_failed: float, listed: str) -> Outcome:
    """Exit status of a run over `total` videos, `prepared` of them done (now or before)
    and `failed` failed or missing; `listed` names where the failures are listed."""
    if total and prepared == 0:
        return Outcome(
            EXIT_NOTHING_PREPARED,
            f"not one of the {total} videos could be prepared; see {listed}",
        )
    share = failed / total if total else 0.0
    if share > max_failed:
        return Outcome(
            EXIT_TOO_MANY_FAILED,
            f"{failed} of {total} videos failed or are missing ({share:.1%}, more than "
            f"--max-failed {max_failed:g}); see {listed}, fix them and re-run the same "
            "command, or raise --max-failed",
        )
    return Outcome(EXIT_OK)
