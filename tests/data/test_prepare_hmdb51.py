"""prepare hmdb51: the official testTrainMulti_7030_splits files and the rar layout."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.data.fake_datasets import HMDB_CLASSES, image_count, make_hmdb51
from vidact.data.manifest import load_manifest, read_label_map
from vidact.data.prepare.pipeline import prepare
from vidact.data.sources.hmdb51 import load_hmdb51
from vidact.errors import VidactError


def test_three_splits_each_video_extracted_once(tmp_path: Path) -> None:
    data = make_hmdb51(tmp_path / "h")
    out = tmp_path / "out"
    summary = prepare("hmdb51", data.videos, data.annotations, out, short_side=32, workers=0)
    assert read_label_map(out / "labels.txt") == sorted(HMDB_CLASSES)
    assert summary.manifests == data.splits
    # 4 videos per class; every one is used by some split, and extracted exactly once
    assert summary.done == summary.total == 12
    assert len(list((out / "frames").glob("*/*"))) == 12
    for k in (1, 2, 3):
        train = load_manifest(out / f"train_split{k}.jsonl", num_classes=3)
        test = load_manifest(out / f"test_split{k}.jsonl", num_classes=3)
        assert not {s.path for s in train} & {s.path for s in test}
        for sample in train + test:
            assert sample.path.split("/")[1] == sample.label_name
            assert image_count(out / sample.path) == sample.num_frames
            assert sample.num_frames == data.frames[Path(sample.path).name + ".avi"]


def test_id_zero_is_unused_and_bad_ids_are_reported(tmp_path: Path) -> None:
    data = make_hmdb51(tmp_path / "h")
    source = load_hmdb51(data.videos, data.annotations)
    names = {r.video.name for r in source.splits["train_split1"] + source.splits["test_split1"]}
    assert len(names) == 9  # one of the four videos per class has id 0 in split 1
    split_file = data.annotations / "cartwheel_test_split2.txt"
    split_file.write_text(split_file.read_text() + "extra.avi 7\n")
    with pytest.raises(VidactError, match=r"cartwheel_test_split2.txt:5: expected .* id 0, 1 or 2"):
        load_hmdb51(data.videos, data.annotations)


def test_annotations_folder_without_split_files(tmp_path: Path) -> None:
    data = make_hmdb51(tmp_path / "h")
    with pytest.raises(VidactError, match="no HMDB51 split files"):
        load_hmdb51(data.videos, data.videos)


def test_an_empty_split_file_is_one_line_and_nothing_is_written(tmp_path: Path) -> None:
    data = make_hmdb51(tmp_path / "h")
    split_file = sorted(data.annotations.glob("*_test_split1.txt"))[0]
    split_file.write_text("")
    out = tmp_path / "out"
    with pytest.raises(VidactError, match=rf"{split_file.name}: empty \(0 bytes\)"):
        prepare("hmdb51", data.videos, data.annotations, out, mode="none")
    assert not out.exists()
