"""Checkpoints: atomic save, load, `--resume auto`, and head surgery for fine-tuning.

A vidact checkpoint is a dict with:
    format        "vidact-checkpoint-1"
    model         the model's state_dict (no DDP "module." prefix)
    ema           the EMA model's state_dict, or None
    optimizer, scheduler, scaler   their state_dicts (scaler None without fp16)
    epoch, step   epochs completed / optimiser steps taken; `batch_in_epoch` > 0 when the
                  run was stopped in the middle of an epoch (SIGINT/SIGTERM)
    rng           python, numpy and torch (+ CUDA) RNG states, as tuples, lists and tensors
    rng_ranks     every rank's `rng` (index = rank), so that under torchrun each rank
                  resumes its own dropout stream
    epoch_sums    the interrupted epoch's running sums so far (loss x clips, top-1
                  correct, clips, decode failures), so its metrics count every batch
    recipe        the resolved recipe as a dict (enough to rebuild the model and data)
    labels        the label map (class names, index = label)
    metrics       the latest validation metrics and the best top-1 so far

Every value is a tensor, number, string, list, tuple or dict, so a checkpoint loads with
`torch.load(weights_only=True)` (`vidact.safe_load`): loading never runs code.
"""

from __future__ import annotations

import errno
import os
import random
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from torch import nn

from vidact import console
from vidact.atomic import atomic_path
from vidact.errors import VidactError
from vidact.models.released import is_released, released_state
from vidact.safe_load import load_tensors_file

FORMAT = "vidact-checkpoint-1"
LAST, BEST = "last.pt", "best.pt"


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """torch.save `state` atomically and durably: into a temporary file through Python's
    file object (so a full disk is an OSError, not torch's zip-writer RuntimeError),
    fsync'ed, renamed over `path`, and the folder fsync'ed, so that a later write never
    overtakes this one on disk. A full disk is one line; the previous `path` is kept."""
    path = Path(path)
    try:
        with atomic_path(path) as tmp, _open_for_write(tmp) as handle:
            torch.save({"format": FORMAT, **state}, handle)
            handle.flush()
            os.fsync(handle.fileno())
        _fsync_folder(path.parent)
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise VidactError(
            f"{path}: the disk is full ({exc.strerror}); the previous {path.name} is kept. "
            "Free some space (or lower output.keep_last) and resume with --resume auto"
        ) from None


def _open_for_write(path: Path) -> BinaryIO:
    return path.open("wb")


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a vidact checkpoint or a plain state_dict (returned as {"model": ...}); a file
    whose pickle would run code is refused (`vidact.safe_load`)."""
    path = Path(path)
    data = load_tensors_file(path, "checkpoint")
    if isinstance(data, dict) and data.get("format") == FORMAT:
        return data
    if isinstance(data, dict) and "state_dict" in data and isinstance(data["state_dict"], dict):
        data = data["state_dict"]  # common wrapper of other toolkits
    if isinstance(data, dict) and all(isinstance(v, torch.Tensor) for v in data.values()):
        return {"model": strip_prefix(data)}
    raise VidactError(f"{path}: neither a vidact checkpoint nor a state_dict")


def strip_prefix(
    state: dict[str, torch.Tensor], prefix: str = "module."
) -> dict[str, torch.Tensor]:
    return {k.removeprefix(prefix): v for k, v in state.items()}


def rng_state() -> dict[str, Any]:
    """The RNG states as plain data (numpy's key array as a list of ints)."""
    numpy_state = np.random.get_state(legacy=True)
    assert isinstance(numpy_state, tuple)  # legacy=True: (name, keys, pos, has_gauss, gauss)
    name, keys, pos, has_gauss, gauss = numpy_state
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": [name, keys.tolist(), pos, has_gauss, gauss],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    name, keys, pos, has_gauss, gauss = state["numpy"]  # a list, or an older file's tuple
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def find_resume(run_parent: Path) -> Path | None:
    """The newest run folder under `run_parent` that has checkpoints/last.pt."""
    if not run_parent.is_dir():
        return None
    candidates = sorted(p for p in run_parent.iterdir() if (p / "checkpoints" / LAST).is_file())
    return candidates[-1] / "checkpoints" / LAST if candidates else None


def load_matching(model: nn.Module, state: dict[str, torch.Tensor]) -> tuple[list[str], list[str]]:
    """Load the tensors whose names and shapes match; return (loaded, skipped) names.

    This is the head surgery of fine-tuning: a classifier with another number of classes
    does not match and keeps its fresh initialisation. A checkpoint in the layout of the
    authors' CT-Net / TSN code is mapped first (`vidact.models.released`), every other
    tensor checked.
    """
    own = model.state_dict()
    if is_released(state):
        state = released_state(state, model, new_head=True)
    state = strip_prefix(state)
    matching = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    skipped = sorted(set(own) - set(matching))
    model.load_state_dict(matching, strict=False)
    if not matching:
        raise VidactError(
            "the checkpoint has no weights that fit this model; is it the same model.name?"
        )
    for name in skipped:
        console.debug(f"fine-tune: {name} starts fresh (not in the checkpoint or another shape)")
    return sorted(matching), skipped
