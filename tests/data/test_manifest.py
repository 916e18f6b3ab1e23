"""Manifest and label-map round trips and validation messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from vidact.data.manifest import (
    Sample,
    load_manifest,
    read_label_map,
    read_manifest,
    write_label_map,
    write_manifest,
)
from vidact.errors import ManifestError


def _samples() -> list[Sample]:
    return [
        Sample("videos/a/0.mp4", 0, "a", 16),
        Sample("videos/b/1.mp4", 1, "b", 300, start=1.5, end=9.0, flow="flow/1"),
        Sample("frames/c/2", 2, "c ü", 40, gt_flow="gt_flow/2.npz"),
    ]


def test_round_trip_keeps_every_field(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    assert write_manifest(path, _samples()) == 3
    assert read_manifest(path) == _samples()
    assert '"start"' not in path.read_text().splitlines()[0]  # None fields are omitted


def test_label_map_round_trip(tmp_path: Path) -> None:
    write_label_map(tmp_path / "labels.txt", ["run", "jump", "swim fast"])
    assert read_label_map(tmp_path / "labels.txt") == ["run", "jump", "swim fast"]
    with pytest.raises(ManifestError, match="unique"):
        write_label_map(tmp_path / "dup.txt", ["a", "a"])


def test_missing_files_are_counted_and_named(tmp_path: Path) -> None:
    samples = [Sample(f"v/{i}.mp4", 0, "a", 8) for i in range(9)]
    (tmp_path / "v").mkdir()
    (tmp_path / "v" / "0.mp4").write_bytes(b"x")
    write_manifest(tmp_path / "m.jsonl", samples)
    with pytest.raises(ManifestError) as caught:
        load_manifest(tmp_path / "m.jsonl")
    message = str(caught.value)
    assert "8 of 9 videos are missing" in message
    assert "v/1.mp4" in message and "and 3 more" in message
    assert len(load_manifest(tmp_path / "m.jsonl", check_files=False)) == 9


def test_labels_outside_the_label_map_are_rejected(tmp_path: Path) -> None:
    write_manifest(tmp_path / "m.jsonl", [Sample("x.mp4", 5, "e", 8)])
    with pytest.raises(ManifestError, match="outside 0..2"):
        load_manifest(tmp_path / "m.jsonl", check_files=False, num_classes=3)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "not valid JSON"),
        ('["a"]', "JSON object"),
        ('{"path": "a", "label": 0, "label_name": "a"}', "missing field 'num_frames'"),
        ('{"path": "a", "label": 0, "label_name": "a", "num_frames": 3, "x": 1}', "unknown field"),
        ('{"path": "a", "label": "0", "label_name": "a", "num_frames": 3}', "integers"),
    ],
)
def test_malformed_lines_name_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"path": "ok", "label": 0, "label_name": "a", "num_frames": 3}\n' + line)
    with pytest.raises(ManifestError, match=message) as caught:
        read_manifest(path)
    assert f"{path}:2" in str(caught.value)


def test_missing_manifest_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="vidact prepare"):
        read_manifest(tmp_path / "nope.jsonl")


def test_atomic_writes_get_ordinary_permissions(tmp_path: Path) -> None:
    import os

    from vidact.atomic import atomic_dir, atomic_write_text

    umask = os.umask(0o022)
    os.umask(umask)
    atomic_write_text(tmp_path / "a.txt", "x")
    with atomic_dir(tmp_path / "d") as folder:
        (folder / "f").write_text("y")
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o666 & ~umask
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o777 & ~umask
