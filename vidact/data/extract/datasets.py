"""`prepare`: a dataset by name (annotations + videos) through its source module into
`prepare_dataset`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from vidact.constants import FLOW_BOUND
from vidact.data.extract.options import PrepareOptions, parse_shard
from vidact.data.extract.pipeline import prepare_dataset
from vidact.data.extract.summary import PrepareSummary
from vidact.data.sources.common import (
    SourceDataset,
    read_class_list,
    restrict_classes,
)
from vidact.errors import VidactError

DATASETS = ("kinetics", "hmdb51", "ucf101", "sthv1", "sthv2", "folder")


def load_source(
    dataset: str,
    videos: str | Path,
    annotations: str | Path | None = None,
    *,
    val_fraction: float = 0.0,
    seed: int = 0,
) -> SourceDataset:
    """A dataset's records per split, from its official annotation files."""
    if dataset == "folder":
        from vidact.data.sources.folder import load_folder

        return load_folder(videos, val_fraction=val_fraction, seed=seed)
    if dataset not in DATASETS:
        raise VidactError(f"unknown dataset {dataset!r}; use one of {', '.join(DATASETS)}")
    if annotations is None:
        raise VidactError(f"{dataset} needs --annotations (the official annotation files)")
    loaders: dict[str, Callable[[str | Path, str | Path], SourceDataset]]
    from vidact.data.sources.hmdb51 import load_hmdb51
    from vidact.data.sources.kinetics import load_kinetics
    from vidact.data.sources.something import load_sthv1, load_sthv2
    from vidact.data.sources.ucf101 import load_ucf101

    loaders = {
        "kinetics": load_kinetics,
        "hmdb51": load_hmdb51,
        "ucf101": load_ucf101,
        "sthv1": load_sthv1,
        "sthv2": load_sthv2,
    }
    return loaders[dataset](videos, annotations)


def prepare(
    dataset: str,
    videos: str | Path,
    annotations: str | Path | None,
    out: str | Path,
    *,
    mode: str = "frames",
    short_side: int = 256,
    fps: float | None = None,
    quality: int = 90,
    workers: int | None = None,
    shard: tuple[int, int] | str | None = None,
    classes: str | Path | None = None,
    check_free_space: bool = True,
    val_fraction: float = 0.0,
    seed: int = 0,
    backend: str | None = None,
    flow: str = "none",
    flow_backend: str = "auto",
    flow_bound: float = FLOW_BOUND,
) -> PrepareSummary:
    """`vidact prepare <dataset>`: annotations + videos -> manifests, label map, outputs.

    `flow="tvl1"` also writes TV-L1 flow (see the `vidact.data.extract` docstring) with
    `flow_backend` ("auto", "torch", "opencv", "opencv-cuda"), quantised with +-`flow_bound`
    px."""
    options = PrepareOptions(
        mode=mode,
        short_side=short_side,
        fps=fps,
        quality=quality,
        backend=backend,
        flow=flow,
        flow_backend=flow_backend,
        flow_bound=flow_bound,
    )
    options.validate()
    shard_spec = parse_shard(shard) if isinstance(shard, str) or shard is None else shard
    source = load_source(dataset, videos, annotations, val_fraction=val_fraction, seed=seed)
    if classes is not None:
        source = restrict_classes(source, read_class_list(classes), str(classes))
    return prepare_dataset(
        source,
        out,
        options,
        workers=workers,
        shard=shard_spec,
        check_free_space=check_free_space,
    )
