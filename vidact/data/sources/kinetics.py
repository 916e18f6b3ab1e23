"""Kinetics-400/600/700: the official CSV files -> records per split.

CSV columns (header line): `label,youtube_id,time_start,time_end,split` (Kinetics-400
adds `is_cc`; test files may lack `label`). `split` is train / val / validate / test;
without that column the split comes from the file name. Classes are the sorted labels
found in the CSVs, which is the official class order.

Videos are found by name anywhere under the videos folder, with or without class or
split sub-folders and with any common extension:
  - `{youtube_id}_{time_start:06d}_{time_end:06d}.mp4`: the usual trimmed download;
  - `{youtube_id}.mp4`: the untrimmed YouTube video; the record then carries
    start/end and only that segment is extracted.
A clip that is not found is still listed, so the pipeline counts and reports it.
"""

from __future__ import annotations

from pathlib import Path

from vidact.data.sources.common import (
    SourceDataset,
    SourceRecord,
    index_files,
    pick,
    read_csv_rows,
    require_content,
    require_dir,
    safe_name,
    shared_videos_note,
)
from vidact.data.sources.registry import DatasetSource
from vidact.errors import VidactError

_REQUIRED = ("youtube_id", "time_start", "time_end")
_SPLIT_NAMES = {"train": "train", "training": "train", "val": "val", "validate": "val"}
_SPLIT_NAMES |= {"validation": "val", "test": "test", "testing": "test"}
SPLIT_ORDER = ("train", "val", "test")


def clip_name(youtube_id: str, start: int, end: int) -> str:
    """The usual file stem of a trimmed Kinetics clip."""
    return f"{youtube_id}_{start:06d}_{end:06d}"


def _csv_files(annotations: Path) -> list[Path]:
    if annotations.is_file():
        return [annotations]
    if not annotations.is_dir():
        raise VidactError(f"{annotations}: annotations not found; check --annotations")
    files = sorted(p for p in annotations.iterdir() if p.suffix.lower() == ".csv")
    if not files:
        raise VidactError(
            f"{annotations}: no Kinetics CSV files (train.csv, validate.csv, ...); "
            "check --annotations"
        )
    return files


def _split_from_filename(path: Path) -> str | None:
    stem = path.stem.lower()
    for word, split in _SPLIT_NAMES.items():
        if stem == word or stem.endswith(("_" + word, "-" + word)):
            return split
    return None


def _int_seconds(value: str, where: str, column: str) -> int:
    try:
        return round(float(value))
    except ValueError:
        raise VidactError(f"{where}: {column} must be a number of seconds, not {value!r}") from None


def _read_csv(path: Path) -> list[tuple[str, str | None, int, int, str]]:
    """(split, label or None, start, end, youtube_id) per row."""
    require_content(path, "official Kinetics annotation CSV")
    rows = read_csv_rows(path)
    header = [cell.strip().lower() for cell in rows[0]]
    missing = [name for name in _REQUIRED if name not in header]
    if missing:
        raise VidactError(
            f"{path}: not a Kinetics CSV: no column '{missing[0]}' "
            "(expected label,youtube_id,time_start,time_end,split)"
        )
    column = {name: header.index(name) for name in header}
    file_split = _split_from_filename(path)
    out = []
    for number, row in enumerate(rows[1:], start=2):
        where = f"{path}:{number}"
        if len(row) < len(header):
            raise VidactError(f"{where}: {len(row)} columns, the header has {len(header)}")
        raw_split = row[column["split"]].strip().lower() if "split" in column else file_split
        if raw_split is None:
            raise VidactError(
                f"{path}: no 'split' column and the file name does not say train/val/test; "
                "rename it (e.g. train.csv) or add the column"
            )
        split = _SPLIT_NAMES.get(raw_split)
        if split is None:
            raise VidactError(f"{where}: unknown split {raw_split!r}; expected train, val or test")
        label = row[column["label"]].strip() if "label" in column else ""
        start = _int_seconds(row[column["time_start"]], where, "time_start")
        end = _int_seconds(row[column["time_end"]], where, "time_end")
        out.append((split, label or None, start, end, row[column["youtube_id"]].strip()))
    return out


def load_kinetics(videos: str | Path, annotations: str | Path) -> SourceDataset:
    """Records per split from Kinetics CSVs (`annotations`: one CSV or a folder of them)."""
    videos = require_dir(Path(videos), "videos folder", "--videos")
    rows = [row for path in _csv_files(Path(annotations)) for row in _read_csv(path)]
    classes = sorted({label for _, label, _, _, _ in rows if label is not None})
    if not classes:
        raise VidactError(f"{annotations}: no labelled rows; test CSVs alone cannot be prepared")
    label_of = {name: index for index, name in enumerate(classes)}
    index = index_files(videos)
    splits: dict[str, list[SourceRecord]] = {}
    unlabelled = 0
    for split, label, start, end, youtube_id in rows:
        if label is None:
            unlabelled += 1
            continue
        stem = clip_name(youtube_id, start, end)
        prefer = (label, safe_name(label), split)
        clip_start: float | None = None
        clip_end: float | None = None
        if stem in index:
            video = pick(index[stem], prefer)
        elif youtube_id in index:  # the untrimmed video: extract [start, end) only
            video = pick(index[youtube_id], prefer)
            clip_start, clip_end = float(start), float(end)
        else:
            video = videos / split / label / f"{stem}.mp4"  # where it was expected
        record = SourceRecord(
            key=f"{split}/{safe_name(label)}/{safe_name(stem)}",
            video=video,
            label=label_of[label],
            label_name=label,
            start=clip_start,
            end=clip_end,
        )
        splits.setdefault(split, []).append(record)
    ordered = {name: splits[name] for name in SPLIT_ORDER if name in splits}
    notes = [f"left out unlabelled rows (test set): {unlabelled}"] if unlabelled else []
    dataset = SourceDataset("kinetics", classes, ordered, notes=notes, class_order="sorted")
    clip = lambda record: Path(record.key).name  # noqa: E731 - the key names the split too
    pairs = [("train", "val"), ("train", "test"), ("val", "test")]
    dataset.notes.extend(shared_videos_note(dataset, pairs, what="clip", name=clip))
    return dataset


HELP = """Kinetics-400/600/700 from the official CSV files.

    CSV columns: label, youtube_id, time_start, time_end, split. Clips are found
    by name anywhere under --videos (with or without class folders):
    {youtube_id}_{start:06d}_{end:06d}.mp4, or the untrimmed {youtube_id}.mp4.
    Missing clips are counted and listed in failures.jsonl, never fatal.
    Re-running the same command resumes.

    Examples:
      vidact prepare kinetics --videos k400 --annotations k400/csv --out data/k400
      vidact prepare kinetics --videos k400 --annotations k400/csv \\
          --out data/mini200 --classes mini_kinetics_200.txt
      vidact prepare kinetics --videos k400 --annotations k400/csv \\
          --out data/k400 --shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT
    """

SOURCES = (DatasetSource("kinetics", load_kinetics, HELP),)
