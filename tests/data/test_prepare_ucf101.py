"""prepare ucf101: classInd.txt, trainlist0k / testlist0k, the UCF-101 folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.data.fake_datasets import UCF_CLASSES, make_ucf101
from vidact.data.manifest import load_manifest, read_label_map
from vidact.data.prepare.pipeline import prepare
from vidact.data.sources.ucf101 import load_ucf101
from vidact.errors import VidactError


def test_splits_labels_and_the_handstand_spelling(tmp_path: Path) -> None:
    data = make_ucf101(tmp_path / "u")
    out = tmp_path / "out"
    summary = prepare("ucf101", data.videos, data.annotations, out, mode="none", workers=0)
    assert read_label_map(out / "labels.txt") == UCF_CLASSES  # classInd order, not sorted
    assert summary.manifests == data.splits and summary.missing == 0
    test1 = load_manifest(out / "test_split1.jsonl", num_classes=3)
    assert [Path(s.path).name for s in test1] == [
        "v_ApplyEyeMakeup_g01_c01.avi",
        "v_HandStandPushups_g01_c01.avi",
        "v_YoYo_g01_c01.avi",
    ]
    assert [s.label for s in test1] == [0, 1, 2]
    for sample in test1 + load_manifest(out / "train_split2.jsonl"):
        assert sample.num_frames == data.frames[Path(sample.path).name]


def test_frames_mode_names_outputs_by_class(tmp_path: Path) -> None:
    data = make_ucf101(tmp_path / "u", groups=2)
    out = tmp_path / "out"
    prepare("ucf101", data.videos, data.annotations, out, short_side=32, workers=0)
    paths = [s.path for s in load_manifest(out / "train_split1.jsonl")]
    assert "frames/HandstandPushups/v_HandStandPushups_g02_c01" in paths
    assert len(list((out / "frames").glob("*/*"))) == 6


def test_a_label_that_disagrees_with_its_folder(tmp_path: Path) -> None:
    data = make_ucf101(tmp_path / "u")
    train = data.annotations / "trainlist01.txt"
    train.write_text(train.read_text().replace("g02_c01.avi 1", "g02_c01.avi 3"))
    with pytest.raises(VidactError, match=r"trainlist01.txt:1: label 3 disagrees with folder"):
        load_ucf101(data.videos, data.annotations)
