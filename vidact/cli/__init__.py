"""The `vidact` command line: a thin Typer layer, one module per command group.

Each command parses arguments and calls ONE library function; no logic lives here.
User errors (`VidactError`) print one red line and exit 2; `--debug` shows the traceback.
"""

from __future__ import annotations

import sys

from vidact.cli import (  # noqa: F401  (register the commands)
    compare,
    evaluate,
    export,
    predict,
    prepare,
    report,
    train,
)
from vidact.cli.app import app

__all__ = ["app", "main"]


def main() -> None:
    """Console entry point."""
    try:
        app()
    except SystemExit as exc:  # typer/click exit codes pass through unchanged
        sys.exit(exc.code)
