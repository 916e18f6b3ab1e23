"""`prepare_dataset`: one source dataset into OUT, resumable and shardable (the layout and
the rules are in the `vidact.data.extract` docstring)."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vidact import console
from vidact.atomic import atomic_write_text
from vidact.data.extract.estimate import check_disk, estimate_output_bytes
from vidact.data.extract.flow_info import FLOW_INFO_FILE, _flow_info
from vidact.data.extract.options import (
    ExtraStep,
    PrepareOptions,
    VideoJob,
    VideoResult,
    flow_path,
    output_path,
    select_shard,
)
from vidact.data.extract.outputs import FAILURES_FILE, _write_outputs
from vidact.data.extract.pool import _run_jobs, _start_pool
from vidact.data.extract.state import _State
from vidact.data.extract.summary import PrepareSummary
from vidact.data.manifest import write_label_map
from vidact.data.sources.common import SourceDataset, SourceRecord, check_unique_keys, first_few
from vidact.errors import VidactError

SETTINGS_FILE = "prepare.json"
LABELS_FILE = "labels.txt"


def _check_settings(out: Path, settings: dict[str, Any]) -> None:
    path = out / SETTINGS_FILE
    if path.is_file():
        try:
            previous = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            raise VidactError(f"{path}: unreadable; delete it to start over") from None
        if previous != settings:
            changed = sorted(
                k for k in settings.keys() | previous.keys() if previous.get(k) != settings.get(k)
            )
            described = ", ".join(
                f"{k} {previous.get(k)!r} -> {settings.get(k)!r}" for k in changed
            )
            raise VidactError(
                f"{out} was prepared with other settings ({described}); use another --out, "
                "or the same settings to resume"
            )
        return
    atomic_write_text(path, json.dumps(settings, indent=2) + "\n")


def _jobs(source: SourceDataset) -> list[VideoJob]:
    unique: dict[str, SourceRecord] = {}
    for record in source.records():
        unique.setdefault(record.key, record)
    return [
        VideoJob(
            key=key,
            source=str(record.video),
            start=record.start,
            end=record.end,
            folder_fps=source.frame_folder_fps,
        )
        for key, record in sorted(unique.items())
    ]


def _finished_on_disk(key: str, out: Path, options: PrepareOptions) -> bool:
    if options.with_flow and not (out / flow_path(key)).is_dir():
        return False
    return options.mode == "none" or (out / output_path(key, options.mode)).exists()


@dataclass
class _Tally:
    """What one run did, result by result."""

    counts: Counter[str] = field(default_factory=Counter)
    frames: int = 0
    bytes: int = 0
    flow_pairs: int = 0
    missing: list[str] = field(default_factory=list)  # file names
    failures: list[str] = field(default_factory=list)  # "key: reason"


def _process(
    todo: Sequence[VideoJob],
    out: Path,
    options: PrepareOptions,
    state: _State,
    results: Iterator[VideoResult],
    description: str,
) -> _Tally:
    """Consume `results`: record each in the done/failed logs, drive the progress bar."""
    tally = _Tally()
    source_of = {job.key: job.source for job in todo}
    start = time.perf_counter()
    with (
        console.progress_task(description, total=len(todo)) as advance,
        state.done_file.open("a", encoding="utf-8") as done_log,
        state.failed_file.open("a", encoding="utf-8") as failed_log,
    ):
        for result in results:
            if result.status == "disk_full":
                raise VidactError(
                    f"{out}: {result.reason} while writing {result.key}; free some space "
                    "and re-run the same command (finished videos are kept)"
                )
            tally.counts[result.status] += 1
            if result.status == "done":
                tally.frames += result.num_frames
                tally.bytes += result.bytes
                tally.flow_pairs += result.flow_pairs
                entry: dict[str, Any] = {"key": result.key, "frames": result.num_frames}
                entry["bytes"] = result.bytes
                if options.with_flow:
                    entry["flow"] = result.flow_pairs
                done_log.write(json.dumps(entry, ensure_ascii=False) + "\n")
                done_log.flush()  # a killed run keeps every line written so far
            else:
                video = source_of[result.key]
                if result.status == "missing":
                    tally.missing.append(Path(video).name)
                else:
                    tally.failures.append(f"{result.key}: {result.reason}")
                entry = {"key": result.key, "video": video, "reason": result.reason}
                failed_log.write(json.dumps(entry, ensure_ascii=False) + "\n")
                failed_log.flush()
            elapsed = max(time.perf_counter() - start, 1e-9)
            videos = tally.counts["done"] + tally.counts["failed"]
            status = f"{videos / elapsed:.1f} videos/s, {tally.frames / elapsed:.0f} frames/s"
            if options.with_flow:
                status += f", {tally.flow_pairs / elapsed:.1f} flow pairs/s"
            advance(status=status)
    return tally


def prepare_dataset(
    source: SourceDataset,
    out: str | Path,
    options: PrepareOptions | None = None,
    *,
    workers: int | None = None,
    shard: tuple[int, int] | None = None,
    check_free_space: bool = True,
    extra_step: ExtraStep | None = None,
) -> PrepareSummary:
    """Extract (or just probe) every video of `source` into `out`; resumable, shardable.

    `workers`: processes (default one per core; 0 runs in this process). `shard`: (k, n)
    to do only every n-th video. `check_free_space`: refuse when the estimated output
    does not fit. `extra_step`: see the `vidact.data.extract` docstring.
    """
    options = options or PrepareOptions()
    options.validate()
    if source.frame_folders and options.mode == "none":
        raise VidactError(
            f"{source.name} ships JPEG frames named 00001.jpg, which vidact does not read in "
            "place; use --mode frames (copies or resizes them to img_00001.jpg)"
        )
    check_unique_keys(source)
    if options.with_flow:
        from vidact.flow.backends import resolve_backend

        # "auto" is settled here, once: every worker then runs the same backend.
        options = dataclasses.replace(options, flow_backend=resolve_backend(options.flow_backend))
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise VidactError(f"{out}: exists and is not a folder; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    _check_settings(out, options.settings(source.name))
    write_label_map(out / LABELS_FILE, source.classes)
    if options.with_flow:
        atomic_write_text(out / FLOW_INFO_FILE, json.dumps(_flow_info(options), indent=2) + "\n")

    jobs = _jobs(source)
    if not jobs:
        raise VidactError(f"{source.name}: the annotations list no videos (check --classes)")
    if not any(os.path.exists(job.source) for job in jobs):
        raise VidactError(
            f"none of the {len(jobs)} videos of {source.name} were found (the first is expected "
            f"at {jobs[0].source}); check --videos"
        )
    selected = select_shard(jobs, shard)
    state = _State(out, shard)
    state.dir.mkdir(parents=True, exist_ok=True)
    done_before = state.done()
    todo = [
        job
        for job in selected
        if not (job.key in done_before and _finished_on_disk(job.key, out, options))
    ]
    skipped = len(selected) - len(todo)
    workers = (os.cpu_count() or 1) if workers is None else workers
    description = source.name + " " + options.mode
    if options.with_flow:
        description += f" + {options.flow} ({options.flow_backend})"
    if shard is not None:
        description += f" {shard[0]}/{shard[1]}"

    # The worker processes start (and import) while this process estimates the output.
    pool = _start_pool(workers) if workers > 0 and todo else None
    try:
        estimate = estimate_output_bytes(todo, out, options)
        if estimate.bytes:
            flow_share = ""
            if estimate.flow_bytes:
                flow_share = f" (flow {console.human_bytes(estimate.flow_bytes)})"
            console.info(
                f"{len(todo)} videos to prepare ({skipped} already done); estimated output "
                f"{console.human_bytes(estimate.bytes)}{flow_share}, "
                f"{console.human_bytes(estimate.free)} free"
            )
        if check_free_space:
            check_disk(estimate, out, len(todo))
        start = time.perf_counter()
        state.failed_file.write_text("", encoding="utf-8")  # this run retries every failure
        results = _run_jobs(todo, out, options, workers, extra_step, started=pool)
        try:
            tally = _process(todo, out, options, state, results, description)
        finally:
            results.close()  # stops the worker pool if we leave early
        seconds = time.perf_counter() - start
    finally:
        if pool is not None:  # the pool was never used (disk check), or is already shut down
            pool.shutdown(wait=False, cancel_futures=True)

    done_all = {
        key: entry for key, entry in state.done().items() if _finished_on_disk(key, out, options)
    }
    failed_all = {key: entry for key, entry in state.failed().items() if key not in done_all}
    pending = sum(1 for job in jobs if job.key not in done_all and job.key not in failed_all)
    manifests = _write_outputs(source, out, options, done_all, failed_all) if not pending else {}
    notes = list(source.notes)
    if tally.missing:
        notes.append(
            f"missing videos: {len(tally.missing)} ({first_few(sorted(tally.missing))}); "
            f"listed in {out / FAILURES_FILE}"
        )
    if pending:
        notes.append(
            f"videos not done yet (other shards): {pending}; the last shard to finish "
            "writes the manifests, or re-run without --shard when all are done"
        )
    on_disk = sum(int(done_all[job.key].get("bytes", 0)) for job in jobs if job.key in done_all)
    return PrepareSummary(
        dataset=source.name,
        out=out,
        mode=options.mode,
        shard=shard,
        classes=len(source.classes),
        total=len(selected),
        done=tally.counts["done"],
        skipped=skipped,
        failed=tally.counts["failed"],
        missing=tally.counts["missing"],
        frames_written=tally.frames,
        bytes_written=tally.bytes,
        bytes_on_disk=on_disk,
        estimated_bytes=estimate.bytes,
        seconds=seconds,
        manifests=manifests,
        pending=pending,
        missing_examples=sorted(tally.missing)[:5],
        failure_examples=tally.failures[:5],
        notes=notes,
        flow=options.flow,
        flow_backend=options.flow_backend if options.with_flow else "",
        flow_bound=options.flow_bound,
        flow_pairs_written=tally.flow_pairs,
        estimated_flow_bytes=estimate.flow_bytes,
    )
