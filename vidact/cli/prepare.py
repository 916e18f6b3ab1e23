"""`vidact prepare ...`: datasets -> manifests (and frames).

One command per dataset of the registry (`vidact.data.sources.registry`), generated here:
its help is the dataset's, its options are the dataset's own and the prepare settings
declared once in `vidact.data.prepare.options` (PrepareOptions, RunOptions). Each command
calls `vidact.data.prepare.pipeline.prepare` and prints the summary. `vidact prepare synthetic`
generates its videos, so it is a command of its own.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer

from vidact import console
from vidact.cli.app import app, user_errors
from vidact.data.prepare.options import PrepareOptions, RunOptions
from vidact.data.sources.registry import DatasetSource, dataset_sources

if TYPE_CHECKING:
    from vidact.data.prepare.outputs import PrepareSummary
    from vidact.data.sources.synthetic import SyntheticSummary

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
    classes: Annotated[
        int | None,
        typer.Option(help="Number of classes (camera: 1-12, default 8; speed: one per speed)."),
    ] = None,
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
    task: Annotated[
        str, typer.Option(help="camera: classes by camera motion; speed: by an object's speed.")
    ] = "camera",
    speeds: Annotated[
        str, typer.Option(help="Speed task: one class per speed, px/frame, comma-separated.")
    ] = "0.5,1,2",
    object_size: Annotated[int, typer.Option(help="Speed task: the square's side, px.")] = 6,
    contrast: Annotated[
        float, typer.Option(help="Speed task: texture standard deviation (share of grey range).")
    ] = 0.15,
    noise: Annotated[
        float, typer.Option(help="Sensor noise standard deviation (share of grey range).")
    ] = 0.0,
    distractors: Annotated[
        int, typer.Option(help="Speed task: larger squares moving at random speeds.")
    ] = 0,
) -> None:
    """Generate the motion-only synthetic dataset: MP4 videos, manifests, label map.

    Classes differ by motion only, so one frame says nothing about the class while two
    frames do. --task camera (default): the camera translates, rotates or zooms.
    --task speed: a small textured square moves over a still texture by sub-pixel steps;
    its speed is the class (the harder task of benchmarks/table3.py). Val videos also store
    exact ground-truth flow. Re-running the same command resumes where it stopped.

    Examples:
      vidact prepare synthetic --out data/synthetic
      vidact prepare synthetic --out data/tiny --classes 4 --videos-per-class 10 --size 32
      vidact prepare synthetic --out data/speed --task speed --size 32 --frames 8 --noise 0.03
    """
    from vidact.data.sources.synthetic import (
        SyntheticSpec,
        make_synthetic_dataset,
        parse_speeds,
    )

    speed_list = parse_speeds(speeds)
    if classes is None:
        classes = len(speed_list) if task == "speed" else 8
    spec = SyntheticSpec(
        task=task,
        speeds=speed_list,
        object_size=object_size,
        contrast=contrast,
        noise=noise,
        distractors=distractors,
        classes=classes,
        videos_per_class=videos_per_class,
        frames=frames,
        size=size,
        seed=seed,
        val_fraction=val_fraction,
        gt_flow_pairs=gt_flow_pairs,
    )
    summary = make_synthetic_dataset(out, spec, workers=workers)
    console.summary_table("synthetic dataset", _synthetic_rows(summary))


def _synthetic_rows(summary: SyntheticSummary) -> list[tuple[str, str]]:
    return [
        ("folder", str(summary.out)),
        ("classes", f"{len(summary.classes)}: {', '.join(summary.classes)}"),
        ("videos", f"{summary.train} train, {summary.val} val"),
        ("written / resumed", f"{summary.written} / {summary.skipped}"),
        ("disk", console.human_bytes(summary.bytes_on_disk)),
        ("time", f"{summary.seconds:.1f} s"),
    ]


def _summary_rows(summary: PrepareSummary) -> list[tuple[str, str]]:
    rows = [
        ("dataset", f"{summary.dataset}, {summary.classes} classes, mode {summary.mode}"),
        ("folder", str(summary.out)),
    ]
    if summary.shard is not None:
        rows.append(("shard", f"{summary.shard[0]}/{summary.shard[1]}: {summary.total} videos"))
    disk = f"{console.human_bytes(summary.bytes_written)} written, "
    disk += f"{console.human_bytes(summary.bytes_on_disk)} in all"
    if summary.estimated_bytes:
        disk += f" (estimate was {console.human_bytes(summary.estimated_bytes)}"
        if summary.estimated_flow_bytes:
            disk += f", flow {console.human_bytes(summary.estimated_flow_bytes)}"
        disk += ")"
    time = (
        f"{summary.seconds:.1f} s, {summary.videos_per_second:.1f} videos/s, "
        f"{summary.frames_per_second:.0f} frames/s"
    )
    rows += [
        ("done", f"{summary.done} now, {summary.skipped} skipped (done before)"),
        ("failed", f"{summary.failed} unreadable, {summary.missing} missing"),
        ("frames written", str(summary.frames_written)),
    ]
    if summary.flow != "none":
        rows.append(
            (
                "flow pairs written",
                f"{summary.flow_pairs_written} ({summary.flow}, {summary.flow_backend}, "
                f"bound +-{summary.flow_bound:g} px)",
            )
        )
        time += f", {summary.flow_pairs_per_second:.1f} flow pairs/s"
    rows += [("disk", disk), ("time", time)]
    if summary.manifests:
        rows.append(("manifests", ", ".join(f"{k} {v}" for k, v in summary.manifests.items())))
    else:
        rows.append(("manifests", f"not yet: {summary.pending} videos left to other shards"))
    if summary.warnings:
        rows.append(("warnings", f"{summary.warnings} prepared with a warning (e.g. truncated)"))
    if summary.failed or summary.missing or summary.warnings:
        rows.append(("failures", str(summary.out / "failures.jsonl")))
    if summary.missing_examples:
        rows.append(("missing e.g.", ", ".join(summary.missing_examples[:3])))
    for example in summary.failure_examples[:3]:
        rows.append(("failed e.g.", example))
    for example in summary.warning_examples[:3]:
        rows.append(("warning e.g.", example))
    return rows


def _option(name: str, kind: Any, default: Any, flags: str, help: str, **extra: Any) -> Any:
    """One keyword parameter of a generated command: `name: Annotated[kind, Option] = default`."""
    option = typer.Option(*flags.split(), help=help, show_default=default is not None, **extra)
    return inspect.Parameter(
        name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=Annotated[kind, option]
    )


def _settings_parameters() -> list[inspect.Parameter]:
    """The prepare settings with a flag, from the fields of PrepareOptions and RunOptions."""
    parameters = []
    for kind in (PrepareOptions, RunOptions):
        hints = typing.get_type_hints(kind)
        for field in dataclasses.fields(kind):
            flag, choices = field.metadata["flag"], field.metadata["choices"]
            if flag is None:
                continue  # a library-only setting
            annotation = Literal[tuple(choices)] if choices else hints[field.name]
            help = field.metadata["help"]
            parameters.append(
                _option(field.name, annotation, field.default, flag, help, case_sensitive=False)
            )
    return parameters


EXIT_CODES_HELP = """
    Exit codes: 0 all videos prepared (or at most --max-failed of them failed or
    missing); 2 a user error, nothing started; 3 more than --max-failed failed or
    missing (see OUT/failures.jsonl); 4 not one video prepared; 130/143 stopped by
    SIGINT/SIGTERM (finished videos are kept: run the same command to resume).
"""


def _dataset_command(source: DatasetSource) -> Callable[..., None]:
    """`vidact prepare <source.name>`: --videos, --annotations (where it needs them), --out,
    the dataset's own options, then the prepare settings."""
    parameters = [
        _option(
            "videos", Path, ..., source.videos_flags, "Folder that holds the dataset's videos."
        ),
    ]
    if source.annotations:
        help = "The official annotation file(s) or their folder."
        parameters.append(_option("annotations", Path, ..., "--annotations", help))
    parameters.append(_option("out", Path, ..., "--out -o", "Output folder."))
    for own in source.options:
        parameters.append(_option(own.name, own.type, own.default, own.flag, own.help))
    parameters += _settings_parameters()

    def command(
        *, videos: Path, out: Path, annotations: Path | None = None, **settings: Any
    ) -> None:
        from vidact.data.prepare.faults import PrepareStopped
        from vidact.data.prepare.pipeline import prepare

        try:
            summary = prepare(source.name, videos, annotations, out, **settings)
        except PrepareStopped as stop:  # a signal: not an error of the user's
            console.warn(str(stop))
            raise typer.Exit(code=stop.exit_code) from None
        for note in summary.notes:
            console.warn(note)
        console.summary_table(f"{source.name} dataset", _summary_rows(summary))
        if summary.outcome.code:
            console.error_line(summary.outcome.message)
            raise typer.Exit(code=summary.outcome.code)

    command.__name__ = command.__qualname__ = f"prepare_{source.name}"
    command.__doc__ = source.help + EXIT_CODES_HELP
    command.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in parameters}
    return command


for _source in dataset_sources().values():
    prepare_app.command(_source.name)(user_errors(_dataset_command(_source)))
