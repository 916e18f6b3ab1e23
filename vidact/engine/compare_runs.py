"""`vidact report RUN_DIR [RUN_DIR...]`: one page comparing training runs.

Reads each run folder's metrics.jsonl (one line per epoch) and recipe.yaml (its name and
model; read with yaml.safe_load, nothing runs), and writes into `out`:

    report.png   the runs' curves in curves.png's three panels (loss, top-1, learning
                 rate against epochs; one colour a run, train dashed, val solid) above a
                 table of their final metrics
    report.md    the picture, the same table in markdown, the run folders and the recipe
                 settings that differ between the runs (a key a run's recipe.yaml lacks,
                 e.g. one written before the setting existed, shows as "-")

A folder that is not a run folder gets one line saying what it is (missing, a folder of
runs, a run that has not finished an epoch) and what to pass instead.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from matplotlib.figure import Figure

from vidact.atomic import atomic_write_text
from vidact.engine.curves import add_panels, draw_curves, finish_panels
from vidact.errors import VidactError
from vidact.figures import new_figure, save_png

REPORT_PNG = "report.png"
REPORT_MD = "report.md"
METRICS = "metrics.jsonl"
COLUMNS = (
    "run", "model", "epochs", "train loss", "train top-1", "val loss", "val top-1",
    "val top-5", "best val top-1", "train time",
)  # fmt: skip


@dataclass(frozen=True)
class RunSummary:
    """One run folder as the report shows it."""

    path: Path
    label: str  # the recipe name, with the folder's name where two runs share it
    model: str
    history: list[dict[str, Any]]  # metrics.jsonl, one dict per epoch
    settings: dict[str, Any]  # recipe.yaml flattened to dotted keys ("model.flow": False)

    def row(self) -> list[str]:
        """The run's cells of COLUMNS: its last epoch, and its last validation."""
        last = self.history[-1]
        validated = [m for m in self.history if m.get("val_top1") is not None]
        val = validated[-1] if validated else {}
        best = max(validated, key=lambda m: float(m["val_top1"]), default=None)
        seconds = sum(float(m.get("epoch_seconds", 0.0)) for m in self.history)
        return [
            self.label, self.model, str(last["epoch"]), _number(last.get("train_loss"), "{:.3f}"),
            _number(last.get("train_top1"), "{:.1f}%"), _number(val.get("val_loss"), "{:.3f}"),
            _number(val.get("val_top1"), "{:.1f}%"), _number(val.get("val_top5"), "{:.1f}%"),
            "-" if best is None else f"{float(best['val_top1']):.1f}% (epoch {best['epoch']})",
            f"{seconds:.0f} s",
        ]  # fmt: skip


@dataclass(frozen=True)
class ReportResult:
    runs: list[RunSummary]
    png: Path
    markdown: Path


def _number(value: Any, form: str) -> str:
    return "-" if value is None else form.format(float(value))


def _not_a_run(path: Path) -> VidactError:
    """The one line for a folder without metrics.jsonl, naming the runs inside if any."""
    if not path.is_dir():
        return VidactError(f"{path}: no such folder; give a run folder (runs/<recipe>/<time>/)")
    inside = sorted(p.parent for p in path.glob(f"*/{METRICS}"))
    if inside:
        names = ", ".join(p.name for p in inside[-3:])
        return VidactError(
            f"{path} is not a run folder but holds {len(inside)} run(s) ({names}); "
            f"name one, e.g. `vidact report {inside[-1]}`"
        )
    return VidactError(
        f"{path} is not a run folder (no {METRICS}); give a folder that `vidact train` "
        "wrote, runs/<recipe>/<time>/"
    )


def _read_history(path: Path) -> list[dict[str, Any]]:
    history = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as exc:
            raise VidactError(f"{path} line {number} is not JSON ({exc.msg})") from None
        if not isinstance(entry, dict) or "epoch" not in entry:
            raise VidactError(f"{path} line {number} is not an epoch's metrics")
        history.append(entry)
    if not history:
        raise VidactError(f"{path} is empty: the run has not finished an epoch yet")
    return history


def load_run(path: str | Path) -> RunSummary:
    """The run folder `path` (see the module docstring for what is refused)."""
    path = Path(path)
    if not (path / METRICS).is_file():
        raise _not_a_run(path)
    history = _read_history(path / METRICS)
    recipe: dict[str, Any] = {}
    if (path / "recipe.yaml").is_file():
        try:
            loaded = yaml.safe_load((path / "recipe.yaml").read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise VidactError(f"{path / 'recipe.yaml'} is not YAML: {exc}") from None
        recipe = loaded if isinstance(loaded, dict) else {}
    settings = _flatten(recipe)
    name = str(settings.get("name") or path.parent.name)
    return RunSummary(path, name, str(settings.get("model.name", "?")), history, settings)


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def recipe_differences(runs: list[RunSummary]) -> list[str]:
    """'key: value | value ...' (one value a run, in order) for every recipe setting that
    differs between the runs, but the recipe's name."""
    keys = sorted({k for r in runs for k in r.settings} - {"name"})
    return [
        f"{key}: " + " | ".join(str(r.settings.get(key, "-")) for r in runs)
        for key in keys
        if len({json.dumps(r.settings.get(key), default=str) for r in runs}) > 1
    ]


def _unique_labels(runs: list[RunSummary]) -> list[RunSummary]:
    """Runs of the same recipe are told apart by their folder's name."""
    labels = [r.label for r in runs]
    return [
        RunSummary(r.path, f"{r.label} {r.path.name}", r.model, r.history, r.settings)
        if labels.count(r.label) > 1
        else r
        for r in runs
    ]


def report_figure(runs: list[RunSummary]) -> Figure:
    """The runs' curves above their final-metrics table (see the module docstring)."""
    table_height = 0.45 + 0.3 * len(runs)
    figure = new_figure(15.0, 4.4 + table_height)
    parts = figure.subfigures(2, 1, squeeze=False, height_ratios=[4.4, table_height])
    top, bottom = parts[0, 0], parts[1, 0]
    axes = add_panels(top)
    colours = [f"C{i % 10}" for i in range(len(runs))]
    for run, colour in zip(runs, colours, strict=True):
        draw_curves(axes, run.history, colour, run.label)
    finish_panels(axes, [r.history for r in runs])
    top.suptitle(f"{len(runs)} run(s): train dashed, validation solid")
    table_axes = bottom.add_subplot()
    table_axes.set_axis_off()
    table = table_axes.table(
        cellText=[r.row() for r in runs], colLabels=COLUMNS, loc="center", cellLoc="center"
    )
    table.auto_set_font_size(False)
    table.set_fontsize(9)
    for (row, _), cell in table.get_celld().items():
        if row > 0:
            cell.get_text().set_color(colours[row - 1])
    return figure


def report_markdown(runs: list[RunSummary], picture: str) -> str:
    """The report page: the picture, the final-metrics table, the folders."""
    lines = [
        "# Training runs compared",
        "",
        f"![curves and final metrics]({picture})",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
        *("| " + " | ".join(r.row()) + " |" for r in runs),
        "",
        "Run folders:",
        "",
        *(f"- {r.label}: `{r.path}`" for r in runs),
        "",
    ]
    differences = recipe_differences(runs)
    if differences:
        order = " | ".join(r.label for r in runs)
        lines += [f"Recipe settings that differ ({order}):", ""]
        lines += [f"- `{d.split(': ', 1)[0]}`: {d.split(': ', 1)[1]}" for d in differences]
        lines.append("")
    return "\n".join(lines)


def report_runs(run_dirs: list[str | Path], out: str | Path) -> ReportResult:
    """Compare the runs of `run_dirs` on one page: report.png and report.md in `out`."""
    if not run_dirs:
        raise VidactError("give at least one run folder, e.g. runs/quickstart/<time>/")
    runs = _unique_labels([load_run(path) for path in run_dirs])
    out = Path(out)
    png = save_png(report_figure(runs), out / REPORT_PNG)
    markdown = out / REPORT_MD
    atomic_write_text(markdown, report_markdown(runs, REPORT_PNG))
    return ReportResult(runs, png, markdown)
