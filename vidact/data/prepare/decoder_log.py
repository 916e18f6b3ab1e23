"""The decoders' own messages (FFmpeg's through decord and OpenCV: "moov atom not found",
"Invalid NAL unit size", ...) go to OUT/.prepare/decoders.log, not to the terminal, where
they would bury the progress bar and the summary that already name every bad video.

FFmpeg writes them straight to file descriptor 2 from C, so no Python setting reaches
them all: the descriptor itself is pointed at the log, for good in a worker process and
for a while (`stderr_to`) in the main one.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

DECODER_LOG = "decoders.log"  # in OUT/.prepare/


def send_stderr_to(path: str | Path) -> None:
    """From now on, this process's stderr (descriptor 2) appends to `path`."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
    try:
        os.dup2(fd, 2)
    finally:
        os.close(fd)


@contextlib.contextmanager
def stderr_to(path: str | Path) -> Iterator[None]:
    """Descriptor 2 appends to `path` while entered (Python's own writes too)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        send_stderr_to(path)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
