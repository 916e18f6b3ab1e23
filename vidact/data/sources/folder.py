"""A plain folder of videos, one sub-folder per class -> records per split.

    <videos>/<class>/<any name>.<mp4|avi|webm|mkv|...>   (deeper folders are searched too)

Classes are the sorted sub-folder names. With `val_fraction` 0 every video goes to
`train`; otherwise each class is shuffled with its own seed (from `seed` and the class
name) and round(n * val_fraction) of its videos, at least one, go to `val`. The split
depends only on the file names, the seed and the fraction.
"""

from __future__ import annotations

import random
from pathlib import Path

from vidact.data.sources.common import (
    VIDEO_EXTENSIONS,
    SourceDataset,
    SourceRecord,
    index_files,
    require_dir,
    safe_name,
)
from vidact.data.sources.registry import DatasetSource, SourceOption
from vidact.errors import VidactError


def load_folder(videos: str | Path, *, val_fraction: float = 0.0, seed: int = 0) -> SourceDataset:
    videos = require_dir(Path(videos), "videos folder", "--videos")
    if not 0.0 <= val_fraction < 1.0:
        raise VidactError("--val-fraction must be at least 0 and below 1")
    classes = sorted(p.name for p in videos.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise VidactError(f"{videos}: no class sub-folders; expected <videos>/<class>/<video>")
    splits: dict[str, list[SourceRecord]] = {"train": []}
    if val_fraction > 0:
        splits["val"] = []
    empty = []
    for label, name in enumerate(classes):
        files = sorted(
            (
                path
                for paths in index_files(videos / name, VIDEO_EXTENSIONS).values()
                for path in paths
            ),
            key=lambda path: path.relative_to(videos).as_posix(),
        )
        if not files:
            empty.append(name)
            continue
        records = [
            SourceRecord(
                key=safe_name(name)
                + "/"
                + "/".join(
                    safe_name(part)
                    for part in path.relative_to(videos / name).with_suffix("").parts
                ),
                video=path,
                label=label,
                label_name=name,
            )
            for path in files
        ]
        num_val = 0
        if val_fraction > 0 and len(records) > 1:
            num_val = min(len(records) - 1, max(1, round(len(records) * val_fraction)))
        order = list(range(len(records)))
        random.Random(f"{seed}/{name}").shuffle(order)
        val_positions = set(order[:num_val])
        for position, record in enumerate(records):
            splits["val" if position in val_positions else "train"].append(record)
    if empty:
        raise VidactError(
            f"{videos}: class folders without videos: {', '.join(empty[:5])}; "
            "remove them or add videos"
        )
    return SourceDataset("folder", classes, splits)


HELP = """A plain folder with one sub-folder of videos per class.

    Classes are the sorted folder names. With --val-fraction, each class is
    split into train/val by a per-class shuffle from --seed (same seed, same
    split).

    Examples:
      vidact prepare folder --videos my_videos --out data/mine --val-fraction 0.2
      vidact prepare folder --videos my_videos --out data/mine-raw --mode none
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
        ),
    ),
)
