"""`vidact evaluate`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vidact import console
from vidact.cli.app import app, user_errors


def _report(result: object) -> None:
    from rich.table import Table

    from vidact.engine.evaluator import EvalResult

    assert isinstance(result, EvalResult)
    metrics = result.metrics
    if not metrics:  # ranks other than 0 under torchrun
        return
    failed = len(result.failed)
    rows = [
        ("split", f"{result.split} ({metrics['manifest']})"),
        ("checkpoints", "\n".join(metrics["checkpoints"])),
        ("views", " + ".join(result.views) + f", {metrics['average']} averaged"),
        (
            "videos",
            f"{metrics['videos']} scored ({result.resumed} from the cache), {failed} failed",
        ),
        ("top-1 / top-5", f"{metrics['top1']:.2f}% / {metrics['top5']:.2f}%"),
        ("mean class accuracy", f"{metrics['mean_class_accuracy']:.2f}%"),
    ]
    if "loss" in metrics:
        rows.append(("loss", f"{metrics['loss']:.4f} (mean negative log-likelihood)"))
    for row in result.profile or []:
        name = row["model"]
        per_video = f"{row['gflops_per_video']:.4g} / video"
        latency = f"{row['latency_ms_per_video']:.1f} ms / video ({row['device']})"
        rows.append((f"params {name}", f"{row['params'] / 1e6:.2f} M"))
        rows.append((f"GFLOPs {name}", f"{row['gflops']} = {per_video}"))
        rows.append((f"latency {name}", latency))
    if result.profile and "seconds_per_video_end_to_end" in result.profile[0]:
        seconds = result.profile[0]["seconds_per_video_end_to_end"]
        rows.append(("end to end", f"{seconds:.2f} s / video (decode, views, every model)"))
    rows.append(("outputs", str(result.out_dir)))
    rows.append(("time", f"{result.seconds:.1f} s"))
    console.summary_table("evaluation", rows)

    classes = Table(title="per class", title_justify="left")
    for name in ("id", "class", "videos", "top-1"):
        classes.add_column(name, justify="left" if name == "class" else "right")
    for entry in metrics["per_class"]:
        accuracy = entry["accuracy"]
        shown = "-" if accuracy is None else f"{accuracy:.1f}%"
        classes.add_row(str(entry["id"]), entry["class"], str(entry["videos"]), shown)
    if len(metrics["per_class"]) <= 60:
        console.get_console().print(classes)
    if failed:
        first = result.failed[0]
        console.warn(
            f"{failed} videos failed to decode and are not in the metrics (first: {first[0]}: "
            f"{first[1]}); {result.files['metrics']} lists them all"
        )


@app.command("evaluate")
@user_errors
def evaluate_command(
    checkpoints: Annotated[
        list[Path], typer.Argument(help="One checkpoint, or several to fuse (an ensemble).")
    ],
    split: Annotated[
        str | None, typer.Option(help="val, train, or a manifest name under data.root.")
    ] = None,
    clips: Annotated[
        int | None, typer.Option(min=1, help="Temporally uniform clips per video.")
    ] = None,
    crops: Annotated[
        str | None, typer.Option(help="1 (centre), 3 (along the long side), 10, or random:K.")
    ] = None,
    crop_size: Annotated[int | None, typer.Option(help="Crop side in pixels.")] = None,
    short_side: Annotated[
        int | None, typer.Option(help="Resize the short side to this before cropping.")
    ] = None,
    average: Annotated[
        str | None, typer.Option(help="Average views as 'softmax' scores or raw 'logits'.")
    ] = None,
    ema: Annotated[
        bool | None, typer.Option("--ema/--no-ema", help="Use the EMA weights when present.")
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Output folder (default <run folder>/eval/<split>)."),
    ] = None,
    profile: Annotated[
        bool,
        typer.Option("--profile", help="Report parameters, GFLOPs per view/video and latency."),
    ] = False,
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set", "-s", help="Override a key of the checkpoints' recipes, e.g. data.root=..."
        ),
    ] = None,
    recipe: Annotated[
        Path | None,
        typer.Option(help="Recipe for a checkpoint without one (the authors' released files)."),
    ] = None,
) -> None:
    """Evaluate checkpoints with multi-clip x multi-crop testing; several are fused.

    Settings not given come from the `eval` section of the recipe inside each
    checkpoint. Writes metrics.json, predictions.csv, per_class.csv and confusion.png;
    an interrupted run resumes from its cached per-video scores.

    Examples:
      vidact evaluate runs/quickstart/20250101-120000/checkpoints/best.pt
      vidact evaluate best.pt --clips 4 --crops 3 --crop-size 256 --short-side 256 --profile
      vidact evaluate a/best.pt b/best.pt --crops 10 --out eval/ensemble
      torchrun --nproc_per_node 4 -m vidact evaluate best.pt --set data.root=/data/k400
      vidact evaluate ct_net_8f_r50.pth.tar --recipe recipes/ctnet_r50_sthv1.yaml
    """
    from vidact.engine.evaluator import evaluate

    result = evaluate(
        checkpoints,
        split=split,
        clips=clips,
        crops=crops,
        crop_size=crop_size,
        short_side=short_side,
        average=average,
        use_ema=ema,
        out=out,
        profile=profile,
        overrides=tuple(set_ or []),
        recipe=recipe,
    )
    _report(result)
