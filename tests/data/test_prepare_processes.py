"""What the prepare pool's processes get: glibc's allocator set to keep freed memory, the
worker modules loaded once (by the fork server) for all workers, one clear line for a
script that starts prepare without a main guard, decord frames without a copy."""

from __future__ import annotations

import multiprocessing
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import write_video
from tests.data.fake_datasets import make_folder
from tests.data.process_scan import HAS_PROC, session_processes, survivors_after
from vidact.data import video
from vidact.data.prepare.frames import decord_to_numpy
from vidact.data.prepare.pipeline import prepare

REPO = Path(__file__).resolve().parents[2]

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


# ------------------------------------------------------------------ stops and kills

SLOW_CLI = """
import os
import sys
import time

from vidact.data.prepare import worker

_real = worker.write_frames


def _slow(frames, folder, options, flow=None):  # in every worker: it imports this script
    # two videos at once, then videos long enough that a process outliving the run
    # would be seen (and would write into OUT)
    time.sleep(0.1 if frames.job.key in ("cats/cats_clip_0", "cats/cats_clip_1") else 20)
    return _real(frames, folder, options, flow=flow)


worker.write_frames = _slow

if __name__ == "__main__":
    from vidact.cli import main

    sys.argv = ["vidact", *sys.argv[1:]]
    main()
"""


def files_of(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and ".prepare" not in p.parts
    }


@pytest.mark.skipif(not HAS_PROC, reason="needs /proc")
@needs_fork_server
@pytest.mark.parametrize("how", ["kill -9 main", "SIGTERM group"])
def test_a_killed_or_stopped_run_leaves_no_process_and_resumes_exactly(
    tmp_path: Path, how: str
) -> None:
    data = make_folder(tmp_path / "ds", {"cats": 4, "dogs": 4})
    settings = {"mode": "frames", "short_side": 32, "workers": 0}
    prepare("folder", data.videos, None, tmp_path / "whole", **settings)
    out = tmp_path / "out"
    script = tmp_path / "slow_cli.py"
    script.write_text(SLOW_CLI)
    args = ["prepare", "folder", "--videos", str(data.videos), "--out", str(out)]
    args += ["--short-side", "32", "--workers", "2"]
    stderr = (tmp_path / "stderr.txt").open("w+")
    child = subprocess.Popen(
        [sys.executable, str(script), *args],
        stdout=subprocess.DEVNULL,
        stderr=stderr,
        start_new_session=True,  # its own session: what /proc says is of this run
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    done_file = out / ".prepare" / "done-all.jsonl"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and child.poll() is None:
        if done_file.is_file() and len(done_file.read_text().splitlines()) >= 2:
            break
        time.sleep(0.02)
    assert child.poll() is None, (tmp_path / "stderr.txt").read_text()
    assert len(session_processes(child.pid)) >= 4  # main, fork server, 2 workers (+ tracker)
    if how == "kill -9 main":
        child.send_signal(signal.SIGKILL)
    else:
        os.killpg(child.pid, signal.SIGTERM)  # as SLURM, systemd and `kill -- -PGID` do
    code = child.wait(timeout=30)
    assert survivors_after(child.pid, 5.0) == []
    finished = len(done_file.read_text().splitlines())
    assert 2 <= finished < 8
    stderr.seek(0)
    said = stderr.read()
    if how == "kill -9 main":
        assert code == -signal.SIGKILL
    else:
        assert code == 143, said
        line = f"stopped by SIGTERM: {finished} videos finished in this run and recorded"
        assert line in said and "run the same command again to resume" in said
        assert "Traceback" not in said

    summary = prepare("folder", data.videos, None, out, **settings)
    assert (summary.skipped, summary.done, summary.failed) == (finished, 8 - finished, 0)
    assert (out / "train.jsonl").read_text() == (tmp_path / "whole" / "train.jsonl").read_text()
    assert files_of(out) == files_of(tmp_path / "whole")
