"""prepare kinetics: official CSVs, both folder layouts, missing clips, class subsets."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import frame_index_of
from tests.data.fake_datasets import (
    KINETICS_CLASSES,
    image_count,
    kinetics_id,
    make_kinetics,
    read_jsonl,
)
from vidact.data import video
from vidact.data.manifest import load_manifest, read_label_map
from vidact.data.prepare.pipeline import prepare
from vidact.data.sources.kinetics import load_kinetics
from vidact.errors import VidactError


@pytest.mark.parametrize("class_folders", [True, False])
def test_manifests_label_map_and_missing_clips(tmp_path: Path, class_folders: bool) -> None:
    data = make_kinetics(tmp_path / "k", class_folders=class_folders, missing=2)
    out = tmp_path / "out"
    summary = prepare("kinetics", data.videos, data.annotations, out, short_side=32, workers=0)
    assert read_label_map(out / "labels.txt") == sorted(KINETICS_CLASSES)
    assert summary.classes == 3 and summary.missing == 2 and summary.failed == 0
    assert summary.manifests == {"train": data.splits["train"] - 2, "val": data.splits["val"]}
    assert "left out unlabelled rows (test set): 1" in summary.notes  # test.csv
    train = load_manifest(out / "train.jsonl", num_classes=3)
    for sample in train:
        assert sample.path.startswith(f"frames/train/{sample.label_name.replace(' ', '_')}/")
        assert sample.label == sorted(KINETICS_CLASSES).index(sample.label_name)
        assert sample.num_frames == data.frames[Path(sample.path).name + ".mp4"]
        assert image_count(out / sample.path) == sample.num_frames
    failures = read_jsonl(out / "failures.jsonl")
    assert sorted(Path(str(f["video"])).name for f in failures) == sorted(data.missing)
    assert {f["reason"] for f in failures} == {"missing"}
    assert sorted(summary.missing_examples) == sorted(data.missing)
    rawframes = (out / "val_rawframes.txt").read_text().splitlines()
    assert len(rawframes) == 3 and all(len(line.split(" ")) == 3 for line in rawframes)


def test_class_subset_file_relabels_in_its_own_order(tmp_path: Path) -> None:
    data = make_kinetics(tmp_path / "k", missing=0)
    subset = tmp_path / "subset.txt"
    subset.write_text(
        "# two classes, paper spelling\nPassing_American_football_(in_game)\nair_drumming\n"
    )
    out = tmp_path / "out"
    summary = prepare(
        "kinetics", data.videos, data.annotations, out, mode="none", classes=subset, workers=0
    )
    names = ["passing American football (in game)", "air drumming"]
    assert read_label_map(out / "labels.txt") == names
    assert summary.manifests == {"train": 4, "val": 2}
    for sample in load_manifest(out / "train.jsonl", num_classes=2):
        assert sample.label == names.index(sample.label_name)
    subset.write_text("air drumming\nabseilling\n")
    with pytest.raises(
        VidactError, match=r"1 classes are not in kinetics: abseilling.*'abseiling'"
    ):
        prepare("kinetics", data.videos, data.annotations, tmp_path / "o2", classes=subset)


def test_untrimmed_videos_extract_only_the_annotated_segment(tmp_path: Path) -> None:
    data = make_kinetics(tmp_path / "k", missing=0, untrimmed=True)
    (record,) = [r for r in load_kinetics(data.videos, data.annotations).splits["val"] if r.start]
    assert (record.start, record.end) == (1.0, 2.0) and record.video.stem == kinetics_id(0, 6)
    out = tmp_path / "out"
    prepare("kinetics", data.videos, data.annotations, out, short_side=0, workers=0)
    (sample,) = [s for s in load_manifest(out / "val.jsonl") if s.path.endswith(record.key)]
    frames = video.read_all_frames(out / sample.path)
    assert [frame_index_of(f) for f in frames] == list(range(10, 20))  # [1 s, 2 s) at 10 fps
    assert sample.num_frames == 10 and sample.start is None  # the folder is the segment
    raw_out = tmp_path / "raw"
    prepare("kinetics", data.videos, data.annotations, raw_out, mode="none", workers=0)
    (raw,) = [s for s in load_manifest(raw_out / "val.jsonl") if s.start is not None]
    assert (raw.start, raw.end, raw.num_frames) == (1.0, 2.0, 30)  # the whole file + segment


def test_bad_csv_names_the_file_and_column(tmp_path: Path) -> None:
    data = make_kinetics(tmp_path / "k")
    (data.annotations / "train.csv").write_text("label,ytid,start,end\nx,y,0,10\n")
    with pytest.raises(VidactError, match=r"train.csv: not a Kinetics CSV: no column 'youtube_id'"):
        load_kinetics(data.videos, data.annotations)


def test_an_empty_csv_is_one_line_and_a_clip_in_two_splits_is_a_warning(tmp_path: Path) -> None:
    data = make_kinetics(tmp_path / "k", missing=0)
    train, val = data.annotations / "train.csv", data.annotations / "validate.csv"
    row = train.read_text().splitlines()[1].replace(",train,", ",val,")
    val.write_text(val.read_text().rstrip("\n") + "\n" + row + "\n")
    dataset = load_kinetics(data.videos, data.annotations)
    assert any(note.startswith("1 clips are in both train and val") for note in dataset.notes)
    train.write_text("")
    with pytest.raises(VidactError, match=r"train.csv: empty \(0 bytes\)"):
        load_kinetics(data.videos, data.annotations)
