"""`prepare_dataset`: one source dataset into OUT, resumable and shardable (the layout and
the rules are in the `vidact.data.prepare` docstring); `prepare`: a dataset of the registry
by name, with the settings of `options.py`."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vidact import console
from vidact.atomic import atomic_write_text
from vidact.data.class_order import write_class_info
from vidact.data.manifest import write_label_map
from vidact.data.prepare.decoder_log import DECODER_LOG, stderr_to
from vidact.data.prepare.estimate import DiskEstimate, check_disk, estimate_output_bytes
from vidact.data.prepare.faults import MAX_FAILED, StopNow, StopSignals, outcome, stopped
from vidact.data.prepare.options import (
    VIDEO_TIMEOUT,
    ExtraStep,
    PrepareOptions,
    VideoJob,
    VideoResult,
    flow_path,
    output_path,
    parse_shard,
    select_shard,
    split_settings,
)
from vidact.data.prepare.outputs import (
    FAILURES_FILE,
    FLOW_INFO_FILE,
    PrepareSummary,
    ResumeState,
    flow_info,
    write_outputs,
)
from vidact.data.prepare.pool import PoolSettings, run_jobs, start_pool, stop_pool
from vidact.data.sources.common import (
    SourceDataset,
    SourceRecord,
    check_unique_keys,
    first_few,
    read_class_list,
    restrict_classes,
)
from vidact.data.sources.registry import dataset_source
from vidact.errors import VidactError

SETTINGS_FILE = "prepare.json"
LABELS_FILE = "labels.txt"

Shard = tuple[int, int] | None  # (k, n): every n-th video from the k-th (1-based)


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
            frame_pattern=source.frame_pattern,
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
    warnings: list[str] = field(default_factory=list)  # "key: warning", of done videos


def _record(
    result: VideoResult, tally: _Tally, video: str, options: PrepareOptions, logs: tuple[Any, Any]
) -> None:
    """One result into the tally and the done (or failed) record, flushed at once: a
    killed run keeps every line written so far."""
    done_log, failed_log = logs
    tally.counts[result.status] += 1
    if result.status == "done":
        tally.frames += result.num_frames
        tally.bytes += result.bytes
        tally.flow_pairs += result.flow_pairs
        entry: dict[str, Any] = {"key": result.key, "frames": result.num_frames}
        entry["bytes"] = result.bytes
        if options.with_flow:
            entry["flow"] = result.flow_pairs
        if result.warning:
            entry["warning"] = result.warning
            tally.warnings.append(f"{result.key}: {result.warning}")
        done_log.write(json.dumps(entry, ensure_ascii=False) + "\n")
        done_log.flush()
        return
    if result.status == "missing":
        tally.missing.append(Path(video).name)
    else:
        tally.failures.append(f"{result.key}: {result.reason}")
    entry = {"key": result.key, "video": video, "reason": result.reason, "status": result.status}
    failed_log.write(json.dumps(entry, ensure_ascii=False) + "\n")
    failed_log.flush()


def _process(
    run: _Run, results: Iterator[VideoResult], stop: StopSignals, done_before: int
) -> _Tally:
    """Consume `results`: record each in the done/failed logs, drive the progress bar. A
    stop signal ends the run here, with one line, once every finished video is recorded."""
    tally = _Tally()
    source_of = {job.key: job.source for job in run.todo}
    start = time.perf_counter()
    with (
        console.progress_task(run.description, total=len(run.todo)) as advance,
        run.state.done_file.open("a", encoding="utf-8") as done_log,
        run.state.failed_file.open("a", encoding="utf-8") as failed_log,
    ):
        try:
            for result in results:
                if result.status == "disk_full":
                    raise VidactError(
                        f"{run.out}: {result.reason} while writing {result.key}; free some "
                        "space and re-run the same command (finished videos are kept)"
                    )
                _record(result, tally, source_of[result.key], run.options, (done_log, failed_log))
                elapsed = max(time.perf_counter() - start, 1e-9)
                videos = tally.counts["done"] + tally.counts["failed"]
                status = f"{videos / elapsed:.1f} videos/s, {tally.frames / elapsed:.0f} frames/s"
                if run.options.with_flow:
                    status += f", {tally.flow_pairs / elapsed:.1f} flow pairs/s"
                advance(status=status)
        except StopNow:
            pass  # the video in progress is abandoned (its temporary output removed)
    if stop.signum is not None:
        finished = tally.counts["done"]
        raise stopped(stop.signum, finished, done_before + finished, len(run.todo) + run.skipped)
    return tally


def _checked(source: SourceDataset, options: PrepareOptions) -> PrepareOptions:
    """`options`, validated against `source`, with the flow backend settled."""
    options.validate()
    if source.frame_pattern is not None and options.mode == "none":
        raise VidactError(
            "--frame-pattern applies when frames are copied (--mode frames or videos); read "
            "in place (--mode none), each folder's numbered images are detected by the reader"
        )
    check_unique_keys(source)
    if options.with_flow:
        from vidact.flow.backends import resolve_backend

        # "auto" is settled here, once: every worker then runs the same backend.
        options = dataclasses.replace(options, flow_backend=resolve_backend(options.flow_backend))
    return options


def _open_out(out: Path, source: SourceDataset, options: PrepareOptions) -> list[VideoJob]:
    """OUT made (or checked for the same settings) with its label map; the jobs."""
    if out.exists() and not out.is_dir():
        raise VidactError(f"{out}: exists and is not a folder; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    _check_settings(out, options.settings(source.name))
    write_label_map(out / LABELS_FILE, source.classes)
    write_class_info(out, source.name, source.classes, source.class_order)
    if options.with_flow:
        atomic_write_text(out / FLOW_INFO_FILE, json.dumps(flow_info(options), indent=2) + "\n")
    jobs = _jobs(source)
    if not jobs:
        raise VidactError(f"{source.name}: the annotations list no videos (check --classes)")
    if not any(os.path.exists(job.source) for job in jobs):
        raise VidactError(
            f"none of the {len(jobs)} videos of {source.name} were found (the first is expected "
            f"at {jobs[0].source}); check --videos"
        )
    return jobs


def _description(source: SourceDataset, options: PrepareOptions, shard: Shard) -> str:
    """The progress bar's label."""
    description = source.name + " " + options.mode
    if options.with_flow:
        description += f" + {options.flow} ({options.flow_backend})"
    if shard is not None:
        description += f" {shard[0]}/{shard[1]}"
    return description


def _announce(estimate: DiskEstimate, todo: int, skipped: int) -> None:
    if estimate.bytes:
        flow_share = ""
        if estimate.flow_bytes:
            flow_share = f" (flow {console.human_bytes(estimate.flow_bytes)})"
        console.info(
            f"{todo} videos to prepare ({skipped} already done); estimated output "
            f"{console.human_bytes(estimate.bytes)}{flow_share}, "
            f"{console.human_bytes(estimate.free)} free"
        )


@dataclass(frozen=True)
class _Run:
    """What `prepare_dataset` decided to do: the jobs of this shard still to do."""

    out: Path
    options: PrepareOptions
    state: ResumeState
    todo: list[VideoJob]
    skipped: int
    description: str


def _execute(
    run: _Run, workers: int, check_free_space: bool, extra_step: ExtraStep | None, timeout: float
) -> tuple[_Tally, DiskEstimate, float]:
    """Estimate, check the disk, run the jobs: (tally, estimate, seconds of the jobs)."""
    decoder_log = run.state.dir / DECODER_LOG
    # The worker processes start (and import) while this process estimates the output.
    pool = start_pool(workers, decoder_log) if workers > 0 and run.todo else None
    stop = StopSignals(at_once=workers <= 0)
    try:
        with stop:
            with stderr_to(decoder_log):  # the sample decodes' FFmpeg messages
                estimate = estimate_output_bytes(run.todo, run.out, run.options)
            _announce(estimate, len(run.todo), run.skipped)
            if check_free_space:
                check_disk(estimate, run.out, len(run.todo))
            start = time.perf_counter()
            run.state.failed_file.write_text("", encoding="utf-8")  # retries every failure
            settings = PoolSettings(timeout if timeout > 0 else None, stop.requested, decoder_log)
            results = run_jobs(run.todo, run.out, run.options, workers, extra_step, pool, settings)
            try:
                tally = _process(run, results, stop, run.skipped)
            finally:
                results.close()  # stops the worker pool if we leave early
        return tally, estimate, time.perf_counter() - start
    except StopNow as now:  # before the first video (the estimate)
        raise stopped(now.signum, 0, run.skipped, len(run.todo) + run.skipped) from None
    finally:
        if pool is not None:  # never used (disk check), or already stopped by run_jobs
            stop_pool(pool)


def prepare_dataset(
    source: SourceDataset,
    out: str | Path,
    options: PrepareOptions | None = None,
    *,
    workers: int | None = None,
    shard: Shard = None,
    check_free_space: bool = True,
    extra_step: ExtraStep | None = None,
    video_timeout: float = VIDEO_TIMEOUT,
    max_failed: float = MAX_FAILED,
) -> PrepareSummary:
    """Prepare (or just probe) every video of `source` into `out`; resumable, shardable.

    `workers`: processes (default one per core; 0 runs in this process). `shard`: (k, n)
    to do only every n-th video. `check_free_space`: refuse when the estimated output
    does not fit. `extra_step`: see the `vidact.data.prepare` docstring. `video_timeout`:
    seconds one video may take in a worker (0: no limit). `max_failed`: the share of
    failed or missing videos above which `summary.outcome` is an error (exit code 3).
    SIGINT and SIGTERM stop the run after the videos in flight (PrepareStopped).
    """
    options = _checked(source, options or PrepareOptions())
    if not (0.0 <= max_failed <= 1.0 and video_timeout >= 0):
        raise VidactError("--max-failed must be between 0 and 1, --video-timeout 0 or more")
    out = Path(out)
    jobs = _open_out(out, source, options)
    selected = select_shard(jobs, shard)
    state = ResumeState(out, shard)
    state.dir.mkdir(parents=True, exist_ok=True)
    done_before = state.done()
    todo = [
        job
        for job in selected
        if not (job.key in done_before and _finished_on_disk(job.key, out, options))
    ]
    run = _Run(
        out, options, state, todo, len(selected) - len(todo), _description(source, options, shard)
    )
    workers = (os.cpu_count() or 1) if workers is None else workers
    tally, estimate, seconds = _execute(run, workers, check_free_space, extra_step, video_timeout)
    summary = _finish(source, run, jobs, shard, len(selected), tally, estimate, seconds)
    listed = out / FAILURES_FILE if summary.manifests else state.failed_file
    failed = summary.failed + summary.missing
    result = outcome(summary.total, summary.done + summary.skipped, failed, max_failed, str(listed))
    return dataclasses.replace(summary, outcome=result)


def _finish(
    source: SourceDataset,
    run: _Run,
    jobs: list[VideoJob],
    shard: Shard,
    selected: int,
    tally: _Tally,
    estimate: DiskEstimate,
    seconds: float,
) -> PrepareSummary:
    """The manifests (once every shard is done) and the summary of the run."""
    out, options = run.out, run.options
    done_all = {
        key: entry
        for key, entry in run.state.done().items()
        if _finished_on_disk(key, out, options)
    }
    failed_all = {key: entry for key, entry in run.state.failed().items() if key not in done_all}
    pending = sum(1 for job in jobs if job.key not in done_all and job.key not in failed_all)
    manifests = write_outputs(source, out, options, done_all, failed_all) if not pending else {}
    notes = list(source.notes)
    if tally.missing:
        notes.append(
            f"missing videos: {len(tally.missing)} ({first_few(sorted(tally.missing))}); "
            f"listed in {out / FAILURES_FILE}"
        )
    if tally.warnings:
        notes.append(
            f"videos prepared with a warning: {len(tally.warnings)} "
            f"({'; '.join(tally.warnings[:3])})"
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
        total=selected,
        done=tally.counts["done"],
        skipped=run.skipped,
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
        warnings=len(tally.warnings),
        warning_examples=tally.warnings[:5],
        notes=notes,
        flow=options.flow,
        flow_backend=options.flow_backend if options.with_flow else "",
        flow_bound=options.flow_bound,
        flow_pairs_written=tally.flow_pairs,
        estimated_flow_bytes=estimate.flow_bytes,
    )


def prepare(
    dataset: str,
    videos: str | Path,
    annotations: str | Path | None,
    out: str | Path,
    **settings: Any,
) -> PrepareSummary:
    """`vidact prepare <dataset>`: annotations + videos -> manifests, label map, outputs.

    `settings` are the fields of `PrepareOptions` (mode, short_side, fps, quality, backend,
    flow, flow_backend, flow_bound), of `RunOptions` (workers, shard "K/N" or (k, n),
    classes, check_free_space) and the dataset's own options (e.g. the folder dataset's
    val_fraction and seed): `vidact prepare <dataset> --help` lists them all."""
    source_of = dataset_source(dataset)
    options, run, own = split_settings(settings, [option.name for option in source_of.options])
    options.validate()
    shard = run.shard if isinstance(run.shard, tuple) else parse_shard(run.shard)
    source = source_of.read(videos, annotations, **own)
    if run.classes is not None:
        source = restrict_classes(source, read_class_list(run.classes), str(run.classes))
    return prepare_dataset(
        source,
        out,
        options,
        workers=run.workers,
        shard=shard,
        check_free_space=run.check_free_space,
        video_timeout=run.video_timeout,
        max_failed=run.max_failed,
    )
