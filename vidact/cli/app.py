"""The root `vidact` command: global options, user-error handling, `models`.

No logic lives here: each command forwards typed arguments to `vidact.<area>.<function>`.
User errors (`VidactError`) print one red line and exit 2; `--debug` shows the traceback.
"""

from __future__ import annotations

import functools
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
