"""The shared prepare pipeline: modes, frame counts, failures, resume, shards, disk check."""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import frame_index_of, numbered_frames, write_video
from tests.data.fake_datasets import corrupt, image_count, make_folder, read_jsonl
from vidact.data import video
from vidact.data.manifest import load_manifest, read_label_map
from vidact.data.prepare import estimate, worker
from vidact.data.prepare.options import (
    PrepareOptions,
    VideoJob,
    iter_indices,
    output_size,
    parse_shard,
    select_indices,
    select_shard,
)
from vidact.data.prepare.pipeline import prepare, prepare_dataset
from vidact.data.sources.common import SourceDataset, SourceRecord
from vidact.errors import VidactError

REPO = Path(__file__).resolve().parents[2]


def _numbered_source(root: Path, counts: list[int], name: str = "clips") -> SourceDataset:
    """One class, one video per entry of `counts` (frames), 64x48, numbered frames."""
    records = [
        SourceRecord(
            key=f"{name}/v{i}",
            video=write_video(root / name / f"v{i}.mp4", numbered_frames(count)),
            label=0,
            label_name=name,
        )
        for i, count in enumerate(counts)
    ]
    return SourceDataset("test", [name], {"train": records})


# ------------------------------------------------------------------------------ units


def test_select_indices_trims_and_resamples() -> None:
    assert select_indices(5, 25.0) == [0, 1, 2, 3, 4]
    assert select_indices(100, 30.0, fps=10.0)[:4] == [0, 3, 6, 9]
    assert len(select_indices(100, 30.0, fps=10.0)) == 34
    assert select_indices(20, 25.0, fps=50.0) == list(range(20))  # never upsampled
    assert select_indices(100, 25.0, start=0.4, end=0.8) == list(range(10, 20))
    assert select_indices(10, 25.0, start=5.0, end=6.0) == []
    assert select_indices(10, 0.0, fps=5.0, start=1.0) == list(range(10))  # unknown rate
    endless = iter_indices(sys.maxsize, 25.0, fps=10.0)  # a stream without a frame count
    assert [next(endless) for _ in range(5)] == [0, 2, 5, 7, 10]


def test_output_size_resizes_the_short_side_and_never_upscales() -> None:
    assert output_size(640, 272, 256) == (602, 256)
    assert output_size(272, 640, 256) == (256, 602)
    assert output_size(320, 240, 256) == (320, 240)
    assert output_size(641, 273, 0) == (641, 273)
    assert output_size(641, 273, 0, even=True) == (640, 272)


def test_shards_partition_exactly() -> None:
    items = list(range(23))
    parts = [select_shard(items, (k, 4)) for k in range(1, 5)]
    assert sorted(x for part in parts for x in part) == items
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    assert parse_shard("3/8") == (3, 8) and parse_shard(None) is None
    for bad in ("0/8", "9/8", "3", "a/b"):
        with pytest.raises(VidactError, match="--shard"):
            parse_shard(bad)


# ------------------------------------------------------------------------------ modes


def test_frames_mode_counts_match_the_decoder_and_keep_frame_order(tmp_path: Path) -> None:
    source = _numbered_source(tmp_path / "src", [7, 12, 9])
    out = tmp_path / "out"
    summary = prepare_dataset(source, out, PrepareOptions(short_side=32, quality=85), workers=0)
    assert (summary.done, summary.failed, summary.missing) == (3, 0, 0)
    assert summary.frames_written == 28 and summary.bytes_on_disk == summary.bytes_written > 0
    samples = load_manifest(out / "train.jsonl", num_classes=1)
    for sample, record in zip(samples, source.splits["train"], strict=True):
        folder = out / sample.path
        assert sample.path == f"frames/{record.key}" and (folder / "img_00001.jpg").is_file()
        decoded = video.probe(record.video, backend="decord").num_frames
        assert sample.num_frames == decoded == image_count(folder)
        frames = video.read_all_frames(folder)
        assert frames.shape[1:] == (32, 43, 3)  # 64x48 -> short side 32
        assert [frame_index_of(f) for f in frames] == list(range(decoded))
    lines = (out / "train_rawframes.txt").read_text().splitlines()
    assert lines == [f"frames/clips/v{i} {n} 0" for i, n in enumerate([7, 12, 9])]
    assert read_label_map(out / "labels.txt") == ["clips"]
    assert (out / "failures.jsonl").read_text() == ""


def test_fps_option_resamples_frames(tmp_path: Path) -> None:
    source = _numbered_source(tmp_path / "src", [20])
    out = tmp_path / "out"
    prepare_dataset(source, out, PrepareOptions(short_side=0, fps=10.0), workers=0)
    frames = video.read_all_frames(out / "frames/clips/v0")
    assert [frame_index_of(f) for f in frames] == [0, 2, 5, 7, 10, 12, 15, 17]  # 25 -> 10 fps


@pytest.mark.parametrize("backend", ["decord", "pyav", "opencv"])
def test_every_reader_prepares_the_same_frames(
    tmp_path: Path, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """$VIDACT_VIDEO_BACKEND chooses prepare's reader too; each gives every frame, in
    order, with the segment and the frame rate applied alike."""
    monkeypatch.setenv("VIDACT_VIDEO_BACKEND", backend)
    source = _numbered_source(tmp_path / "src", [20, 9])
    record = source.splits["train"][0]
    source.splits["train"][0] = dataclasses.replace(record, start=0.2, end=0.72)
    out = tmp_path / "out"
    summary = prepare_dataset(source, out, PrepareOptions(short_side=0, fps=10.0), workers=0)
    assert (summary.done, summary.failed, summary.warnings) == (2, 0, 0)
    cut, whole = (video.read_all_frames(out / f"frames/clips/v{i}") for i in range(2))
    assert [frame_index_of(f) for f in cut] == [5, 7, 10, 12, 15, 17]  # [0.2, 0.72) s at 10 fps
    assert [frame_index_of(f) for f in whole] == [0, 2, 5, 7]


def test_videos_mode_reencodes_at_the_short_side(tmp_path: Path) -> None:
    source = _numbered_source(tmp_path / "src", [9, 6])
    out = tmp_path / "out"
    summary = prepare_dataset(source, out, PrepareOptions(mode="videos", short_side=32), workers=0)
    assert summary.done == 2
    for sample in load_manifest(out / "train.jsonl"):
        info = video.probe(out / sample.path, backend="decord")
        assert sample.path.endswith(".mp4") and (info.width, info.height) == (42, 32)
        assert info.num_frames == sample.num_frames
        indices = [frame_index_of(f) for f in video.read_all_frames(out / sample.path)]
        assert indices == list(range(sample.num_frames))
    assert (out / "train_videos.txt").read_text().splitlines()[0] == "videos/clips/v0.mp4 0"


def test_none_mode_points_at_the_originals_relative_to_out(tmp_path: Path) -> None:
    source = _numbered_source(tmp_path / "src", [5, 8])
    out = tmp_path / "deep" / "out"
    summary = prepare_dataset(source, out, PrepareOptions(mode="none"), workers=0)
    assert summary.done == 2 and summary.bytes_written == 0 and summary.estimated_bytes == 0
    samples = load_manifest(out / "train.jsonl")  # checks that every path resolves
    assert [s.path for s in samples] == ["../../src/clips/v0.mp4", "../../src/clips/v1.mp4"]
    assert [s.num_frames for s in samples] == [5, 8]
    assert not (out / "frames").exists()


# ------------------------------------------------------------------------------ failures


def test_corrupt_and_missing_videos_are_listed_never_fatal(tmp_path: Path) -> None:
    source = _numbered_source(tmp_path / "src", [5, 6, 7, 8])
    records = source.splits["train"]
    corrupt(records[1].video)
    records[3].video.unlink()
    out = tmp_path / "out"
    summary = prepare_dataset(source, out, PrepareOptions(short_side=32), workers=0)
    assert (summary.done, summary.failed, summary.missing) == (2, 1, 1)
    assert summary.missing_examples == ["v3.mp4"] and "v3.mp4" in " ".join(summary.notes)
    failures = {f["key"]: f for f in read_jsonl(out / "failures.jsonl")}
    assert failures["clips/v3"]["reason"] == "missing"
    assert "decord" in str(failures["clips/v1"]["reason"])
    assert failures["clips/v1"]["video"] == str(records[1].video)
    assert [s.path for s in load_manifest(out / "train.jsonl")] == [
        "frames/clips/v0",
        "frames/clips/v2",
    ]
    # the file is fixed: a re-run retries it (and the missing one), skips the rest
    write_video(records[1].video, numbered_frames(6))
    again = prepare_dataset(source, out, PrepareOptions(short_side=32), workers=0)
    assert (again.done, again.skipped, again.failed, again.missing) == (1, 2, 0, 1)
    assert [f["key"] for f in read_jsonl(out / "failures.jsonl")] == ["clips/v3"]
    assert len(load_manifest(out / "train.jsonl")) == 3


def test_no_video_found_at_all_is_a_user_error(tmp_path: Path) -> None:
    records = [SourceRecord("a/x", tmp_path / "nowhere" / "x.mp4", 0, "a")]
    with pytest.raises(VidactError, match="none of the 1 videos .* check --videos"):
        prepare_dataset(SourceDataset("test", ["a"], {"train": records}), tmp_path / "out")


def test_other_settings_into_the_same_out_are_refused(tmp_path: Path) -> None:
    source = _numbered_source(tmp_path / "src", [5])
    out = tmp_path / "out"
    prepare_dataset(source, out, PrepareOptions(short_side=32), workers=0)
    with pytest.raises(VidactError, match=r"other settings \(short_side 32 -> 40\)"):
        prepare_dataset(source, out, PrepareOptions(short_side=40), workers=0)


def test_disk_check_refuses_and_the_flag_overrides(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = _numbered_source(tmp_path / "src", [8, 8])
    usage = type("Usage", (), {"total": 10**6, "used": 10**6 - 1000, "free": 1000})
    monkeypatch.setattr(estimate.shutil, "disk_usage", lambda path: usage)
    with pytest.raises(
        VidactError, match=r"needs about .* but only 1000 B is free.*--no-disk-check"
    ):
        prepare_dataset(source, tmp_path / "out", PrepareOptions(short_side=32), workers=0)
    assert not (tmp_path / "out" / "frames").exists()
    summary = prepare_dataset(
        source, tmp_path / "out", PrepareOptions(short_side=32), workers=0, check_free_space=False
    )
    assert summary.done == 2
    # the estimate comes from real encodes: within a factor 2 of what was written
    assert summary.bytes_written / 2 < summary.estimated_bytes < summary.bytes_written * 2


def test_a_full_disk_stops_the_run_with_one_clear_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = _numbered_source(tmp_path / "src", [5, 5])

    def full(*args: object, **kwargs: object) -> tuple[int, int]:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(worker, "write_frames", full)
    with pytest.raises(VidactError, match="disk full.*re-run the same command"):
        prepare_dataset(source, tmp_path / "out", workers=0)


# ------------------------------------------------------------------------------ resume


def test_resume_after_an_interrupted_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = _numbered_source(tmp_path / "src", [5, 6, 7, 8])
    out = tmp_path / "out"
    real = worker.write_frames
    calls = []

    def interrupted_third(
        frames: object, folder: Path, options: PrepareOptions, flow: object = None
    ) -> object:
        calls.append(folder)
        if len(calls) == 3:
            raise KeyboardInterrupt  # Ctrl-C in the middle of the third video
        return real(frames, folder, options, flow=flow)  # type: ignore[arg-type]

    monkeypatch.setattr(worker, "write_frames", interrupted_third)
    with pytest.raises(KeyboardInterrupt):
        prepare_dataset(source, out, PrepareOptions(short_side=32), workers=0)
    monkeypatch.setattr(worker, "write_frames", real)
    assert sorted(p.name for p in (out / "frames/clips").iterdir()) == ["v0", "v1"]  # no debris
    assert not (out / "train.jsonl").exists()
    summary = prepare_dataset(source, out, PrepareOptions(short_side=32), workers=0)
    assert (summary.skipped, summary.done) == (2, 2)
    assert [s.num_frames for s in load_manifest(out / "train.jsonl")] == [5, 6, 7, 8]


_KILLABLE = """
import sys, time
from pathlib import Path
from vidact.data.prepare import worker
from vidact.data.prepare.options import PrepareOptions
from vidact.data.prepare.pipeline import prepare_dataset
from vidact.data.sources.common import SourceDataset, SourceRecord

real = worker.write_frames
def slow(frames, folder, options, flow=None):
    count = 0
    for frame in frames:  # write frame by frame, slowly, so that a kill lands mid-video
        count += 1
        (folder / f"img_{count:05d}.jpg").write_bytes(b"partial")
        time.sleep(0.05)
    return real(type(frames)(frames.path, frames.job, frames.target_fps), folder, options, flow)
worker.write_frames = slow  # where prepare_video looks it up
root, out = Path(sys.argv[1]), Path(sys.argv[2])
records = [SourceRecord(f"c/v{i}", root / f"v{i}.mp4", 0, "c") for i in range(6)]
prepare_dataset(SourceDataset("test", ["c"], {"train": records}), out,
                PrepareOptions(short_side=32, backend="decord"), workers=0)
"""


def test_resume_after_a_run_killed_partway(tmp_path: Path) -> None:
    root, out = tmp_path / "src", tmp_path / "out"
    for i in range(6):
        write_video(root / f"v{i}.mp4", numbered_frames(6))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen(
        [sys.executable, "-c", _KILLABLE, str(root), str(out)], env=env, stderr=subprocess.PIPE
    )
    done_file = out / ".prepare" / "done-all.jsonl"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and child.poll() is None:
        if done_file.is_file() and len(done_file.read_text().splitlines()) >= 2:
            break
        time.sleep(0.02)
    assert child.poll() is None, child.stderr.read().decode() if child.stderr else ""
    time.sleep(0.12)  # let it get into the next video
    child.send_signal(signal.SIGKILL)
    child.wait()
    finished = len(done_file.read_text().splitlines())
    assert 2 <= finished < 6
    debris = [p.name for p in (out / "frames/c").iterdir() if p.name.startswith(".")]
    assert debris, "the kill should have left a half-written temporary folder"

    records = [SourceRecord(f"c/v{i}", root / f"v{i}.mp4", 0, "c") for i in range(6)]
    source = SourceDataset("test", ["c"], {"train": records})
    summary = prepare_dataset(
        source, out, PrepareOptions(short_side=32, backend="decord"), workers=0
    )
    assert summary.skipped == finished and summary.done == 6 - finished
    assert sorted(p.name for p in (out / "frames/c").iterdir()) == [f"v{i}" for i in range(6)]
    samples = load_manifest(out / "train.jsonl")
    assert [s.num_frames for s in samples] == [6] * 6
    assert all(image_count(out / s.path) == 6 for s in samples)
    assert (out / "frames/c/v0/img_00001.jpg").read_bytes() != b"partial"


# ------------------------------------------------------------------------------ shards


def test_shards_write_disjoint_parts_and_the_last_one_the_manifests(tmp_path: Path) -> None:
    data = make_folder(tmp_path / "ds", {"cats": 4, "dogs": 3})
    whole = prepare("folder", data.videos, None, tmp_path / "whole", mode="none", workers=0)
    out = tmp_path / "sharded"
    done_keys = []
    for k in (1, 2, 3):
        summary = prepare(
            "folder",
            data.videos,
            None,
            out,
            mode="frames",
            short_side=32,
            shard=f"{k}/3",
            workers=0,
        )
        keys = [json.loads(line)["key"] for line in (out / f".prepare/done-{k}of3.jsonl").open()]
        done_keys.append(keys)
        assert summary.total == len(keys) and summary.done == len(keys)
        assert bool(summary.manifests) == (k == 3)
        assert (out / "train.jsonl").exists() == (k == 3)
    assert sum(map(len, done_keys)) == 7 and len({key for keys in done_keys for key in keys}) == 7
    sharded = load_manifest(out / "train.jsonl")
    expected = load_manifest(tmp_path / "whole" / "train.jsonl")
    assert [s.label_name for s in sharded] == [s.label_name for s in expected]
    assert [s.num_frames for s in sharded] == [s.num_frames for s in expected]
    assert whole.manifests == {"train": 7}
    # a later run without --shard finds everything done and rewrites the same manifests
    again = prepare("folder", data.videos, None, out, mode="frames", short_side=32, workers=0)
    assert (again.skipped, again.done) == (7, 0)
    assert load_manifest(out / "train.jsonl") == sharded


# ------------------------------------------------------------------------------ pool


def write_marker(job: VideoJob, output: Path) -> int:
    """An extra step: a file beside the frames, inside the same atomic unit."""
    if job.key.endswith("crash"):
        os._exit(3)  # what a segfaulting decoder looks like from the parent
    (output / "marker.txt").write_text(job.key)
    return len(job.key)


def test_process_pool_extra_step_and_a_crashing_worker(tmp_path: Path) -> None:
    source = _numbered_source(tmp_path / "src", [5, 6, 7])
    crash = SourceRecord("clips/crash", source.splits["train"][0].video, 0, "clips")
    source.splits["train"].append(crash)
    out = tmp_path / "out"
    summary = prepare_dataset(
        source, out, PrepareOptions(short_side=32), workers=2, extra_step=write_marker
    )
    assert (summary.done, summary.failed) == (3, 1)
    assert (out / "frames/clips/v1/marker.txt").read_text() == "clips/v1"
    assert [s.num_frames for s in load_manifest(out / "train.jsonl")] == [5, 6, 7]
    (failure,) = read_jsonl(out / "failures.jsonl")
    assert failure["key"] == "clips/crash" and "worker died" in str(failure["reason"])
