"""`vidact report`: one page comparing training runs (vidact.engine.compare_runs)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vidact import console
from vidact.cli.app import app, user_errors

_SHOWN = ("run", "epochs", "val top-1", "val top-5", "best val top-1", "train time")


@app.command("report")
@user_errors
def report_command(
    run_dirs: Annotated[
        list[Path],
        typer.Argument(help="Run folders written by `vidact train`.", show_default=False),
    ],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Folder for report.png and report.md.")
    ] = Path("report"),
) -> None:
    """Compare training runs on one page: their curves (loss, top-1, learning rate) and
    final metrics, as report.png and report.md.

    Examples:
      vidact report runs/quickstart/<time> runs/quickstart_rgb/<time>
      vidact report runs/ctnet_r50/*/ --out reports/ctnet
    """
    from rich.table import Table

    from vidact.engine.compare_runs import COLUMNS, report_runs

    result = report_runs(list(run_dirs), out)
    table = Table(title="runs (every column: report.md)", title_justify="left")
    for name in _SHOWN:
        table.add_column(name, justify="left" if name == "run" else "right")
    for run in result.runs:
        cells = dict(zip(COLUMNS, run.row(), strict=True))
        table.add_row(*(cells[name] for name in _SHOWN))
    out_console = console.get_console()
    out_console.print(table)
    for path in (result.png, result.markdown):  # whole paths, never cut to the terminal
        out_console.print(f"wrote {path}", soft_wrap=True, markup=False)
