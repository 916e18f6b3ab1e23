"""The representation-flow layer compare-tvl1 runs: its parameters from the paper or a
checkpoint (`FlowLayerSpec`), and the layer's flow and flow-of-flow on a clip."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vidact.errors import VidactError
from vidact.models.rep_flow import (
    DIV_X,
    DIV_Y,
    GRAD_X,
    GRAD_Y,
    ITERATIONS,
    LAMBDA,
    SOBEL_GAIN,
    SOBEL_X,
    SOBEL_Y,
    TAU,
    THETA,
    RepresentationFlow,
)

PIXEL_BUDGET = 1 << 22  # pairs x H x W per layer call (bounds the layer's memory)
_LAYER_KEYS = ("tau", "lam", "theta", "div_x", "div_y", "sobel_x", "sobel_y")
_GRAD_KEYS = ("grad_x", "grad_y")  # grad u of Eq. 5 (absent with grad_u="sobel")


@dataclass(frozen=True)
class FlowLayerSpec:
    """Which representation-flow layer compare-tvl1 runs, and in which units.

    values: tau, lam, theta (floats), div_x, div_y (2), sobel_x, sobel_y (3x3) as used.
    normalize_sobel: False = the layer as inside the networks (unnormalised Sobel, output
        multiplied by `gain` = 8 to give pixels); True = normalised kernels, pixels directly.
    """

    source: str
    iterations: int
    normalize_sobel: bool
    values: dict[str, Any]
    changed: tuple[str, ...] = ()  # parameters that differ from the paper's initial values
    learn: str | None = None  # the network's `learn` setting, when the recipe says

    @property
    def gain(self) -> float:
        return 1.0 if self.normalize_sobel else SOBEL_GAIN

    def pixel_equivalent(self) -> dict[str, float]:
        """tau, lambda, theta of the normalised-Sobel (pixel-unit) layer that computes the
        same flow: lambda and theta times the Sobel gain (1 when already normalised), tau
        as is (grad u is the forward difference in pixels with either Sobel)."""
        g = self.gain
        v = self.values
        return {"tau": float(v["tau"]), "lam": float(v["lam"]) * g, "theta": float(v["theta"]) * g}

    def build(self, device: torch.device | str = "cpu") -> RepresentationFlow:
        v = self.values
        layer = RepresentationFlow(
            iterations=self.iterations,
            learn="none",
            normalize_sobel=self.normalize_sobel,
            tau=float(v["tau"]),
            lam=float(v["lam"]),
            theta=float(v["theta"]),
            sobel_x=v["sobel_x"],
            sobel_y=v["sobel_y"],
            div_x=v["div_x"],
            div_y=v["div_y"],
            grad_u="forward" if "grad_x" in v else "sobel",
            grad_x=v.get("grad_x", GRAD_X),
            grad_y=v.get("grad_y", GRAD_Y),
            checkpoint=False,
        )
        return layer.to(device).eval()

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "iterations": self.iterations,
            "sobel": "normalised (/8, pixels)" if self.normalize_sobel else "as in the network, x8",
            "values": self.values,
            "pixel_equivalent": self.pixel_equivalent(),
            "changed_from_paper": list(self.changed),
            "learn": self.learn,
            "flow_of_flow": "the layer on the clip-normalised magnitude of the rep-flow fields",
        }


def _paper_values() -> dict[str, Any]:
    return {
        "tau": TAU,
        "lam": LAMBDA,
        "theta": THETA,
        "div_x": list(DIV_X),
        "div_y": list(DIV_Y),
        "sobel_x": [list(r) for r in SOBEL_X],
        "sobel_y": [list(r) for r in SOBEL_Y],
        "grad_x": list(GRAD_X),
        "grad_y": list(GRAD_Y),
    }


def paper_layer(iterations: int = ITERATIONS, *, printed_sobel: bool = False) -> FlowLayerSpec:
    """The paper's initial parameters (Algorithm 1; the classic TV-L1 tau, lambda, theta).

    printed_sobel: run with the printed (unnormalised) kernels as an untrained network layer
    does, output x8; default: normalised kernels, i.e. single-scale TV-L1 in pixels."""
    _check_iterations(iterations)
    return FlowLayerSpec(
        source="paper initial values",
        iterations=iterations,
        normalize_sobel=not printed_sobel,
        values=_paper_values(),
    )


def _check_iterations(iterations: int) -> None:
    if iterations < 1:
        raise VidactError(f"--iters {iterations}: the flow layer needs at least 1 iteration")


def checkpoint_layer(path: str | Path, iterations: int | None = None) -> FlowLayerSpec:
    """The first representation-flow layer of a checkpoint's model (its tau, lambda,
    theta, divergence and Sobel tensors, learned or not, read from the state_dict by name).

    iterations: default the checkpoint recipe's `model.iterations`, else the paper's 20.
    The layer runs with the network's Sobel setting (`model.normalize_sobel`, default the
    model's own) and its grad u (the learned forward-difference kernels, or Sobel).
    """
    from vidact.engine.checkpoint import load_checkpoint

    path = Path(path)
    data = load_checkpoint(path)
    state = data.get("model")
    if not isinstance(state, dict):
        raise VidactError(f"{path}: the checkpoint has no model state_dict")
    prefix = _first_flow_prefix(state)
    if prefix is None:
        raise VidactError(
            f"{path}: no representation-flow layer in this model (no '*.tau', '*.lam', "
            "'*.theta', '*.div_x', ... weights); pass a checkpoint of a repflow_* model, "
            "or leave out --checkpoint to use the paper's initial values"
        )
    values: dict[str, Any] = {}
    shapes = {"div_x": (2,), "div_y": (2,), "sobel_x": (3, 3), "sobel_y": (3, 3)}
    shapes |= {"grad_x": (2,), "grad_y": (2,)}
    keys = _LAYER_KEYS + tuple(k for k in _GRAD_KEYS if prefix + k in state)
    for key in keys:
        tensor = state[prefix + key].detach().to(torch.float64).cpu()
        want = shapes.get(key, ())
        if tuple(tensor.shape) != want:
            raise VidactError(
                f"{path}: {prefix + key} has shape {tuple(tensor.shape)}, expected {want}; "
                "is this a vidact representation-flow checkpoint?"
            )
        values[key] = tensor.item() if not want else tensor.tolist()
    model_cfg = (data.get("recipe") or {}).get("model") or {}
    if iterations is None:
        iterations = int(model_cfg.get("iterations", ITERATIONS))
    _check_iterations(iterations)
    learn = model_cfg.get("learn")
    paper = _paper_values()
    changed = tuple(k for k in keys if not np.allclose(np.asarray(values[k]), np.asarray(paper[k])))
    return FlowLayerSpec(
        source=f"{path} ({prefix.rstrip('.') or 'top level'})",
        iterations=iterations,
        normalize_sobel=bool(model_cfg.get("normalize_sobel", _default_units(model_cfg))),
        values=values,
        changed=changed,
        learn=None if learn is None else str(learn),
    )


def _default_units(model_cfg: dict[str, Any]) -> bool:
    """The model's own `normalize_sobel` default (the layer's, pixels, when it has none)."""
    from vidact.models import model_options

    try:
        return bool(model_options(str(model_cfg.get("name"))).get("normalize_sobel", True))
    except VidactError:  # a model this vidact does not register
        return True


def _first_flow_prefix(state: dict[str, Any]) -> str | None:
    """The name prefix of the first RepresentationFlow in a state_dict (module order)."""
    for key in state:
        if key == "tau" or key.endswith(".tau"):
            prefix = key[: -len("tau")]
            if all(prefix + k in state for k in _LAYER_KEYS):
                return prefix
    return None


def representation_flow(
    gray: np.ndarray,
    layer: RepresentationFlow,
    gain: float = 1.0,
    device: torch.device | str = "cpu",
) -> np.ndarray:
    """The layer's flow between consecutive maps of `gray` (T, H, W) on a 0-255 scale ->
    float32 (T-1, H, W, 2) in pixels (x right, y down, frame t to t+1), times `gain`.

    All pairs go through the layer in batches of about `PIXEL_BUDGET` pixels."""
    dev = torch.device(device)
    t, h, w = gray.shape
    out = np.empty((max(t - 1, 0), h, w, 2), np.float32)
    if t < 2:
        return out
    x = torch.from_numpy(np.ascontiguousarray(gray, dtype=np.float32)).to(dev)
    step = max(1, PIXEL_BUDGET // (h * w))
    with torch.inference_mode():
        for s in range(0, t - 1, step):
            e = min(s + step, t - 1)
            flow = layer(x[s:e, None], x[s + 1 : e + 1, None])  # (B, 2, H, W)
            if gain != 1.0:
                flow = flow * gain
            out[s:e] = flow.permute(0, 2, 3, 1).float().cpu().numpy()
    return out


def flow_of_flow(
    flow: np.ndarray,
    layer: RepresentationFlow,
    gain: float = 1.0,
    device: torch.device | str = "cpu",
) -> np.ndarray:
    """The layer applied to consecutive flow fields (P, H, W, 2) -> (P-1, H, W, 2).

    Input maps: the magnitude of each field, min-max normalised to [0, 255] over the whole
    clip (one range for all, so brightness constancy means the same at every pair)."""
    mag = np.sqrt(np.square(flow.astype(np.float32)).sum(-1))
    lo, hi = (float(mag.min()), float(mag.max())) if mag.size else (0.0, 0.0)
    scaled = (mag - lo) / max(hi - lo, 1e-6) * 255.0
    return representation_flow(scaled.astype(np.float32), layer, gain, device)
