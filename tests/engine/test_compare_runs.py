"""`vidact report`: one page (PNG + markdown) comparing run folders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import tests.engine.tiny  # noqa: F401  (registers tiny_test_net)
from tests.engine.test_pictures import png_size
from tests.engine.test_trainer import make_recipe
from vidact.cli import app
from vidact.engine.compare_runs import load_run, report_figure, report_runs
from vidact.engine.run_folder import write_metrics
from vidact.engine.trainer import train

runner = CliRunner()


@pytest.fixture(scope="module")
def two_runs(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    out = tmp_path_factory.mktemp("runs")
    fast = make_recipe(synthetic_root, out, optim__lr=0.1).model_copy(update={"name": "fast"})
    slow = make_recipe(synthetic_root, out, optim__lr=0.01, train__epochs=1)
    slow = slow.model_copy(update={"name": "slow"})
    return [train(fast).run_dir, train(slow).run_dir]


def _last(run_dir: Path) -> dict[str, float]:
    return json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])


def test_report_writes_a_picture_and_a_page_with_both_runs_final_metrics(
    two_runs: list[Path], tmp_path: Path
) -> None:
    result = runner.invoke(app, ["report", *map(str, two_runs), "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    page = (tmp_path / "r" / "report.md").read_text()
    assert "![curves and final metrics](report.png)" in page
    rows = [line for line in page.splitlines() if line.startswith(("| fast |", "| slow |"))]
    assert len(rows) == 2
    for row, run_dir, epochs in zip(rows, two_runs, (2, 1), strict=True):
        last = _last(run_dir)
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[1:6] == [
            "tiny_test_net", str(epochs), f"{last['train_loss']:.3f}",
            f"{last['train_top1']:.1f}%", f"{last['val_loss']:.3f}",
        ]  # fmt: skip
        assert cells[6:8] == [f"{last['val_top1']:.1f}%", f"{last['val_top5']:.1f}%"]
    assert "- `optim.lr`: 0.1 | 0.01" in page and "- `train.epochs`: 2 | 1" in page
    width, height = png_size(tmp_path / "r" / "report.png")
    assert width >= 1200 and height >= 450
    assert "fast" in result.output and f"wrote {tmp_path / 'r' / 'report.md'}" in result.output


def test_the_picture_draws_every_run(two_runs: list[Path]) -> None:
    runs = [load_run(p) for p in two_runs]
    loss = report_figure(runs).axes[0]
    drawn = {line.get_label(): list(line.get_ydata()) for line in loss.get_lines()}
    for run in runs:
        assert drawn[f"{run.label} val"] == [m["val_loss"] for m in run.history]
        assert drawn[f"{run.label} train"] == [m["train_loss"] for m in run.history]


def test_two_runs_of_one_recipe_are_told_apart(two_runs: list[Path], tmp_path: Path) -> None:
    copy = tmp_path / "fast-again"
    copy.mkdir()
    write_metrics(copy, [_last(two_runs[0])])
    (copy / "recipe.yaml").write_text((two_runs[0] / "recipe.yaml").read_text())
    result = report_runs([two_runs[0], copy], tmp_path / "r")
    assert [r.label for r in result.runs] == [f"fast {two_runs[0].name}", "fast fast-again"]


def test_a_folder_that_is_not_a_run_gets_one_line(two_runs: list[Path], tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "metrics.jsonl").write_text("")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "metrics.jsonl").write_text('{"epoch": 1}\n{"epoch": 2, \n')
    cases = {
        empty: "is not a run folder (no metrics.jsonl)",
        tmp_path / "missing": "no such folder",
        two_runs[0].parent: f"holds 1 run(s) ({two_runs[0].name}); name one",
        unfinished: "has not finished an epoch yet",
        broken: "metrics.jsonl line 2 is not JSON",
    }
    for folder, words in cases.items():
        result = runner.invoke(app, ["report", str(folder), "--out", str(tmp_path / "r")])
        assert result.exit_code == 2
        assert words in " ".join(result.output.split()), result.output
        assert "Traceback" not in result.output
    assert not (tmp_path / "r").exists()
