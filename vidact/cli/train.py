"""`vidact train` and `vidact finetune`."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from vidact import console
from vidact.cli.app import app, user_errors

SetOption = Annotated[
    list[str] | None,
    typer.Option(
        "--set", "-s", help="Override a recipe key, e.g. --set optim.lr=0.05 (repeatable)."
    ),
]
OutOption = Annotated[
    Path | None,
    typer.Option("--out", "-o", help="Run folder (default runs/<recipe>/<timestamp>)."),
]
# --out is the name every command uses; --output, train's first name for it, still works.
OutputAlias = Annotated[Path | None, typer.Option("--output", hidden=True)]
OverwriteOption = Annotated[
    bool,
    typer.Option(
        "--overwrite",
        help="Replace an earlier run in --out (a new run refuses a non-empty folder).",
    ),
]


def _run(call: Callable[[], object]) -> None:
    """Run the training; a stop signal that saved a checkpoint exits with its own code
    (3, engine/signals.py), not the 2 of a user error."""
    from vidact.engine.trainer import TrainingStopped

    try:
        result = call()
    except TrainingStopped as exc:
        console.warn(str(exc))
        raise typer.Exit(code=exc.exit_code) from None
    _report(result)


def _report(result: object) -> None:
    from vidact.engine.trainer import TrainResult

    assert isinstance(result, TrainResult)
    if os.environ.get("RANK", "0") != "0":  # under torchrun only rank 0 reports
        return
    metrics = result.last_metrics
    rows = [("run folder", str(result.run_dir)), ("epochs", str(result.epochs_done))]
    if "val_top1" in metrics:
        rows.append(
            ("val top-1 / top-5", f"{metrics['val_top1']:.1f}% / {metrics['val_top5']:.1f}%")
        )
    if result.best_top1 is not None:
        rows.append(("best val top-1", f"{result.best_top1:.1f}%"))
    rows.append(("bad videos skipped", str(result.bad_videos)))
    rows.append(("time", f"{result.seconds:.1f} s"))
    console.summary_table("training finished", rows)


@app.command("train")
@user_errors
def train_command(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML file.")],
    set_: SetOption = None,
    resume: Annotated[
        str | None,
        typer.Option(help="'auto' (newest run of this recipe) or a checkpoint / run folder."),
    ] = None,
    out: OutOption = None,
    output: OutputAlias = None,
    overwrite: OverwriteOption = False,
) -> None:
    """Train a model from a recipe (one process, or DDP under torchrun).

    Exit codes: 0 finished; 2 a user error or a diverged run (one line says what to do);
    3 stopped by SIGINT/SIGTERM after saving a checkpoint (continue with --resume auto).

    Examples:
      vidact train recipes/quickstart.yaml
      vidact train recipes/ctnet_r50.yaml --set data.root=/data/k400 --set train.batch_size=8
      vidact train recipes/quickstart.yaml --resume auto
      vidact train recipes/quickstart.yaml --resume auto --set optim.lr=0.01
      vidact train recipes/quickstart.yaml --out runs/mine --overwrite
      torchrun --nproc_per_node 4 -m vidact train recipes/repflow_r50_kinetics.yaml
    """
    from vidact.engine.trainer import train
    from vidact.recipe import load_recipe

    loaded = load_recipe(recipe, set_ or [])
    _run(lambda: train(loaded, resume=resume, output=out or output, overwrite=overwrite))


@app.command("finetune")
@user_errors
def finetune_command(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML file for the new dataset.")],
    from_: Annotated[
        Path,
        typer.Option("--from", help="A vidact checkpoint or a plain state_dict (.pt/.pth)."),
    ],
    set_: SetOption = None,
    out: OutOption = None,
    output: OutputAlias = None,
    overwrite: OverwriteOption = False,
) -> None:
    """Fine-tune pretrained weights on a new dataset; the classifier is replaced to fit
    the new label map. Freeze with --set train.freeze=backbone (or bn).

    Examples:
      vidact finetune recipes/repflow_hmdb51_ft.yaml --from runs/kinetics/X/checkpoints/best.pt
      vidact finetune recipes/quickstart.yaml --from best.pt --set train.freeze=backbone
    """
    from vidact.engine.trainer import train
    from vidact.recipe import load_recipe

    loaded = load_recipe(recipe, set_ or [])
    _run(lambda: train(loaded, output=out or output, init_from=from_, overwrite=overwrite))
