"""`vidact prepare synthetic`: the embedded motion-only dataset (quickstart, tests, demos).

Layout written under OUT:

    videos/<class>/<class>_<k>.mp4   real MP4 files (MPEG-4 Part 2, which decord reads)
    gt_flow/<class>_<k>.npz          exact flow of a few frame pairs (val videos only):
                                     `pairs` (P,) frame t of each pair (t -> t+1) and
                                     `flow` (P, H, W, 2) float32, pixels, x then y
    train.jsonl, val.jsonl           manifests (paths relative to OUT)
    labels.txt                       label map, one class per line
    synthetic.json                   the generation settings (resume checks them)

Each clip has its own seed, derived from (seed, class, index), so the output is the
same whatever the worker count or the order in which clips are written. Every file is
written atomically; a re-run skips the clips that exist and writes the rest.
"""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from vidact import console
from vidact.atomic import atomic_path, atomic_write_text
from vidact.data.manifest import Sample, write_label_map, write_manifest
from vidact.data.synthetic_motion import MOTIONS, render_clip
from vidact.errors import VidactError

SPEC_FILE = "synthetic.json"
FOURCC = "mp4v"  # written by OpenCV's FFmpeg backend and read by decord 0.6


@dataclass(frozen=True)
class SyntheticSpec:
    """Generation settings; together with the seed they fix every pixel."""

    classes: int = 8
    videos_per_class: int = 50
    frames: int = 16
    size: int = 64
    seed: int = 0
    val_fraction: float = 0.2
    fps: float = 25.0
    gt_flow_pairs: int = 3

    def validate(self) -> None:
        problems = []
        if not 1 <= self.classes <= len(MOTIONS):
            problems.append(f"--classes must be between 1 and {len(MOTIONS)}")
        if self.videos_per_class < 2:
            problems.append("--videos-per-class must be at least 2 (one train, one val)")
        if self.frames < 2:
            problems.append("--frames must be at least 2 (motion needs two frames)")
        if not 16 <= self.size <= 1024 or self.size % 2:
            problems.append("--size must be an even number of pixels between 16 and 1024")
        if not 0.0 < self.val_fraction < 1.0:
            problems.append("--val-fraction must be between 0 and 1")
        if problems:
            raise VidactError("; ".join(problems))

    @property
    def class_names(self) -> list[str]:
        return list(MOTIONS[: self.classes])

    def num_val(self) -> int:
        return min(
            self.videos_per_class - 1, max(1, round(self.videos_per_class * self.val_fraction))
        )


@dataclass(frozen=True)
class _Job:
    out: str
    spec: SyntheticSpec
    label: int
    index: int
    is_val: bool

    @property
    def stem(self) -> str:
        return f"{self.spec.class_names[self.label]}_{self.index:04d}"

    @property
    def video(self) -> str:
        return f"videos/{self.spec.class_names[self.label]}/{self.stem}.mp4"

    @property
    def gt_flow(self) -> str | None:
        return f"gt_flow/{self.stem}.npz" if self.is_val and self.spec.gt_flow_pairs > 0 else None

    def sample(self) -> Sample:
        name = self.spec.class_names[self.label]
        return Sample(self.video, self.label, name, self.spec.frames, gt_flow=self.gt_flow)

    def done(self) -> bool:
        out = Path(self.out)
        return (out / self.video).is_file() and (
            self.gt_flow is None or (out / self.gt_flow).is_file()
        )


@dataclass(frozen=True)
class SyntheticSummary:
    out: Path
    written: int
    skipped: int
    train: int
    val: int
    classes: list[str]
    seconds: float
    bytes_on_disk: int


def flow_pair_indices(frames: int, count: int) -> list[int]:
    """`count` evenly spaced pair starts t in [0, frames - 2] (pair t is t -> t + 1)."""
    if count <= 0:
        return []
    return sorted({round(float(x)) for x in np.linspace(0, frames - 2, min(count, frames - 1))})


def clip_rng(seed: int, label: int, index: int) -> np.random.Generator:
    """The random generator of one clip, independent of every other clip."""
    return np.random.default_rng([seed, label, index])


def _write_clip(job: _Job) -> None:
    cv2.setNumThreads(1)
    spec = job.spec
    pairs = flow_pair_indices(spec.frames, spec.gt_flow_pairs) if job.gt_flow else []
    clip = render_clip(
        spec.class_names[job.label],
        spec.frames,
        spec.size,
        clip_rng(spec.seed, job.label, job.index),
        pairs,
    )
    out = Path(job.out)
    with atomic_path(out / job.video) as tmp:
        writer = cv2.VideoWriter(
            str(tmp), cv2.VideoWriter.fourcc(*FOURCC), spec.fps, (spec.size, spec.size)
        )
        if not writer.isOpened():
            raise VidactError(f"{out / job.video}: OpenCV cannot write {FOURCC} MP4 files here")
        for frame in clip.frames:
            writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        writer.release()
    if job.gt_flow:
        with atomic_path(out / job.gt_flow) as tmp:
            np.savez_compressed(tmp, pairs=np.array(pairs, np.int64), flow=clip.flow)


def _check_spec(out: Path, spec: SyntheticSpec) -> None:
    path = out / SPEC_FILE
    if not path.is_file():
        return
    try:
        previous = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        raise VidactError(f"{path}: unreadable; delete {out} or choose another --out") from None
    if previous != asdict(spec):
        changed = sorted(k for k in asdict(spec) if previous.get(k) != asdict(spec)[k])
        raise VidactError(
            f"{out} holds synthetic data made with other settings ({', '.join(changed)}); "
            "use another --out or delete that folder"
        )


def _disk_usage(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def make_synthetic_dataset(
    out: str | Path, spec: SyntheticSpec | None = None, workers: int | None = None
) -> SyntheticSummary:
    """Write the synthetic motion dataset to `out` (resumable), and return a summary."""
    spec = spec or SyntheticSpec()
    spec.validate()
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise VidactError(f"{out}: exists and is not a folder; choose another --out")
    _check_spec(out, spec)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / SPEC_FILE, json.dumps(asdict(spec), indent=2) + "\n")

    start = time.perf_counter()
    num_val = spec.num_val()
    jobs = [
        _Job(str(out), spec, label, index, is_val=index >= spec.videos_per_class - num_val)
        for label in range(spec.classes)
        for index in range(spec.videos_per_class)
    ]
    todo = [job for job in jobs if not job.done()]
    workers = workers if workers is not None else min(4, os.cpu_count() or 1)
    with console.progress_task("synthetic videos", total=len(jobs)) as advance:
        advance(len(jobs) - len(todo), status="resumed" if len(todo) < len(jobs) else "")
        if workers <= 1 or len(todo) < 8:
            for job in todo:
                _write_clip(job)
                advance()
        else:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                for _ in pool.map(_write_clip, todo, chunksize=4):
                    advance()

    train = [job.sample() for job in jobs if not job.is_val]
    val = [job.sample() for job in jobs if job.is_val]
    write_manifest(out / "train.jsonl", train)
    write_manifest(out / "val.jsonl", val)
    write_label_map(out / "labels.txt", spec.class_names)
    return SyntheticSummary(
        out=out,
        written=len(todo),
        skipped=len(jobs) - len(todo),
        train=len(train),
        val=len(val),
        classes=spec.class_names,
        seconds=time.perf_counter() - start,
        bytes_on_disk=_disk_usage(out),
    )
