"""`vidact prepare ...`: datasets -> manifests (and frames).

One command per dataset; each forwards its options to `vidact.data.extract.prepare` and
prints the summary. The shared options (--out, --mode, --short-side, --fps, --quality,
--workers, --shard, --classes, --no-disk-check, --flow, --flow-backend, --flow-bound) are
declared once below.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from vidact import console
from vidact.cli.app import app, user_errors
from vidact.constants import FLOW_BOUND

if TYPE_CHECKING:
    from vidact.data.extract import PrepareSummary

prepare_app = typer.Typer(
    help="Turn annotations + videos into manifests (and frames). Example: "
    "vidact prepare synthetic --out data/synthetic",
    no_args_is_help=True,
)
app.add_typer(prepare_app, name="prepare")


class Mode(str, Enum):
    none = "none"
    frames = "frames"
    videos = "videos"


class Flow(str, Enum):
    none = "none"
    tvl1 = "tvl1"


class FlowBackend(str, Enum):
    auto = "auto"
    torch = "torch"
    opencv = "opencv"
    opencv_cuda = "opencv-cuda"


Videos = Annotated[
    Path,
    typer.Option("--videos", help="Folder that holds the dataset's videos.", show_default=False),
]
Annotations = Annotated[
    Path,
    typer.Option(
        "--annotations", help="The official annotation file(s) or their folder.", show_default=False
    ),
]
Out = Annotated[Path, typer.Option("--out", "-o", help="Output folder.", show_default=False)]
ModeOption = Annotated[
    Mode,
    typer.Option(
        "--mode",
        case_sensitive=False,
        help="frames: JPEG frames (+ mmaction2 rawframe lists); videos: resized MP4s; "
        "none: manifests over the original videos.",
    ),
]
ShortSide = Annotated[
    int, typer.Option("--short-side", help="Resize to this short side in pixels (0 keeps).")
]
Fps = Annotated[
    float | None, typer.Option("--fps", help="Resample to this frame rate (default: keep all).")
]
Quality = Annotated[int, typer.Option("--quality", help="JPEG quality of --mode frames (1-100).")]
Workers = Annotated[
    int | None,
    typer.Option(
        "--workers",
        help="Processes (default: one per core; 0 = in this process). On NFS or Lustre, "
        "try twice the cores: a worker waits while its writes do.",
    ),
]
Shard = Annotated[
    str | None,
    typer.Option(
        "--shard",
        help="K/N: do every N-th video starting at the K-th (K = 1..N), e.g. one SLURM "
        "array task each; all shards share --out.",
    ),
]
Classes = Annotated[
    Path | None,
    typer.Option("--classes", help="File with one class name per line: keep only these."),
]
NoDiskCheck = Annotated[
    bool,
    typer.Option("--no-disk-check", help="Start even if the estimated output exceeds free space."),
]
FlowOption = Annotated[
    Flow,
    typer.Option(
        "--flow",
        case_sensitive=False,
        help="tvl1: also write TV-L1 optical flow, quantised x_/y_ JPEG pairs in "
        "flow/<key>/ (N-1 pairs for N frames; slow on a CPU, see docs/datasets.md).",
    ),
]
FlowBackendOption = Annotated[
    FlowBackend,
    typer.Option(
        "--flow-backend",
        case_sensitive=False,
        help="auto: opencv-cuda, else torch on a GPU, else opencv on the CPU.",
    ),
]
FlowBound = Annotated[
    float,
    typer.Option(
        "--flow-bound",
        help="Flow of -B..+B px maps to 0..255 (recorded in flow.json; recipes' "
        "data.flow_bound must match).",
    ),
]


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


def _run(
    dataset: str,
    videos: Path,
    annotations: Path | None,
    out: Path,
    mode: Mode,
    short_side: int,
    fps: float | None,
    quality: int,
    workers: int | None,
    shard: str | None,
    classes: Path | None,
    no_disk_check: bool,
    flow: Flow,
    flow_backend: FlowBackend,
    flow_bound: float,
    val_fraction: float = 0.0,
    seed: int = 0,
) -> None:
    from vidact.data.extract import prepare

    summary = prepare(
        dataset,
        videos,
        annotations,
        out,
        mode=mode.value,
        short_side=short_side,
        fps=fps,
        quality=quality,
        workers=workers,
        shard=shard,
        classes=classes,
        check_free_space=not no_disk_check,
        val_fraction=val_fraction,
        seed=seed,
        flow=flow.value,
        flow_backend=flow_backend.value,
        flow_bound=flow_bound,
    )
    for note in summary.notes:
        console.warn(note)
    console.summary_table(f"{dataset} dataset", _summary_rows(summary))


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
    if summary.failed or summary.missing:
        rows.append(("failures", str(summary.out / "failures.jsonl")))
    if summary.missing_examples:
        rows.append(("missing e.g.", ", ".join(summary.missing_examples[:3])))
    for example in summary.failure_examples[:3]:
        rows.append(("failed e.g.", example))
    return rows


# The five official layouts take the same options; only their help differs.
_OFFICIAL_HELP = {
    "kinetics": """Kinetics-400/600/700 from the official CSV files.

    CSV columns: label, youtube_id, time_start, time_end, split. Clips are found
    by name anywhere under --videos (with or without class folders):
    {youtube_id}_{start:06d}_{end:06d}.mp4, or the untrimmed {youtube_id}.mp4.
    Missing clips are counted and listed in failures.jsonl, never fatal.
    Re-running the same command resumes.

    Examples:
      vidact prepare kinetics --videos k400 --annotations k400/csv --out data/k400
      vidact prepare kinetics --videos k400 --annotations k400/csv \\
          --out data/mini200 --classes mini_kinetics_200.txt
      vidact prepare kinetics --videos k400 --annotations k400/csv \\
          --out data/k400 --shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT
    """,
    "hmdb51": """HMDB51 from the official split files (testTrainMulti_7030_splits).

    <class>_test_split<k>.txt: id 1 = train, 2 = test, 0 = unused. Writes
    train_split<k>.jsonl and test_split<k>.jsonl for k = 1, 2, 3; each video is
    extracted once. --videos is the rar-extracted folder of class folders.

    Examples:
      vidact prepare hmdb51 --videos hmdb51 \\
          --annotations testTrainMulti_7030_splits --out data/hmdb51
      vidact prepare hmdb51 --videos hmdb51 \\
          --annotations testTrainMulti_7030_splits --out data/h --mode videos
      vidact prepare hmdb51 --videos hmdb51 \\
          --annotations testTrainMulti_7030_splits --out data/hf --flow tvl1
    """,
    "ucf101": """UCF101 from ucfTrainTestlist (classInd.txt, trainlist0k, testlist0k).

    Writes train_split<k>.jsonl and test_split<k>.jsonl for k = 1, 2, 3; each
    video is extracted once. --videos is the UCF-101 folder of class folders.

    Examples:
      vidact prepare ucf101 --videos UCF-101 \\
          --annotations ucfTrainTestlist --out data/ucf101
      vidact prepare ucf101 --videos UCF-101 \\
          --annotations ucfTrainTestlist --out data/ucf101-raw --mode none
      vidact prepare ucf101 --videos UCF-101 \\
          --annotations ucfTrainTestlist --out data/ucf101-flow --flow tvl1
    """,
    "sthv1": """Something-Something V1: JPEG frame folders + ';'-separated CSV files.

    --videos is 20bn-something-something-v1 (a folder of 00001.jpg ... per
    video); --annotations holds something-something-v1-{labels,train,
    validation}.csv. Frames that need no resizing are copied byte for byte.
    Only --mode frames or videos (vidact reads img_00001.jpg folders).

    Examples:
      vidact prepare sthv1 --videos 20bn-something-something-v1 \\
          --annotations sthv1-annotations --out data/sthv1
    """,
    "sthv2": """Something-Something V2: <id>.webm videos + the JSON annotation files.

    --annotations holds something-something-v2-{labels,train,validation}.json.
    A sample's class is its template with the brackets removed, as the
    official tools do.

    Examples:
      vidact prepare sthv2 --videos 20bn-something-something-v2 \\
          --annotations labels --out data/sthv2
      vidact prepare sthv2 --videos 20bn-something-something-v2 \\
          --annotations labels --out data/sthv2-raw --mode none
    """,
}


def _official_dataset_command(dataset: str) -> Callable[..., None]:
    def command(
        videos: Videos,
        annotations: Annotations,
        out: Out,
        mode: ModeOption = Mode.frames,
        short_side: ShortSide = 256,
        fps: Fps = None,
        quality: Quality = 90,
        workers: Workers = None,
        shard: Shard = None,
        classes: Classes = None,
        no_disk_check: NoDiskCheck = False,
        flow: FlowOption = Flow.none,
        flow_backend: FlowBackendOption = FlowBackend.auto,
        flow_bound: FlowBound = FLOW_BOUND,
    ) -> None:
        _run(dataset, videos, annotations, out, mode, short_side, fps, quality, workers, shard,
             classes, no_disk_check, flow, flow_backend, flow_bound)  # fmt: skip

    command.__name__ = command.__qualname__ = f"prepare_{dataset}"
    command.__doc__ = _OFFICIAL_HELP[dataset]
    return command


for _dataset in _OFFICIAL_HELP:
    prepare_app.command(_dataset)(user_errors(_official_dataset_command(_dataset)))


@prepare_app.command("folder")
@user_errors
def prepare_folder(
    videos: Videos,
    out: Out,
    val_fraction: Annotated[
        float, typer.Option("--val-fraction", help="Share of each class kept for val (0: none).")
    ] = 0.0,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the train/val split.")] = 0,
    mode: ModeOption = Mode.frames,
    short_side: ShortSide = 256,
    fps: Fps = None,
    quality: Quality = 90,
    workers: Workers = None,
    shard: Shard = None,
    classes: Classes = None,
    no_disk_check: NoDiskCheck = False,
    flow: FlowOption = Flow.none,
    flow_backend: FlowBackendOption = FlowBackend.auto,
    flow_bound: FlowBound = FLOW_BOUND,
) -> None:
    """A plain folder with one sub-folder of videos per class.

    Classes are the sorted folder names. With --val-fraction, each class is
    split into train/val by a per-class shuffle from --seed (same seed, same
    split).

    Examples:
      vidact prepare folder --videos my_videos --out data/mine --val-fraction 0.2
      vidact prepare folder --videos my_videos --out data/mine-raw --mode none
      vidact prepare folder --videos my_videos --out data/mine --flow tvl1 \\
          --flow-backend torch
    """
    _run("folder", videos, None, out, mode, short_side, fps, quality, workers, shard, classes,
         no_disk_check, flow, flow_backend, flow_bound, val_fraction=val_fraction,
         seed=seed)  # fmt: skip
