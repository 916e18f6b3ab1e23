"""prepare sthv1 (JPEG frame folders, ';' CSVs) and sthv2 (webm, JSON templates)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import frame_index_of
from tests.data.fake_datasets import image_count, make_sthv1, make_sthv2
from vidact.data import video
from vidact.data.manifest import load_manifest, read_label_map
from vidact.data.prepare.pipeline import prepare
from vidact.data.sources.something import template_class
from vidact.errors import VidactError


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


def test_sthv1_resized_frames_and_no_mode_none(tmp_path: Path) -> None:
    data = make_sthv1(tmp_path / "s1", {"train": 1})
    out = tmp_path / "out"
    prepare("sthv1", data.videos, data.annotations, out, short_side=32, workers=0)
    for sample in load_manifest(out / "train.jsonl"):
        frames = video.read_all_frames(out / sample.path)
        assert frames.shape[1:3] == (32, 43)
        assert [frame_index_of(f) for f in frames] == list(range(sample.num_frames))
    with pytest.raises(VidactError, match="use --mode frames"):
        prepare("sthv1", data.videos, data.annotations, tmp_path / "o2", mode="none")


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
