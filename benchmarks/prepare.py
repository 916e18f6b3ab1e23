"""Throughput of `prepare --mode frames` against the bare work and raw decord decoding.

    python benchmarks/prepare.py                       # 12 clips of 20 s, 640x272, all cores
    python benchmarks/prepare.py --workers 1 --videos 4
    python benchmarks/prepare.py --keep /tmp/bench-videos   # reuse the generated clips
    python benchmarks/prepare.py --warm-pools          # yardsticks in long-lived pools

Five measurements on the same generated videos and the same number of processes:
  raw decord  decode every frame to a numpy array (decord, one thread per process);
  bare work   decode, resize (short side) and JPEG-encode every frame in a tight loop,
              nothing written, as anyone would write it (`reader.next().asnumpy()`,
              glibc's default allocator): the target is pipeline >= 85% of it;
  bare, tuned the same loop with the two per-frame savings the pipeline's workers make:
              frames viewed through DLPack instead of copied (`frames.decord_to_numpy`)
              and freed memory kept for reuse (`worker.keep_freed_memory`). Pipeline /
              this is the pipeline's whole overhead, file creation included;
  bare + files  the tuned loop, also writing every frame to its own file (open, write,
              close): what any frames extractor must at least do, so pipeline / this
              is the pipeline's own overhead beyond the files;
  pipeline    `vidact.data.prepare.pipeline.prepare_dataset(..., mode="frames")` from the call to
              its return: pool start-up (a cold fork server every repeat), size
              estimate, atomic frame folders, done records, manifests and rawframe
              lists included;
  steady      the same run's processing phase only (its summary's `seconds`: first
              video submitted to last result), the part that grows with the dataset.
Every yardstick run gets a process pool of its own, started before the clock starts: its
processes are as new as the pipeline's, whose start-up is timed. --warm-pools keeps one
pool per yardstick for all runs instead, as this benchmark did before: then only the
pipeline's processes are new, and on the development VM they spent 0.1 ms a frame more
CPU (a process's first touch of memory costs more there when no other process has just
freed some; docs/datasets.md, "Throughput").

Runs are interleaved (raw, bare, bare tuned, bare + files, pipeline, then bare, ..., raw:
the order rotates every repeat, and the default 5 repeats put each variant once in each
place) so that load from other processes on a shared machine, and the state of memory one
run leaves to the next, hit all of them alike; the ratios of the medians are the figures
to quote, the ratios of the best runs are printed beside them. On a machine shared with
other jobs wall-clock ratios swing widely, so the CPU seconds each variant spends per
frame (in every process it uses) are printed too: their ratio is what the throughput
ratio would be on an otherwise idle machine, if the file writes do not wait on the disk.

Between runs the benchmark flushes the disk cache (`os.sync()`, untimed), so that no run
is slowed by the kernel writing back the previous run's files. The files written are
kept until the benchmark ends (about 460 MB per repeat with the
defaults). On ext4 without a journal, creating files within minutes of deleting many
others is several times slower (see docs/datasets.md, "Throughput"): run `sync` and wait
a minute after deleting a previous benchmark's output, or point --workdir elsewhere.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import resource
import shutil
import statistics
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from vidact.data.prepare.frames import decord_to_numpy, write_bytes
from vidact.data.prepare.options import PrepareOptions, output_size
from vidact.data.prepare.pipeline import prepare_dataset
from vidact.data.prepare.worker import keep_freed_memory
from vidact.data.sources.common import SourceDataset, SourceRecord


def make_clip(path: Path, frames: int, width: int, height: int, seed: int) -> None:
    """A synthetic-looking clip: a blurred colour texture panning, moving shapes, text."""
    rng = np.random.default_rng(seed)
    pad = 96
    noise = rng.integers(0, 255, ((height + pad) // 8, (width + pad) // 8, 3), np.uint8)
    texture = cv2.GaussianBlur(cv2.resize(noise, (width + pad, height + pad)), (0, 0), 2.5)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), 25.0, (width, height))
    for t in range(frames):
        dx = int(pad / 2 + pad / 2.2 * np.sin(t / 23 + seed))
        dy = int(pad / 2 + pad / 2.2 * np.cos(t / 31 + seed))
        frame = texture[dy : dy + height, dx : dx + width].copy()
        for k in range(3):
            centre = (int(width / 2 + width / 3 * np.sin(t / (11 + 4 * k) + k)), height // (k + 2))
            colour = tuple(int(c) for c in rng.integers(0, 255, 3))
            cv2.circle(frame, centre, 18 + 9 * k, colour, -1)
        cv2.putText(
            frame, f"clip {seed} t={t}", (16, 40), cv2.FONT_HERSHEY_SIMPLEX, 1, (255,) * 3, 2
        )
        writer.write(frame)
    writer.release()


# -------------------------------------------------------------------- yardsticks (workers)


def _init(tuned: bool) -> None:
    cv2.setNumThreads(1)
    if tuned:
        keep_freed_memory()  # the allocator setting of the pipeline's workers


def _frame(reader: Any, tuned: bool) -> np.ndarray:
    # tuned: the pipeline's zero-copy view; else the copy a plain loop makes
    return decord_to_numpy(reader.next()) if tuned else reader.next().asnumpy()


def raw_decode(path: str, tuned: bool = False) -> tuple[int, float]:
    """(frames, CPU seconds) of decoding every frame."""
    import decord

    cpu = time.process_time()
    reader = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1)
    count = 0
    for _ in range(len(reader)):
        _frame(reader, tuned)
        count += 1
    return count, time.process_time() - cpu


def bare_work(
    path: str, short_side: int, quality: int, folder: str | None = None, tuned: bool = False
) -> tuple[int, float]:
    """(frames, CPU seconds) of decoding, resizing and JPEG-encoding every frame, and
    with `folder`, writing each to its own file there (open, write, close)."""
    import decord

    cpu = time.process_time()
    reader = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1)
    params = [cv2.IMWRITE_JPEG_QUALITY, quality]
    size = None
    count = 0
    if folder is not None:
        os.makedirs(folder)
    for _ in range(len(reader)):
        frame = _frame(reader, tuned)
        if size is None:
            size = output_size(frame.shape[1], frame.shape[0], short_side)
        small = cv2.resize(frame, size, interpolation=cv2.INTER_LINEAR)
        _, data = cv2.imencode(".jpg", cv2.cvtColor(small, cv2.COLOR_RGB2BGR), params)
        count += 1
        if folder is not None:  # the pipeline's own minimal writer: open, write, close
            write_bytes(f"{folder}/img_{count:05d}.jpg", data)
    return count, time.process_time() - cpu


def _bare(args: tuple[str, int, int, str | None, bool]) -> tuple[int, float]:
    return bare_work(*args)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _child_pids() -> set[int] | None:
    """The processes whose parent is this one (Linux's /proc), None elsewhere; not the
    resource tracker, which a first spawned pool starts and all later ones share."""
    if not Path("/proc/self/stat").exists():
        return None
    me, found = os.getpid(), set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == me and b"resource_tracker" not in _cmdline(entry):
                found.add(int(entry.name))
    return found


def _cmdline(entry: Path) -> bytes:
    try:
        return (entry / "cmdline").read_bytes()
    except OSError:
        return b""


def _pool_cpu(pids: set[int] | None) -> float | None:
    """CPU seconds the pool's processes `pids` have used in all (Linux's /proc), None
    elsewhere. With this process's own CPU, a yardstick is charged for everything it
    runs, as the pipeline is: job hand-offs and result pickling included, not just
    the loop (perf put those at ~0.06 ms a frame)."""
    if pids is None:
        return None
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        total += (int(fields[11]) + int(fields[12])) / tick  # utime + stime
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=12, help="clips to generate")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each clip (25 fps)")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=272)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--short-side", type=int, default=256)
    parser.add_argument("--quality", type=int, default=90)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--keep", type=Path, default=None, help="folder to keep/reuse the clips")
    parser.add_argument("--workdir", type=Path, default=None, help="where outputs go (temp)")
    parser.add_argument(
        "--warm-pools",
        action="store_true",
        help="run every yardstick run in the same two pools (warmed by the runs before) "
        "instead of a new pool per run",
    )
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="vidact-bench-", dir=args.workdir))
    clips_dir = args.keep or work / "clips"
    clips_dir.mkdir(parents=True, exist_ok=True)
    frames_per_clip = round(args.seconds * 25)
    clips = []
    for i in range(args.videos):
        path = clips_dir / f"clip{i}_{args.width}x{args.height}_{frames_per_clip}.mp4"
        if not path.is_file():
            make_clip(path, frames_per_clip, args.width, args.height, seed=i)
        clips.append(path)
    total_frames = args.videos * frames_per_clip
    source = SourceDataset(
        "bench",
        ["clips"],
        {"train": [SourceRecord(f"clips/{p.stem}", p, 0, "clips") for p in clips]},
    )
    options = PrepareOptions(mode="frames", short_side=args.short_side, quality=args.quality)
    print(
        f"{args.videos} clips of {frames_per_clip} frames, {args.width}x{args.height} -> short "
        f"side {args.short_side}, JPEG q{args.quality}, {args.workers} processes, "
        f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores"
    )

    yardsticks = ["raw decord", "bare work", "bare, tuned", "bare + files"]
    times: dict[str, list[float]] = {name: [] for name in [*yardsticks, "pipeline", "steady"]}
    cpu: dict[str, list[float]] = {name: [] for name in [*yardsticks, "pipeline"]}
    written = 0
    spawn = multiprocessing.get_context("spawn")  # forking after OpenCV's threads ran deadlocks
    kept: dict[bool, ProcessPoolExecutor] = {}
    pool_pids: dict[int, set[int] | None] = {}  # id(pool) -> its processes (from /proc)

    def new_pool(tuned: bool) -> ProcessPoolExecutor:
        before = _child_pids()
        pool = ProcessPoolExecutor(args.workers, spawn, partial(_init, tuned))
        list(pool.map(_init_probe, range(args.workers)))  # every worker started, untimed
        after = _child_pids()
        pool_pids[id(pool)] = None if before is None or after is None else after - before
        return pool

    @contextlib.contextmanager
    def started_pool(tuned: bool) -> Iterator[ProcessPoolExecutor]:
        """A new pool for each run, as the pipeline's is, or with --warm-pools the same
        one for every run."""
        if args.warm_pools:
            if tuned not in kept:
                kept[tuned] = new_pool(tuned)
            yield kept[tuned]
            return
        pool = new_pool(tuned)
        try:
            yield pool
        finally:
            pool.shutdown()

    def yardstick(name: str, repeat: int) -> None:
        tuned = name not in ("raw decord", "bare work")
        with started_pool(tuned) as pool:
            own, before = time.process_time(), _pool_cpu(pool_pids[id(pool)])
            start = time.perf_counter()
            if name == "raw decord":
                results = list(pool.map(raw_decode, map(str, clips)))
            else:
                files = work / f"bare{repeat}" if name == "bare + files" else None
                jobs = [
                    (str(p), args.short_side, args.quality, files and f"{files}/{i}", tuned)
                    for i, p in enumerate(clips)
                ]
                results = list(pool.map(_bare, jobs))
            times[name].append(time.perf_counter() - start)
            after = _pool_cpu(pool_pids[id(pool)])
        assert sum(n for n, _ in results) == total_frames
        if before is None or after is None:  # no /proc: the loops' own CPU
            cpu[name].append(sum(c for _, c in results))
        else:
            cpu[name].append(time.process_time() - own + after - before)

    def pipeline(repeat: int) -> None:
        nonlocal written
        own, children = time.process_time(), _children_cpu()
        start = time.perf_counter()
        summary = prepare_dataset(
            source,
            work / f"out{repeat}",
            options,
            workers=args.workers,
            check_free_space=False,
        )
        times["pipeline"].append(time.perf_counter() - start)
        _stop_fork_server()  # so its CPU and its workers' count as finished children
        cpu["pipeline"].append(time.process_time() - own + _children_cpu() - children)
        times["steady"].append(summary.seconds)
        assert summary.frames_written == total_frames and summary.failed == 0
        written = summary.bytes_written

    variants = [*yardsticks, "pipeline"]
    for repeat in range(args.repeats):
        # The order rotates every repeat: no variant always runs after the same one
        # (here a run is cheaper right after one whose processes exited: it gets the
        # memory they freed instead of pages the hypervisor must first provide).
        shift = repeat % len(variants)
        for name in variants[shift:] + variants[:shift]:
            if name == "pipeline":
                pipeline(repeat)
            else:
                yardstick(name, repeat)
            os.sync()  # untimed: no run pays for the previous run's disk writeback
        # Outputs stay until the end. Deleting them here would slow the next run's
        # file creation: on ext4 without a journal (this VM's disk) a new inode skips
        # every inode deleted in the last minutes (ext4 recently_deleted()); perf showed
        # it taking more kernel time than the JPEG writes themselves.
    for pool in kept.values():
        pool.shutdown()

    med = {name: statistics.median(values) for name, values in times.items()}
    best = {name: min(values) for name, values in times.items()}
    print(f"  {'':12s} {'videos/s':>9s} {'frames/s':>9s}   (median of {args.repeats}; best)")
    for name in times:
        print(
            f"  {name:12s} {args.videos / med[name]:9.2f} {total_frames / med[name]:9.0f}   "
            f"best {total_frames / best[name]:6.0f} frames/s"
        )
    for run, yardstick, note in [
        ("pipeline", "bare work", "; target >= 85%"),
        ("steady", "bare work", ""),
        ("pipeline", "bare, tuned", ""),
        ("pipeline", "bare + files", ""),
        ("bare + files", "bare, tuned", ""),
        ("pipeline", "raw decord", ""),
    ]:
        print(
            f"  {run:12s} / {yardstick:12s} {med[yardstick] / med[run]:6.1%} "
            f"(best runs {best[yardstick] / best[run]:.1%}{note})"
        )
    per_frame = {name: statistics.median(v) / total_frames * 1e3 for name, v in cpu.items()}
    print(
        "  CPU per frame (all processes; immune to other jobs' load): "
        + ", ".join(f"{name} {ms:.2f} ms" for name, ms in per_frame.items())
    )
    for yardstick in ("bare work", "bare, tuned", "bare + files"):
        print(
            f"  CPU cost {yardstick} / pipeline  "
            f"{per_frame[yardstick] / per_frame['pipeline']:6.1%}"
        )
    print("  (the pipeline's CPU includes its process start-up and the size estimate)")
    print(f"  JPEG output {written / total_frames / 1024:.1f} KB per frame")
    shutil.rmtree(work, ignore_errors=True)
    os.sync()  # the next run's new inodes then avoid these only for a minute, not five


def _stop_fork_server() -> None:
    """Stop the fork server the pipeline's pool started (vidact uses forkserver where
    the platform has it). Every repeat then starts its workers cold, as a fresh `vidact
    prepare` does, and the server, which reaped the workers, is reaped by us, so all
    their CPU shows in RUSAGE_CHILDREN. `_stop` is CPython's own (used by its tests)."""
    from multiprocessing import forkserver

    stop = getattr(forkserver._forkserver, "_stop", None)
    if stop is not None:
        stop()


def _init_probe(_: int) -> int:
    time.sleep(0.05)  # long enough that every worker process gets one
    return os.getpid()


if __name__ == "__main__":
    main()
