"""Who may write a run folder: never two runs at once, never a finished run by accident.

- A new run (no `--resume`) refuses a folder that is not empty, unless `--overwrite`,
  which first deletes what an earlier vidact run left there (and refuses a non-empty
  folder that is not a run folder: vidact never deletes files it did not write).
- `run.lock` holds the owner's pid and host for the run's lifetime (created with
  O_EXCL, so of two runs started at once one wins). A lock whose process is gone (a
  kill -9, a crashed node on this host) is taken over with a line; a live one, or one
  from another host, is refused with the line saying how to continue.
- Temporary files that an atomic write left behind when the process was killed in the
  middle of it (`.<name>.*.tmp*`) are deleted once the lock is held.
- `held_run_folder`: the lock for rank 0, and a fresh run that fails before its first
  checkpoint removes the folder it created.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

from vidact import console
from vidact.errors import VidactError

LOCK_NAME = "run.lock"
# What an earlier run (and `vidact evaluate` of it) writes (engine/run_folder.py);
# --overwrite deletes only these.
RUN_FILES = (
    "recipe.yaml", "log.txt", "metrics.jsonl", "checkpoints", "tensorboard", "eval",
    "curves.png", LOCK_NAME,
)  # fmt: skip
_TEMP_GLOB = ".*.tmp*"


def check_new_run_folder(run_dir: Path, overwrite: bool) -> None:
    """Refuse a non-empty `run_dir` for a new run; with `overwrite`, empty a run folder."""
    if not run_dir.is_dir() or not any(run_dir.iterdir()):
        return
    found = sorted(p.name for p in run_dir.iterdir())
    if not overwrite:
        what = "a run is there" if (run_dir / "checkpoints").is_dir() else "it holds files"
        raise VidactError(
            f"{run_dir}: the run folder is not empty ({what}: {', '.join(found[:4])}); "
            "continue that run with --resume auto, replace it with --overwrite, or choose "
            "another --out"
        )
    foreign = [name for name in found if name not in RUN_FILES]
    if foreign:
        raise VidactError(
            f"{run_dir}: --overwrite deletes only what a vidact run wrote, and this folder "
            f"also holds {', '.join(foreign[:4])}; choose an empty --out"
        )
    _check_not_locked(run_dir / LOCK_NAME)
    for name in found:
        path = run_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    console.info(f"--overwrite: deleted the earlier run in {run_dir}")


@contextlib.contextmanager
def hold_run_lock(run_dir: Path) -> Iterator[Path]:
    """Hold `run_dir/run.lock` while the block runs; clean stale temporary files."""
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = run_dir / LOCK_NAME
    _acquire(lock)
    try:
        for stale in remove_stale_temporaries(run_dir):
            console.info(f"deleted {stale}, left by an interrupted write")
        yield lock
    finally:
        with contextlib.suppress(FileNotFoundError):
            if _owner(lock) == _me():
                lock.unlink()


@contextlib.contextmanager
def held_run_folder(run_dir: Path, is_main: bool, fresh: bool) -> Iterator[None]:
    """Rank 0 holds the run folder's lock; a fresh run that fails before its first
    checkpoint removes the folder it created, so no empty run folder is left behind."""
    if not is_main:
        yield
        return
    created = fresh and not run_dir.exists()
    try:
        with hold_run_lock(run_dir):
            yield
    except BaseException:
        if created and not any((run_dir / "checkpoints").glob("*.pt")):
            shutil.rmtree(run_dir, ignore_errors=True)
        raise


def _me() -> dict[str, object]:
    return {"pid": os.getpid(), "host": socket.gethostname()}


def _owner(lock: Path) -> dict[str, object] | None:
    try:
        data = json.loads(lock.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _check_not_locked(lock: Path) -> None:
    """Raise when a live process (or one on another host) holds `lock`; remove a stale one."""
    if not lock.exists():
        return
    owner = _owner(lock) or {}
    pid, host = owner.get("pid"), owner.get("host")
    if host == socket.gethostname() and isinstance(pid, int) and not _alive(pid):
        console.warn(f"{lock}: taking over the lock of process {pid}, which is gone")
        lock.unlink()
        return
    raise VidactError(
        f"{lock}: another run (pid {pid} on {host}) is writing this run folder; wait for "
        "it to finish, or choose another --out (delete the lock file only if you are "
        "sure that run is dead)"
    )


def _acquire(lock: Path) -> None:
    for _ in range(2):  # a second try after taking over a stale lock
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            _check_not_locked(lock)
            continue
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(_me(), handle)
        return
    raise VidactError(f"{lock}: could not take the run's lock; is another run starting there?")


def remove_stale_temporaries(run_dir: Path) -> list[Path]:
    """Delete the temporary files of atomic writes that never finished (the caller holds
    the lock, so no live writer owns them); return their paths."""
    stale = [p for folder in (run_dir, run_dir / "checkpoints") for p in folder.glob(_TEMP_GLOB)]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale
