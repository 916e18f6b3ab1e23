"""What a finished dataset gets: manifests, mmaction2 lists and failures.jsonl."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from vidact.atomic import atomic_write_text
from vidact.data.extract.options import PrepareOptions, flow_path, output_path
from vidact.data.manifest import Sample, write_manifest
from vidact.data.sources.common import SourceDataset, SourceRecord

FAILURES_FILE = "failures.jsonl"


def _manifest_path(record: SourceRecord, mode: str, out_real: str) -> str:
    if mode != "none":
        return output_path(record.key, mode)
    source = os.path.realpath(record.video)
    try:
        return Path(os.path.relpath(source, out_real)).as_posix()
    except ValueError:  # another drive (Windows): only an absolute path works
        return Path(source).as_posix()


def _write_outputs(
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
    failures = []
    seen = set()
    for record in source.records():
        if record.key in done or record.key in seen or record.key not in failed:
            continue
        seen.add(record.key)
        failures.append(
            json.dumps(
                {
                    "key": record.key,
                    "video": str(record.video),
                    "reason": failed[record.key]["reason"],
                },
                ensure_ascii=False,
            )
        )
    atomic_write_text(out / FAILURES_FILE, "".join(line + "\n" for line in failures))
    return counts
