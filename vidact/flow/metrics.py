"""Flow accuracy and similarity measures.

Flows are arrays whose last axis is (x, y) in pixels: (H, W, 2) or (N, H, W, 2), numpy
arrays or torch tensors (channel-first torch flows can be passed through
`channels_last`). Every measure takes an optional boolean `mask` of the leading shape
(e.g. (H, W)) selecting the pixels that count; `border_mask` builds the usual one that
drops a margin along the image edges, where warping has no data.

References: Baker et al., "A Database and Evaluation Methodology for Optical Flow",
IJCV 2011 (end-point error, angular error).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = [
    "angular_error",
    "angular_error_map",
    "border_mask",
    "channels_last",
    "cosine_similarity",
    "cosine_similarity_map",
    "endpoint_error",
    "endpoint_error_map",
]


def channels_last(flow: Any) -> np.ndarray:
    """(2, H, W) or (N, 2, H, W) (torch layout) -> float64 numpy (H, W, 2) / (N, H, W, 2)."""
    arr = _as_array(flow)
    if arr.ndim < 3 or arr.shape[-3] != 2:
        raise ValueError(f"expected a (..., 2, H, W) flow, got shape {arr.shape}")
    return np.moveaxis(arr, -3, -1)


def border_mask(height: int, width: int, border: int) -> np.ndarray:
    """(H, W) bool mask, False within `border` pixels of the image edges."""
    if border < 0:
        raise ValueError(f"border must be >= 0, got {border}")
    mask = np.zeros((height, width), dtype=bool)
    if 2 * border < height and 2 * border < width:
        mask[border : height - border, border : width - border] = True
    return mask


def _as_array(flow: Any) -> np.ndarray:
    if isinstance(flow, torch.Tensor):
        flow = flow.detach().cpu().numpy()
    return np.asarray(flow, dtype=np.float64)


def _pair(flow: Any, ref: Any) -> tuple[np.ndarray, np.ndarray]:
    a, b = _as_array(flow), _as_array(ref)
    if a.shape != b.shape:
        raise ValueError(f"flow shapes differ: {a.shape} vs {b.shape}")
    if a.shape[-1] != 2:
        raise ValueError(f"flows must have a last axis of size 2 (x, y), got {a.shape}")
    return a, b


def _masked_mean(values: np.ndarray, mask: Any) -> float:
    if mask is None:
        return float(values.mean())
    m = np.broadcast_to(np.asarray(mask, dtype=bool), values.shape)
    if not m.any():
        raise ValueError("the mask selects no pixels")
    return float(values[m].mean())


def endpoint_error_map(flow: Any, ref: Any) -> np.ndarray:
    """Per-pixel end-point error |flow - ref| (Euclidean, pixels)."""
    a, b = _pair(flow, ref)
    return np.sqrt(np.square(a - b).sum(axis=-1))


def endpoint_error(flow: Any, ref: Any, mask: Any = None) -> float:
    """Mean end-point error over the (masked) pixels."""
    return _masked_mean(endpoint_error_map(flow, ref), mask)


def angular_error_map(flow: Any, ref: Any) -> np.ndarray:
    """Per-pixel angular error in degrees between the space-time vectors (u, v, 1) and
    (u_ref, v_ref, 1) (Baker et al. 2011, eq. 1; defined even for zero flow)."""
    a, b = _pair(flow, ref)
    u1, v1, u2, v2 = a[..., 0], a[..., 1], b[..., 0], b[..., 1]
    dot = 1.0 + u1 * u2 + v1 * v2
    # |a x b| for a = (u1, v1, 1), b = (u2, v2, 1); atan2 stays accurate near 0 degrees,
    # where arccos of the normalised dot product loses precision.
    cross = np.sqrt(np.square(v1 - v2) + np.square(u2 - u1) + np.square(u1 * v2 - v1 * u2))
    return np.degrees(np.arctan2(cross, dot))


def angular_error(flow: Any, ref: Any, mask: Any = None) -> float:
    """Mean angular error in degrees over the (masked) pixels."""
    return _masked_mean(angular_error_map(flow, ref), mask)


def cosine_similarity_map(flow: Any, ref: Any, eps: float = 1e-6) -> np.ndarray:
    """Per-pixel cosine of the angle between the 2-D flow vectors, in [-1, 1].

    NaN where either vector is shorter than `eps` (no direction to compare).
    """
    a, b = _pair(flow, ref)
    na = np.sqrt(np.square(a).sum(axis=-1))
    nb = np.sqrt(np.square(b).sum(axis=-1))
    valid = (na > eps) & (nb > eps)
    cos = np.full(na.shape, np.nan)
    cos[valid] = (a * b).sum(axis=-1)[valid] / (na[valid] * nb[valid])
    return np.clip(cos, -1.0, 1.0)


def cosine_similarity(flow: Any, ref: Any, mask: Any = None, eps: float = 1e-6) -> float:
    """Mean per-pixel cosine similarity over (masked) pixels where both flows move.

    Returns NaN when no selected pixel has both vectors longer than `eps`. For one global
    number that also weighs magnitudes, compare flattened fields with numpy instead.
    """
    cos = cosine_similarity_map(flow, ref, eps)
    keep = ~np.isnan(cos)
    if mask is not None:
        keep &= np.broadcast_to(np.asarray(mask, dtype=bool), cos.shape)
    return float(cos[keep].mean()) if keep.any() else float("nan")
