"""What prepare is asked to do: the options, one video's job and result, where outputs go
relative to OUT, shard and frame-index selection, and the output size of a resize."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from vidact.constants import FLOW_BACKENDS, FLOW_BOUND
from vidact.data.prepare.faults import MAX_FAILED
from vidact.data.sampling import segment_bounds
from vidact.errors import VidactError

MODES = ("none", "frames", "videos")
FLOW_METHODS = ("none", "tvl1")  # --flow: classic flow written beside the frames

Status = Literal["done", "failed", "missing", "disk_full"]
VIDEO_TIMEOUT = 600.0  # --video-timeout: seconds; generous, as a long 4K video may need it


def setting(default: Any, flag: str | None, help: str, choices: Sequence[str] = ()) -> Any:
    """A prepare setting, declared once: its default, its command-line flag (None: library
    only) and help, and its allowed values. `vidact prepare` builds its options from these."""
    return field(default=default, metadata={"flag": flag, "help": help, "choices": choices})


@dataclass(frozen=True)
class PrepareOptions:
    """What to write for each video (prepare.json records what a resumed run must share)."""

    mode: str = setting(
        "frames",
        "--mode",
        "frames: JPEG frames (+ mmaction2 rawframe lists); videos: resized MP4s; "
        "none: manifests over the original videos.",
        MODES,
    )
    # never upscaled, never resampled up
    short_side: int = setting(256, "--short-side", "Resize to this short side in pixels (0 keeps).")
    fps: float | None = setting(None, "--fps", "Resample to this frame rate (default: keep all).")
    quality: int = setting(90, "--quality", "JPEG quality of --mode frames (1-100).")
    # the video reader; library only (None: vidact.data.video's default)
    backend: str | None = setting(
        None, None, '"auto" (decord, then OpenCV), "decord", "pyav", "opencv"'
    )
    flow: str = setting(
        "none",
        "--flow",
        "tvl1: also write TV-L1 optical flow, quantised x_/y_ JPEG pairs in flow/<key>/ "
        "(N-1 pairs for N frames; slow on a CPU, see docs/datasets.md).",
        FLOW_METHODS,
    )
    flow_backend: str = setting(
        "auto",
        "--flow-backend",
        "auto: opencv-cuda, else torch on a GPU, else opencv on the CPU.",
        FLOW_BACKENDS,  # vidact.flow.compute_flow's backends
    )
    flow_bound: float = setting(
        FLOW_BOUND,
        "--flow-bound",
        "Flow of -B..+B px maps to 0..255 (recorded in flow.json; recipes' "
        "data.flow_bound must match).",
    )

    @property
    def with_flow(self) -> bool:
        return self.flow != "none"

    def validate(self) -> None:
        problems = []
        if self.mode not in MODES:
            problems.append(f"--mode must be one of {', '.join(MODES)}, not {self.mode!r}")
        if self.short_side < 0:
            problems.append("--short-side must be 0 (keep the size) or a number of pixels")
        if self.fps is not None and self.fps <= 0:
            problems.append("--fps must be positive")
        if not 1 <= self.quality <= 100:
            problems.append("--quality must be between 1 and 100")
        if self.mode == "none" and self.fps is not None:
            problems.append("--fps needs --mode frames or videos (--mode none copies nothing)")
        if self.flow not in FLOW_METHODS:
            problems.append(f"--flow must be one of {', '.join(FLOW_METHODS)}, not {self.flow!r}")
        if self.flow_backend not in FLOW_BACKENDS:
            problems.append(
                f"--flow-backend must be one of {', '.join(FLOW_BACKENDS)}, "
                f"not {self.flow_backend!r}"
            )
        if not (self.flow_bound > 0 and math.isfinite(self.flow_bound)):
            problems.append("--flow-bound must be a positive number of pixels")
        if problems:
            raise VidactError("; ".join(problems))

    def settings(self, dataset: str) -> dict[str, Any]:
        """What a resumed run must share with the first one."""
        values: dict[str, Any] = {"dataset": dataset, "mode": self.mode}
        if self.mode != "none":
            values |= {"short_side": self.short_side, "fps": self.fps}
        if self.mode == "frames":
            values["quality"] = self.quality
        if self.with_flow:  # the backend may differ between runs: all solve the same problem
            values |= {"flow": self.flow, "flow_bound": self.flow_bound}
            values.setdefault("short_side", self.short_side)  # --mode none: flow's size
        return values


@dataclass(frozen=True)
class RunOptions:
    """How a prepare run goes about it (not recorded: any run may choose its own)."""

    workers: int | None = setting(
        None,
        "--workers",
        "Processes (default: one per core; 0 = in this process). On NFS or Lustre, "
        "try twice the cores: a worker waits while its writes do.",
    )
    shard: str | None = setting(
        None,
        "--shard",
        "K/N: do every N-th video starting at the K-th (K = 1..N), e.g. one SLURM "
        "array task each; all shards share --out.",
    )
    classes: Path | None = setting(
        None, "--classes", "File with one class name per line: keep only these."
    )
    check_free_space: bool = setting(
        True,
        "--disk-check/--no-disk-check",
        "Refuse to start when the estimated output exceeds the free space.",
    )
    video_timeout: float = setting(
        VIDEO_TIMEOUT,
        "--video-timeout",
        "Seconds one video may take before its worker is stopped and the video failed "
        "(a decoder that hangs); 0: no limit. Needs --workers 1 or more.",
    )
    max_failed: float = setting(
        MAX_FAILED,
        "--max-failed",
        "Exit with code 3 when more than this share of the videos failed or are "
        "missing (4 when none could be prepared); 0: any failure.",
    )


def split_settings(
    settings: dict[str, Any], own: Sequence[str] = ()
) -> tuple[PrepareOptions, RunOptions, dict[str, Any]]:
    """Keyword settings -> (PrepareOptions, RunOptions, the dataset's `own` options)."""
    names = {kind: {f.name for f in fields(kind)} for kind in (PrepareOptions, RunOptions)}
    unknown = sorted(set(settings) - names[PrepareOptions] - names[RunOptions] - set(own))
    if unknown:
        known = sorted(names[PrepareOptions] | names[RunOptions] | set(own))
        raise VidactError(f"unknown prepare setting {unknown[0]!r}; use {', '.join(known)}")
    options = PrepareOptions(**{k: v for k, v in settings.items() if k in names[PrepareOptions]})
    run = RunOptions(**{k: v for k, v in settings.items() if k in names[RunOptions]})
    return options, run, {k: v for k, v in settings.items() if k in own}


@dataclass(frozen=True)
class VideoJob:
    """One output to produce: what the worker needs, and nothing else."""

    key: str
    source: str
    start: float | None = None
    end: float | None = None
    folder_fps: float | None = None  # the source is a JPEG frame folder at this rate
    frame_pattern: str | None = None  # its image names (vidact.data.frame_folder), if forced


@dataclass(frozen=True)
class VideoResult:
    key: str
    status: Status
    num_frames: int = 0
    bytes: int = 0  # everything written for the video, flow included
    reason: str = ""
    flow_pairs: int = 0
    warning: str = ""  # done, but the user should know (e.g. gaps in a frame folder)


ExtraStep = Callable[[VideoJob, Path], int]


def output_path(key: str, mode: str) -> str:
    """Where `key`'s output lives, relative to OUT ("" for --mode none)."""
    if mode == "frames":
        return f"frames/{key}"
    if mode == "videos":
        return f"videos/{key}.mp4"
    return ""


def flow_path(key: str) -> str:
    """Where `key`'s TV-L1 flow folder lives, relative to OUT."""
    return f"flow/{key}"


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """ "K/N" -> (K, N), 1 <= K <= N."""
    if text is None or not text.strip():
        return None
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not match:
        raise VidactError(f"--shard must look like K/N (e.g. 3/8), not {text!r}")
    k, n = int(match[1]), int(match[2])
    if n < 1 or not 1 <= k <= n:
        raise VidactError(
            f"--shard {text}: K counts from 1 to N; with a SLURM array --array=0-{max(n - 1, 0)} "
            "use $((SLURM_ARRAY_TASK_ID + 1))"
        )
    return k, n


def select_shard(items: Sequence[Any], shard: tuple[int, int] | None) -> list[Any]:
    """Every n-th item starting at item k-1: n shards partition `items` exactly."""
    if shard is None:
        return list(items)
    k, n = shard
    return list(items[k - 1 :: n])


def iter_indices(
    num_frames: int,
    source_fps: float,
    fps: float | None = None,
    start: float | None = None,
    end: float | None = None,
) -> Iterator[int]:
    """Which source frames to keep, lazily: the [start, end) segment resampled to `fps`."""
    first, stop = segment_bounds(num_frames, source_fps, start, end)
    if fps is None or source_fps <= 0 or fps >= source_fps:
        yield from range(first, stop)
        return
    step = source_fps / fps
    k = 0
    while (index := first + math.floor(k * step + 1e-6)) < stop:
        yield index
        k += 1


def select_indices(
    num_frames: int,
    source_fps: float,
    fps: float | None = None,
    start: float | None = None,
    end: float | None = None,
) -> list[int]:
    """`iter_indices` as a list."""
    return list(iter_indices(num_frames, source_fps, fps, start, end))


def output_size(width: int, height: int, short_side: int, even: bool = False) -> tuple[int, int]:
    """(width, height) with the short side at `short_side` (0 or smaller: unchanged)."""
    if short_side > 0 and min(width, height) > short_side:
        scale = short_side / min(width, height)
        if width <= height:
            width, height = short_side, max(1, round(height * scale))
        else:
            width, height = max(1, round(width * scale)), short_side
    if even:
        width, height = max(2, width - width % 2), max(2, height - height % 2)
    return width, height
