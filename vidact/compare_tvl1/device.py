"""Where the layer and the timed networks run: one CPU thread, CUDA synchronisation."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def one_thread(device: torch.device) -> Iterator[None]:
    """One torch intra-op thread on CPU (restored after): the layer's ops are small, and
    with 2 threads on a busy CPU every op can stall on a descheduled OpenMP thread (we
    measured 10-60x slower runs of the layer; the TV-L1 torch backend does the same)."""
    if device.type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
