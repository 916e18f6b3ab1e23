"""Imported by the fork server only: runs the parent's main script there once, so that
the workers forked from it do not each run it again.

Every worker of a spawn or forkserver pool imports the parent's `__main__` (the script or
`-m` module) before its first job. The fork server can do that once for all of them
(its `__main__` preload), but CPython before 3.13.8 and 3.14.1 never passes it the
script's path (gh-137996: it asks `spawn.get_preparation_data` for a `main_path` key
that no longer exists), and 3.11 ignores the parent's sys.path there too (gh-117378). So
each worker paid the import again: 0.1 s of CPU per worker for benchmarks/prepare.py.
The parent puts what spawn would send (main script and sys.path) in
`VIDACT_FORKSERVER_MAIN` (`pool.py`); here it is handed to `multiprocessing.spawn.prepare`,
which is what a worker calls. A worker then finds `__main__` already in place and skips
it."""

from __future__ import annotations

import contextlib
import json
import os

ENV = "VIDACT_FORKSERVER_MAIN"


def _load_parent_main() -> None:
    from multiprocessing import process, spawn

    data = json.loads(os.environ.get(ENV) or "{}")
    if not data:
        return
    # As in a worker (spawn._main): a script that starts processes outside its
    # `if __name__ == "__main__":` gets multiprocessing's "bootstrapping phase" error here
    # instead of starting a fork server of its own, and that one another, ...
    current = process.current_process()
    current._inheriting = True  # type: ignore[attr-defined]
    try:
        spawn.prepare(data)
    finally:
        del current._inheriting  # type: ignore[attr-defined]


# Whatever the script does, the fork server must live on: every worker comes from it
# (and a worker whose __main__ is not in place loads it itself, as before).
with contextlib.suppress(BaseException):
    _load_parent_main()
