"""What a prepare run reports: `PrepareSummary`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from vidact.constants import FLOW_BOUND


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
    notes: list[str] = field(default_factory=list)
    flow: str = "none"
    flow_backend: str = ""  # the concrete backend this run used ("" without flow)
    flow_bound: float = FLOW_BOUND
    flow_pairs_written: int = 0  # x/y JPEG pairs written by this run
    estimated_flow_bytes: int = 0

    @property
    def videos_per_second(self) -> float:
        return (self.done + self.failed) / self.seconds if self.seconds > 0 else 0.0

    @property
    def frames_per_second(self) -> float:
        return self.frames_written / self.seconds if self.seconds > 0 else 0.0

    @property
    def flow_pairs_per_second(self) -> float:
        return self.flow_pairs_written / self.seconds if self.seconds > 0 else 0.0
