"""TensorBoard logging of a run (`output.tensorboard: true`), in <run>/tensorboard/.

The same scalars as metrics.jsonl: every key of an epoch's line as `epoch/<key>` at that
epoch, and per optimiser step the ones a step has, `step/train_loss` (that step's loss),
`step/train_top1` (that batch's top-1) and `step/lr`; the resolved recipe as text
(`recipe`). Written with torch.utils.tensorboard.SummaryWriter on rank 0 only. The
package is optional (`pip install 'vidact[tensorboard]'`); without it the run logs one
line saying so and goes on. `closing` closes the writer on every way out of a run.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from vidact import console
from vidact.recipe import Recipe

FOLDER = "tensorboard"
INSTALL = "pip install 'vidact[tensorboard]'"


class TensorBoardLog:
    """A SummaryWriter with the tags of the module docstring."""

    def __init__(self, writer: Any) -> None:
        self.writer = writer

    def step(self, step: int, loss: float, top1: float, lr: float) -> None:
        self.writer.add_scalar("step/train_loss", loss, step)
        self.writer.add_scalar("step/train_top1", top1, step)
        self.writer.add_scalar("step/lr", lr, step)

    def epoch(self, metrics: dict[str, Any]) -> None:
        """Every number of the epoch's metrics.jsonl line, at x = its epoch."""
        for key, value in metrics.items():
            if key != "epoch" and isinstance(value, int | float):
                self.writer.add_scalar(f"epoch/{key}", value, metrics["epoch"])
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def open_tensorboard(run_dir: Path, recipe: Recipe) -> TensorBoardLog | None:
    """The run's log when the recipe asks for one and tensorboard is installed, else None
    (with one line saying how to install it when it was asked for)."""
    if not recipe.output.tensorboard:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        console.warn(
            f"output.tensorboard: the tensorboard package is not installed, so this run "
            f"logs no TensorBoard events; install it with: {INSTALL}"
        )
        return None
    log = TensorBoardLog(SummaryWriter(str(Path(run_dir) / FOLDER)))
    # Indented four spaces: TensorBoard's text panel renders markdown, this keeps the YAML.
    text = "".join(f"    {line}\n" for line in recipe.to_yaml().splitlines())
    log.writer.add_text("recipe", text, 0)
    return log


@contextlib.contextmanager
def closing(log: TensorBoardLog | None) -> Iterator[None]:
    """Close `log` (if any) however the block ends: done, stopped, failed."""
    try:
        yield
    finally:
        if log is not None:
            log.close()
