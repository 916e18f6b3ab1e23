"""Frame folders as users have them: any numbered image sequence, its pattern detected
once per folder, and a cheap check of each image's header.

A frame folder holds one video as numbered images: mmaction2's `img_00001.jpg`,
Something-Something V1's `00001.jpg`, `frame_000001.png`, `image_1.jpg` ... The pattern is
a prefix, a number and an extension. It is detected from the folder's file names (the
largest group of images that share prefix and extension; a tie is settled in favour of
the usual RGB prefixes, so denseflow's `img_` beats its `flow_x_`), or forced with a
pattern such as `img_{:05d}.jpg` or `%05d.jpg`. Frame i is the i-th image of the sequence
in number order, so a gap in the numbering (00001, 00002, 00004) shifts nothing and
loses nothing; `FrameSequence.gaps` reports it.

No library lists an image sequence in place (OpenCV's `VideoCapture` on `%05d.jpg` needs
the pattern and the first number up front and stops at the first gap; PIL and torchvision
read single files), hence this module. The header check is hand-written too: reading a
JPEG's first and last bytes costs two small reads, where decoding it (PIL's `verify` does
not look at the compressed data) costs the whole file.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from vidact.errors import VidactError, VideoReadError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
# Prefixes of RGB frames in common layouts, preferred when two sequences are equally long.
_RGB_PREFIXES = ("img_", "", "frame_", "frame", "image_", "image", "img", "im_", "rgb_")
_NUMBERED = re.compile(r"^(?P<prefix>.*?)(?P<digits>\d+)(?P<suffix>\.[A-Za-z]+)$")
_FORMAT = re.compile(r"\{:?0?(?P<width>\d*)d?\}")  # {:05d} {:05} {:d} {}
_PRINTF = re.compile(r"%0?(?P<width>\d*)d")  # %05d %d


@dataclass(frozen=True)
class FramePattern:
    """Image names `prefix + number + suffix`, the number zero-padded to `width` digits
    (0: not padded; -1: padded in no consistent way, any digits match)."""

    prefix: str
    suffix: str
    width: int = 0

    def __str__(self) -> str:
        number = f"{{:0{self.width}d}}" if self.width > 0 else "{:d}"
        return self.prefix + number + self.suffix

    def matches(self, name: str) -> int | None:
        """The number in `name` if `name` is of this pattern, else None."""
        if not (name.startswith(self.prefix) and name.endswith(self.suffix)):
            return None
        digits = name[len(self.prefix) : len(name) - len(self.suffix)]
        if not digits.isdigit() or not digits.isascii():
            return None
        number = int(digits)
        if self.width < 0 or digits == f"{number:0{max(self.width, 1)}d}":
            return number
        return None


def parse_pattern(text: str) -> FramePattern:
    """`img_{:05d}.jpg`, `img_%05d.jpg`, `{:d}.png` or `frame_{}.jpg` as a FramePattern."""
    for syntax in (_FORMAT, _PRINTF):
        found = list(syntax.finditer(text))
        if len(found) == 1:
            match = found[0]
            prefix, suffix = text[: match.start()], text[match.end() :]
            if "/" not in text and suffix.lower().endswith(IMAGE_EXTENSIONS):
                return FramePattern(prefix, suffix, int(match["width"] or 0))
    raise VidactError(
        f"--frame-pattern {text!r}: expected one number field and an image extension, "
        "e.g. img_{:05d}.jpg, {:05d}.jpg or frame_%06d.png"
    )


@dataclass(frozen=True)
class FrameSequence:
    """The frames of one folder: `names[i]` is frame i."""

    folder: Path
    pattern: FramePattern
    numbers: tuple[int, ...]  # ascending
    names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.names)

    def path(self, index: int) -> Path:
        return self.folder / self.names[index]

    def gaps(self) -> list[int]:
        """Numbers missing between the first and the last image."""
        present = set(self.numbers)
        return [n for n in range(self.numbers[0], self.numbers[-1]) if n not in present]

    def describe_gaps(self) -> str:
        """'' when the numbering is complete, else a short warning text."""
        missing = self.gaps()
        if not missing:
            return ""
        shown = ", ".join(self.pattern.__str__().format(n) for n in missing[:3])
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        return f"{len(missing)} images missing from the numbering ({shown}{more})"


def _group_width(digit_strings: list[str]) -> int | None:
    """The padding width shared by `digit_strings`, or None if they disagree."""
    width = min(len(d) for d in digit_strings)
    ok = all(d == f"{int(d):0{width}d}" for d in digit_strings)
    return (0 if width == 1 else width) if ok else None


def detect_pattern(names: list[str], where: str | Path) -> FramePattern:
    """The numbered image sequence of a folder's file `names` (see the module docstring)."""
    groups: dict[tuple[str, str], list[str]] = {}
    for name in names:
        match = _NUMBERED.match(name)
        if match and match["suffix"].lower() in IMAGE_EXTENSIONS and not name.startswith("."):
            groups.setdefault((match["prefix"], match["suffix"]), []).append(match["digits"])
    if not groups:
        raise VideoReadError(where, "frame folder holds no numbered images (e.g. img_00001.jpg)")
    most = max(len(digits) for digits in groups.values())
    largest = [key for key, digits in groups.items() if len(digits) == most]
    if len(largest) > 1:
        preferred = [key for key in largest if key[0].lower() in _RGB_PREFIXES]
        if len(preferred) != 1:
            shown = ", ".join(sorted(f"{p}N{s}" for p, s in largest))
            raise VideoReadError(
                where, f"several numbered image sequences ({shown}); give --frame-pattern"
            )
        largest = preferred
    prefix, suffix = largest[0]
    width = _group_width(groups[(prefix, suffix)])
    # Mixed padding (1.jpg next to 002.jpg): every number counts, in number order.
    return FramePattern(prefix, suffix, -1 if width is None else width)


def scan_folder(folder: str | Path, pattern: str | FramePattern | None = None) -> FrameSequence:
    """The frame sequence of `folder` (pattern detected, or forced); listed once per folder
    and modification time in each process."""
    folder = Path(folder)
    try:
        stamp = os.stat(folder).st_mtime_ns
    except OSError:
        raise VideoReadError(folder, "frame folder not found") from None
    return _scan(str(folder), stamp, str(pattern) if pattern is not None else None)


@lru_cache(maxsize=8192)
def _scan(folder: str, stamp: int, pattern: str | None) -> FrameSequence:
    try:
        names = os.listdir(folder)
    except OSError as exc:
        raise VideoReadError(folder, f"cannot list the frame folder ({exc.strerror})") from None
    chosen = parse_pattern(pattern) if pattern is not None else detect_pattern(names, folder)
    found = sorted((number, name) for name in names if (number := chosen.matches(name)) is not None)
    if not found:
        raise VideoReadError(folder, f"frame folder has no {chosen} images")
    numbers, kept = zip(*found, strict=True)
    return FrameSequence(Path(folder), chosen, tuple(numbers), tuple(kept))


# ------------------------------------------------------------------------ header checks

_JPEG, _PNG, _BMP = b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"BM"


def not_a_regular_file(mode: int) -> str:
    """Why a file of this `st_mode` is never opened ('' for a regular file): opening a
    FIFO blocks until something writes to it."""
    if stat.S_ISREG(mode):
        return ""
    kind = "a FIFO (named pipe)" if stat.S_ISFIFO(mode) else "a special file"
    return f"{kind}, not a regular file: it is never opened"


def image_problem(path: str | Path) -> str:
    """'' for an image whose header and end look whole, else why not: a directory or no
    regular file (never opened), empty, not an image, or cut short (a JPEG without its end
    marker, a PNG without IEND). Reads 16 bytes at each end of the file."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        return f"unreadable ({exc.strerror})"
    if stat.S_ISDIR(mode):
        return "a directory, not an image"
    if special := not_a_regular_file(mode):
        return special
    try:
        with open(path, "rb") as handle:
            head = handle.read(16)
            size = handle.seek(0, os.SEEK_END)
            handle.seek(max(0, size - 16))
            tail = handle.read()
    except OSError as exc:
        return f"unreadable ({exc.strerror})"
    if size == 0:
        return "empty (0 bytes)"
    if head.startswith(_JPEG):
        return "" if b"\xff\xd9" in tail else "a JPEG cut short (no end marker)"
    if head.startswith(_PNG):
        return "" if b"IEND" in tail else "a PNG cut short (no IEND chunk)"
    if head.startswith(_BMP) and len(head) >= 6:
        declared = int.from_bytes(head[2:6], "little")
        return "" if declared <= size else "a BMP cut short"
    return f"not a JPEG, PNG or BMP image (starts with {head[:4].hex(' ')})"
