"""vidact export: TorchScript and ONNX of one model of each family (rep-flow, CT-Net, TSN)
agree with eager PyTorch on clips of another batch size; the JSON beside them; a failed
parity exits 1; ONNX missing says how to install it."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch
from typer.testing import CliRunner

import tests.engine.tiny  # noqa: F401  (registers tiny_test_net)
from tests.engine.test_predict import save_tiny_checkpoint
from vidact.cli import app
from vidact.engine import export as export_module
from vidact.engine.export import export
from vidact.engine.trained import load_trained
from vidact.errors import VidactError

runner = CliRunner()

# The smallest configuration of one registered model per family: 32 px, few frames.
FAMILIES = {
    "repflow_smallcnn": {"data__num_frames": 4, "model__iterations": 3},
    "ctnet_resnet50": {"data__num_frames": 4},
    "tsn_resnet18": {"data__num_frames": 2, "data__sampler": "segment"},
}


def _run_file(fmt: str, path: Path, clip: torch.Tensor) -> np.ndarray:
    """The exported file run by its runtime, independently of vidact.engine.export."""
    if fmt == "onnx":
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return np.asarray(session.run(None, {"clip": clip.numpy()})[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        loaded = torch.jit.load(str(path))
    if "repflow" in path.name:  # the flow layer traced as plain ops, not a Python Function
        assert "PythonOp" not in str(loaded.inlined_graph)
    with torch.no_grad():
        return np.asarray(loaded(clip).numpy())


@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=pytest.mark.slow) if "ctnet" in n else n for n in sorted(FAMILIES)],
)
def test_exports_agree_with_eager(name: str, synthetic_root: Path, tmp_path: Path) -> None:
    changes = {"model__name": name, "data__short_side": 32, "data__input_size": 32}
    checkpoint = save_tiny_checkpoint(
        tmp_path / "checkpoints" / "best.pt", synthetic_root, **changes, **FAMILIES[name]
    )
    member = load_trained(checkpoint)
    frames = member.spec.num_frames
    clip = torch.randn(3, 3, frames, 32, 32, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        eager = member.model(clip).numpy()
    for fmt in ("torchscript", "onnx"):
        result = export(checkpoint, format=fmt)
        assert result.model_file.parent == tmp_path / "export"  # the run folder's export/
        assert result.passed and result.max_abs_diff <= 1e-4
        assert result.input_shape == (1, 3, frames, 32, 32)
        assert np.abs(_run_file(fmt, result.model_file, clip) - eager).max() <= 1e-4

        info = json.loads(result.info_file.read_text())
        assert info["model"] == name and info["format"] == fmt
        assert info["input"]["shape"] == [1, 3, frames, 32, 32]
        assert info["input"]["layout"] == "NCTHW"
        assert info["input"]["mean"] == [0.485, 0.456, 0.406]
        assert info["class_names"] == member.labels
        assert info["parity"]["max_abs_diff"] == result.max_abs_diff
        assert info["parity"]["passed"] is True


@pytest.fixture(scope="module")
def tiny_checkpoint(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "best.pt", synthetic_root)


def test_cli_prints_parity_and_exits_1_when_it_fails(
    tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ok = runner.invoke(app, ["export", str(tiny_checkpoint), "--out", str(tmp_path / "a")])
    assert ok.exit_code == 0, ok.output
    assert "max abs diff" in ok.output and ": ok" in ok.output
    assert (tmp_path / "a" / "best.torchscript.pt").is_file()

    real = export_module._run_exported

    def drifted(fmt: str, path: Path, clip: torch.Tensor) -> np.ndarray:
        return real(fmt, path, clip) + 1e-3  # an exporter that changes the numbers

    monkeypatch.setattr(export_module, "_run_exported", drifted)
    bad = runner.invoke(app, ["export", str(tiny_checkpoint), "--out", str(tmp_path / "b")])
    assert bad.exit_code == 1 and "FAILED" in bad.output
    info = json.loads((tmp_path / "b" / "best.torchscript.pt.json").read_text())
    assert info["parity"]["passed"] is False
    assert info["parity"]["max_abs_diff"] == pytest.approx(1e-3, rel=1e-3)


def test_onnx_missing_says_how_to_install(
    tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import raises ImportError
    with pytest.raises(VidactError, match=r"onnxruntime is missing.*pip install 'vidact\[onnx\]'"):
        export(tiny_checkpoint, format="onnx", out=tmp_path)
    shown = runner.invoke(app, ["export", str(tiny_checkpoint), "-f", "onnx", "-o", str(tmp_path)])
    assert shown.exit_code == 2 and "pip install 'vidact[onnx]'" in shown.output
    assert not list(tmp_path.iterdir())  # nothing written
    shown = runner.invoke(app, ["export", "--help"])
    assert "pip install 'vidact[onnx]'" in shown.output and "Examples" in shown.output


def test_refuses_what_is_not_a_vidact_checkpoint(tmp_path: Path) -> None:
    plain = tmp_path / "plain.pt"
    torch.save({"fc.weight": torch.zeros(2, 2)}, plain)
    with pytest.raises(VidactError, match="not a vidact checkpoint"):
        export(plain, out=tmp_path / "out")
    shown = runner.invoke(app, ["export", str(plain), "--format", "tflite"])
    assert shown.exit_code == 2 and "tflite" in shown.output
