"""`vidact predict`: top-k classes of new videos, sliding windows, annotated videos.

Exit codes: 0 every input predicted; 1 some inputs failed (missing, undecodable; the rest
are predicted and listed); 2 a user error stopped it before any prediction (checkpoint,
class-name file, options); 130 interrupted.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from vidact import console
from vidact.cli.app import app, user_errors
from vidact.cli.options import CheckpointSetOption, CropsOption, EmaOption, ReleasedRecipeOption

EXIT_SOME_FAILED = 1


class AnnotateFormat(str, Enum):
    mp4 = "mp4"
    gif = "gif"


def _report(result: object, top_k: int) -> None:
    from rich.table import Table

    from vidact.engine.predict import PredictResult

    assert isinstance(result, PredictResult)
    table = Table(title=f"top {top_k} ({result.views}, {result.average} averaged)",
                  title_justify="left")  # fmt: skip
    for name in ("video", "rank", "class", "score"):
        table.add_column(name, justify="right" if name in ("rank", "score") else "left")
    for prediction in result.videos:
        for number, (_, name, score) in enumerate(prediction.top, start=1):
            shown = prediction.video if number == 1 else ""
            last = number == len(prediction.top)
            table.add_row(shown, str(number), name, f"{score:.3f}", end_section=last)
    if result.videos:
        console.get_console().print(table)
    rows = [
        ("checkpoint", str(result.checkpoint)),
        ("videos", f"{len(result.videos)} predicted, {len(result.failed)} failed"),
        ("outputs", str(result.out_dir)),
        ("time", f"{result.seconds:.1f} s"),
    ]
    console.summary_table("predict", rows)
    for video, reason in result.failed:
        console.error_line(f"{video}: {reason}")


@app.command("predict")
@user_errors
def predict_command(
    checkpoint: Annotated[Path, typer.Argument(help="A checkpoint written by `vidact train`.")],
    inputs: Annotated[
        list[Path], typer.Argument(help="Video files, frame folders, or folders of them.")
    ],
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=1, help="Classes shown.")] = 5,
    clips: Annotated[
        int | None, typer.Option(min=1, help="Temporally uniform clips per video (window).")
    ] = None,
    crops: CropsOption = None,
    window: Annotated[
        float | None, typer.Option(help="Score sliding windows of this many seconds.")
    ] = None,
    stride: Annotated[
        float | None, typer.Option(help="Seconds between window starts (default: --window).")
    ] = None,
    fps: Annotated[
        float | None, typer.Option(help="Frame rate of frame folders (video files know it).")
    ] = None,
    annotate: Annotated[
        AnnotateFormat | None,
        typer.Option(help="Also write each video with its top class drawn: mp4 or gif."),
    ] = None,
    classes: Annotated[
        Path | None,
        typer.Option(help="Class names, one per line, instead of the checkpoint's."),
    ] = None,
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Output folder (written nowhere else).")
    ] = Path("predictions"),
    ema: EmaOption = None,
    set_: CheckpointSetOption = None,
    recipe: ReleasedRecipeOption = None,
) -> None:
    """Predict the actions of videos: the top classes by name, with their scores.

    The recipe inside the checkpoint fixes the input size, frames and
    normalisation; views are those of `evaluate`. Writes predictions.jsonl and
    predictions.csv; with --window, windows/<video>.windows.json and
    windows/<video>.timeline.png; with --annotate, annotated/<video>.mp4 (.gif).
    Exit code 0: all predicted; 1: some inputs failed (the rest are predicted);
    2: nothing could be done (the message says why).

    Examples:
      vidact predict runs/quickstart/20250101-120000/checkpoints/best.pt clip.mp4
      vidact predict best.pt videos/ --clips 4 --crops 3 --top-k 3 --out preds
      vidact predict best.pt long.mp4 --window 2 --stride 0.5 --annotate mp4
      vidact predict best.pt frames/video_0001 --fps 30 --classes labels.txt
    """
    from vidact.engine.predict import predict

    result = predict(
        checkpoint,
        inputs,
        top_k=top_k,
        clips=clips,
        crops=crops,
        window=window,
        stride=stride,
        fps=fps,
        annotate=annotate.value if annotate is not None else None,
        classes=classes,
        out=out,
        use_ema=ema,
        overrides=tuple(set_ or []),
        recipe=recipe,
    )
    _report(result, top_k)
    if result.failed:
        raise typer.Exit(code=EXIT_SOME_FAILED)
