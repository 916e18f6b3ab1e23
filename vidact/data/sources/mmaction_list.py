"""An existing mmaction2-style list (`vidact prepare list`) -> records per split.

Each line of a list file is one video, its path relative to the root folder (or absolute):
  `<path> <label>`               a video file (mmaction2's VideoDataset lists)
  `<path> <num_frames> <label>`  a frame folder (RawframeDataset lists; the count is
                                 probed again, never trusted)
Labels are 0-based integers. Class names come from `labels` (one name per line, line i =
label i, as mmaction2's label map files) or are the label numbers. A list is of videos or
of frame folders, not both; a path that is a folder is a frame folder. Splits: `train`
(and `val` if given); output names are the paths without extension.
"""

from __future__ import annotations

from pathlib import Path

from vidact.data.frame_folder import parse_pattern
from vidact.data.sources.common import (
    SourceDataset,
    SourceRecord,
    read_class_list,
    read_lines,
    require_content,
    require_dir,
    safe_name,
    shared_videos_note,
)
from vidact.data.sources.registry import FRAME_PATTERN_OPTION, DatasetSource, SourceOption
from vidact.errors import VidactError

_FORMS = "'<path> <label>' (videos) or '<path> <num_frames> <label>' (frame folders)"


def _read_list(path: Path, option: str) -> list[tuple[str, int, bool]]:
    """(path, label, is a rawframes line) per line of one list file."""
    if not path.is_file():
        raise VidactError(f"{path}: list file not found; check {option}")
    require_content(path, f"list of {_FORMS}")
    entries = []
    for number, line in read_lines(path):
        parts = line.split()
        if len(parts) not in (2, 3) or not all(p.isdigit() for p in parts[1:]):
            raise VidactError(f"{path}:{number}: expected {_FORMS}, got {line!r}")
        entries.append((parts[0], int(parts[-1]), len(parts) == 3))
    return entries


def _class_names(labels: Path | None, count: int) -> list[str]:
    if labels is None:
        return [str(label) for label in range(count)]
    names = read_class_list(labels)
    if len(names) < count:
        raise VidactError(
            f"{labels}: {len(names)} class names, but the lists use labels up to {count - 1}"
        )
    return names


def _frame_folders(root: Path, entries: list[tuple[str, int, bool]], where: str) -> bool:
    """Whether the lists name frame folders (else video files); a mix is refused."""
    kinds = {rawframes or (root / path).is_dir() for path, _, rawframes in entries}
    if len(kinds) > 1:
        raise VidactError(f"{where}: the lists mix video files and frame folders; split them")
    return kinds.pop()


def _key(path: str, frame_folder: bool) -> str:
    """The output name: the listed path without its extension (a video file's)."""
    relative = Path(path) if frame_folder else Path(path).with_suffix("")
    return "/".join(safe_name(part) for part in relative.parts if part not in ("/", ".."))


def load_list(
    root: str | Path,
    *,
    train: Path,
    val: Path | None = None,
    labels: Path | None = None,
    frame_pattern: str | None = None,
    frame_rate: float = 0.0,
) -> SourceDataset:
    root = require_dir(Path(root), "root folder", "--root")
    if frame_pattern is not None:
        parse_pattern(frame_pattern)
    files = {"train": (Path(train), "--train")}
    if val is not None:
        files["val"] = (Path(val), "--val")
    lists = {split: _read_list(path, option) for split, (path, option) in files.items()}
    every = [entry for entries in lists.values() for entry in entries]
    classes = _class_names(labels, max(label for _, label, _ in every) + 1)
    frames = _frame_folders(root, every, f"{train}")
    splits = {
        split: [
            SourceRecord(_key(path, frames), root / path, label, classes[label])
            for path, label, _ in entries
        ]
        for split, entries in lists.items()
    }
    dataset = SourceDataset(
        "list", classes, splits, frame_folder_fps=frame_rate if frames else None,
        frame_pattern=frame_pattern,
    )  # fmt: skip
    dataset.notes.extend(shared_videos_note(dataset, [("train", "val")], what="video"))
    return dataset


HELP = """An existing mmaction2-style list: '<path> <label>' or '<path> <frames> <label>'.

    Lines '<path> <label>' name video files, '<path> <num_frames> <label>' frame
    folders (mmaction2's rawframe lists; any numbered images, detected per folder
    or --frame-pattern). Paths are relative to --root; labels are 0-based and
    named by --labels (one class name per line) or by their numbers.

    Examples:
      vidact prepare list --train train.txt --val val.txt --root videos --out data/mine
      vidact prepare list --train train_rawframes.txt --val val_rawframes.txt \\
          --root rawframes --labels label_map.txt --out data/mine --mode none
    """

SOURCES = (
    DatasetSource(
        "list",
        load_list,
        HELP,
        annotations=False,
        videos_flags="--root --videos",
        options=(
            SourceOption("train", Path, ..., "The training list file."),
            SourceOption("val", Path | None, None, "The validation list file."),
            SourceOption(
                "labels", Path | None, None, "Class names, one per line (line i = label i)."
            ),
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
