"""The root `vidact` command: global options, user-error handling, `models`.

No logic lives here: each command forwards typed arguments to `vidact.<area>.<function>`.
User errors (`VidactError`) print one red line and exit 2; `--debug` shows the traceback.
`vidact --help` lists the commands in the order of `COMMAND_ORDER` (a new command adds its
name there); bad option values read without pydantic's "Value error," prefix, and flags
show no value placeholder.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from typer.core import TyperGroup, TyperOption

from vidact import __version__, console
from vidact.errors import VidactError, pydantic_reason

F = TypeVar("F", bound=Callable[..., Any])

# The order `vidact --help` lists the commands in: the order people use them. A new command
# adds its name here (tests/test_cli.py fails for a registered command that is missing).
COMMAND_ORDER = (
    "prepare",
    "train",
    "finetune",
    "evaluate",
    "predict",
    "export",
    "compare-tvl1",
    "report",
    "models",
)


class _VidactGroup(TyperGroup):
    """The root command: commands in `COMMAND_ORDER`; option values that fail Typer's
    (pydantic) validation are reported in the validator's own words."""

    def list_commands(self, ctx: Any) -> list[str]:
        names = super().list_commands(ctx)
        unlisted = len(COMMAND_ORDER)
        return sorted(
            names, key=lambda n: COMMAND_ORDER.index(n) if n in COMMAND_ORDER else unlisted
        )

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except typer.BadParameter as exc:  # e.g. --mode frame: "'frame' is not one of ..."
            exc.message = pydantic_reason(exc.message)
            raise


def _flags_show_no_placeholder() -> None:
    """Typer's rich help prints a value placeholder after every option, `<bool>` after
    flags too, which take no value; flags show none (what click's plain help does).
    Typer has no setting for it, so its one method that renders the placeholder is wrapped."""
    render = TyperOption.display_type_rich

    def display_type_rich(self: TyperOption, ctx: Any) -> str | None:
        return None if self.is_flag and not self.count else render(self, ctx)

    TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign]


_flags_show_no_placeholder()

app = typer.Typer(
    cls=_VidactGroup,
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
