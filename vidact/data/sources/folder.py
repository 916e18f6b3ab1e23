"""A plain folder, one sub-folder per class, of videos or of frame folders -> records.

    <videos>/<class>/<any name>.<mp4|avi|webm|mkv|...>   (deeper folders are searched too)
    <videos>/<class>/<video>/<numbered images>           (img_00001.jpg, 00001.jpg, ...)

A frame folder is a folder that holds images itself; its numbered sequence is detected by
`vidact.data.frame_folder` (or named with `frame_pattern`). A dataset is videos or frame
folders, not both. Classes are the sorted sub-folder names. With `val_fraction` 0 every
video goes to `train`; otherwise each class is shuffled with its own seed (from `seed` and
the class name) and round(n * val_fraction) of its videos, at least one, go to `val`. The
split depends only on the file names, the seed and the fraction.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

from vidact.data.frame_folder import IMAGE_EXTENSIONS, parse_pattern
from vidact.data.sources.common import (
    VIDEO_EXTENSIONS,
    SourceDataset,
    SourceRecord,
    index_files,
    require_dir,
    safe_name,
)
from vidact.data.sources.registry import FRAME_PATTERN_OPTION, DatasetSource, SourceOption
from vidact.errors import VidactError

_EXPECTED = "expected <videos>/<class>/<video>.mp4 or <videos>/<class>/<video>/00001.jpg ..."


def frame_folders(root: Path) -> list[Path]:
    """Every folder under `root` that holds images itself, in sorted order."""
    found = []
    for folder, dirs, files in os.walk(root, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        if any(name.lower().endswith(IMAGE_EXTENSIONS) for name in files):
            found.append(Path(folder))
    return sorted(found)


def _class_items(folder: Path) -> tuple[list[Path], list[Path]]:
    """(video files, frame folders) of one class folder."""
    files = [path for paths in index_files(folder, VIDEO_EXTENSIONS).values() for path in paths]
    return sorted(files), [path for path in frame_folders(folder) if path != folder]


def _records(videos: Path, name: str, label: int, items: list[Path]) -> list[SourceRecord]:
    def key(path: Path) -> str:
        relative = path.relative_to(videos / name)
        parts = relative.with_suffix("").parts if path.is_file() else relative.parts
        return safe_name(name) + "/" + "/".join(safe_name(part) for part in parts)

    items = sorted(items, key=lambda path: path.relative_to(videos).as_posix())
    return [SourceRecord(key(path), path, label, name) for path in items]


def _split(records: list[SourceRecord], val_fraction: float, seed: int, name: str) -> list[bool]:
    """Per record, whether it goes to val (a per-class shuffle from the seed)."""
    num_val = 0
    if val_fraction > 0 and len(records) > 1:
        num_val = min(len(records) - 1, max(1, round(len(records) * val_fraction)))
    order = list(range(len(records)))
    random.Random(f"{seed}/{name}").shuffle(order)
    val_positions = set(order[:num_val])
    return [position in val_positions for position in range(len(records))]


def load_folder(
    videos: str | Path,
    *,
    val_fraction: float = 0.0,
    seed: int = 0,
    frame_pattern: str | None = None,
    frame_rate: float = 0.0,
) -> SourceDataset:
    videos = require_dir(Path(videos), "videos folder", "--videos")
    if not 0.0 <= val_fraction < 1.0:
        raise VidactError("--val-fraction must be at least 0 and below 1")
    if frame_pattern is not None:
        parse_pattern(frame_pattern)
    classes = sorted(p.name for p in videos.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise VidactError(f"{videos}: no class sub-folders; {_EXPECTED}")
    items = {name: _class_items(videos / name) for name in classes}
    kinds = {
        "videos": any(v for v, _ in items.values()),
        "frames": any(f for _, f in items.values()),
    }
    if all(kinds.values()):
        raise VidactError(
            f"{videos}: holds both video files and frame folders; prepare them separately"
        )
    use_frames = kinds["frames"]
    empty = [name for name in classes if not items[name][1 if use_frames else 0]]
    if empty:
        what = "frame folders" if use_frames else "videos"
        raise VidactError(
            f"{videos}: class folders without {what}: {', '.join(empty[:5])}; "
            f"remove them or add {what} ({_EXPECTED})"
        )
    splits: dict[str, list[SourceRecord]] = {"train": []}
    if val_fraction > 0:
        splits["val"] = []
    for label, name in enumerate(classes):
        records = _records(videos, name, label, items[name][1 if use_frames else 0])
        for record, to_val in zip(records, _split(records, val_fraction, seed, name), strict=True):
            splits["val" if to_val else "train"].append(record)
    if use_frames:
        return SourceDataset(
            "folder", classes, splits, frame_folder_fps=frame_rate, class_order="sorted",
            frame_pattern=frame_pattern,
        )  # fmt: skip
    return SourceDataset("folder", classes, splits, class_order="sorted")


HELP = """A plain folder with one sub-folder per class, of videos or of frame folders.

    <videos>/<class>/<video>.mp4 (any container), or <videos>/<class>/<video>/
    holding numbered images (img_00001.jpg, 00001.jpg, frame_000001.png ...;
    detected per folder, or --frame-pattern). Classes are the sorted folder
    names. With --val-fraction, each class is split into train/val by a
    per-class shuffle from --seed (same seed, same split).

    Examples:
      vidact prepare folder --videos my_videos --out data/mine --val-fraction 0.2
      vidact prepare folder --videos my_videos --out data/mine-raw --mode none
      vidact prepare folder --videos my_frame_folders --out data/mine \\
          --frame-pattern 'frame_{:06d}.png'
      vidact prepare folder --videos my_videos --out data/mine --flow tvl1 \\
          --flow-backend torch
    """

SOURCES = (
    DatasetSource(
        "folder",
        load_folder,
        HELP,
        annotations=False,
        options=(
            SourceOption("val_fraction", float, 0.0, "Share of each class kept for val (0: none)."),
            SourceOption("seed", int, 0, "Seed of the train/val split."),
            FRAME_PATTERN_OPTION,
            SourceOption(
                "frame_rate",
                float,
                0.0,
                "Frame folders: their frame rate, for --fps (0: unknown, every frame kept).",
            ),
        ),
    ),
)
