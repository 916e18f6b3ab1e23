"""Which processes of a run are alive, from /proc (no psutil): a run started in a session
of its own (`start_new_session=True`) is every process of that session, whoever its
parent is now (orphans are re-parented to PID 1 but keep their session)."""

from __future__ import annotations

import time
from pathlib import Path

HAS_PROC = Path("/proc/self/stat").exists()


def session_processes(session: int) -> list[str]:
    """'pid comm' of every live (not zombie) process of `session`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except OSError:  # gone meanwhile
            continue
        comm, _, rest = text.partition("(")[2].rpartition(")")
        fields = rest.split()  # state ppid pgrp session ...
        if int(fields[3]) == session and fields[0] != "Z":
            found.append(f"{entry.name} {comm}")
    return found


def survivors_after(session: int, seconds: float) -> list[str]:
    """The processes of `session` still alive `seconds` from now (sooner if none are)."""
    deadline = time.monotonic() + seconds
    while (alive := session_processes(session)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return alive
