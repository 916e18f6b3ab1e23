"""Frame folders as users have them: any numbered image sequence read in place, exact frames
against a literal reader, the pattern detected or forced, and the header check."""

from __future__ import annotations

import os
import random
import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.conftest import frame_index_of, numbered_frames
from vidact.data import video
from vidact.data.frame_folder import (
    FramePattern,
    detect_pattern,
    image_problem,
    parse_pattern,
    scan_folder,
)
from vidact.errors import VidactError, VideoReadError


def write_sequence(folder: Path, template: str, numbers: list[int]) -> Path:
    """Images of `numbered_frames`: the k-th written image shows frame index k."""
    folder.mkdir(parents=True, exist_ok=True)
    frames = numbered_frames(len(numbers), 48, 64)
    for frame, number in zip(frames, numbers, strict=True):
        cv2.imwrite(str(folder / template.format(number)), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    return folder


def literal_read(folder: Path, indices: list[int]) -> np.ndarray:
    """The slow reference: every image file, sorted by the number in its name, read one by
    one; frame i is the i-th."""
    names = [n for n in folder.iterdir() if n.suffix.lower() in (".jpg", ".png", ".bmp")]
    ordered = sorted(names, key=lambda p: int(re.findall(r"\d+", p.name)[-1]))
    images = [cv2.cvtColor(cv2.imread(str(ordered[i])), cv2.COLOR_BGR2RGB) for i in indices]
    return np.stack(images)


@pytest.mark.parametrize(
    ("template", "first", "pattern"),
    [
        ("img_{:05d}.jpg", 1, "img_{:05d}.jpg"),  # mmaction2 rawframes
        ("{:05d}.jpg", 1, "{:05d}.jpg"),  # Something-Something V1
        ("frame_{:06d}.png", 0, "frame_{:06d}.png"),  # 0-based PNG
        ("image_{}.jpg", 1, "image_{:d}.jpg"),  # not zero-padded: image_1 .. image_12
    ],
)
def test_any_numbered_sequence_reads_the_exact_frames_in_place(
    tmp_path: Path, template: str, first: int, pattern: str
) -> None:
    folder = write_sequence(tmp_path / "v", template, list(range(first, first + 12)))
    (folder / "notes.txt").write_text("not a frame")
    sequence = scan_folder(folder)
    assert str(sequence.pattern) == pattern and len(sequence) == 12 and not sequence.gaps()
    info = video.probe(folder)
    assert (info.num_frames, info.width, info.height) == (12, 64, 48)
    rng = random.Random(0)
    indices = [rng.randrange(12) for _ in range(20)] + [11, 0, 11]  # random, repeated
    frames = video.read_frames(folder, indices)
    assert np.array_equal(frames, literal_read(folder, indices))
    assert [frame_index_of(f) for f in frames] == indices
    with pytest.raises(VideoReadError, match="frame 12 requested but the folder has 12"):
        video.read_frames(folder, [12])


def test_img_folders_read_as_the_old_template_reader_did(tmp_path: Path) -> None:
    folder = write_sequence(tmp_path / "v", "img_{:05d}.jpg", list(range(1, 9)))
    old = np.stack(
        [cv2.cvtColor(cv2.imread(str(folder / f"img_{i + 1:05d}.jpg")), cv2.COLOR_BGR2RGB)
         for i in (3, 1, 7)]
    )  # fmt: skip
    assert np.array_equal(video.read_frames(folder, [3, 1, 7]), old)


def test_gaps_shift_nothing_and_are_reported(tmp_path: Path) -> None:
    folder = write_sequence(tmp_path / "v", "{:05d}.jpg", [1, 2, 4, 5, 9])
    sequence = scan_folder(folder)
    assert sequence.gaps() == [3, 6, 7, 8]
    assert sequence.describe_gaps() == (
        "4 images missing from the numbering (00003.jpg, 00006.jpg, 00007.jpg and 1 more)"
    )
    frames = video.read_frames(folder, range(5))
    assert [frame_index_of(f) for f in frames] == [0, 1, 2, 3, 4]  # the images in order


def test_denseflow_folders_pick_the_rgb_sequence_and_ties_ask_for_a_pattern(
    tmp_path: Path,
) -> None:
    names = [f"img_{i:05d}.jpg" for i in range(1, 6)]
    names += [f"flow_x_{i:05d}.jpg" for i in range(1, 5)] + [
        f"flow_y_{i:05d}.jpg" for i in range(1, 5)
    ]
    assert detect_pattern(names, "v") == FramePattern("img_", ".jpg", 5)
    same = [f"img_{i:05d}.jpg" for i in range(1, 5)] + [f"x_{i:05d}.jpg" for i in range(1, 5)]
    assert detect_pattern(same, "v") == FramePattern("img_", ".jpg", 5)  # the RGB prefix wins
    with pytest.raises(VideoReadError, match=r"several numbered image sequences \(aN.jpg, bN.jpg"):
        detect_pattern(["a1.jpg", "a2.jpg", "b1.jpg", "b2.jpg"], "v")
    with pytest.raises(VideoReadError, match="holds no numbered images"):
        detect_pattern(["readme.txt", "cover.jpg"], "v")


def test_a_forced_pattern_reads_only_its_images(tmp_path: Path) -> None:
    folder = write_sequence(tmp_path / "v", "x_{:05d}.jpg", list(range(1, 5)))
    write_sequence(folder, "y_{:05d}.jpg", list(range(1, 5)))
    for text in ("y_{:05d}.jpg", "y_%05d.jpg", "y_{:05}.jpg"):
        assert parse_pattern(text) == FramePattern("y_", ".jpg", 5)
    sequence = scan_folder(folder, "y_%05d.jpg")
    assert sequence.names == tuple(f"y_{i:05d}.jpg" for i in range(1, 5))
    with pytest.raises(VideoReadError, match="has no z_"):
        scan_folder(folder, "z_{:05d}.jpg")
    for bad in ("frames", "{:05d}.txt", "{:05d}_{:02d}.jpg", "a/{:05d}.jpg"):
        with pytest.raises(VidactError, match="--frame-pattern"):
            parse_pattern(bad)


def test_a_folder_is_listed_once_until_it_changes(tmp_path: Path) -> None:
    folder = write_sequence(tmp_path / "v", "{:05d}.jpg", [1, 2, 3])
    assert scan_folder(folder) is scan_folder(folder)
    write_sequence(tmp_path / "w", "{:05d}.jpg", [4])
    (tmp_path / "w" / "00004.jpg").rename(folder / "00004.jpg")
    assert len(scan_folder(folder)) == 4


def test_header_check_names_what_is_wrong(tmp_path: Path) -> None:
    good = write_sequence(tmp_path / "v", "{:05d}.png", [1]) / "00001.png"
    jpeg = write_sequence(tmp_path / "v", "{:05d}.jpg", [1]) / "00001.jpg"
    assert image_problem(good) == "" and image_problem(jpeg) == ""
    cases = {
        "empty.jpg": (b"", "empty (0 bytes)"),
        "cut.jpg": (jpeg.read_bytes()[:200], "a JPEG cut short (no end marker)"),
        "cut.png": (good.read_bytes()[:60], "a PNG cut short (no IEND chunk)"),
        "text.jpg": (b"hello world, not an image", "not a JPEG, PNG or BMP image"),
    }
    for name, (data, reason) in cases.items():
        (tmp_path / name).write_bytes(data)
        assert image_problem(tmp_path / name).startswith(reason), name
        assert cv2.imread(str(tmp_path / name)) is None or "cut" in name
    os.mkfifo(tmp_path / "pipe.jpg")  # opening it would block: it is judged unopened
    assert image_problem(tmp_path / "pipe.jpg").startswith("a FIFO (named pipe), not a regular")
    (tmp_path / "folder.jpg").mkdir()
    assert image_problem(tmp_path / "folder.jpg") == "a directory, not an image"
