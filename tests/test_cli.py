"""The command line: help, version, prepare synthetic, and user-error handling."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from vidact import __version__
from vidact.cli import app

runner = CliRunner()


def test_version_and_help() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout.strip() == f"vidact {__version__}"
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0 and "prepare" in result.stdout
    result = runner.invoke(app, ["prepare", "synthetic", "--help"])
    assert result.exit_code == 0
    assert "Examples" in result.stdout and "--videos-per-class" in result.stdout


def test_models_lists_registered_names() -> None:
    result = runner.invoke(app, ["models"])
    assert result.exit_code == 0
    assert "tsn_resnet18" in result.stdout.split()


def test_prepare_synthetic_writes_a_dataset_and_a_summary(tmp_path: Path) -> None:
    out = tmp_path / "syn"
    args = ["prepare", "synthetic", "--out", str(out), "--classes", "3"]
    result = runner.invoke(app, [*args, "--videos-per-class", "4", "--frames", "4", "--size", "32"])
    assert result.exit_code == 0, result.output
    assert "9 train, 3 val" in result.stdout
    assert len(list(out.glob("videos/*/*.mp4"))) == 12
    assert (out / "labels.txt").read_text().split() == [
        "translate_right",
        "translate_left",
        "translate_down",
    ]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vidact", *args], capture_output=True, text=True, timeout=120
    )


def test_user_error_is_one_line_and_exit_2(tmp_path: Path) -> None:
    result = _run("prepare", "synthetic", "--out", str(tmp_path / "x"), "--classes", "40")
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == ["error: --classes must be between 1 and 12"]
    assert "Traceback" not in result.stderr


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    result = _run("--debug", "prepare", "synthetic", "--out", str(tmp_path / "x"), "--frames", "1")
    assert result.returncode != 0
    assert "Traceback" in result.stderr and "--frames must be at least 2" in result.stderr
