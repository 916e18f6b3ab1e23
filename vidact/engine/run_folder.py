"""A training run's folder: where it is, what it resumes, and the files it keeps.

<output.dir>/<recipe name>/<timestamp>/    (or --out)
    recipe.yaml          the resolved recipe
    log.txt              every log line
    metrics.jsonl        one line per epoch
    checkpoints/last.pt  after every epoch (and on a stop signal)
    checkpoints/best.pt  the best validation top-1 so far
    checkpoints/epoch-0007.pt   the newest `output.keep_last` epochs (0: none)
    tensorboard/         when tensorboard is installed
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

from vidact.atomic import atomic_write_text
from vidact.engine.checkpoint import LAST, find_resume
from vidact.errors import VidactError
from vidact.recipe import Recipe

EPOCH_CHECKPOINT = "epoch-{epoch:04d}.pt"
_EPOCH_GLOB = "epoch-[0-9]*.pt"


def resolve_resume(recipe: Recipe, resume: str | None, output: Path | None) -> Path | None:
    """The checkpoint `--resume` names: "auto" (the newest run of this recipe, or the one
    in `output`; None when there is none) or a checkpoint file or run folder."""
    if resume is None:
        return None
    if resume != "auto":
        path = Path(resume)
        if path.is_dir():
            path = path / "checkpoints" / LAST
        if not path.is_file():
            raise VidactError(f"--resume {resume}: no checkpoint there")
        return path
    if output is not None:
        found = output / "checkpoints" / LAST
        return found if found.is_file() else None
    return find_resume(Path(recipe.output.dir) / recipe.name)


def run_folder(recipe: Recipe, output: Path | None, resume: Path | None) -> Path:
    """The resumed checkpoint's run, else `output`, else a new timestamped folder (with
    a "-2", "-3", ... suffix when another run of the recipe started in the same second)."""
    if resume is not None:
        return resume.parent.parent
    if output is not None:
        return output
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    parent = Path(recipe.output.dir) / recipe.name
    folder, count = parent / stamp, 1
    while folder.exists():
        count += 1
        folder = parent / f"{stamp}-{count}"
    return folder


def write_metrics(run_dir: Path, history: list[dict[str, Any]]) -> None:
    atomic_write_text(run_dir / "metrics.jsonl", "".join(json.dumps(m) + "\n" for m in history))


def read_metrics(run_dir: Path, up_to_epoch: int) -> list[dict[str, Any]]:
    """The metrics.jsonl lines of epochs 1 .. `up_to_epoch` (those a resume keeps)."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [m for m in lines if m.get("epoch", 0) <= up_to_epoch]


def epoch_checkpoint(run_dir: Path, epoch: int) -> Path:
    return run_dir / "checkpoints" / EPOCH_CHECKPOINT.format(epoch=epoch)


def prune_epoch_checkpoints(run_dir: Path, keep: int) -> list[Path]:
    """Delete all but the newest `keep` epoch checkpoints; return the deleted paths.
    best.pt and last.pt are never touched."""
    found = sorted(
        (run_dir / "checkpoints").glob(_EPOCH_GLOB), key=lambda p: int(p.stem.split("-")[1])
    )
    old = found[: max(len(found) - keep, 0)]
    for path in old:
        path.unlink()
    return old


def tensorboard_writer(run_dir: Path) -> Any:
    """A SummaryWriter into <run>/tensorboard, or None without tensorboard installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional: pip install 'vidact[tensorboard]'
        return None
    return SummaryWriter(str(run_dir / "tensorboard"))
