"""The dataset registry and the prepare settings declared once: what `vidact prepare <name>`
is generated from, and what the library call accepts."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.data.fake_datasets import make_folder
from vidact.cli import app
from vidact.data.prepare.options import PrepareOptions, RunOptions, split_settings
from vidact.data.prepare.pipeline import prepare
from vidact.data.sources import registry
from vidact.data.sources.registry import dataset_source, dataset_sources
from vidact.errors import VidactError

runner = CliRunner()
OFFICIAL = ["hmdb51", "kinetics", "sthv1", "sthv2", "ucf101"]


def test_the_registry_finds_every_source_module_by_itself() -> None:
    assert list(dataset_sources()) == sorted(["folder", "list", *OFFICIAL])
    for name, source in dataset_sources().items():
        assert source.name == name
        assert "Examples:" in source.help and f"vidact prepare {name}" in source.help
    assert [option.flag for option in dataset_source("folder").options] == [
        "--val-fraction",
        "--seed",
        "--frame-pattern",
        "--frame-rate",
    ]
    for name in ("sthv1", "sthv2", "ucf101"):  # the datasets that ship a labels file
        assert "--class-order" in [option.flag for option in dataset_source(name).options]
    assert not dataset_source("folder").annotations


def test_a_new_source_module_is_registered_without_touching_anything_else(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "fake_sources"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "mine.py").write_text(
        "from vidact.data.sources.registry import DatasetSource\n"
        "SOURCES = (DatasetSource('mine', print, 'Mine.\\n\\nExamples:\\n  x'),)\n"
    )
    (package / "helpers.py").write_text("VALUE = 1\n")  # a module without SOURCES
    monkeypatch.syspath_prepend(str(tmp_path))
    import vidact.data.sources as real

    monkeypatch.setattr(real, "__path__", [str(package)])
    monkeypatch.setattr(real, "__name__", "fake_sources")
    registry.dataset_sources.cache_clear()
    try:
        assert list(registry.dataset_sources()) == ["mine"]
        assert registry.dataset_source("mine").summary == "Mine."
    finally:
        monkeypatch.undo()
        registry.dataset_sources.cache_clear()
    assert "mine" not in registry.dataset_sources()


def test_an_unknown_dataset_is_one_line_with_a_suggestion() -> None:
    with pytest.raises(VidactError, match=r"unknown dataset 'kinetic' \(did you mean 'kinetics'"):
        dataset_source("kinetic")
    with pytest.raises(VidactError, match="kinetics needs --annotations"):
        prepare("kinetics", "videos", None, "out")


def test_settings_split_into_their_dataclasses_and_unknown_ones_are_refused() -> None:
    options, run, own = split_settings(
        {"mode": "none", "quality": 50, "workers": 0, "shard": "1/2", "seed": 3}, ["seed"]
    )
    assert options == PrepareOptions(mode="none", quality=50)
    assert run == RunOptions(workers=0, shard="1/2")
    assert own == {"seed": 3}
    with pytest.raises(VidactError, match="unknown prepare setting 'qualty'"):
        split_settings({"qualty": 50})
    with pytest.raises(VidactError, match="unknown prepare setting 'seed'"):
        split_settings({"seed": 1})  # another dataset's own option


@pytest.mark.parametrize("dataset", ["folder", "list", *OFFICIAL])
def test_every_setting_with_a_flag_is_an_option_of_every_command(dataset: str) -> None:
    result = runner.invoke(app, ["prepare", dataset, "--help"], terminal_width=200)
    assert result.exit_code == 0
    for kind in (PrepareOptions, RunOptions):
        for field in dataclasses.fields(kind):
            for flag in (field.metadata["flag"] or "").split("/"):
                assert not flag or flag in result.stdout, (dataset, flag)
    for option in dataset_source(dataset).options:
        assert option.flag in result.stdout
    assert ("--annotations" in result.stdout) == dataset_source(dataset).annotations


def test_command_line_values_reach_the_pipeline(tmp_path: Path) -> None:
    data = make_folder(tmp_path / "ds", {"cats": 2, "dogs": 2})
    out = tmp_path / "out"
    args = ["prepare", "folder", "--videos", str(data.videos), "--out", str(out)]
    args += ["--short-side", "24", "--quality", "50", "--mode", "FRAMES", "--workers", "0"]
    args += ["--val-fraction", "0.5", "--no-disk-check", "--shard", "1/1"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    settings = json.loads((out / "prepare.json").read_text())
    assert settings == {
        "dataset": "folder",
        "mode": "frames",
        "short_side": 24,
        "fps": None,
        "quality": 50,
    }
    assert (out / "val.jsonl").is_file()  # --val-fraction reached the folder source
    assert (out / ".prepare" / "done-1of1.jsonl").is_file()  # --shard reached the pipeline
    bad = runner.invoke(app, [*args[:6], "--mode", "jpeg"])
    assert bad.exit_code == 2 and "jpeg" in bad.output
