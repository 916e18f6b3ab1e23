"""`vidact prepare ...`: datasets -> manifests (and frames)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vidact import console
from vidact.cli.app import app, user_errors

prepare_app = typer.Typer(
    help="Turn annotations + videos into manifests (and frames). Example: "
    "vidact prepare synthetic --out data/synthetic",
    no_args_is_help=True,
)
app.add_typer(prepare_app, name="prepare")


@prepare_app.command("synthetic")
@user_errors
def prepare_synthetic(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path(
        "data/synthetic"
    ),
    classes: Annotated[int, typer.Option(help="Number of motion classes (1-12).")] = 8,
    videos_per_class: Annotated[int, typer.Option(help="Videos per class (train + val).")] = 50,
    frames: Annotated[int, typer.Option(help="Frames per video.")] = 16,
    size: Annotated[int, typer.Option(help="Frame width and height in pixels.")] = 64,
    seed: Annotated[int, typer.Option(help="Random seed: same seed, same dataset.")] = 0,
    val_fraction: Annotated[float, typer.Option(help="Share of each class kept for val.")] = 0.2,
    gt_flow_pairs: Annotated[
        int, typer.Option(help="Frame pairs per val video with exact flow stored.")
    ] = 3,
    workers: Annotated[
        int | None, typer.Option(help="Processes (default: up to 4, one per core).")
    ] = None,
) -> None:
    """Generate the motion-only synthetic dataset: MP4 videos, manifests, label map.

    Classes differ by motion only (translate, rotate, zoom), so one frame says nothing
    about the class while two frames do. Val videos also store exact ground-truth flow.
    Re-running the same command resumes where it stopped.

    Examples:
      vidact prepare synthetic --out data/synthetic
      vidact prepare synthetic --out data/tiny --classes 4 --videos-per-class 10 --size 32
    """
    from vidact.data.sources.synthetic import SyntheticSpec, make_synthetic_dataset

    spec = SyntheticSpec(
        classes=classes,
        videos_per_class=videos_per_class,
        frames=frames,
        size=size,
        seed=seed,
        val_fraction=val_fraction,
        gt_flow_pairs=gt_flow_pairs,
    )
    summary = make_synthetic_dataset(out, spec, workers=workers)
    console.summary_table(
        "synthetic dataset",
        [
            ("folder", str(summary.out)),
            ("classes", f"{len(summary.classes)}: {', '.join(summary.classes)}"),
            ("videos", f"{summary.train} train, {summary.val} val"),
            ("written / resumed", f"{summary.written} / {summary.skipped}"),
            ("disk", console.human_bytes(summary.bytes_on_disk)),
            ("time", f"{summary.seconds:.1f} s"),
        ],
    )
