"""The resume state under OUT/.prepare/: each shard's done and failed records."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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


class _State:
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
