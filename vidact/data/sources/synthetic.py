"""`vidact prepare synthetic`: the embedded motion-only dataset (quickstart, tests, demos).

Two tasks: "camera" (classes by camera motion, vidact.data.synthetic_motion; the
quickstart's) and "speed" (classes by the speed of a small object over a still texture,
vidact.data.synthetic_speed; the harder task of benchmarks/table3.py).

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
written atomically; a re-run skips the clips that exist and writes the rest. The writer
processes end with the process that started them, however it ends (kill -9 included).
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
from vidact.data.prepare.lifeline import die_with
from vidact.data.synthetic_motion import MOTIONS, Clip, render_clip
from vidact.data.synthetic_speed import (
    CONTRAST,
    OBJECT_SIZE,
    SPEEDS,
    render_speed_clip,
    speed_class_name,
)
from vidact.errors import VidactError

SPEC_FILE = "synthetic.json"
TASKS = ("camera", "speed")
# The options of the speed task, which the camera task must leave at their defaults.
_SPEED_ONLY = {
    "speeds": "--speeds",
    "object_size": "--object-size",
    "contrast": "--contrast",
    "distractors": "--distractors",
}
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
    task: str = "camera"
    speeds: tuple[float, ...] = SPEEDS
    object_size: int = OBJECT_SIZE
    contrast: float = CONTRAST
    noise: float = 0.0
    distractors: int = 0

    def validate(self) -> None:
        problems = self._task_problems()
        if self.videos_per_class < 2:
            problems.append("--videos-per-class must be at least 2 (one train, one val)")
        if self.frames < 2:
            problems.append("--frames must be at least 2 (motion needs two frames)")
        if not 16 <= self.size <= 1024 or self.size % 2:
            problems.append("--size must be an even number of pixels between 16 and 1024")
        if not 0.0 < self.val_fraction < 1.0:
            problems.append("--val-fraction must be between 0 and 1")
        if not 0.0 <= self.noise <= 1.0:
            problems.append("--noise must be between 0 and 1 (a share of the grey range)")
        if problems:
            raise VidactError("; ".join(problems))

    def _task_problems(self) -> list[str]:
        if self.task not in TASKS:
            return [f"--task must be one of {', '.join(TASKS)}"]
        defaults = SyntheticSpec()
        if self.task == "camera":
            problems = [
                f"{flag} applies to --task speed only"
                for field, flag in _SPEED_ONLY.items()
                if getattr(self, field) != getattr(defaults, field)
            ]
            if not 1 <= self.classes <= len(MOTIONS):
                problems.append(f"--classes must be between 1 and {len(MOTIONS)}")
            return problems
        problems = []
        if self.classes != len(self.speeds):
            problems.append(f"--classes must equal the number of --speeds ({len(self.speeds)})")
        if len(set(self.speeds)) != len(self.speeds) or not all(
            0.0 <= s <= self.size / 4 for s in self.speeds
        ):
            problems.append(f"--speeds must be distinct, between 0 and {self.size / 4:g} px")
        if not 1 <= self.object_size <= self.size // 4:
            problems.append("--object-size must be between 1 px and a quarter of --size")
        if not 0.0 < self.contrast <= 0.5:
            problems.append("--contrast must be in (0, 0.5]")
        if self.distractors < 0:
            problems.append("--distractors must be 0 or more")
        return problems

    @property
    def class_names(self) -> list[str]:
        if self.task == "speed":
            return [speed_class_name(s) for s in self.speeds]
        return list(MOTIONS[: self.classes])

    def render(self, label: int, rng: np.random.Generator, flow_pairs: list[int]) -> Clip:
        """Clip `label` of this dataset, drawn with `rng`, and the flow of `flow_pairs`."""
        if self.task == "speed":
            return render_speed_clip(
                self.speeds[label],
                self.frames,
                self.size,
                rng,
                flow_pairs,
                object_size=self.object_size,
                contrast=self.contrast,
                noise=self.noise,
                distractors=self.distractors,
                distractor_speeds=(min(self.speeds), max(self.speeds)),
            )
        clip = render_clip(self.class_names[label], self.frames, self.size, rng, flow_pairs)
        if self.noise == 0:
            return clip
        noisy = clip.frames + 255.0 * self.noise * rng.standard_normal(clip.frames.shape)
        return Clip(np.clip(np.rint(noisy), 0, 255).astype(np.uint8), clip.flow, clip.motion)

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


def parse_speeds(text: str) -> tuple[float, ...]:
    """ "0.5,1,2" -> (0.5, 1.0, 2.0), the --speeds option."""
    try:
        return tuple(float(part) for part in text.split(","))
    except ValueError:
        raise VidactError(
            f"--speeds {text!r}: give speeds in px/frame separated by commas, e.g. 0.5,1,2"
        ) from None


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
    clip = spec.render(job.label, clip_rng(spec.seed, job.label, job.index), pairs)
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
    # As JSON (tuples read back as lists); folders written before a setting existed were
    # made with its default.
    wanted = json.loads(json.dumps(asdict(spec)))
    previous = {**json.loads(json.dumps(asdict(SyntheticSpec()))), **previous}
    if previous != wanted:
        changed = sorted(k for k in wanted if previous.get(k) != wanted[k])
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
            # the writers end with this process, even when it is killed (kill -9)
            with ProcessPoolExecutor(
                workers, initializer=die_with, initargs=(os.getpid(),)
            ) as pool:
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
