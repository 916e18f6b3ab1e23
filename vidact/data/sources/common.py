"""What every dataset source returns, and the helpers they share.

A source module (kinetics, hmdb51, ucf101, something, folder) reads a dataset's official
annotation files and turns them into a `SourceDataset`: the class list and, per split, a
list of `SourceRecord`s (which video, which label, which output name), and declares its
datasets for the registry (`registry.py`: `SOURCES = (DatasetSource(...),)`). Sources
never decode a video and never write anything; `vidact.data.prepare` does the rest.

A record's video may be missing on disk (real copies of Kinetics always miss some): the
record still names the path where it was expected, and the pipeline counts and lists it.
"""

from __future__ import annotations

import csv
import difflib
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from vidact.errors import VidactError

VIDEO_EXTENSIONS = (
    ".mp4",
    ".webm",
    ".mkv",
    ".avi",
    ".mov",
    ".m4v",
    ".flv",
    ".mpg",
    ".mpeg",
    ".3gp",
    ".wmv",
)
_SHOW = 5  # how many names an error message lists before "and N more"


@dataclass(frozen=True)
class SourceRecord:
    """One video of one split, as the annotations describe it."""

    key: str  # output name under OUT: '/'-separated, no extension, no whitespace
    video: Path  # source video file or JPEG frame folder (possibly missing)
    label: int
    label_name: str
    start: float | None = None  # seconds into `video` where the clip starts (untrimmed)
    end: float | None = None


@dataclass(frozen=True)
class SourceDataset:
    """A dataset's classes and its records per split, in annotation order."""

    name: str
    classes: list[str]
    splits: dict[str, list[SourceRecord]]
    frame_folder_fps: float | None = None  # set when the "videos" are JPEG frame folders
    notes: list[str] = field(default_factory=list)  # things the user should know (skipped rows)
    class_order: str = "file"  # how labels were numbered: a labels file's order, or "sorted"
    frame_pattern: str | None = None  # frame folders: the image names, forced (else detected)

    @property
    def frame_folders(self) -> bool:
        return self.frame_folder_fps is not None

    def records(self) -> list[SourceRecord]:
        """Every record of every split (a video listed in several splits appears twice)."""
        return [record for records in self.splits.values() for record in records]


# --------------------------------------------------------------------------- names & keys


def safe_name(name: str) -> str:
    """A path component without whitespace or separators (mmaction2 lists split on spaces)."""
    cleaned = re.sub(r"\s+", "_", name.strip())
    return cleaned.replace("/", "_").replace("\\", "_") or "_"


def normalize_class_name(name: str) -> str:
    """For matching class lists written by others: case, quotes, '_' vs ' ' do not matter."""
    name = name.strip().strip("\"'").lower()
    return re.sub(r"[\s_]+", " ", name).strip()


def first_few(names: Sequence[str], count: int = _SHOW) -> str:
    shown = ", ".join(names[:count])
    more = len(names) - count
    return shown + (f" and {more} more" if more > 0 else "")


# --------------------------------------------------------------------------- files


def require_dir(path: Path, what: str, option: str) -> Path:
    if not path.exists():
        raise VidactError(f"{path}: {what} not found; check {option}")
    if not path.is_dir():
        raise VidactError(f"{path}: {what} must be a folder; check {option}")
    return path


def find_annotation(
    annotations: Path, patterns: Sequence[str], what: str, required: bool = True
) -> Path | None:
    """The one file under `annotations` (a folder, searched recursively, or the file
    itself) whose name matches one of `patterns` (fnmatch, case-insensitive)."""
    import fnmatch

    if annotations.is_file():
        candidates = [annotations.parent / name for name in sorted(os.listdir(annotations.parent))]
    elif annotations.is_dir():
        candidates = sorted(p for p in annotations.rglob("*") if p.is_file())
    else:
        raise VidactError(f"{annotations}: annotations not found; check --annotations")
    for pattern in patterns:
        hits = [p for p in candidates if fnmatch.fnmatch(p.name.lower(), pattern.lower())]
        if len(hits) > 1:
            raise VidactError(
                f"{annotations}: several files match {pattern} "
                f"({first_few([str(h) for h in hits])}); "
                "point --annotations at the folder of one dataset version"
            )
        if hits:
            return hits[0]
    if required:
        raise VidactError(
            f"{annotations}: no {what} ({' or '.join(patterns)}) found; check --annotations"
        )
    return None


def require_content(path: Path, what: str) -> None:
    """An annotation file that is empty (0 bytes, or blank lines only) is one line naming
    it, before anything is written: an empty list must never replace a prepared split."""
    size = path.stat().st_size
    if size == 0 or not path.read_bytes().strip(b"\xef\xbb\xbf \t\r\n"):
        shown = "empty (0 bytes)" if size == 0 else "empty (blank lines only)"
        raise VidactError(f"{path}: {shown}; expected the {what}; re-download it")


def read_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, stripped text) of the non-empty lines of a text file."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        text = path.read_text(encoding="latin-1")
    return [(n, line.strip()) for n, line in enumerate(text.splitlines(), 1) if line.strip()]


def read_csv_rows(path: Path, delimiter: str = ",") -> list[list[str]]:
    with path.open(newline="", encoding="utf-8-sig") as handle:
        return [
            row for row in csv.reader(handle, delimiter=delimiter) if any(c.strip() for c in row)
        ]


def index_files(
    root: Path, extensions: Iterable[str] = VIDEO_EXTENSIONS, *, by: str = "stem"
) -> dict[str, list[Path]]:
    """Every file under `root` with one of `extensions`, keyed by stem (or by file name
    with `by="name"`), in sorted order so that the result is deterministic."""
    wanted = {ext.lower() for ext in extensions}
    index: dict[str, list[Path]] = {}
    for folder, dirs, files in os.walk(root, followlinks=True):
        # a folder named like a video (x.mp4) is listed, not searched: prepare reports it
        named = [d for d in dirs if os.path.splitext(d)[1].lower() in wanted]
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in named)
        for name in sorted(files + named):
            stem, ext = os.path.splitext(name)
            if ext.lower() in wanted and not name.startswith("."):
                index.setdefault(stem if by == "stem" else name, []).append(Path(folder) / name)
    return index


def pick(paths: list[Path], prefer_parent: Sequence[str] = ()) -> Path:
    """Of several files with the same name, the one in a preferred parent folder."""
    if len(paths) > 1:
        for parent in prefer_parent:
            for path in paths:
                if path.parent.name == parent:
                    return path
    return paths[0]


# --------------------------------------------------------------------------- classes


def read_class_list(path: str | Path) -> list[str]:
    """A class subset file: one class name per line ('#' starts a comment).

    Lines may also be `<index> <name>` (as in UCF101's classInd.txt); only the name is
    kept, so lists copied from papers and a previous labels.txt both work.
    """
    path = Path(path)
    if not path.is_file():
        raise VidactError(f"{path}: class list not found; check --classes")
    names: list[str] = []
    for _, line in read_lines(path):
        if line.startswith("#"):
            continue
        line = re.sub(r"^\d+[\s,;:]+", "", line)  # "12 abseiling" -> "abseiling"
        names.append(line.strip().strip("\"'"))
    if not names:
        raise VidactError(f"{path}: the class list is empty; write one class name per line")
    seen: set[str] = set()
    for name in names:
        if normalize_class_name(name) in seen:
            raise VidactError(f"{path}: class {name!r} is listed twice")
        seen.add(normalize_class_name(name))
    return names


def restrict_classes(dataset: SourceDataset, wanted: Sequence[str], origin: str) -> SourceDataset:
    """Keep only the classes in `wanted` and renumber labels in `wanted`'s order.

    Names match ignoring case, quotes and '_' vs ' ' (paper lists often use underscores);
    the dataset's own spelling is kept. An unknown name is an error with suggestions.
    """
    by_norm = {normalize_class_name(name): name for name in dataset.classes}
    unknown = [name for name in wanted if normalize_class_name(name) not in by_norm]
    if unknown:
        hint = difflib.get_close_matches(unknown[0], dataset.classes, n=1)
        suggestion = f" (did you mean {hint[0]!r}?)" if hint else ""
        raise VidactError(
            f"{origin}: {len(unknown)} classes are not in {dataset.name}: "
            f"{first_few(unknown)}{suggestion}; fix the class list"
        )
    classes = [by_norm[normalize_class_name(name)] for name in wanted]
    new_label = {name: index for index, name in enumerate(classes)}
    splits = {
        split: [
            replace(record, label=new_label[record.label_name])
            for record in records
            if record.label_name in new_label
        ]
        for split, records in dataset.splits.items()
    }
    # The labels now follow the --classes file's order, whatever the dataset's was.
    return replace(dataset, classes=classes, splits=splits, class_order="file")


def shared_videos_note(
    dataset: SourceDataset,
    pairs: Sequence[tuple[str, str]],
    what: str = "id",
    name: Callable[[SourceRecord], str] = lambda record: record.key,
) -> list[str]:
    """A warning (for the summary's notes) when a video (by `name`) is listed in both
    splits of a pair (train and validation): its evaluation would be on training data."""
    notes = []
    for first, second in pairs:
        if first not in dataset.splits or second not in dataset.splits:
            continue
        keys = {name(record) for record in dataset.splits[first]}
        shared = sorted({name(r) for r in dataset.splits[second] if name(r) in keys})
        if shared:
            notes.append(
                f"{len(shared)} {what}s are in both {first} and {second} "
                f"({first_few(shared)}); scores on {second} are then on training data"
            )
    return notes


def check_unique_keys(dataset: SourceDataset) -> None:
    """Two different videos must never share an output name."""
    seen: dict[str, Path] = {}
    for record in dataset.records():
        other = seen.setdefault(record.key, record.video)
        if other != record.video:
            raise VidactError(
                f"{other} and {record.video} would both be written as {record.key!r}; "
                "rename one of them"
            )
