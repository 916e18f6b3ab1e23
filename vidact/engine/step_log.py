"""`train.log_every`: a plain progress line every N steps where no progress bar is drawn.

Under SLURM or `nohup` the output is a file, not a terminal, so the rich progress bar is
off and an epoch would pass in silence. Then every `log_every` optimiser steps one line
goes to the log (and the run's log.txt):

    epoch 2/10, step 140/500: loss 1.234, lr 1.00e-01, 45.3 clips/s, ETA epoch 0:01:02, run 0:09:40

loss is the epoch's running mean; clips/s counts every process's clips; the ETAs assume
the remaining steps take as long as this epoch's steps so far (validation not included).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import timedelta

from vidact import console


def _clock(seconds: float) -> str:
    return str(timedelta(seconds=round(max(seconds, 0.0))))


@dataclass
class StepLog:
    """Counts one epoch's steps and says when a line is due (see the module docstring)."""

    every: int
    epoch: int  # 0-based
    epochs: int
    steps_per_epoch: int
    first_batch: int = 0  # where a resumed epoch starts
    enabled: bool = field(default_factory=lambda: not console.progress_drawn())
    started: float = field(default_factory=lambda: time.perf_counter())

    def line(self, step: int, batch: int, loss: float, lr: float, clips: float) -> str | None:
        """The line after global step `step` (batch `batch` of the epoch done), or None
        when none is due; `clips` is the number of clips every process took this epoch."""
        if not self.enabled or step % self.every != 0:
            return None
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        per_step = elapsed / max(batch - self.first_batch, 1)
        left_epoch = (self.steps_per_epoch - batch) * per_step
        left_run = left_epoch + (self.epochs - self.epoch - 1) * self.steps_per_epoch * per_step
        return (
            f"epoch {self.epoch + 1}/{self.epochs}, step {batch}/{self.steps_per_epoch}: "
            f"loss {loss:.3f}, lr {lr:.2e}, {clips / elapsed:.1f} clips/s, "
            f"ETA epoch {_clock(left_epoch)}, run {_clock(left_run)}"
        )

    def maybe_log(self, step: int, batch: int, loss: float, lr: float, clips: float) -> None:
        text = self.line(step, batch, loss, lr, clips)
        if text is not None:
            console.info(text)
