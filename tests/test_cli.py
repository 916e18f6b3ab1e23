"""The command line: help, version, prepare synthetic, and user-error handling."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from vidact import __version__
from vidact.cli import app
from vidact.cli.app import COMMAND_ORDER
from vidact.errors import pydantic_reason
from vidact.recipe import RecipeError, load_recipe

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


def _help(*command: str) -> str:
    result = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    return result.stdout


def _commands() -> list[str]:
    """Command names in the order `vidact --help` lists them."""
    text = _help()
    panel = text[text.index("Commands") :]
    return re.findall(r"^│ ([a-z][a-z0-9-]*) ", panel, flags=re.MULTILINE)


def test_commands_are_listed_in_the_order_people_use_them() -> None:
    registered = typer.main.get_command(app).commands  # type: ignore[attr-defined]
    unlisted = set(registered) - set(COMMAND_ORDER)
    assert not unlisted, f"add {sorted(unlisted)} to COMMAND_ORDER in vidact/cli/app.py"
    assert _commands() == [name for name in COMMAND_ORDER if name in registered]
    assert _commands()[:4] == ["prepare", "train", "finetune", "evaluate"]


def test_flags_show_no_value_placeholder_in_help() -> None:
    pages = [("evaluate",), ("train",), ("compare-tvl1",), ("prepare", "ucf101"), ()]
    for command in pages:
        text = _help(*command)
        assert "<bool>" not in text, command
        assert "--help" in text and "<" in text  # options that take a value keep theirs
    assert re.search(r"--profile\s+Report parameters", _help("evaluate"))
    assert re.search(r"--disk-check\s+--no-disk-check\s+Refuse", _help("prepare", "ucf101"))


def test_a_bad_option_value_reads_without_pydantic_prefix(tmp_path: Path) -> None:
    args = ["prepare", "folder", "--videos", str(tmp_path), "--out", str(tmp_path / "o")]
    result = runner.invoke(app, [*args, "--mode", "frame"], env={"COLUMNS": "200"})
    assert result.exit_code == 2
    assert "Invalid value for '--mode': 'frame' is not one of 'none', 'frames'" in result.output
    assert "Value error" not in result.output


def test_a_set_typo_names_set_not_the_recipe_file(tmp_path: Path) -> None:
    result = _run("train", "recipes/quickstart.yaml", "--set", "optimizer.lr=0.1")
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == ["error: --set optimizer.lr: unknown key 'optimizer' (did you mean 'optim'?)"]
    # A typo inside a section, and a --set that creates a nested section, name it too.
    with pytest.raises(RecipeError, match=r"^--set optim\.lrr: unknown key 'optim\.lrr'"):
        load_recipe("recipes/quickstart.yaml", ["optim.lrr=0.1"])
    with pytest.raises(RecipeError, match=r"^--set trian\.x\.y: unknown key 'trian'"):
        load_recipe("recipes/quickstart.yaml", ["trian.x.y=1"])
    # A mistake in the file is still the file's, whatever --set adds.
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: {name: repflow_smallcnn}\noptimizer: {lr: 0.1}\n")
    with pytest.raises(RecipeError, match=f"^{recipe}: unknown key 'optimizer'"):
        load_recipe(recipe, ["optim.lr=0.2", "optimizer.momentum=0.5"])


def test_train_takes_out_and_still_the_old_output(tmp_path: Path) -> None:
    text = _help("train")
    assert re.search(r"--out\s+-o\s+<path>\s+Run folder", text) and "--output" not in text
    assert "--out" in _help("finetune") and "--output" not in _help("finetune")
    for flag in ("--out", "--output", "-o"):
        # The option parses (the bad --set after it is what fails), nothing is written.
        args = ["train", "recipes/quickstart.yaml", flag, str(tmp_path / "run")]
        result = runner.invoke(app, [*args, "--set", "trian.epochs=1"])
        assert result.exit_code == 2 and "--set trian.epochs" in result.output, flag
    assert not (tmp_path / "run").exists()


def test_recipe_and_model_errors_read_without_pydantic_prefix() -> None:
    with pytest.raises(RecipeError) as caught:
        load_recipe("recipes/quickstart.yaml", ["eval.crops=7"])
    assert str(caught.value).startswith("--set eval.crops: 'eval.crops': crops must be 1, 3, 10")
    assert "Value error" not in str(caught.value)
    assert pydantic_reason("Value error, crops must be 1") == "crops must be 1"
    assert pydantic_reason("Assertion failed, x > 0") == "x > 0"
    assert pydantic_reason("Input should be 'a'") == "Input should be 'a'"
