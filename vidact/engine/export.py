"""`vidact export`: a checkpoint's model as TorchScript or ONNX, with a parity check.

The model is rebuilt in eval mode from the recipe inside the checkpoint (`load_trained`, as
`evaluate` does) and traced on a random clip of its input shape (N, C, T, H, W): batch 1,
the recipe's frames and input size. In eval mode, without gradients, the representation
flow layer takes its plain iteration path, not its custom autograd.Function, so it traces
like any other module. ONNX goes through torch's TorchScript-based exporter
(`dynamo=False`): it needs only the `onnx` package, where the dynamo exporter would need
`onnxscript` as well; the batch axis is left dynamic.

Parity: the written file is loaded back (torch.jit.load / onnxruntime) and run on another
random clip, of batch 2 (so the batch axis is checked too), beside the eager model; the
max abs difference of the logits must be within `tolerance` (float32: 1e-4). It is printed
and recorded in the JSON written beside the model, with what a user of the file needs:
input layout and shape, frames, crop size, mean/std, class names.
"""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vidact import console
from vidact.atomic import atomic_path, atomic_write_text
from vidact.engine.evaluator import Member
from vidact.engine.trained import load_trained
from vidact.errors import VidactError

__all__ = ["FORMATS", "TOLERANCE", "ExportResult", "export"]

FORMATS = ("torchscript", "onnx")
TOLERANCE = 1e-4  # max abs difference of float32 logits, exported vs eager
ONNX_OPSET = 17
_SUFFIX = {"torchscript": ".torchscript.pt", "onnx": ".onnx"}
_INSTALL_ONNX = "pip install 'vidact[onnx]'"


@dataclass
class ExportResult:
    model_file: Path
    info_file: Path
    format: str
    input_shape: tuple[int, ...]
    max_abs_diff: float
    tolerance: float
    seconds: float

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= self.tolerance


def _require_onnx() -> None:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        raise VidactError(
            f"--format onnx needs the onnx and onnxruntime packages ({exc.name} is missing): "
            f"{_INSTALL_ONNX}"
        ) from None


def _clip(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def _write(model: nn.Module, example: torch.Tensor, fmt: str, target: Path) -> None:
    """Trace `model` on `example` into `target` (atomically); tracer warnings about
    Python control flow on shapes are expected (the clip shape is fixed) and kept quiet."""
    with warnings.catch_warnings(), torch.no_grad(), atomic_path(target) as tmp:
        warnings.simplefilter("ignore")
        if fmt == "torchscript":
            traced = torch.jit.trace(model, example, check_trace=False)
            torch.jit.save(traced, str(tmp))
        else:
            torch.onnx.export(
                model, (example,), str(tmp), dynamo=False, opset_version=ONNX_OPSET,
                input_names=["clip"], output_names=["logits"],
                dynamic_axes={"clip": {0: "batch"}, "logits": {0: "batch"}},
            )  # fmt: skip


def _run_exported(fmt: str, path: Path, clip: torch.Tensor) -> np.ndarray:
    """The written file's logits on `clip`, run by TorchScript or onnxruntime."""
    if fmt == "torchscript":
        with warnings.catch_warnings():  # "torch.jit is deprecated" (torch>=2.9)
            warnings.simplefilter("ignore", FutureWarning)
            loaded = torch.jit.load(str(path), map_location="cpu")
        with torch.no_grad():
            return np.asarray(loaded(clip).float().numpy())
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {"clip": clip.numpy()})[0])


def parity(model: nn.Module, fmt: str, path: Path, clip: torch.Tensor) -> float:
    """Max abs difference of the logits, exported file vs eager `model`, on `clip`."""
    with torch.no_grad():
        eager = model(clip).float().numpy()
    try:
        exported = _run_exported(fmt, path, clip)
    except Exception as exc:  # the runtime's own error types: the export is unusable
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise VidactError(f"{path}: the exported model does not run ({first})") from None
    if exported.shape != eager.shape:
        raise VidactError(f"{path}: output shape {exported.shape}, eager {eager.shape}")
    return float(np.abs(exported.astype(np.float64) - eager).max())


def _info(member: Member, fmt: str, model_file: Path, shape: tuple[int, ...]) -> dict[str, Any]:
    """What a user of the exported file needs to feed it (the JSON beside it)."""
    spec = member.spec
    return {
        "format": fmt,
        "model_file": model_file.name,
        "checkpoint": str(member.path),
        "model": member.recipe.model.name,
        "input": {
            "layout": "NCTHW",
            "shape": list(shape),
            "dtype": "float32",
            "batch": "dynamic" if fmt == "onnx" else "any (traced at 1)",
            "modality": spec.modality,
            "channels": spec.channels,
            "num_frames": spec.num_frames,
            "sampler": spec.clip.sampler,
            "frame_stride": spec.clip.frame_stride,
            "height": spec.crop_size,
            "width": spec.crop_size,
            "short_side": spec.short_side,
            "mean": list(spec.mean),
            "std": list(spec.std),
            "normalization": "RGB in [0, 1], then (x - mean) / std per channel",
        },
        "output": {"layout": "NK", "values": "logits", "classes": len(member.labels)},
        "class_names": member.labels,
        "torch": torch.__version__,
        **({"opset": ONNX_OPSET} if fmt == "onnx" else {}),
    }


def export(
    checkpoint: Path,
    *,
    format: str = "torchscript",
    out: Path | None = None,
    use_ema: bool | None = None,
    overrides: tuple[str, ...] = (),
    recipe: Path | None = None,
    tolerance: float = TOLERANCE,
) -> ExportResult:
    """Write `checkpoint`'s model as `format` into `out` (default: the run folder's
    export/), `<checkpoint stem><.torchscript.pt|.onnx>` and `<that name>.json`, and check
    parity (see the module docstring). A failed parity is recorded, not raised: the
    caller looks at `result.passed`."""
    start = time.perf_counter()
    if format not in FORMATS:
        raise VidactError(f"--format: {format!r}; use one of {', '.join(FORMATS)}")
    if format == "onnx":
        _require_onnx()
    checkpoint = Path(checkpoint)
    member = load_trained(checkpoint, {}, use_ema, tuple(overrides), recipe)
    model = member.model.float().eval()
    spec = member.spec
    shape = (1, spec.channels, spec.num_frames, spec.crop_size, spec.crop_size)
    out_dir = Path(out) if out is not None else _default_out(checkpoint)
    model_file = out_dir / f"{checkpoint.stem}{_SUFFIX[format]}"
    info_file = model_file.with_name(model_file.name + ".json")
    _write(model, _clip(shape, seed=0), format, model_file)
    diff = parity(model, format, model_file, _clip((2, *shape[1:]), seed=1))
    info = _info(member, format, model_file, shape)
    info["parity"] = {
        "max_abs_diff": diff, "tolerance": tolerance, "passed": diff <= tolerance,
        "clip": "randn, batch 2, seed 1", "against": "eager PyTorch, float32, CPU",
    }  # fmt: skip
    atomic_write_text(info_file, json.dumps(info, indent=1) + "\n")
    if diff > tolerance:
        console.warn(f"{model_file}: parity {diff:.3g} is above the tolerance {tolerance:g}")
    return ExportResult(
        model_file, info_file, format, shape, diff, tolerance, time.perf_counter() - start
    )


def _default_out(checkpoint: Path) -> Path:
    """<run folder>/export; the run folder holds checkpoints/<name>.pt."""
    parent = checkpoint.parent
    return (parent.parent if parent.name == "checkpoints" else parent) / "export"
