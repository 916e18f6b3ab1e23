"""prepare folder: class sub-folders, optional seeded train/val split."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import frame_index_of, numbered_frames, write_video
from tests.data.fake_datasets import image_count, make_folder, make_frame_folder_classes
from vidact.data import video
from vidact.data.class_order import read_class_info
from vidact.data.manifest import load_manifest, read_label_map
from vidact.data.prepare.pipeline import prepare
from vidact.data.sources.folder import load_folder
from vidact.errors import VidactError


def test_split_ratio_is_stratified_and_seeded(tmp_path: Path) -> None:
    data = make_folder(tmp_path / "f", {"cats": 5, "dogs": 3, "owls": 10})
    first = load_folder(data.videos, val_fraction=0.3, seed=1)
    again = load_folder(data.videos, val_fraction=0.3, seed=1)
    other = load_folder(data.videos, val_fraction=0.3, seed=2)
    val = [r.key for r in first.splits["val"]]
    assert val == [r.key for r in again.splits["val"]]
    assert val != [r.key for r in other.splits["val"]]
    per_class = {
        name: sum(r.label_name == name for r in first.splits["val"]) for name in first.classes
    }
    assert per_class == {"cats": 2, "dogs": 1, "owls": 3}
    assert len(first.splits["train"]) + len(val) == 18
    assert not {r.key for r in first.splits["train"]} & set(val)


def test_prepare_folder_without_split(tmp_path: Path) -> None:
    data = make_folder(tmp_path / "f")
    out = tmp_path / "out"
    summary = prepare("folder", data.videos, None, out, short_side=32, workers=0)
    assert summary.manifests == {"train": 12}
    assert read_label_map(out / "labels.txt") == ["cats", "dogs", "owls"]
    samples = load_manifest(out / "train.jsonl", num_classes=3)
    assert "frames/cats/cats_clip_1" in [s.path for s in samples]  # spaces -> '_', no extension
    for sample in samples:
        assert (
            sample.num_frames
            == data.frames[
                Path(sample.path).name.replace("_", " ")
                + (".avi" if int(sample.path[-1]) % 2 else ".mp4")
            ]
        )


def test_same_name_twice_in_a_class_is_refused(tmp_path: Path) -> None:
    data = make_folder(tmp_path / "f", {"cats": 2})
    (data.videos / "cats" / "cats clip 0.mp4").rename(data.videos / "cats" / "cats clip 1.mp4")
    (data.videos / "cats" / "cats clip 1.avi").rename(data.videos / "cats" / "cats clip 1.mkv")
    with pytest.raises(VidactError, match="would both be written as 'cats/cats_clip_1'"):
        prepare("folder", data.videos, None, tmp_path / "out")


def test_empty_class_folder_and_bad_fraction(tmp_path: Path) -> None:
    data = make_folder(tmp_path / "f", {"cats": 2})
    (data.videos / "empty").mkdir()
    with pytest.raises(VidactError, match="class folders without videos: empty"):
        load_folder(data.videos)
    with pytest.raises(VidactError, match="--val-fraction"):
        load_folder(data.videos, val_fraction=1.5)


@pytest.mark.parametrize("mode", ["frames", "none"])
def test_class_folders_of_frame_folders(tmp_path: Path, mode: str) -> None:
    data = make_frame_folder_classes(tmp_path / "f")
    out = tmp_path / "out"
    summary = prepare("folder", data.videos, None, out, mode=mode, workers=0)
    assert summary.manifests == {"train": 5} and summary.failed == 0
    samples = load_manifest(out / "train.jsonl", num_classes=2)
    assert {s.label_name for s in samples} == {"cats", "dogs"}
    for sample in samples:
        name = Path(sample.path).name.replace("_", " ")
        assert sample.num_frames == data.frames[name]
        frames = video.read_all_frames(out / sample.path)
        assert [frame_index_of(f) for f in frames] == list(range(sample.num_frames))
    assert read_class_info(out)["order"] == "sorted"


def test_a_forced_frame_pattern_and_what_prepare_folder_accepts(tmp_path: Path) -> None:
    data = make_frame_folder_classes(tmp_path / "f", {"cats": 2}, template="left_{:05d}.jpg")
    for folder in (data.videos / "cats").iterdir():  # a second camera in every folder
        for image in folder.glob("*.jpg"):
            (folder / image.name.replace("left", "right")).write_bytes(image.read_bytes())
    unsure = prepare("folder", data.videos, None, tmp_path / "o1", workers=0)
    assert unsure.failed == 2
    assert (
        "several numbered image sequences (left_N.jpg, right_N.jpg); give --frame-pattern"
        in (unsure.failure_examples[0])
    )
    out = tmp_path / "o2"
    summary = prepare("folder", data.videos, None, out, frame_pattern="right_{:05d}.jpg")
    assert summary.done == 2 and summary.failed == 0
    for sample in load_manifest(out / "train.jsonl"):
        assert (
            image_count(out / sample.path) == data.frames[Path(sample.path).name.replace("_", " ")]
        )
    (data.videos / "dogs").mkdir()
    write_video(data.videos / "dogs" / "d.mp4", numbered_frames(4))
    with pytest.raises(VidactError, match="holds both video files and frame folders"):
        load_folder(data.videos)
    (data.videos / "dogs" / "d.mp4").unlink()
    with pytest.raises(VidactError, match=r"class folders without frame folders: dogs.*<class>/"):
        load_folder(data.videos)
