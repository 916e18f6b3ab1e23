"""Something-Something V1 and V2 -> records per split.

V1 (`sthv1`): the videos are JPEG frame folders `<videos>/<id>/00001.jpg ...` at 12 fps.
Annotations, semicolon-separated:
  something-something-v1-labels.csv      one class per line (line order = label)
  something-something-v1-train.csv       `<id>;<class>`
  something-something-v1-validation.csv  `<id>;<class>`
  something-something-v1-test.csv        `<id>` (no labels: left out)

V2 (`sthv2`): the videos are `<videos>/<id>.webm`. Annotations, JSON:
  something-something-v2-labels.json      {"<class>": "<label>", ...}
  something-something-v2-train.json       [{"id", "label", "template", "placeholders"}, ...]
  something-something-v2-validation.json  same
  something-something-v2-test.json        [{"id"}, ...] (no labels: left out)
A sample's class is its template with the brackets removed ("Putting [something] on a
surface" -> "Putting something on a surface"), as the official tools do.

Splits are `train` and `val`; output names are the video ids.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vidact.data.class_order import ordered_classes
from vidact.data.frame_folder import parse_pattern
from vidact.data.sources.common import (
    SourceDataset,
    SourceRecord,
    find_annotation,
    first_few,
    read_csv_rows,
    read_lines,
    require_content,
    require_dir,
    safe_name,
    shared_videos_note,
)
from vidact.data.sources.registry import CLASS_ORDER_OPTION, FRAME_PATTERN_OPTION, DatasetSource
from vidact.errors import VidactError

V1_FPS = 12.0  # the frame rate at which 20BN released the V1 JPEG frames
_SPLITS = (("train", "train"), ("val", "validation"))


def template_class(template: str) -> str:
    """The class of a V2 sample: its template without brackets."""
    return template.replace("[", "").replace("]", "").strip()


# ---------------------------------------------------------------------------------- V1


def _split_file(
    annotations: Path, word: str, ext: str, version: str, notes: list[str]
) -> Path | None:
    """The train file (required) or the validation file (a note when absent); neither may
    be empty: an empty or missing train list must never leave an old manifest in place
    or write an empty one."""
    what = f"{version} {word} file"
    path = find_annotation(annotations, [f"*{word}.{ext}"], what, required=word == "train")
    if path is None:
        notes.append(f"no *{word}.{ext} in {annotations}: only the train split was prepared")
        return None
    require_content(path, what)
    return path


def _v1_classes(labels_file: Path, class_order: str) -> list[str]:
    require_content(labels_file, "V1 labels file (one class name per line)")
    classes = [line for _, line in read_lines(labels_file)]
    if len(set(classes)) != len(classes):
        raise VidactError(f"{labels_file}: class names must be unique")
    return ordered_classes(classes, class_order, str(labels_file))


def _overlap_notes(dataset: SourceDataset) -> list[str]:
    return shared_videos_note(dataset, [("train", "val")], what="video id")


def load_sthv1(
    videos: str | Path,
    annotations: str | Path,
    *,
    class_order: str = "file",
    frame_pattern: str | None = None,
) -> SourceDataset:
    videos = require_dir(Path(videos), "frames folder", "--videos")
    annotations = Path(annotations)
    if frame_pattern is not None:
        parse_pattern(frame_pattern)  # a bad pattern is one line before anything runs
    labels_file = find_annotation(annotations, ["*labels.csv"], "V1 labels file")
    assert labels_file is not None
    classes = _v1_classes(labels_file, class_order)
    label_of = {name: index for index, name in enumerate(classes)}
    splits: dict[str, list[SourceRecord]] = {}
    notes: list[str] = []
    for split, word in _SPLITS:
        path = _split_file(annotations, word, "csv", "V1", notes)
        if path is None:
            continue
        records = []
        for number, row in enumerate(read_csv_rows(path, delimiter=";"), start=1):
            if len(row) < 2:
                raise VidactError(f"{path}:{number}: expected '<id>;<class>'")
            video_id, name = row[0].strip(), row[1].strip()
            if name not in label_of:
                raise VidactError(f"{path}:{number}: class {name!r} is not in {labels_file.name}")
            records.append(
                SourceRecord(safe_name(video_id), videos / video_id, label_of[name], name)
            )
        splits[split] = records
    if find_annotation(annotations, ["*test.csv"], "V1 test file", required=False):
        notes.append("the test split has no labels and was left out")
    dataset = SourceDataset(
        "sthv1", classes, splits, frame_folder_fps=V1_FPS, notes=notes,
        class_order=class_order, frame_pattern=frame_pattern,
    )  # fmt: skip
    dataset.notes.extend(_overlap_notes(dataset))
    return dataset


# ---------------------------------------------------------------------------------- V2


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise VidactError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from None


def _v2_classes(path: Path) -> list[str]:
    mapping = _read_json(path)
    if not isinstance(mapping, dict) or not mapping:
        raise VidactError(f"{path}: expected a JSON object {{class name: label}}")
    try:
        by_label = {int(value): str(name).strip() for name, value in mapping.items()}
    except (TypeError, ValueError):
        raise VidactError(f"{path}: every label must be an integer (or its string)") from None
    if sorted(by_label) != list(range(len(mapping))):
        raise VidactError(f"{path}: labels must run 0..{len(mapping) - 1} without gaps")
    return [by_label[i] for i in range(len(mapping))]


def load_sthv2(
    videos: str | Path, annotations: str | Path, *, class_order: str = "file"
) -> SourceDataset:
    videos = require_dir(Path(videos), "videos folder", "--videos")
    annotations = Path(annotations)
    labels_file = find_annotation(annotations, ["*labels.json"], "V2 labels file")
    assert labels_file is not None
    require_content(labels_file, "V2 labels file ({class name: label})")
    classes = ordered_classes(_v2_classes(labels_file), class_order, str(labels_file))
    label_of = {name: index for index, name in enumerate(classes)}
    splits: dict[str, list[SourceRecord]] = {}
    notes: list[str] = []
    for split, word in _SPLITS:
        path = _split_file(annotations, word, "json", "V2", notes)
        if path is None:
            continue
        entries = _read_json(path)
        if not isinstance(entries, list):
            raise VidactError(f"{path}: expected a JSON list of samples")
        records = []
        unknown: list[str] = []
        for number, entry in enumerate(entries):
            if not isinstance(entry, dict) or "id" not in entry or "template" not in entry:
                raise VidactError(f"{path}: sample {number} lacks 'id' or 'template'")
            video_id = str(entry["id"]).strip()
            name = template_class(str(entry["template"]))
            if name not in label_of:
                unknown.append(name)
                continue
            records.append(
                SourceRecord(safe_name(video_id), videos / f"{video_id}.webm", label_of[name], name)
            )
        if unknown:
            raise VidactError(
                f"{path}: {len(unknown)} templates are not in {labels_file.name}: "
                f"{first_few(sorted(set(unknown)))}"
            )
        splits[split] = records
    if find_annotation(annotations, ["*test.json"], "V2 test file", required=False):
        notes.append("the test split has no labels and was left out")
    dataset = SourceDataset("sthv2", classes, splits, notes=notes, class_order=class_order)
    dataset.notes.extend(_overlap_notes(dataset))
    return dataset


HELP_V1 = """Something-Something V1: JPEG frame folders + ';'-separated CSV files.

    --videos is 20bn-something-something-v1 (a folder of 00001.jpg ... per
    video); --annotations holds something-something-v1-{labels,train,
    validation}.csv. Frames that need no resizing are copied byte for byte, each
    one's header checked; --mode none reads the folders in place. Labels follow
    the labels file's order (mmaction2); the TSN/TSM/CT-Net code and its released
    checkpoints sort the names: --class-order sorted.

    Examples:
      vidact prepare sthv1 --videos 20bn-something-something-v1 \\
          --annotations sthv1-annotations --out data/sthv1
      vidact prepare sthv1 --videos 20bn-something-something-v1 \\
          --annotations sthv1-annotations --out data/sthv1-ctnet --class-order sorted
      vidact prepare sthv1 --videos 20bn-something-something-v1 \\
          --annotations sthv1-annotations --out data/sthv1-raw --mode none
    """

HELP_V2 = """Something-Something V2: <id>.webm videos + the JSON annotation files.

    --annotations holds something-something-v2-{labels,train,validation}.json.
    A sample's class is its template with the brackets removed, as the
    official tools do. Labels follow the labels file (as the TSM/CT-Net tools
    do); --class-order sorted numbers the sorted names instead.

    Examples:
      vidact prepare sthv2 --videos 20bn-something-something-v2 \\
          --annotations labels --out data/sthv2
      vidact prepare sthv2 --videos 20bn-something-something-v2 \\
          --annotations labels --out data/sthv2-raw --mode none
    """

SOURCES = (
    DatasetSource("sthv1", load_sthv1, HELP_V1, options=(CLASS_ORDER_OPTION, FRAME_PATTERN_OPTION)),
    DatasetSource("sthv2", load_sthv2, HELP_V2, options=(CLASS_ORDER_OPTION,)),
)
