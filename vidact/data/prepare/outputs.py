"""What prepare leaves in OUT: the resume records under OUT/.prepare/, the manifests,
mmaction2 lists and failures.jsonl of a finished dataset, OUT/flow.json (the bound and
encoding of the flow images, checked against a recipe's data.flow_bound by training), and
the `PrepareSummary` of a run."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vidact.atomic import atomic_write_text
from vidact.constants import FLOW_BOUND
from vidact.data.manifest import Sample, write_manifest
from vidact.data.prepare.faults import EXIT_OK, Outcome
from vidact.data.prepare.frames import FLOW_QUALITY, short_reason
from vidact.data.prepare.options import PrepareOptions, flow_path, output_path
from vidact.data.sources.common import SourceDataset, SourceRecord
from vidact.data.video import FLOW_TEMPLATES
from vidact.errors import VidactError

STATE_DIR = ".prepare"


def _read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """Records of a JSON Lines file; a line cut short by a killed run is ignored."""
    with contextlib.suppress(FileNotFoundError), path.open(encoding="utf-8") as handle:
        for line in handle:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and isinstance(record.get("key"), str):
                yield record


class ResumeState:
    """The done and failed records of every shard under OUT/.prepare/."""

    def __init__(self, out: Path, shard: tuple[int, int] | None) -> None:
        self.dir = out / STATE_DIR
        self.tag = "all" if shard is None else f"{shard[0]}of{shard[1]}"
        self.done_file = self.dir / f"done-{self.tag}.jsonl"
        self.failed_file = self.dir / f"failed-{self.tag}.jsonl"

    def done(self) -> dict[str, dict[str, Any]]:
        records: dict[str, dict[str, Any]] = {}
        for path in sorted(self.dir.glob("done-*.jsonl")):
            for record in _read_jsonl(path):
                records[record["key"]] = record
        return records

    def failed(self) -> dict[str, dict[str, Any]]:
        records: dict[str, dict[str, Any]] = {}
        for path in sorted(self.dir.glob("failed-*.jsonl")):
            for record in _read_jsonl(path):
                records[record["key"]] = record
        return records


# --------------------------------------------------------------- outputs

FAILURES_FILE = "failures.jsonl"


def _manifest_path(record: SourceRecord, mode: str, out_real: str) -> str:
    if mode != "none":
        return output_path(record.key, mode)
    source = os.path.realpath(record.video)
    try:
        return Path(os.path.relpath(source, out_real)).as_posix()
    except ValueError:  # another drive (Windows): only an absolute path works
        return Path(source).as_posix()


def write_outputs(
    source: SourceDataset,
    out: Path,
    options: PrepareOptions,
    done: dict[str, dict[str, Any]],
    failed: dict[str, dict[str, Any]],
) -> dict[str, int]:
    """Manifests, mmaction2 lists and failures.jsonl for the whole dataset."""
    out_real = os.path.realpath(out)
    counts = {}
    for split, records in source.splits.items():
        samples = []
        lines = []
        flow_lines: list[str] = []
        for record in records:
            entry = done.get(record.key)
            if entry is None:
                continue
            path = _manifest_path(record, options.mode, out_real)
            keep_segment = options.mode == "none"
            flow = flow_path(record.key) if options.with_flow else None
            samples.append(
                Sample(
                    path=path,
                    label=record.label,
                    label_name=record.label_name,
                    num_frames=int(entry["frames"]),
                    start=record.start if keep_segment else None,
                    end=record.end if keep_segment else None,
                    flow=flow,
                )
            )
            if options.mode == "frames":
                lines.append(f"{path} {int(entry['frames'])} {record.label}")
            else:
                lines.append(f"{path} {record.label}")
            if flow is not None:
                pairs = int(entry.get("flow", int(entry["frames"]) - 1))
                flow_lines.append(f"{flow} {pairs} {record.label}")
        counts[split] = write_manifest(out / f"{split}.jsonl", samples)
        list_name = f"{split}_rawframes.txt" if options.mode == "frames" else f"{split}_videos.txt"
        atomic_write_text(out / list_name, "".join(line + "\n" for line in lines))
        if options.with_flow:
            atomic_write_text(out / f"{split}_flow.txt", "".join(f"{x}\n" for x in flow_lines))
    atomic_write_text(out / FAILURES_FILE, "".join(_failure_lines(source, done, failed)))
    return counts


def _failure_lines(
    source: SourceDataset, done: dict[str, dict[str, Any]], failed: dict[str, dict[str, Any]]
) -> list[str]:
    """failures.jsonl: each video that failed ("status": "failed"), is missing ("missing"),
    or was prepared with a problem worth knowing ("warning": e.g. truncated, the manifest
    then holds the frames that decode), in the order of the annotations."""
    lines = []
    seen = set()
    for record in source.records():
        if record.key in seen:
            continue
        seen.add(record.key)
        if record.key in done:
            reason, status = done[record.key].get("warning"), "warning"
        elif record.key in failed:
            reason = failed[record.key]["reason"]
            status = failed[record.key].get(
                "status", "missing" if reason == "missing" else "failed"
            )
        else:
            continue
        if reason:
            entry = {"key": record.key, "video": str(record.video), "reason": reason}
            lines.append(json.dumps(entry | {"status": status}, ensure_ascii=False) + "\n")
    return lines


# ------------------------------------------------------------- flow.json

FLOW_INFO_FILE = "flow.json"


def flow_info(options: PrepareOptions) -> dict[str, Any]:
    """OUT/flow.json: what a reader needs to turn the flow images back into pixels."""
    from vidact.flow.tvl1 import TVL1Params

    return {
        "algorithm": options.flow,
        "bound": options.flow_bound,
        "quantisation": "q = round((clip(f, -bound, bound) + bound) * 255 / (2 * bound)); "
        "f = q * 2 * bound / 255 - bound (vidact.flow.dequantize_flow)",
        "templates": list(FLOW_TEMPLATES),
        "pairs": "pair t (1-based) is the flow from frame t to frame t + 1, x right, y down",
        "gray": "BT.601 luma of the frames after the short-side resize, before JPEG coding",
        "jpeg_quality": FLOW_QUALITY,
        "params": dataclasses.asdict(TVL1Params.opencv_cpu()),
    }


def read_flow_info(root: str | Path) -> dict[str, Any] | None:
    """The flow.json of a prepared dataset folder, or None where prepare wrote no flow."""
    path = Path(root) / FLOW_INFO_FILE
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError) as exc:
        raise VidactError(f"{path}: unreadable ({short_reason(exc)}); re-run prepare") from None
    if not isinstance(info, dict) or not isinstance(info.get("bound"), int | float):
        raise VidactError(f"{path}: has no numeric 'bound'; re-run prepare")
    return info


def check_flow_bound(root: str | Path, bound: float) -> None:
    """Refuse to read flow quantised with another bound than `bound` (a recipe's
    data.flow_bound): the network would see every motion scaled by the ratio."""
    info = read_flow_info(root)
    if info is None or math.isclose(float(info["bound"]), bound, rel_tol=1e-6):
        return
    prepared = float(info["bound"])
    raise VidactError(
        f"{Path(root) / FLOW_INFO_FILE}: the flow was quantised with a bound of +-{prepared:g} "
        f"px but the recipe's data.flow_bound is {bound:g}; set data.flow_bound: {prepared:g} "
        f"(--set data.flow_bound={prepared:g}) or prepare again with --flow-bound {bound:g}"
    )


# --------------------------------------------------------------- summary


@dataclass(frozen=True)
class PrepareSummary:
    """What a prepare run did (this shard) and where the dataset stands (all shards)."""

    dataset: str
    out: Path
    mode: str
    shard: tuple[int, int] | None
    classes: int
    total: int  # videos in this run's selection (this shard)
    done: int  # finished by this run
    skipped: int  # already finished before this run
    failed: int  # unreadable videos in this run
    missing: int  # videos not found in this run
    frames_written: int
    bytes_written: int
    bytes_on_disk: int  # every finished output of the dataset (from the done records)
    estimated_bytes: int
    seconds: float
    manifests: dict[str, int]  # split -> samples written; empty while shards are pending
    pending: int  # videos of the dataset not yet accounted for (other shards still running)
    missing_examples: list[str] = field(default_factory=list)
    failure_examples: list[str] = field(default_factory=list)
    warnings: int = 0  # videos prepared with a warning in this run (truncated, ...)
    warning_examples: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    flow: str = "none"
    flow_backend: str = ""  # the concrete backend this run used ("" without flow)
    flow_bound: float = FLOW_BOUND
    flow_pairs_written: int = 0  # x/y JPEG pairs written by this run
    estimated_flow_bytes: int = 0
    outcome: Outcome = field(default_factory=lambda: Outcome(EXIT_OK))  # exit code, why

    @property
    def videos_per_second(self) -> float:
        return (self.done + self.failed) / self.seconds if self.seconds > 0 else 0.0

    @property
    def frames_per_second(self) -> float:
        return self.frames_written / self.seconds if self.seconds > 0 else 0.0

    @property
    def flow_pairs_per_second(self) -> float:
        return self.flow_pairs_written / self.seconds if self.seconds > 0 else 0.0
