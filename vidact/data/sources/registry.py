"""The one registry of datasets that `vidact prepare <name>` reads from.

A dataset is one source module in this package that declares, at its end,

    SOURCES = (DatasetSource("name", load_name, help=HELP),)

where `load_name(videos, annotations, **options)` returns a `SourceDataset` (or
`load_name(videos, **options)` with `annotations=False`), HELP is the command's help (a
summary line, the details, then "Examples:"), and `options` lists the dataset's own
command-line options beyond the shared ones (`SourceOption("val_fraction", float, 0.0,
"...")` becomes `--val-fraction` and the loader's keyword `val_fraction`). The registry
finds every such module by itself: adding a dataset means adding its module, its test and
its section of docs/datasets.md, nothing else. `vidact prepare synthetic` generates its
videos instead of reading them, so it keeps a command of its own (`sources/synthetic.py`).
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Literal

from vidact.data.sources.common import SourceDataset
from vidact.errors import VidactError

# Modules of the package that declare no dataset: left unimported, so that the command
# line starts without loading what the synthetic generator needs (OpenCV, numpy).
_NOT_SOURCES = {"common", "registry", "synthetic"}


@dataclass(frozen=True)
class SourceOption:
    """A command-line option of one dataset's own, passed to its loader by `name`."""

    name: str  # the loader's keyword; the option is --name-with-dashes
    type: Any  # a type, or a Literal of the accepted values
    default: Any
    help: str

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


# Options several datasets share.
CLASS_ORDER_OPTION = SourceOption(
    "class_order",
    Literal["file", "sorted"],
    "file",
    "Labels in the labels file's order (mmaction2), or the sorted class names "
    "(TSN/TSM/CT-Net code and their released Sth-V1 checkpoints).",
)
FRAME_PATTERN_OPTION = SourceOption(
    "frame_pattern",
    str | None,
    None,
    "Frame folders: the image names, e.g. '{:05d}.jpg' or 'img_%05d.jpg' "
    "(default: detected in each folder).",
)


@dataclass(frozen=True)
class DatasetSource:
    """One dataset `vidact prepare` knows: how to read it and how to explain it."""

    name: str
    load: Callable[..., SourceDataset]
    help: str  # the command's help: summary line, details, "Examples:"
    annotations: bool = True  # needs --annotations (the official annotation files)
    options: tuple[SourceOption, ...] = ()
    videos_flags: str = "--videos"  # the videos folder's option (and its aliases)

    @property
    def summary(self) -> str:
        return inspect.cleandoc(self.help).splitlines()[0]

    def read(
        self, videos: str | Path, annotations: str | Path | None, **options: Any
    ) -> SourceDataset:
        """The dataset's records per split, from its official annotation files."""
        if not self.annotations:
            return self.load(videos, **options)
        if annotations is None:
            raise VidactError(f"{self.name} needs --annotations (the official annotation files)")
        return self.load(videos, annotations, **options)


@cache
def dataset_sources() -> dict[str, DatasetSource]:
    """Every dataset of the package's source modules, by name, in name order."""
    import vidact.data.sources as package

    found: dict[str, DatasetSource] = {}
    for module in pkgutil.iter_modules(package.__path__):
        if module.name in _NOT_SOURCES:
            continue
        for source in getattr(importlib.import_module(f"{package.__name__}.{module.name}"),
                              "SOURCES", ()):  # fmt: skip
            if source.name in found:
                raise RuntimeError(f"two source modules declare the dataset {source.name!r}")
            found[source.name] = source
    return dict(sorted(found.items()))


def dataset_source(name: str) -> DatasetSource:
    """The dataset called `name`; an unknown name is one line with a suggestion."""
    sources = dataset_sources()
    if name not in sources:
        hint = difflib.get_close_matches(name, list(sources), n=1)
        suggestion = f" (did you mean {hint[0]!r}?)" if hint else ""
        raise VidactError(f"unknown dataset {name!r}{suggestion}; use one of {', '.join(sources)}")
    return sources[name]
