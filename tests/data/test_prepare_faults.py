"""prepare under faults: sources that are no regular file (a FIFO, a directory, an empty
file) are failed with their reason before anything opens them, a decoder that hangs is
stopped by --video-timeout, the exit code says how the run went, and the decoders' own
messages stay out of the terminal (in OUT/.prepare/decoders.log)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from tests.conftest import frame_index_of, numbered_frames
from tests.data.fake_datasets import corrupt, make_folder, make_frame_folder_classes, read_jsonl
from vidact.cli import app
from vidact.data import video
from vidact.data.manifest import load_manifest
from vidact.data.prepare.faults import (
    EXIT_NOTHING_PREPARED,
    EXIT_OK,
    EXIT_TOO_MANY_FAILED,
    PrepareStopped,
    outcome,
)
from vidact.data.prepare.options import PrepareOptions, VideoJob
from vidact.data.prepare.pipeline import prepare, prepare_dataset
from vidact.data.sources.folder import load_folder

REPO = Path(__file__).resolve().parents[2]
runner = CliRunner()


def _reasons(out: Path) -> dict[str, str]:
    return {str(f["key"]): str(f["reason"]) for f in read_jsonl(out / "failures.jsonl")}


@pytest.mark.timeout(120)  # a FIFO that is opened blocks forever: fail, never hang
@pytest.mark.parametrize("workers", [0, 2])
def test_fifo_directory_and_empty_file_are_failed_with_their_reason(
    tmp_path: Path, workers: int
) -> None:
    data = make_folder(tmp_path / "ds", {"cats": 2, "dogs": 2})
    os.mkfifo(data.videos / "cats" / "pipe.mp4")
    (data.videos / "dogs" / "folder.mp4").mkdir()
    (data.videos / "dogs" / "folder.mp4" / "inner.mp4").write_bytes(b"never looked at")
    (data.videos / "dogs" / "empty.mp4").write_bytes(b"")
    out = tmp_path / "out"
    summary = prepare("folder", data.videos, None, out, short_side=32, workers=workers)
    assert (summary.done, summary.failed, summary.missing) == (4, 3, 0)
    assert _reasons(out) == {
        # (the folder source keys a non-regular file by its whole name)
        "cats/pipe.mp4": "a FIFO (named pipe), not a regular file: it is never opened",
        "dogs/folder.mp4": "a directory, not a video",
        "dogs/empty": "empty (0 bytes)",
    }
    assert len(load_manifest(out / "train.jsonl")) == 4
    assert summary.outcome.code == EXIT_TOO_MANY_FAILED  # 3 of 7


@pytest.mark.timeout(120)  # the disk estimate used to open the FIFO and block forever
@pytest.mark.parametrize("workers", [0, 1])
def test_a_fifo_among_a_folders_frames_fails_that_video_unopened(
    tmp_path: Path, workers: int
) -> None:
    data = make_frame_folder_classes(tmp_path / "f", {"cats": 2}, template="img_{:05d}.jpg")
    first = sorted((data.videos / "cats" / "cats clip 1").iterdir())[0]
    first.unlink()
    os.mkfifo(first)
    out = tmp_path / "out"
    summary = prepare("folder", data.videos, None, out, workers=workers)
    assert (summary.done, summary.failed) == (1, 1)
    (reason,) = _reasons(out).values()
    assert reason.endswith(
        f"frame {first.name} is a FIFO (named pipe), not a regular file: it is never opened"
    )


def hang_on_slow(job: VideoJob, output: Path) -> int:
    """An extra step that hangs on one video, as a stuck decoder would."""
    if job.key.endswith("clip_1"):
        time.sleep(600)
    return 0


@pytest.mark.timeout(120)
def test_video_timeout_fails_a_hanging_video_and_the_run_goes_on(tmp_path: Path) -> None:
    data = make_folder(tmp_path / "ds", {"cats": 3})
    source = load_folder(data.videos)
    out = tmp_path / "out"
    start = time.monotonic()
    summary = prepare_dataset(
        source,
        out,
        PrepareOptions(short_side=32),
        workers=1,
        extra_step=hang_on_slow,
        video_timeout=2,
    )
    assert time.monotonic() - start < 60
    assert (summary.done, summary.failed) == (2, 1)
    assert _reasons(out) == {
        "cats/cats_clip_1": "not finished within --video-timeout 2 s (a decoder that hangs?)"
    }
    assert not list((out / "frames" / "cats").glob(".*"))  # the stopped video's debris


def test_outcome_codes() -> None:
    assert outcome(100, 100, 0, 0.1, "f").code == EXIT_OK
    assert outcome(100, 90, 10, 0.1, "f").code == EXIT_OK  # at most --max-failed
    assert outcome(100, 89, 11, 0.1, "f").code == EXIT_TOO_MANY_FAILED
    assert outcome(100, 99, 1, 0.0, "f").code == EXIT_TOO_MANY_FAILED
    nothing = outcome(3, 0, 3, 1.0, "OUT/failures.jsonl")
    assert nothing.code == EXIT_NOTHING_PREPARED  # whatever --max-failed says
    assert nothing.message == "not one of the 3 videos could be prepared; see OUT/failures.jsonl"


def test_exit_code_4_when_no_video_could_be_prepared(tmp_path: Path) -> None:
    data = make_folder(tmp_path / "ds", {"cats": 2})
    for path in (data.videos / "cats").iterdir():
        corrupt(path)
    args = ["prepare", "folder", "--videos", str(data.videos), "--out", str(tmp_path / "out")]
    result = runner.invoke(app, [*args, "--workers", "0", "--max-failed", "1"])
    assert result.exit_code == EXIT_NOTHING_PREPARED, result.output
    assert "not one of the 2 videos could be prepared" in result.output
    assert "2 unreadable, 0 missing" in result.stdout  # the summary comes first


def test_decoder_messages_go_to_the_log_not_the_terminal(tmp_path: Path) -> None:
    data = make_folder(tmp_path / "ds", {"cats": 2})
    bad = data.videos / "cats" / "cats clip 0.mp4"
    whole = bad.read_bytes()
    bad.write_bytes(whole[: len(whole) // 2])  # no index (moov): FFmpeg complains on stderr
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "vidact", "prepare", "folder", "--videos", str(data.videos),
         "--out", str(out), "--short-side", "32", "--workers", "1", "--max-failed", "1"],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    log = (out / ".prepare" / "decoders.log").read_text()
    assert "moov atom not found" in log or "[mov,mp4" in log, log
    assert "moov" not in result.stderr and "[mov,mp4" not in result.stderr, result.stderr


def _faststart_mp4(path: Path, frames: np.ndarray) -> Path:
    """An MPEG-4 file with its index (moov) before the data, as cameras and YouTube write
    them: cut short, its header still lists every frame."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return path


def _sequential_count(path: Path) -> int:
    """The slow literal reference: decode from the start until the decoder stops."""
    capture = cv2.VideoCapture(str(path))
    count = 0
    while capture.read()[0]:
        count += 1
    capture.release()
    return count


@pytest.mark.parametrize(
    ("mode", "backend"), [("none", None), ("frames", None), ("frames", "pyav")]
)
def test_a_truncated_video_records_the_frames_that_decode_with_a_warning(
    tmp_path: Path, mode: str, backend: str | None
) -> None:
    videos = tmp_path / "ds" / "clips"
    whole = _faststart_mp4(videos / "whole.mp4", numbered_frames(60))
    cut = _faststart_mp4(videos / "cut.mp4", numbered_frames(60))
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size * 6 // 10])
    assert cv2.VideoCapture(str(cut)).get(cv2.CAP_PROP_FRAME_COUNT) == 60  # the header
    decodable = _sequential_count(cut)
    assert 0 < decodable < 60 and _sequential_count(whole) == 60
    out = tmp_path / "out"
    summary = prepare(
        "folder", tmp_path / "ds", None, out, mode=mode, short_side=0, workers=0, backend=backend
    )
    assert (summary.done, summary.failed, summary.warnings) == (2, 0, 1)
    samples = {Path(s.path).stem: s for s in load_manifest(out / "train.jsonl")}
    assert (samples["whole"].num_frames, samples["cut"].num_frames) == (60, decodable)
    (entry,) = read_jsonl(out / "failures.jsonl")
    assert entry["key"] == "clips/cut" and entry["status"] == "warning"
    assert entry["reason"] == (
        f"truncated: {decodable} of the 60 frames its header lists decode (the rest is cut off)"
    )
    # every frame the manifest lists can be read, in order (the last one, cut in the
    # middle, is completed by the decoder from the one before)
    frames = video.read_frames(out / samples["cut"].path, range(decodable))
    assert [frame_index_of(f) for f in frames[:-1]] == list(range(decodable - 1))
    assert summary.outcome.code == EXIT_OK  # a warning is no failure


def sigterm_on_third(job: VideoJob, output: Path) -> int:
    """An extra step that sends this process a SIGTERM while the third video is written."""
    if job.key.endswith("clip_2"):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises before this ends
    return 0


def test_sigterm_in_process_stops_with_one_line_and_resumes(tmp_path: Path) -> None:
    data = make_folder(tmp_path / "ds", {"cats": 4})
    source, out = load_folder(data.videos), tmp_path / "out"
    options = PrepareOptions(short_side=32)
    with pytest.raises(PrepareStopped) as stop:
        prepare_dataset(source, out, options, workers=0, extra_step=sigterm_on_third)
    assert stop.value.exit_code == 143
    assert str(stop.value) == (
        "stopped by SIGTERM: 2 videos finished in this run and recorded (2 of 4 done in "
        "all); run the same command again to resume"
    )
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # the handler is gone again
    assert sorted(p.name for p in (out / "frames" / "cats").iterdir()) == [
        "cats_clip_0",
        "cats_clip_1",
    ]  # no debris of the third
    summary = prepare_dataset(source, out, options, workers=0)
    assert (summary.skipped, summary.done) == (2, 2)
