"""prepare sthv1 (JPEG frame folders, ';' CSVs) and sthv2 (webm, JSON templates)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.conftest import frame_index_of
from tests.data.fake_datasets import image_count, make_sthv1, make_sthv2, read_jsonl
from vidact.cli import app
from vidact.data import video
from vidact.data.class_order import read_class_info
from vidact.data.manifest import load_manifest, read_label_map
from vidact.data.prepare.pipeline import prepare
from vidact.data.sources.something import template_class
from vidact.errors import VidactError

runner = CliRunner()


def test_sthv1_frames_are_copied_when_no_resize_is_needed(tmp_path: Path) -> None:
    data = make_sthv1(tmp_path / "s1")
    out = tmp_path / "out"
    summary = prepare("sthv1", data.videos, data.annotations, out, workers=0)  # 48 px < 256
    assert read_label_map(out / "labels.txt") == data.classes  # the labels file's order
    assert summary.manifests == {"train": 6, "val": 3}
    assert any("test split has no labels" in note for note in summary.notes)
    for sample in load_manifest(out / "train.jsonl", num_classes=3):
        video_id = Path(sample.path).name
        assert sample.num_frames == data.frames[video_id] == image_count(out / sample.path)
        original = (data.videos / video_id / "00002.jpg").read_bytes()
        assert (out / sample.path / "img_00002.jpg").read_bytes() == original


def test_sthv1_resized_frames_and_mode_none_reads_the_folders_in_place(tmp_path: Path) -> None:
    data = make_sthv1(tmp_path / "s1", {"train": 1})
    out = tmp_path / "out"
    summary = prepare("sthv1", data.videos, data.annotations, out, short_side=32, workers=0)
    assert any("no *validation.csv" in note for note in summary.notes)
    for sample in load_manifest(out / "train.jsonl"):
        frames = video.read_all_frames(out / sample.path)
        assert frames.shape[1:3] == (32, 43)
        assert [frame_index_of(f) for f in frames] == list(range(sample.num_frames))
    raw = tmp_path / "raw"
    prepare("sthv1", data.videos, data.annotations, raw, mode="none", workers=0)
    for sample in load_manifest(raw / "train.jsonl"):
        assert (raw / sample.path).resolve() == (data.videos / Path(sample.path).name).resolve()
        assert sample.num_frames == data.frames[Path(sample.path).name]
        frames = video.read_frames(raw / sample.path, [2, 0, 2])  # 00003.jpg, 00001.jpg in place
        assert [frame_index_of(f) for f in frames] == [2, 0, 2]
    with pytest.raises(VidactError, match="--frame-pattern applies when frames are copied"):
        prepare(
            "sthv1", data.videos, data.annotations, tmp_path / "o3", mode="none",
            frame_pattern="{:05d}.jpg",
        )  # fmt: skip


@pytest.mark.parametrize("order", ["file", "sorted"])
def test_sthv1_class_order_is_applied_and_recorded(tmp_path: Path, order: str) -> None:
    data = make_sthv1(tmp_path / "s1", {"train": 1, "val": 1})
    out = tmp_path / "out"
    prepare("sthv1", data.videos, data.annotations, out, class_order=order, mode="none", workers=0)
    wanted = sorted(data.classes) if order == "sorted" else data.classes
    assert wanted != (data.classes if order == "sorted" else sorted(data.classes))  # they differ
    assert read_label_map(out / "labels.txt") == wanted
    assert read_class_info(out) == {"dataset": "sthv1", "order": order, "classes": 3}
    lines = (data.annotations / "something-something-v1-train.csv").read_text().splitlines()
    official = dict(line.split(";") for line in lines)  # '<id>;<class name>'
    samples = load_manifest(out / "train.jsonl")
    assert len(samples) == len(official)
    for sample in samples:
        assert sample.label_name == official[Path(sample.path).name]
        assert sample.label == wanted.index(sample.label_name)
    with pytest.raises(VidactError, match="--class-order 'alphabetical': use file or sorted"):
        prepare("sthv1", data.videos, data.annotations, tmp_path / "o", class_order="alphabetical")


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("empty train", r"v1-train.csv: empty \(0 bytes\); expected the V1 train file"),
        ("blank validation", r"v1-validation.csv: empty \(blank lines only\)"),
        ("missing train", r"no V1 train file \(\*train.csv\) found; check --annotations"),
        ("empty labels", r"v1-labels.csv: empty \(0 bytes\); expected the V1 labels file"),
    ],
)
def test_sthv1_empty_or_missing_files_are_one_line_and_replace_nothing(
    tmp_path: Path, damage: str, message: str
) -> None:
    data = make_sthv1(tmp_path / "s1")
    out = tmp_path / "out"
    prepare("sthv1", data.videos, data.annotations, out, mode="none", workers=0)
    before = {
        name: (out / name).read_bytes() for name in ("train.jsonl", "val.jsonl", "labels.txt")
    }
    files = {
        "train": data.annotations / "something-something-v1-train.csv",
        "validation": data.annotations / "something-something-v1-validation.csv",
        "labels": data.annotations / "something-something-v1-labels.csv",
    }
    kind, _, which = damage.partition(" ")
    if kind == "missing":
        files[which].unlink()
    else:
        files[which].write_text("" if kind == "empty" else "\r\n\n  \n")
    with pytest.raises(VidactError, match=message):
        prepare("sthv1", data.videos, data.annotations, out, mode="none", workers=0)
    result = runner.invoke(
        app, ["prepare", "sthv1", "--videos", str(data.videos), "--annotations",
              str(data.annotations), "--out", str(out), "--mode", "none", "--workers", "0"],
    )  # fmt: skip
    assert result.exit_code != 0
    assert len([line for line in result.output.splitlines() if line.strip()]) <= 3
    assert "Traceback" not in result.output
    assert {name: (out / name).read_bytes() for name in before} == before


def test_the_same_id_in_train_and_validation_is_a_counted_warning(tmp_path: Path) -> None:
    data = make_sthv1(tmp_path / "s1")
    train_csv = data.annotations / "something-something-v1-train.csv"
    val_csv = data.annotations / "something-something-v1-validation.csv"
    shared = train_csv.read_text().splitlines()[:2]
    val_csv.write_text(val_csv.read_text() + "\n".join(shared) + "\n")
    summary = prepare("sthv1", data.videos, data.annotations, tmp_path / "out", mode="none")
    ids = sorted(line.split(";")[0] for line in shared)
    assert f"2 video ids are in both train and val ({', '.join(ids)})" in " ".join(summary.notes)
    assert summary.manifests == {"train": 6, "val": 5}


def test_sthv2_class_order_sorted_and_an_empty_labels_file(tmp_path: Path) -> None:
    data = make_sthv2(tmp_path / "s2", {"train": 1, "val": 1})
    labels = data.annotations / "something-something-v2-labels.json"
    reversed_map = {name: str(i) for i, name in enumerate(reversed(data.classes))}
    labels.write_text(json.dumps(reversed_map))
    out = tmp_path / "out"
    prepare("sthv2", data.videos, data.annotations, out, mode="none", workers=0)
    assert read_label_map(out / "labels.txt") == list(reversed(data.classes))
    prepare("sthv2", data.videos, data.annotations, out, mode="none", class_order="sorted")
    assert read_label_map(out / "labels.txt") == sorted(data.classes)
    for sample in load_manifest(out / "val.jsonl"):
        assert sorted(data.classes)[sample.label] == sample.label_name
    labels.write_text("")
    with pytest.raises(VidactError, match=r"v2-labels.json: empty \(0 bytes\)"):
        prepare("sthv2", data.videos, data.annotations, out, mode="none")
    assert read_label_map(out / "labels.txt") == sorted(data.classes)  # untouched


def test_sthv2_templates_without_brackets_and_webm_videos(tmp_path: Path) -> None:
    assert template_class("Putting [something] on a surface") == "Putting something on a surface"
    data = make_sthv2(tmp_path / "s2")
    out = tmp_path / "out"
    summary = prepare("sthv2", data.videos, data.annotations, out, mode="none", workers=0)
    assert read_label_map(out / "labels.txt") == data.classes
    assert summary.manifests == {"train": 6, "val": 3}
    for sample in load_manifest(out / "val.jsonl", num_classes=3):
        assert sample.path.endswith(".webm")
        assert sample.label_name == data.classes[sample.label]
        assert "[" not in sample.label_name
        assert sample.num_frames == data.frames[Path(sample.path).name]
    frames_out = tmp_path / "frames"
    prepare("sthv2", data.videos, data.annotations, frames_out, short_side=32, workers=0)
    for sample in load_manifest(frames_out / "train.jsonl"):
        assert image_count(frames_out / sample.path) == sample.num_frames


def test_sthv2_unknown_template_is_reported(tmp_path: Path) -> None:
    data = make_sthv2(tmp_path / "s2", {"train": 1})
    path = data.annotations / "something-something-v2-train.json"
    path.write_text(path.read_text().replace("Pushing [something]", "Shoving [something]"))
    with pytest.raises(VidactError, match="1 templates are not in .*Shoving something"):
        prepare("sthv2", data.videos, data.annotations, tmp_path / "out", mode="none")


def test_sthv1_bad_frames_fail_their_video_and_gaps_are_warnings(tmp_path: Path) -> None:
    data = make_sthv1(tmp_path / "s1", {"train": 2, "val": 1})
    ids = sorted(data.frames)
    empty, cut, gap = (data.videos / video_id for video_id in ids[:3])
    (empty / "00002.jpg").write_bytes(b"")
    (cut / "00003.jpg").write_bytes((cut / "00003.jpg").read_bytes()[:100])
    (gap / "00003.jpg").unlink()
    out = tmp_path / "out"
    summary = prepare("sthv1", data.videos, data.annotations, out, workers=0)  # byte copies
    assert summary.failed == 2 and summary.done == 7
    failures = {row["key"]: row["reason"] for row in read_jsonl(out / "failures.jsonl")}
    assert "frame 00002.jpg is empty (0 bytes)" in failures[empty.name]
    assert "frame 00003.jpg is a JPEG cut short (no end marker)" in failures[cut.name]
    warned = [note for note in summary.notes if "prepared with a warning: 1" in note]
    assert warned and f"{gap.name}: 1 images missing from the numbering (00003.jpg)" in warned[0]
    samples = {Path(s.path).name: s for s in load_manifest(out / "train.jsonl")}
    samples |= {Path(s.path).name: s for s in load_manifest(out / "val.jsonl")}
    assert empty.name not in samples and cut.name not in samples
    assert samples[gap.name].num_frames == data.frames[gap.name] - 1
    frames = video.read_all_frames(out / samples[gap.name].path)
    assert [frame_index_of(f) for f in frames] == [0, 1, *range(3, data.frames[gap.name])]
    resized = prepare("sthv1", data.videos, data.annotations, tmp_path / "o2", short_side=24)
    assert resized.failed == 2  # decoded and re-encoded, the same two are refused
