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


def test_class_order_sorted_relabels_and_checks_labels_against_classind(tmp_path: Path) -> None:
    data = make_ucf101(tmp_path / "u")
    index = data.annotations / "classInd.txt"
    index.write_text("".join(f"{i} {n}\n" for i, n in enumerate(reversed(UCF_CLASSES), 1)))
    for lst in data.annotations.glob("trainlist*.txt"):  # labels follow the reversed index
        rows = [line.rsplit(" ", 1) for line in lst.read_text().splitlines() if line]
        lst.write_text("".join(f"{p} {len(UCF_CLASSES) + 1 - int(n)}\n" for p, n in rows))
    out = tmp_path / "out"
    prepare("ucf101", data.videos, data.annotations, out, mode="none", class_order="sorted")
    assert read_label_map(out / "labels.txt") == sorted(UCF_CLASSES)
    for sample in load_manifest(out / "train_split1.jsonl"):
        assert sample.label == sorted(UCF_CLASSES).index(sample.label_name)
        assert Path(sample.path).parent.name.lower() == sample.label_name.lower()


def test_an_empty_list_or_class_index_is_one_line(tmp_path: Path) -> None:
    data = make_ucf101(tmp_path / "u")
    (data.annotations / "trainlist02.txt").write_text("")
    with pytest.raises(VidactError, match=r"trainlist02.txt: empty \(0 bytes\)"):
        load_ucf101(data.videos, data.annotations)
    (data.annotations / "classInd.txt").write_text("\r\n")
    with pytest.raises(VidactError, match=r"classInd.txt: empty \(blank lines only\)"):
        load_ucf101(data.videos, data.annotations)


def test_a_video_in_train_and_test_of_one_split_is_a_warning(tmp_path: Path) -> None:
    data = make_ucf101(tmp_path / "u")
    test = data.annotations / "testlist01.txt"
    first_train = (data.annotations / "trainlist01.txt").read_text().split()[0]
    test.write_text(test.read_text() + first_train + "\r\n")
    dataset = load_ucf101(data.videos, data.annotations)
    assert any(
        note.startswith("1 videos are in both train_split1 and test_split1")
        for note in dataset.notes
    )
