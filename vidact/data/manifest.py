"""The sample record, its on-disk form (JSON Lines), and the label map.

A manifest is one JSON object per line. Paths are relative to the dataset root, which by
default is the folder that holds the manifest, so a prepared dataset can be moved as a
whole. The label map is a text file with one class name per line; line i is label i.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from vidact.atomic import atomic_write_text
from vidact.errors import ManifestError

# How many missing names a validation error lists before "and N more".
_SHOW_MISSING = 5


@dataclass(frozen=True)
class Sample:
    """One video (file or JPEG frame folder) of a dataset split."""

    path: str  # video file or frame folder, relative to the dataset root
    label: int  # index into the label map
    label_name: str
    num_frames: int
    start: float | None = None  # seconds into the video where the action starts
    end: float | None = None
    flow: str | None = None  # TV-L1 flow folder (x_/y_ JPEG pairs), relative to the root
    gt_flow: str | None = None  # exact ground-truth flow (.npz), synthetic data only

    def to_json(self) -> str:
        record = {k: v for k, v in asdict(self).items() if v is not None}
        return json.dumps(record, ensure_ascii=False)


_FIELDS = {f.name for f in fields(Sample)}
_REQUIRED = ("path", "label", "label_name", "num_frames")


def write_manifest(path: str | Path, samples: Iterable[Sample]) -> int:
    """Write `samples` as JSON Lines, atomically. Returns the number written."""
    lines = [sample.to_json() for sample in samples]
    atomic_write_text(path, "".join(line + "\n" for line in lines))
    return len(lines)


def read_manifest(path: str | Path) -> list[Sample]:
    """Parse a manifest; a malformed line raises ManifestError naming file and line."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: manifest not found; run `vidact prepare ...` first")
    samples = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        samples.append(_parse_line(path, number, line))
    return samples


def _parse_line(path: Path, number: int, line: str) -> Sample:
    where = f"{path}:{number}"
    try:
        record: Any = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{where}: not valid JSON ({exc.msg})") from None
    if not isinstance(record, dict):
        raise ManifestError(f"{where}: each line must be a JSON object")
    unknown = sorted(set(record) - _FIELDS)
    if unknown:
        raise ManifestError(f"{where}: unknown field '{unknown[0]}'")
    missing = [name for name in _REQUIRED if name not in record]
    if missing:
        raise ManifestError(f"{where}: missing field '{missing[0]}'")
    if not isinstance(record["label"], int) or not isinstance(record["num_frames"], int):
        raise ManifestError(f"{where}: 'label' and 'num_frames' must be integers")
    return Sample(**record)


def load_manifest(
    path: str | Path,
    root: str | Path | None = None,
    *,
    check_files: bool = True,
    num_classes: int | None = None,
) -> list[Sample]:
    """Read and validate a manifest.

    With `check_files`, every video/folder must exist under `root` (default: the
    manifest's folder); missing ones are reported with a count and the first few names.
    With `num_classes`, labels must lie in [0, num_classes).
    """
    path = Path(path)
    samples = read_manifest(path)
    if not samples:
        raise ManifestError(f"{path}: manifest is empty")
    base = Path(root) if root is not None else path.parent
    if num_classes is not None:
        bad = [s for s in samples if not 0 <= s.label < num_classes]
        if bad:
            raise ManifestError(
                f"{path}: {len(bad)} samples have labels outside 0..{num_classes - 1} "
                f"(first: {bad[0].path} label {bad[0].label}); check the label map"
            )
    if check_files:
        missing = [s.path for s in samples if not (base / s.path).exists()]
        if missing:
            raise ManifestError(
                f"{path}: {len(missing)} of {len(samples)} videos are missing under {base}: "
                f"{_first_few(missing)}; check data.root or re-run prepare"
            )
    return samples


def _first_few(names: Sequence[str]) -> str:
    shown = ", ".join(names[:_SHOW_MISSING])
    more = len(names) - _SHOW_MISSING
    return shown + (f" and {more} more" if more > 0 else "")


def write_label_map(path: str | Path, names: Sequence[str]) -> None:
    """One class name per line; line i is label i."""
    for name in names:
        if "\n" in name or not name.strip():
            raise ManifestError(f"{path}: class names must be non-empty single lines: {name!r}")
    if len(set(names)) != len(names):
        raise ManifestError(f"{path}: class names must be unique")
    atomic_write_text(path, "".join(f"{name}\n" for name in names))


def read_label_map(path: str | Path) -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: label map not found; run `vidact prepare ...` first")
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    names = [name for name in names if name]
    if not names:
        raise ManifestError(f"{path}: label map is empty")
    if len(set(names)) != len(names):
        raise ManifestError(f"{path}: label map has duplicate class names")
    return names
