"""Load a checkpoint written by `vidact train` for inference (`predict`, `export`).

The model, its weights and its view spec come from `vidact.engine.evaluator.load_member`
(the checkpoint's recipe, EMA weights when asked for); this adds the one line for a file
that is not a vidact checkpoint, named for these commands rather than for `evaluate`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vidact.engine.checkpoint import FORMAT, load_checkpoint
from vidact.engine.evaluator import Member, load_member
from vidact.errors import VidactError

__all__ = ["load_trained"]


def load_trained(
    checkpoint: Path,
    settings: dict[str, Any] | None = None,
    use_ema: bool | None = None,
    overrides: tuple[str, ...] = (),
    recipe: Path | None = None,
) -> Member:
    """The checkpoint's member (model in eval mode, labels, view spec). `recipe`: for a
    file without one (the authors' released weights), as in `evaluate --recipe`."""
    if recipe is None:
        state = load_checkpoint(checkpoint)
        if state.get("format") != FORMAT or "recipe" not in state or "labels" not in state:
            raise VidactError(
                f"{checkpoint}: not a vidact checkpoint (no recipe or class names inside); "
                "give a checkpoint written by `vidact train`, or a recipe with --recipe"
            )
        del state
    return load_member(checkpoint, settings or {}, use_ema, overrides, recipe)
