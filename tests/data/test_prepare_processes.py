"""What the prepare pool's processes get: glibc's allocator set to keep freed memory, the
worker modules loaded once (by the fork server) for all workers, one clear line for a
script that starts prepare without a main guard, decord frames without a copy."""

from __future__ import annotations

import multiprocessing
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import write_video
from vidact.data import video
from vidact.data.prepare.frames import decord_to_numpy

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
from vidact.data.prepare.worker import keep_freed_memory
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


POOL_SCRIPT = """
import os
import time

from vidact.data.prepare.pool import start_pool, stop_pool


def pid(_):
    time.sleep(0.2)  # long enough that every worker gets a job
    return os.getpid()


if __name__ == "__main__":
    pool = start_pool(3)
    futures = [pool.schedule(pid, (i,)) for i in range(6)]
    print(len({future.result() for future in futures}))
    stop_pool(pool)
"""


@needs_fork_server
def test_workers_load_the_worker_modules_once_for_all(tmp_path: Path) -> None:
    out = run_script(tmp_path, POOL_SCRIPT, env={"PYTHONPROFILEIMPORTTIME": "1"})
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) == 3  # the jobs ran in three workers
    imports = [line for line in out.stderr.splitlines() if re.search(r"\|\s+cv2$", line)]
    # the parent, then the fork server once; the three workers find OpenCV loaded
    assert len(imports) == 2, imports


@pytest.mark.skipif(not video.decord_available(), reason="decord not installed")
def test_decord_frames_are_viewed_not_copied(tmp_path: Path) -> None:
    import decord

    frames = np.random.default_rng(0).integers(0, 255, (3, 32, 40, 3), np.uint8)
    path = write_video(tmp_path / "v.mp4", frames)
    reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
    copies = [reader[i].asnumpy() for i in range(3)]
    reader.seek(0)
    views = [decord_to_numpy(reader.next()) for _ in range(3)]
    del reader  # the views keep their frames alive
    for copy, view in zip(copies, views, strict=True):
        assert view.shape == (32, 40, 3) and view.dtype == np.uint8
        assert not view.flags.owndata and not view.flags.writeable
        np.testing.assert_array_equal(view, copy)


def test_frames_without_dlpack_are_copied() -> None:
    class OldFrame:  # a decord build without to_dlpack
        def asnumpy(self) -> np.ndarray:
            return np.zeros((2, 2, 3), np.uint8)

    assert decord_to_numpy(OldFrame()).shape == (2, 2, 3)


UNGUARDED_SCRIPT = """
import sys
from pathlib import Path

from vidact.data.prepare.options import PrepareOptions
from vidact.data.prepare.pipeline import prepare_dataset
from vidact.data.sources.common import SourceDataset, SourceRecord

# no `if __name__ == "__main__":` guard
video, out = Path(sys.argv[1]), Path(sys.argv[2])
source = SourceDataset("test", ["c"], {"train": [SourceRecord("c/v", video, 0, "c")]})
prepare_dataset(source, out, PrepareOptions(short_side=16), workers=2)
print("finished")
"""


@needs_fork_server
def test_a_script_without_a_main_guard_stops_with_a_clear_line(tmp_path: Path) -> None:
    frames = np.zeros((4, 24, 32, 3), np.uint8)
    video_path = write_video(tmp_path / "v.mp4", frames)
    out = run_script(tmp_path, UNGUARDED_SCRIPT, str(video_path), str(tmp_path / "out"))
    assert out.returncode != 0
    assert "finished" not in out.stdout
    (line,) = [line for line in out.stderr.splitlines() if line.startswith("vidact.errors.")]
    assert "the worker processes exited as they started" in line
    assert 'if __name__ == "__main__":' in line
