"""Helpers for tests that run 2 processes over gloo (torch.multiprocessing.spawn)."""

from __future__ import annotations

import os
import socket

import torch


def free_port() -> int:
    """A free TCP port on the loopback interface, for MASTER_PORT."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def act_as_torchrun_rank(rank: int, world: int, port: int) -> None:
    """Set the environment torchrun would give process `rank` of `world` on this host."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(1)  # two processes share the CPU
