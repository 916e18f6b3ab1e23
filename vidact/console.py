"""The one place that owns terminal output: rich console, progress bars, log files.

Library code reports through `get_console()` / `progress()` / `info()` / `warn()`, never
`print()`. The CLI configures verbosity and an optional log file once, at start-up.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

_state: dict[str, Any] = {"quiet": False, "verbose": False}
_console = Console(stderr=False, highlight=False)
_err_console = Console(stderr=True, highlight=False)
logger = logging.getLogger("vidact")


def get_console() -> Console:
    """The shared stdout console (tables, summaries)."""
    return _console


def configure(
    *, quiet: bool = False, verbose: bool = False, log_file: str | Path | None = None
) -> None:
    """Set verbosity for the whole process and optionally mirror log lines into a file."""
    _state["quiet"] = quiet
    _state["verbose"] = verbose
    logger.handlers.clear()
    logger.propagate = False
    level = logging.DEBUG if verbose else (logging.WARNING if quiet else logging.INFO)
    logger.setLevel(logging.DEBUG)
    handler = RichHandler(console=_err_console, show_path=False, show_time=False, markup=False)
    handler.setLevel(level)
    logger.addHandler(handler)
    if log_file is not None:
        add_log_file(log_file)


def add_log_file(path: str | Path) -> None:
    """Append every log line (DEBUG and up) to `path`, e.g. a run folder's log.txt."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger.addHandler(handler)


def info(message: str) -> None:
    logger.info(message)


def debug(message: str) -> None:
    logger.debug(message)


def warn(message: str) -> None:
    logger.warning(message)


def error_line(message: str) -> None:
    """One red line on stderr: the CLI's answer to a user error."""
    _err_console.print(
        f"[bold red]error:[/] {escape(message)}", markup=True, highlight=False, soft_wrap=True
    )


def progress_drawn() -> bool:
    """Whether progress bars are drawn: not quiet, and stderr is a terminal. Where they
    are not (a SLURM log, a pipe), long loops log plain lines instead (train.log_every)."""
    return not _state["quiet"] and _err_console.is_terminal


def new_progress(transient: bool = False) -> Progress:
    """A rich Progress with count, throughput-friendly columns and ETA, drawn on stderr."""
    return Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[status]}"),
        console=_err_console,
        transient=transient,
        disable=not progress_drawn(),
    )


@contextlib.contextmanager
def progress_task(description: str, total: int | None) -> Iterator[Any]:
    """Context manager yielding `advance(n=1, status="")` for a single progress bar."""
    with new_progress() as bar:
        task = bar.add_task(description, total=total, status="")

        def advance(n: int = 1, status: str = "") -> None:
            bar.update(task, advance=n, status=status)

        yield advance


configure()


def summary_table(title: str, rows: list[tuple[str, str]]) -> None:
    """The end-of-command summary: a two-column rich table on stdout."""
    from rich.table import Table

    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    for key, value in rows:
        table.add_row(key, value)
    _console.print(table)


def human_bytes(count: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(count) < 1024 or unit == "TB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} TB"
