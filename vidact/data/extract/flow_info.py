"""OUT/flow.json: the bound and encoding of the flow images, written by prepare and checked
against a recipe's data.flow_bound by training."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

from vidact.data.extract.options import PrepareOptions
from vidact.data.extract.readers import _short
from vidact.data.extract.writers import _FLOW_QUALITY
from vidact.data.video import FLOW_TEMPLATES
from vidact.errors import VidactError

FLOW_INFO_FILE = "flow.json"


def _flow_info(options: PrepareOptions) -> dict[str, Any]:
    """OUT/flow.json: what a reader needs to turn the flow images back into pixels."""
    from vidact.flow.tvl1 import TVL1Params

    return {
        "algorithm": options.flow,
        "bound": options.flow_bound,
        "quantisation": "q = round((clip(f, -bound, bound) + bound) * 255 / (2 * bound)); "
        "f = q * 2 * bound / 255 - bound (vidact.flow.dequantize_flow)",
        "templates": list(FLOW_TEMPLATES),
        "pairs": "pair t (1-based) is the flow from frame t to frame t + 1, x right, y down",
        "gray": "BT.601 luma of the frames after the short-side resize, before JPEG coding",
        "jpeg_quality": _FLOW_QUALITY,
        "params": dataclasses.asdict(TVL1Params.opencv_cpu()),
    }


def read_flow_info(root: str | Path) -> dict[str, Any] | None:
    """The flow.json of a prepared dataset folder, or None where prepare wrote no flow."""
    path = Path(root) / FLOW_INFO_FILE
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError) as exc:
        raise VidactError(f"{path}: unreadable ({_short(exc)}); re-run prepare") from None
    if not isinstance(info, dict) or not isinstance(info.get("bound"), int | float):
        raise VidactError(f"{path}: has no numeric 'bound'; re-run prepare")
    return info


def check_flow_bound(root: str | Path, bound: float) -> None:
    """Refuse to read flow quantised with another bound than `bound` (a recipe's
    data.flow_bound): the network would see every motion scaled by the ratio."""
    info = read_flow_info(root)
    if info is None or math.isclose(float(info["bound"]), bound, rel_tol=1e-6):
        return
    prepared = float(info["bound"])
    raise VidactError(
        f"{Path(root) / FLOW_INFO_FILE}: the flow was quantised with a bound of +-{prepared:g} "
        f"px but the recipe's data.flow_bound is {bound:g}; set data.flow_bound: {prepared:g} "
        f"(--set data.flow_bound={prepared:g}) or prepare again with --flow-bound {bound:g}"
    )
