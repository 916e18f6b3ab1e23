"""The `vidact` command line. Parses arguments and calls ONE library function per command.

No logic lives here: each command forwards typed arguments to `vidact.<area>.<function>`.
User errors (`VidactError`) print one red line and exit 2; `--debug` shows the traceback.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from vidact import __version__, console
from vidact.errors import VidactError

F = TypeVar("F", bound=Callable[..., Any])

app = typer.Typer(
    name="vidact",
    help=(
        "Video action recognition: prepare datasets, train and evaluate Representation-Flow "
        "and CT-Net models from YAML recipes.\n\n"
        "Example:  vidact prepare synthetic --out data/synthetic"
    ),
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
prepare_app = typer.Typer(
    help="Turn annotations + videos into manifests (and frames). Example: "
    "vidact prepare synthetic --out data/synthetic",
    no_args_is_help=True,
)
app.add_typer(prepare_app, name="prepare")

_debug = {"on": False}


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"vidact {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version_callback, is_eager=True, help="Print the version."
        ),
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only warnings and errors.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug messages too.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")] = False,
    log_file: Annotated[
        Path | None, typer.Option("--log-file", help="Also write log lines to this file.")
    ] = None,
) -> None:
    _debug["on"] = debug
    console.configure(quiet=quiet, verbose=verbose, log_file=log_file)


def user_errors(func: F) -> F:
    """Turn `VidactError` into one red line + exit 2 (traceback only with --debug)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except VidactError as exc:
            if _debug["on"]:
                raise
            console.error_line(str(exc))
            raise typer.Exit(code=2) from None
        except KeyboardInterrupt:
            console.error_line("interrupted")
            raise typer.Exit(code=130) from None

    return wrapper  # type: ignore[return-value]


@app.command("models")
@user_errors
def models_command() -> None:
    """List the registered model names (for `model.name` in a recipe).

    Example:  vidact models
    """
    from vidact.models import list_models

    for name in list_models():
        typer.echo(name)


@prepare_app.command("synthetic")
@user_errors
def prepare_synthetic(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path(
        "data/synthetic"
    ),
    classes: Annotated[int, typer.Option(help="Number of motion classes (1-12).")] = 8,
    videos_per_class: Annotated[int, typer.Option(help="Videos per class (train + val).")] = 50,
    frames: Annotated[int, typer.Option(help="Frames per video.")] = 16,
    size: Annotated[int, typer.Option(help="Frame width and height in pixels.")] = 64,
    seed: Annotated[int, typer.Option(help="Random seed: same seed, same dataset.")] = 0,
    val_fraction: Annotated[float, typer.Option(help="Share of each class kept for val.")] = 0.2,
    gt_flow_pairs: Annotated[
        int, typer.Option(help="Frame pairs per val video with exact flow stored.")
    ] = 3,
    workers: Annotated[
        int | None, typer.Option(help="Processes (default: up to 4, one per core).")
    ] = None,
) -> None:
    """Generate the motion-only synthetic dataset: MP4 videos, manifests, label map.

    Classes differ by motion only (translate, rotate, zoom), so one frame says nothing
    about the class while two frames do. Val videos also store exact ground-truth flow.
    Re-running the same command resumes where it stopped.

    Examples:
      vidact prepare synthetic --out data/synthetic
      vidact prepare synthetic --out data/tiny --classes 4 --videos-per-class 10 --size 32
    """
    from vidact.data.sources.synthetic import SyntheticSpec, make_synthetic_dataset

    spec = SyntheticSpec(
        classes=classes,
        videos_per_class=videos_per_class,
        frames=frames,
        size=size,
        seed=seed,
        val_fraction=val_fraction,
        gt_flow_pairs=gt_flow_pairs,
    )
    summary = make_synthetic_dataset(out, spec, workers=workers)
    console.summary_table(
        "synthetic dataset",
        [
            ("folder", str(summary.out)),
            ("classes", f"{len(summary.classes)}: {', '.join(summary.classes)}"),
            ("videos", f"{summary.train} train, {summary.val} val"),
            ("written / resumed", f"{summary.written} / {summary.skipped}"),
            ("disk", console.human_bytes(summary.bytes_on_disk)),
            ("time", f"{summary.seconds:.1f} s"),
        ],
    )


def main() -> None:
    """Console entry point."""
    try:
        app()
    except SystemExit as exc:  # typer/click exit codes pass through unchanged
        sys.exit(exc.code)
