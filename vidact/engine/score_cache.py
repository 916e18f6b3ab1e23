"""The evaluator's resumable per-video scores: one folder per setting, .npz shards.

The folder is `<out>/cache/<key>/`, the key a hash of everything that changes a score
(checkpoint bytes, EMA, views, averaging, seed, and the data: `data_identity`, the
manifest's bytes, the dataset root and each video's size and modification time), so a
re-run with the same settings on the same data finds the videos already scored, and
other settings, another copy of the data or a video changed since get their own folder. Each
shard holds the scores of up to `save_every` videos and is written atomically; the
folder's settings.json says in words what its key stands for.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from vidact.atomic import atomic_path, atomic_write_text

CACHE_VERSION = 2  # 2: several crops of a clip are cut from its frames resized once


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def data_identity(manifest: Path, root: Path, paths: list[str]) -> dict[str, str]:
    """What the scores were computed from: the manifest's sha256, the resolved dataset
    root, and a hash of (path, size, mtime) of every video or frame folder it lists (a
    stat per entry, no reading: a damaged or replaced video changes its size or mtime)."""
    digest = hashlib.sha256()
    root = root.resolve()
    for rel in paths:
        try:
            stat = (root / rel).stat()
            digest.update(f"{rel}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        except OSError:
            digest.update(f"{rel}\0missing\n".encode())
    return {"manifest": sha256_file(manifest), "root": str(root), "files": digest.hexdigest()}


def cache_folder(out_dir: Path, key_data: dict[str, Any]) -> Path:
    """`<out_dir>/cache/<16 hex digits of the hash of key_data>`."""
    key = hashlib.sha256(json.dumps(key_data, sort_keys=True).encode()).hexdigest()[:16]
    return out_dir / "cache" / key


def create_cache(cache: Path, settings: dict[str, Any]) -> None:
    """Make the folder and write its settings.json (rank 0 only)."""
    cache.mkdir(parents=True, exist_ok=True)
    atomic_write_text(cache / "settings.json", json.dumps(settings, indent=1) + "\n")


def read_cache(cache: Path) -> dict[int, np.ndarray]:
    """video index -> (models, classes) scores, from every shard in `cache`."""
    scores: dict[int, np.ndarray] = {}
    for shard in sorted(cache.glob("scores-*.npz")):
        with np.load(shard) as data:
            for index, row in zip(data["indices"].tolist(), data["scores"], strict=True):
                scores[int(index)] = row
    return scores


def write_shard(cache: Path, scores: dict[int, np.ndarray]) -> None:
    """Write `scores` (video index -> (models, classes)) as one shard, then clear it."""
    if not scores:
        return
    indices = sorted(scores)
    # The first index names the shard: it was not scored before, so no shard has it.
    with atomic_path(cache / f"scores-{indices[0]:09d}.npz") as tmp:
        np.savez(tmp, indices=np.array(indices), scores=np.stack([scores[i] for i in indices]))
    scores.clear()
