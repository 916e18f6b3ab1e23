"""Options that several commands share, defined once (same flag, same help)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

CropsOption = Annotated[
    str | None, typer.Option(help="1 (centre), 3 (along the long side), 10, or random:K.")
]
EmaOption = Annotated[
    bool | None, typer.Option("--ema/--no-ema", help="Use the EMA weights when present.")
]
CheckpointSetOption = Annotated[
    list[str] | None,
    typer.Option(
        "--set", "-s", help="Override a key of the checkpoint's recipe, e.g. data.root=..."
    ),
]
ReleasedRecipeOption = Annotated[
    Path | None,
    typer.Option(help="Recipe for a checkpoint without one (the authors' released files)."),
]
