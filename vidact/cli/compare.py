"""`vidact compare-tvl1`: the representation-flow layer against classic TV-L1."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from vidact import console
from vidact.cli.app import app, user_errors
from vidact.constants import FLOW_BACKENDS


def _num(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


_VIDEO_COLUMNS = (
    "video",
    "pairs",
    "EPE rep/TV-L1",
    "cos rep/TV-L1",
    "|GT|",
    "EPE TV-L1/GT",
    "EPE rep/GT",
    "TV-L1 ms/pair",
    "rep ms/pair",
)


def _report(result: Any) -> None:
    from vidact.compare_tvl1 import CompareResult

    assert isinstance(result, CompareResult)
    out = console.get_console()
    out.print(_videos_table(result))
    if result.timing is not None:
        out.print(_timing_table(result.timing))
    console.summary_table("compare-tvl1", _summary_rows(result))
    for path, reason in result.failed:
        console.warn(f"not compared: {path}: {reason}")


def _videos_table(result: Any) -> Any:
    """One row per video (and their mean): EPE and cosine against TV-L1 and ground truth."""
    from rich.table import Table

    videos = Table(
        title="rep-flow vs TV-L1 (EPE px, cosine; vs ground truth where stored)",
        title_justify="left",
    )
    for name in _VIDEO_COLUMNS:
        if name == "video":
            videos.add_column(name, no_wrap=True)
        else:
            videos.add_column(name, justify="right")
    for v in result.videos:
        videos.add_row(
            Path(v.path).name,
            str(v.pairs),
            _num(v.epe_vs_tvl1),
            _num(v.cos_vs_tvl1),
            _num(v.gt_magnitude),
            _num(v.tvl1_epe_gt),
            _num(v.repflow_epe_gt),
            f"{v.tvl1_ms_per_pair:.1f}",
            f"{v.repflow_ms_per_pair:.1f}",
        )
    s = result.summary
    if len(result.videos) > 1:
        videos.add_section()
        videos.add_row(
            "mean",
            str(s["pairs"]),
            _num(s["epe_vs_tvl1"]),
            _num(s["cos_vs_tvl1"]),
            _num(s["gt_magnitude"]),
            _num(s["tvl1_epe_gt"]),
            _num(s["repflow_epe_gt"]),
            f"{s['tvl1_ms_per_pair']:.1f}",
            f"{s['repflow_ms_per_pair']:.1f}",
        )
    return videos


def _timing_table(timing: dict[str, Any]) -> Any:
    """Table 9 of the rep-flow paper in miniature: TV-L1 + flow CNN against rep-flow."""
    from rich.table import Table

    t, h, w = timing["shape"]
    table = Table(
        title=f"Table-9-style run time, {t}x{h}x{w}, {timing['device']}", title_justify="left"
    )
    for name in ("network", "TV-L1 ms", "CNN ms", "total ms / video", "x rep-flow"):
        table.add_column(name, justify="left" if name == "network" else "right")
    flow, rep = timing["flow_cnn"], timing["repflow_cnn"]
    table.add_row(
        f"{flow['model']} ({timing['backend']})",
        f"{flow['tvl1_ms']:.0f}",
        f"{flow['cnn_ms']:.0f}",
        f"{flow['total_ms']:.0f}",
        f"{timing['ratio']:.2f}",
    )
    table.add_row(rep["model"], "-", f"{rep['total_ms']:.0f}", f"{rep['total_ms']:.0f}", "1.00")
    return table


def _summary_rows(result: Any) -> list[tuple[str, str]]:
    s, layer = result.summary, result.layer
    pixel = layer.pixel_equivalent()
    values = f"{layer.values['tau']:.4g}, {layer.values['lam']:.4g}, {layer.values['theta']:.4g}"
    if not layer.normalize_sobel:
        values += f" (in pixels: {pixel['tau']:.4g}, {pixel['lam']:.4g}, {pixel['theta']:.4g})"
    rows = [
        ("input", f"{result.report['input']} ({result.kind})"),
        ("TV-L1", f"{result.backend}, {s['tvl1_ms_per_video']:.0f} ms / video"),
        (
            "rep-flow layer",
            f"{layer.source}, {layer.iterations} iterations, "
            f"{s['repflow_ms_per_video']:.0f} ms / video",
        ),
        ("tau, lambda, theta", values),
    ]
    if layer.changed:
        rows.append(("learned (changed)", ", ".join(layer.changed)))
    rows.append(("videos", f"{len(result.videos)} compared, {len(result.failed)} failed"))
    rows.append(("pictures", f"{result.panel_path} (pair {result.pictures['pair']}), clip.gif"))
    rows.append(("report", str(result.report_path)))
    rows.append(("time", f"{result.seconds:.1f} s"))
    return rows


CheckpointOption = Annotated[
    Path | None,
    typer.Option(help="Take the first flow layer's parameters from this checkpoint."),
]
ItersOption = Annotated[
    int | None,
    typer.Option(min=1, help="Flow layer iterations (default: the checkpoint's, else 20)."),
]
PrintedSobelOption = Annotated[
    bool,
    typer.Option(
        "--printed-sobel",
        help="Paper values with the unnormalised Sobel, as an untrained network layer "
        "(output x8 to pixels; always so with --checkpoint).",
    ),
]


@app.command("compare-tvl1")
@user_errors
def compare_tvl1_command(
    input: Annotated[
        Path, typer.Argument(help="A video, a frame folder, or a prepared dataset folder.")
    ],
    checkpoint: CheckpointOption = None,
    iters: ItersOption = None,
    backend: Annotated[
        str, typer.Option(help=f"TV-L1 backend: {', '.join(FLOW_BACKENDS)}.")
    ] = "auto",
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Output folder (default runs/compare-tvl1/<name>)."),
    ] = None,
    videos: Annotated[
        int, typer.Option(min=1, help="Videos compared when INPUT is a dataset folder.")
    ] = 4,
    split: Annotated[
        str | None, typer.Option(help="Manifest of a dataset folder (default val, test, train).")
    ] = None,
    frames: Annotated[
        int, typer.Option(min=2, help="Consecutive frames read per video (pairs = frames - 1).")
    ] = 32,
    short_side: Annotated[
        int | None, typer.Option(min=16, help="Resize frames to this short side first.")
    ] = None,
    pair: Annotated[
        int | None, typer.Option(min=0, help="Frame pair drawn in panel.png (default: middle).")
    ] = None,
    border: Annotated[
        int | None,
        typer.Option(min=0, help="Pixels left out along the edges (default 1/16 short side)."),
    ] = None,
    printed_sobel: PrintedSobelOption = False,
    timing_shape: Annotated[
        str, typer.Option(help="TxHxW clip of the Table-9-style timing.")
    ] = "32x224x224",
    timing: Annotated[
        bool, typer.Option("--timing/--no-timing", help="Run the Table-9-style timing.")
    ] = True,
    timing_repeats: Annotated[
        int, typer.Option(min=1, help="Timed runs per network (the best is reported).")
    ] = 1,
) -> None:
    """Compare the representation-flow layer with TV-L1 on every consecutive frame pair.

    Reports end-point error and cosine similarity of rep-flow against TV-L1 (and of both
    against the stored ground truth of synthetic val videos), times per pair and per
    video, and a Table-9-style end-to-end timing of a TV-L1 flow CNN against the rep-flow
    network. Writes report.json, panel.png (RGB | TV-L1 | rep-flow | flow-of-flow) and
    clip.gif to --out.

    Examples:
      vidact compare-tvl1 video.mp4
      vidact compare-tvl1 data/synthetic --videos 8 --timing-shape 8x112x112
      vidact compare-tvl1 clip_frames/ --checkpoint runs/repflow/X/checkpoints/best.pt
      vidact compare-tvl1 video.mp4 --iters 100 --backend torch --short-side 128 --no-timing
    """
    from vidact.compare_tvl1 import compare_tvl1, parse_shape

    shape = parse_shape(timing_shape) if timing else None
    result = compare_tvl1(
        input,
        checkpoint=checkpoint,
        iters=iters,
        backend=backend,
        out=out,
        num_videos=videos,
        split=split,
        max_frames=frames,
        short_side=short_side,
        pair=pair,
        border=border,
        printed_sobel=printed_sobel,
        timing_shape=shape,
        timing_repeats=timing_repeats,
    )
    _report(result)
