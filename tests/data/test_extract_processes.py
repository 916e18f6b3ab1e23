"""What the extraction pool's processes get: glibc's allocator set to keep freed memory,
the parent's main script loaded once by the fork server, decord frames without a copy."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import write_video
from vidact.data import video
from vidact.data.extract.readers import _decord_to_numpy

needs_fork_server = pytest.mark.skipif(
    "forkserver" not in multiprocessing.get_all_start_methods(), reason="no fork server"
)


def run_script(
    tmp_path: Path, text: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `text` as a Python script of its own (its own __main__) with `args`."""
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(text))
    return subprocess.run(
        [sys.executable, str(script), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


ALLOCATIONS = """
import resource, sys
import numpy as np
from vidact.data.extract.worker import keep_freed_memory
if sys.argv[1] == "tuned":
    assert keep_freed_memory()
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):  # settle: imports, first heap growth
    [np.ones(500_000, np.uint8) for _ in range(3)]
before = faults()
for _ in range(200):  # a frame's arrays (decoded, resized, converted), made and freed
    [np.ones(500_000, np.uint8) for _ in range(3)]
print(faults() - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_keep_freed_memory_stops_page_faults_on_every_frame(tmp_path: Path) -> None:
    faults = {}
    for mode in ("plain", "tuned"):
        out = run_script(tmp_path, ALLOCATIONS, mode)
        assert out.returncode == 0, out.stderr
        faults[mode] = int(out.stdout)
    # glibc's defaults give 122 KB back to the kernel and fault it in again every round
    assert faults["plain"] > 200 * 100
    assert faults["tuned"] < faults["plain"] // 20


MAIN_SCRIPT = """
import os
from pathlib import Path

import helper  # a module beside the script: found through the parent's sys.path

with open(os.environ["LOG"], "a") as log:
    log.write(f"{os.getpid()} {__name__}\\n")

from concurrent.futures import ProcessPoolExecutor

from vidact.data.extract.pool import _pool_context


def pid(_):
    import time

    time.sleep(0.05)
    return os.getpid()


if __name__ == "__main__":
    with ProcessPoolExecutor(3, mp_context=_pool_context()) as pool:
        print(len(set(pool.map(pid, range(6)))))
"""


@needs_fork_server
def test_the_fork_server_runs_the_parents_main_script_once_for_all_workers(
    tmp_path: Path,
) -> None:
    log = tmp_path / "imports.log"
    (tmp_path / "helper.py").write_text("")
    out = run_script(tmp_path, MAIN_SCRIPT, env={"LOG": str(log)})
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) >= 2  # the jobs ran in several workers
    names = [line.split()[1] for line in log.read_text().splitlines()]
    # the parent, then the fork server once; the three workers find it loaded
    assert names == ["__main__", "__mp_main__"]


@pytest.mark.skipif(not video.decord_available(), reason="decord not installed")
def test_decord_frames_are_viewed_not_copied(tmp_path: Path) -> None:
    import decord

    frames = np.random.default_rng(0).integers(0, 255, (3, 32, 40, 3), np.uint8)
    path = write_video(tmp_path / "v.mp4", frames)
    reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
    copies = [reader[i].asnumpy() for i in range(3)]
    reader.seek(0)
    views = [_decord_to_numpy(reader.next()) for _ in range(3)]
    del reader  # the views keep their frames alive
    for copy, view in zip(copies, views, strict=True):
        assert view.shape == (32, 40, 3) and view.dtype == np.uint8
        assert not view.flags.owndata and not view.flags.writeable
        np.testing.assert_array_equal(view, copy)


def test_frames_without_dlpack_are_copied() -> None:
    class OldFrame:  # a decord build without to_dlpack
        def asnumpy(self) -> np.ndarray:
            return np.zeros((2, 2, 3), np.uint8)

    assert _decord_to_numpy(OldFrame()).shape == (2, 2, 3)


UNGUARDED_SCRIPT = """
from concurrent.futures import ProcessPoolExecutor

from vidact.data.extract.pool import _pool_context

# no `if __name__ == "__main__":` guard
with ProcessPoolExecutor(2, mp_context=_pool_context()) as pool:
    print(sum(pool.map(abs, range(-3, 3))))
"""


@needs_fork_server
def test_a_script_without_a_main_guard_fails_as_with_spawn_instead_of_running_twice(
    tmp_path: Path,
) -> None:
    out = run_script(tmp_path, UNGUARDED_SCRIPT)
    # the fork server must not run the script's body (a second copy of the user's job)
    assert out.stdout.count("9") <= 1
    assert out.returncode != 0
    assert "bootstrapping phase" in out.stderr or "BrokenProcessPool" in out.stderr
