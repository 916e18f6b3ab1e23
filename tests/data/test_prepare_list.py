"""prepare list: mmaction2-style lists ('<path> <label>' videos, '<path> <frames> <label>'
frame folders) as a dataset, from the library and the command line."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.conftest import frame_index_of
from tests.data.fake_datasets import make_folder, make_frame_folder_classes
from vidact.cli import app
from vidact.data import video
from vidact.data.manifest import load_manifest, read_label_map
from vidact.data.prepare.pipeline import prepare
from vidact.data.sources.mmaction_list import load_list
from vidact.errors import VidactError

runner = CliRunner()


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_a_video_list_from_the_command_line(tmp_path: Path) -> None:
    data = make_folder(tmp_path / "f", {"cats": 2, "dogs": 2})
    files = sorted(p.relative_to(data.videos).as_posix() for p in data.videos.rglob("*.*"))
    labels = {"cats": 0, "dogs": 1}
    rows = [f"{name.replace(' ', '_')} {labels[name.split('/')[0]]}" for name in files]
    for old, new in zip(files, rows, strict=True):  # mmaction2 lists split on spaces
        (data.videos / old).rename(data.videos / new.split()[0])
    train = _write(tmp_path / "train.txt", [rows[0], rows[1], rows[2]])
    val = _write(tmp_path / "val.txt", [rows[3]])
    names = _write(tmp_path / "label_map.txt", ["cat", "dog"])
    out = tmp_path / "out"
    args = ["prepare", "list", "--train", str(train), "--val", str(val), "--root"]
    args += [str(data.videos), "--labels", str(names), "--out", str(out), "--mode", "none"]
    result = runner.invoke(app, [*args, "--workers", "0"])
    assert result.exit_code == 0, result.output
    assert read_label_map(out / "labels.txt") == ["cat", "dog"]
    samples = load_manifest(out / "train.jsonl", num_classes=2) + load_manifest(out / "val.jsonl")
    assert [f"{(out / s.path).resolve().relative_to(data.videos.resolve())} {s.label}"
            for s in samples] == rows  # fmt: skip
    for sample in samples:
        assert sample.label_name == ["cat", "dog"][sample.label]
        original = Path(sample.path).name.replace("_", " ")
        assert sample.num_frames == data.frames[original]


def test_a_rawframe_list_reads_any_numbered_images(tmp_path: Path) -> None:
    data = make_frame_folder_classes(tmp_path / "r", {"cats": 2, "dogs": 1})
    folders = sorted(p for p in data.videos.glob("*/*"))
    lines = [f"{p.relative_to(data.videos)} {data.frames[p.name]} {int(p.parent.name == 'dogs')}"
             for p in folders]  # fmt: skip
    for folder in folders:  # lists split on spaces: rename the folders as the list names them
        folder.rename(folder.with_name(folder.name.replace(" ", "-")))
    lines = [line.replace(" clip ", "-clip-", 1) for line in lines]
    train = _write(tmp_path / "train.txt", lines[:2])
    val = _write(tmp_path / "val.txt", lines[2:] + lines[:1])  # one video in both
    out = tmp_path / "out"
    summary = prepare("list", data.videos, None, out, train=train, val=val, workers=0)
    assert summary.manifests == {"train": 2, "val": 2}
    assert any(note.startswith("1 videos are in both train and val") for note in summary.notes)
    assert read_label_map(out / "labels.txt") == ["0", "1"]
    for sample in load_manifest(out / "val.jsonl"):
        frames = video.read_all_frames(out / sample.path)  # copied to img_00001.jpg ...
        assert [frame_index_of(f) for f in frames] == list(range(sample.num_frames))


def test_bad_lists_are_one_line_naming_file_and_line(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "a.mp4").write_bytes(b"x")
    (root / "b").mkdir()
    cases = {
        "a.mp4": "expected '<path> <label>'",
        "a.mp4 cat": "expected '<path> <label>'",
        "a.mp4 1 2 3": "expected '<path> <label>'",
    }
    for line, message in cases.items():
        path = _write(tmp_path / "bad.txt", ["a.mp4 0", line])
        with pytest.raises(VidactError, match=f"bad.txt:2: {message}"):
            load_list(root, train=path)
    mixed = _write(tmp_path / "mixed.txt", ["a.mp4 0", "b 0"])
    with pytest.raises(VidactError, match="mix video files and frame folders"):
        load_list(root, train=mixed)
    empty = _write(tmp_path / "empty.txt", [])
    with pytest.raises(VidactError, match=r"empty.txt: empty \(0 bytes\)"):
        load_list(root, train=empty)
    with pytest.raises(VidactError, match="missing.txt: list file not found; check --val"):
        load_list(root, train=mixed, val=tmp_path / "missing.txt")
    short = _write(tmp_path / "names.txt", ["only"])
    with pytest.raises(VidactError, match="1 class names, but the lists use labels up to 3"):
        load_list(root, train=_write(tmp_path / "t.txt", ["a.mp4 3"]), labels=short)
