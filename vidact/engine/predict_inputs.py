"""The videos of `vidact predict INPUT...`: video files, frame folders, folders of them.

A folder that holds `img_00001.jpg`-style frames (the layout `vidact prepare` writes and
mmaction2 reads) is one video; any other folder is searched, depth first in name order,
for video files (by extension) and frame folders. An input that does not exist is a
failure of that input, reported beside the others' predictions, never fatal to the batch.
"""

from __future__ import annotations

import os
from pathlib import Path

from vidact.data.sources.common import VIDEO_EXTENSIONS
from vidact.data.video import FRAME_TEMPLATE

__all__ = ["find_videos", "is_frame_folder"]


def is_frame_folder(folder: Path) -> bool:
    """Whether `folder` holds the first frame of a frame folder (img_00001.jpg)."""
    return (folder / FRAME_TEMPLATE.format(1)).is_file()


def _walk(folder: Path, skip: Path | None) -> list[Path]:
    """Video files and frame folders under `folder`, in name order; hidden entries (a
    temporary file of an atomic write) and the folder `skip` (predict's own output, with
    its annotated videos) are left out."""
    found: list[Path] = []
    skipped = skip.resolve() if skip is not None else None
    for root, dirs, files in os.walk(folder):
        here = Path(root)
        dirs[:] = sorted(
            d for d in dirs if not d.startswith(".") and (here / d).resolve() != skipped
        )
        frame_dirs = [d for d in dirs if is_frame_folder(here / d)]
        found += [here / d for d in frame_dirs]
        dirs[:] = [d for d in dirs if d not in frame_dirs]
        found += [
            here / f
            for f in sorted(files)
            if not f.startswith(".") and Path(f).suffix.lower() in VIDEO_EXTENSIONS
        ]
    return sorted(found)


def find_videos(
    inputs: list[Path], skip: Path | None = None
) -> tuple[list[Path], list[tuple[str, str]]]:
    """(videos in input order, [(input, reason)] for inputs that name no video).

    A file is taken as a video whatever its extension (the reader says if it is not one);
    a video named twice is predicted once; folders are searched without entering `skip`."""
    videos: list[Path] = []
    failed: list[tuple[str, str]] = []
    seen: set[Path] = set()
    for given in inputs:
        path = Path(given)
        if path.is_file():
            found = [path]
        elif path.is_dir():
            found = [path] if is_frame_folder(path) else _walk(path, skip)
            if not found:
                extensions = " ".join(VIDEO_EXTENSIONS)
                reason = f"no video files ({extensions}) or frame folders in this folder"
                failed.append((str(path), reason))
        else:
            failed.append((str(path), "not found"))
            found = []
        for video in found:
            if video.resolve() not in seen:
                seen.add(video.resolve())
                videos.append(video)
    return videos, failed
