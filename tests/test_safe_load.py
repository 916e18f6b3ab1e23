"""Loading a file from elsewhere runs no code: every entry point refuses a pickle that would.

Each test writes a checkpoint whose pickle calls `os.system("touch MARKER")` when loaded
unsafely, hands it to one entry point of the command line, and checks that the marker
was never created and that the user sees exactly one line saying the file was refused.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from vidact.cli import app
from vidact.engine.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from vidact.errors import VidactError
from vidact.safe_load import load_tensors_file

runner = CliRunner()


class _RunsCommand:
    """Pickles as a call of os.system: what a malicious shared checkpoint holds."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (self.command,))


def _trap(tmp_path: Path, wrapped: bool = True) -> tuple[Path, Path]:
    """(the file, the marker its pickle would create)."""
    marker = tmp_path / "MARKER"
    payload = _RunsCommand(f"touch {marker}")
    path = tmp_path / "shared.pth"
    state = {"conv.weight": torch.zeros(2, 2)}
    obj = {"state_dict": state, "arch": payload} if wrapped else {"model": payload}
    torch.save(obj, path)
    return path, marker


def _recipe(tmp_path: Path, root: Path, model: dict[str, object]) -> Path:
    recipe = {
        "name": "t",
        "model": model,
        "data": {"root": str(root), "num_frames": 2, "short_side": 32, "input_size": 24,
                 "num_workers": 0},
        "train": {"epochs": 1, "batch_size": 4},
        "output": {"dir": str(tmp_path / "runs")},
    }  # fmt: skip
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def _assert_refused(args: list[str], marker: Path) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert "refused" in lines[0] and "posix.system" in lines[0], lines[0]
    assert not marker.exists()


def test_evaluate_refuses_a_file_that_would_run_code(tmp_path: Path) -> None:
    path, marker = _trap(tmp_path)
    _assert_refused(["evaluate", str(path)], marker)


def test_finetune_from_refuses_it(synthetic_root: Path, tmp_path: Path) -> None:
    path, marker = _trap(tmp_path)
    recipe = _recipe(tmp_path, synthetic_root, {"name": "tiny_test_net_safe"})
    _assert_refused(["finetune", str(recipe), "--from", str(path)], marker)


def test_resume_refuses_it(synthetic_root: Path, tmp_path: Path) -> None:
    path, marker = _trap(tmp_path, wrapped=False)
    recipe = _recipe(tmp_path, synthetic_root, {"name": "tiny_test_net_safe"})
    _assert_refused(["train", str(recipe), "--resume", str(path)], marker)


def test_model_weights_refuses_it(synthetic_root: Path, tmp_path: Path) -> None:
    path, marker = _trap(tmp_path)
    recipe = _recipe(tmp_path, synthetic_root, {"name": "tsn_resnet18", "weights": str(path)})
    _assert_refused(["train", str(recipe)], marker)


def test_own_checkpoints_round_trip_with_rng_states(tmp_path: Path) -> None:
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    saved = rng_state()
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"model": {"w": torch.ones(2)}, "rng": saved, "recipe": {"a": [1]}})
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    state = load_checkpoint(path)
    set_rng_state(state["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected
    assert state["recipe"] == {"a": [1]}


def test_older_checkpoints_with_numpy_rng_arrays_still_load(tmp_path: Path) -> None:
    path = tmp_path / "old.pt"
    torch.save({"rng": {"numpy": np.random.get_state()}}, path)
    assert isinstance(load_tensors_file(path)["rng"]["numpy"][1], np.ndarray)


def test_a_missing_or_broken_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(VidactError, match="checkpoint not found"):
        load_tensors_file(tmp_path / "nothing.pt")
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(VidactError, match=r"bad.pt: not a readable checkpoint") as info:
        load_tensors_file(tmp_path / "bad.pt")
    assert "\n" not in str(info.value)


# A registered tiny model (the engine tests' one, under its own name so that either file
# can run alone).
def _register() -> None:
    from tests.engine.tiny import tiny_test_net
    from vidact.models import list_models, register_model

    if "tiny_test_net_safe" not in list_models():
        register_model("tiny_test_net_safe")(tiny_test_net)


_register()
