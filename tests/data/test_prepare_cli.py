"""`vidact prepare <dataset>` on the command line: help, summary table, user errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.data.fake_datasets import make_kinetics, make_ucf101
from vidact.cli import app

runner = CliRunner()


@pytest.mark.parametrize("dataset", ["kinetics", "hmdb51", "ucf101", "sthv1", "sthv2", "folder"])
def test_every_dataset_command_has_help_with_examples(dataset: str) -> None:
    result = runner.invoke(app, ["prepare", dataset, "--help"])
    assert result.exit_code == 0
    for text in ("Examples", f"vidact prepare {dataset}", "--shard", "--no-disk-check", "--mode"):
        assert text in result.stdout


def test_prepare_kinetics_prints_a_summary(tmp_path: Path) -> None:
    data = make_kinetics(tmp_path / "k", missing=1)
    out = tmp_path / "out"
    args = ["prepare", "kinetics", "--videos", str(data.videos), "--annotations"]
    args += [str(data.annotations), "--out", str(out), "--short-side", "32", "--workers", "0"]
    result = runner.invoke(app, args)
    # 1 of 9 missing is 11%, more than --max-failed's default 10%: the summary, then exit 3
    assert result.exit_code == 3, result.output
    for text in ("kinetics dataset", "8 now, 0 skipped", "0 unreadable, 1 missing", "train 5"):
        assert text in result.stdout
    assert "1 of 9 videos failed or are missing (11.1%, more than --max-failed 0.1)" in (
        result.output
    )
    again = runner.invoke(app, [*args, "--max-failed", "0.2"])
    assert again.exit_code == 0 and "1 now" not in again.stdout
    assert "0 now, 8 skipped" in again.stdout  # the missing clip is retried, still missing


def test_user_errors_are_one_line(tmp_path: Path) -> None:
    data = make_ucf101(tmp_path / "u", groups=2)
    (data.annotations / "classInd.txt").write_text("1 ApplyEyeMakeup\n3 YoYo\n")
    result = subprocess.run(
        [sys.executable, "-m", "vidact", "prepare", "ucf101", "--videos", str(data.videos),
         "--annotations", str(data.annotations), "--out", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "classInd.txt: class indices must run 1..2" in lines[0]
    shard = runner.invoke(
        app,
        ["prepare", "folder", "--videos", str(data.videos), "--out", str(tmp_path / "o"),
         "--shard", "0/4"],
    )  # fmt: skip
    assert shard.exit_code == 2
