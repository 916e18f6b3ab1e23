"""`vidact export`: TorchScript or ONNX with a parity check.

Exit codes: 0 written and within the tolerance; 1 written, but the parity check failed
(the difference is in the JSON); 2 a user error (checkpoint, format, ONNX not installed).
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from vidact import console
from vidact.cli.app import app, user_errors
from vidact.cli.options import CheckpointSetOption, EmaOption, ReleasedRecipeOption

EXIT_PARITY_FAILED = 1


class ExportFormat(str, Enum):
    torchscript = "torchscript"
    onnx = "onnx"


@app.command("export")
@user_errors
def export_command(
    checkpoint: Annotated[Path, typer.Argument(help="A checkpoint written by `vidact train`.")],
    format: Annotated[
        ExportFormat, typer.Option("--format", "-f", help="torchscript or onnx.")
    ] = ExportFormat.torchscript,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Output folder (default <run folder>/export)."),
    ] = None,
    ema: EmaOption = None,
    set_: CheckpointSetOption = None,
    recipe: ReleasedRecipeOption = None,
) -> None:
    """Export a checkpoint's model (eval mode) and check it against eager PyTorch.

    Writes <checkpoint>.torchscript.pt or <checkpoint>.onnx and a JSON beside it:
    input layout and size, frames, mean/std, class names, the parity check. The
    written file is run (TorchScript / onnxruntime) on a random clip beside the
    eager model; a max abs difference above 1e-4 exits with code 1, a user error
    with 2. ONNX needs the extra: pip install 'vidact\\[onnx]'.

    Examples:
      vidact export runs/quickstart/20250101-120000/checkpoints/best.pt
      vidact export best.pt --format onnx --out exported
    """
    from vidact.engine.export import export

    result = export(
        checkpoint,
        format=format.value,
        out=out,
        use_ema=ema,
        overrides=tuple(set_ or []),
        recipe=recipe,
    )
    verdict = "ok" if result.passed else "FAILED"
    parity = f"max abs diff {result.max_abs_diff:.3g} (tolerance {result.tolerance:g}): {verdict}"
    console.summary_table(
        "export",
        [
            ("folder", str(result.model_file.parent)),
            ("model", result.model_file.name),
            ("settings", result.info_file.name),
            ("input", "x".join(str(d) for d in result.input_shape) + " (N, C, T, H, W)"),
            ("parity", parity),
            ("time", f"{result.seconds:.1f} s"),
        ],
    )
    if not result.passed:
        console.error_line(f"{result.model_file}: the exported model differs from eager PyTorch")
        raise typer.Exit(code=EXIT_PARITY_FAILED)
