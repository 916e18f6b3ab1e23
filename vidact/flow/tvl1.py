"""Batched TV-L1 optical flow in PyTorch (GPU or CPU).

The method is the duality-based TV-L1 of Zach, Pock and Bischof (DAGM 2007) in the form
written up by Sanchez Perez, Meinhardt-Llopis and Facciolo, "TV-L1 Optical Flow
Estimation", IPOL 2013 (referred to below as [IPOL]), with the loop structure of OpenCV's
`cv2.optflow.DualTVL1OpticalFlow` (outer iterations with an optional median filter of the
flow, inner iterations, the epsilon stopping rule) so that its defaults mean the same here.
The per-iteration equations are numbered as in the representation-flow paper
(Piergiovanni and Ryoo, CVPR 2019, section 3.1, referred to as [RF]), which restates them.

Conventions: images are grayscale float intensities on a 0-255 scale, shape (B, H, W);
the flow is (B, 2, H, W) in pixels, channel 0 = x (right), channel 1 = y (down), and maps
pixel (x, y) of frame 0 to (x + u, y + v) in frame 1, as OpenCV does.

Everything is vectorised over the batch and over pixels. Each pair carries its own
"still iterating" flag: a pair whose flow update falls under epsilon stops changing while
the others go on, pairs that have stopped are dropped from the working set, and the
iterations end as soon as every pair of the batch has stopped.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Literal

import torch
import torch.nn.functional as F

__all__ = ["TVL1Params", "default_device", "median_filter", "tvl1_flow"]

Interpolation = Literal["bicubic", "bilinear"]

# [IPOL] GRAD_IS_ZERO: below this |grad I1|^2 the thresholding step leaves u unchanged.
_GRAD_IS_ZERO = 1.1920929e-07  # float32 machine epsilon, the threshold OpenCV uses
_MIN_PYRAMID_SIDE = 16  # a coarser level with a side under 16 px is not built


@dataclass(frozen=True)
class TVL1Params:
    """TV-L1 parameters. The defaults are OpenCV's CPU defaults (see `opencv_cpu`).

    tau: time step of the dual update ([RF] eq. 5; the scheme is stable for tau <= 1/4).
    lambda_: weight of the data term (attachment), larger = less smooth.
    theta: tightness of the coupling between u and the auxiliary v.
    n_scales, scale_step: pyramid depth and down-scaling factor per level.
    n_warps: re-linearisations of the data term per scale.
    epsilon: stop when the mean over pixels of |u_new - u|^2 is <= epsilon^2.
    inner_iterations, outer_iterations: at most outer x inner iterations per warp; the
        median filter (when median_filtering > 1) runs before each outer iteration.
    median_filtering: side of the median filter applied to the flow (1 = off).
    gamma: weight of the illumination-change term (0 = off), as in OpenCV: a third
        unknown u3 enters the residual as gamma * u3 and gets its own TV regulariser.
    interpolation: how the second image and its gradient are warped.
    """

    tau: float = 0.25
    lambda_: float = 0.15
    theta: float = 0.3
    n_scales: int = 5
    n_warps: int = 5
    epsilon: float = 0.01
    inner_iterations: int = 30
    outer_iterations: int = 10
    scale_step: float = 0.8
    median_filtering: int = 5
    gamma: float = 0.0
    interpolation: Interpolation = "bicubic"

    @classmethod
    def opencv_cpu(cls) -> TVL1Params:
        """`cv2.optflow.DualTVL1OpticalFlow_create()` defaults.

        Read off its getters (OpenCV 5.0 contrib): tau 0.25, lambda 0.15, theta 0.3,
        5 scales, 5 warps, epsilon 0.01, 30 inner and 10 outer iterations, scale step 0.8,
        median filtering 5, gamma 0; it warps with bicubic interpolation.
        """
        return cls()

    @classmethod
    def opencv_cuda(cls) -> TVL1Params:
        """`cv2.cuda.OpticalFlowDual_TVL1.create()` defaults: one flat loop of 300
        iterations per warp and no median filtering; the other values as on the CPU."""
        return cls(inner_iterations=300, outer_iterations=1, median_filtering=1)

    def replace(self, **changes: object) -> TVL1Params:
        """A copy with some fields changed (validated)."""
        return replace(self, **changes)  # type: ignore[arg-type]

    def __post_init__(self) -> None:
        checks = {
            "tau": self.tau > 0,
            "lambda_": self.lambda_ > 0,
            "theta": self.theta > 0,
            "n_scales": self.n_scales >= 1,
            "n_warps": self.n_warps >= 1,
            "epsilon": self.epsilon >= 0,
            "inner_iterations": self.inner_iterations >= 1,
            "outer_iterations": self.outer_iterations >= 1,
            "scale_step": 0 < self.scale_step < 1,
            "median_filtering": self.median_filtering >= 1
            and (self.median_filtering == 1 or self.median_filtering % 2 == 1),
            "gamma": self.gamma >= 0,
            "interpolation": self.interpolation in ("bicubic", "bilinear"),
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"invalid TV-L1 parameter(s): {', '.join(bad)} in {self!r}")


def default_device() -> torch.device:
    """CUDA when available, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# ---------------------------------------------------------------------------------------
# Finite differences ([IPOL]'s discretisation: forward differences for grad u, the matching
# backward differences for div p, centred differences for the image gradient).


def _forward_gradient(u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward differences with zero at the last column/row (Neumann boundary)."""
    ux = F.pad(u[..., :, 1:] - u[..., :, :-1], (0, 1))
    uy = F.pad(u[..., 1:, :] - u[..., :-1, :], (0, 0, 0, 1))
    return ux, uy


def _divergence(px: torch.Tensor, py: torch.Tensor) -> torch.Tensor:
    """Backward-difference divergence, the negative adjoint of `_forward_gradient`.

    Relies on px's last column and py's last row being 0, which holds because p starts at
    0 and is only ever fed forward gradients, which are 0 there.
    """
    return px - F.pad(px[..., :, :-1], (1, 0)) + py - F.pad(py[..., :-1, :], (0, 0, 1, 0))


def _centered_gradient(img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(I[x+1] - I[x-1]) / 2 inside, one-sided halves at the borders. img: (B, 1, H, W)."""
    p = F.pad(img, (1, 1, 1, 1), mode="replicate")
    gx = 0.5 * (p[..., 1:-1, 2:] - p[..., 1:-1, :-2])
    gy = 0.5 * (p[..., 2:, 1:-1] - p[..., :-2, 1:-1])
    return gx, gy


def median_filter(u: torch.Tensor, size: int) -> torch.Tensor:
    """Median over size x size windows of each (H, W) plane of u (..., H, W), replicated
    border. On CPU with size 3 or 5 this uses OpenCV's medianBlur (the same result, and a
    sorting-based torch version is two orders of magnitude slower there)."""
    if size <= 1:
        return u
    if u.device.type == "cpu" and size in (3, 5) and u.dtype == torch.float32:
        import cv2

        planes = u.detach().contiguous().reshape(-1, *u.shape[-2:]).numpy()
        out = torch.empty_like(u).reshape(-1, *u.shape[-2:])
        out_np = out.numpy()
        for i in range(planes.shape[0]):
            out_np[i] = cv2.medianBlur(planes[i], size)
        return out.reshape(u.shape)
    r = size // 2
    h, w = u.shape[-2:]
    flat = u.reshape(-1, 1, h, w)
    out = torch.empty_like(flat)
    # The windows are materialised (size^2 values per pixel): bound that to ~2^26 values.
    chunk = max(1, (1 << 26) // (size * size * h * w))
    for start in range(0, flat.shape[0], chunk):
        padded = F.pad(flat[start : start + chunk], (r, r, r, r), mode="replicate")
        windows = padded.unfold(2, size, 1).unfold(3, size, 1)
        out[start : start + chunk] = windows.reshape(*windows.shape[:4], -1).median(-1).values
    return out.reshape(u.shape)


# ---------------------------------------------------------------------------------------
# The iteration ([IPOL]'s inner loop; [RF] eqs. 2-6).


def _tvl1_steps(
    u: torch.Tensor,
    p: torch.Tensor,
    g: torch.Tensor,
    rho_c: torch.Tensor,
    inv_g2: torch.Tensor,
    running: torch.Tensor | None,
    n_steps: int,
    l_t: float,
    theta: float,
    taut: float,
    eps2: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """`n_steps` TV-L1 iterations on a working set of b pairs.

    u: (b, C, h, w) flow (C = 2, or 3 with the illumination term); p: (b, 2C, h, w) dual
    variables, x parts then y parts; g: (b, C, h, w) warped image gradient (plus the
    constant gamma channel); rho_c: (b, 1, h, w) constant part of the residual;
    inv_g2: (b, 1, h, w) 1/|g|^2 or 0 where |g|^2 is ~0.
    running: (b,) bool or None. With a mask, pairs whose last update was under epsilon are
    frozen (used when several steps run between host-side checks); None means all run.
    Returns u, p, the per-pair "still running" flags after the last step, and the number
    of steps each pair actually took (b,).
    """
    b, c, h, w = u.shape
    # Stop when mean |u_new - u|^2 <= eps^2, i.e. when ||u_new - u|| <= eps * sqrt(h w).
    tol = math.sqrt(eps2 * h * w)
    still = running
    applied = torch.zeros(b, dtype=torch.int32, device=u.device)
    # Forward gradient of u, (b, 2, C, h, w): x parts then y parts, like p. Its last
    # column (x) and last row (y) stay 0: the Neumann boundary of [IPOL]'s discretisation.
    grad_u = u.new_zeros(b, 2, c, h, w)
    for _ in range(n_steps):
        p5 = p.view(b, 2, c, h, w)
        # Residual rho(u) = I1(x+u0) + grad I1(x+u0).(u-u0) - I0  ([RF] eqs. 1-2).
        rho = (g * u).sum(dim=1, keepdim=True).add_(rho_c)
        # Thresholding step TH ([RF] eq. 3): v = u - clip(rho/|g|^2, -l_t, l_t) g covers
        # the three cases rho < -l_t|g|^2, rho > l_t|g|^2 and |rho| <= l_t|g|^2 at once.
        step = rho.mul_(inv_g2).clamp_(-l_t, l_t)
        v = torch.addcmul(u, step, g, value=-1.0)
        # u = v + theta div p  ([RF] eq. 4), div by backward differences ([RF] eq. 6)
        # (p's last column / row are 0, see grad_u).
        px, py = p5[:, 0], p5[:, 1]
        div = px + py
        div[..., :, 1:] -= px[..., :, :-1]
        div[..., 1:, :] -= py[..., :-1, :]
        u_new = v.add_(div, alpha=theta)
        err = torch.linalg.vector_norm((u_new - u).view(b, -1), dim=1)
        # Dual update p = (p + tau/theta grad u) / (1 + tau/theta |grad u|)  ([RF] eq. 5).
        torch.sub(u_new[..., :, 1:], u_new[..., :, :-1], out=grad_u[:, 0, ..., :, :-1])
        torch.sub(u_new[..., 1:, :], u_new[..., :-1, :], out=grad_u[:, 1, ..., :-1, :])
        gx, gy = grad_u[:, 0], grad_u[:, 1]
        den = torch.addcmul(gx * gx, gy, gy).sqrt_().mul_(taut).add_(1.0).unsqueeze(1)
        p_new = torch.add(p5, grad_u, alpha=taut).div_(den).view(b, 2 * c, h, w)
        if still is None:
            u, p = u_new, p_new
            applied = applied + 1
            still = err > tol
        else:
            keep = still.view(-1, 1, 1, 1)
            u = torch.where(keep, u_new, u)
            p = torch.where(keep, p_new, p)
            applied = applied + still.to(torch.int32)
            still = still & (err > tol)
    assert still is not None
    return u, p, still, applied


StepFn = Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]
_compiled: dict[str, StepFn] = {}


def _step_fn(use_compile: bool) -> StepFn:
    if not use_compile:
        return _tvl1_steps
    if "fn" not in _compiled:
        _compiled["fn"] = torch.compile(_tvl1_steps, dynamic=True)
    return _compiled["fn"]


# ---------------------------------------------------------------------------------------
# Pyramid, warping and the coarse-to-fine driver.


def _pyramid_sizes(h: int, w: int, params: TVL1Params) -> list[tuple[int, int]]:
    sizes = [(h, w)]
    for _ in range(1, params.n_scales):
        ph, pw = sizes[-1]
        nh, nw = round(ph * params.scale_step), round(pw * params.scale_step)
        if nh < _MIN_PYRAMID_SIDE or nw < _MIN_PYRAMID_SIDE:
            break
        sizes.append((nh, nw))
    return sizes


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def _base_grid(h: int, w: int, device: torch.device) -> torch.Tensor:
    ys = torch.arange(h, device=device, dtype=torch.float32)
    xs = torch.arange(w, device=device, dtype=torch.float32)
    return torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=0)  # (2, h, w): x, y


def _warp(stack: torch.Tensor, u: torch.Tensor, base: torch.Tensor, mode: str) -> torch.Tensor:
    """Sample `stack` (b, k, h, w) at x + u(x), replicated border (Neumann, as [IPOL])."""
    h, w = stack.shape[-2:]
    pos = base.unsqueeze(0) + u[:, :2]
    gx = pos[:, 0] * (2.0 / max(w - 1, 1)) - 1.0
    gy = pos[:, 1] * (2.0 / max(h - 1, 1)) - 1.0
    grid = torch.stack([gx, gy], dim=-1)
    return F.grid_sample(stack, grid, mode=mode, padding_mode="border", align_corners=True)


def _one_scale(
    i0: torch.Tensor,
    i1: torch.Tensor,
    u: torch.Tensor,
    params: TVL1Params,
    check_every: int,
    step: StepFn,
    counts: torch.Tensor | None,
) -> torch.Tensor:
    """[IPOL]'s warping loop at one scale. i0, i1: (B, 1, h, w); u: (B, C, h, w), updated."""
    b, c, h, w = u.shape
    l_t = params.lambda_ * params.theta
    taut = params.tau / params.theta
    eps2 = params.epsilon**2
    base = _base_grid(h, w, u.device)
    i1x, i1y = _centered_gradient(i1)
    i1_stack = torch.cat([i1, i1x, i1y], dim=1)
    p_all = torch.zeros(b, 2 * c, h, w, device=u.device, dtype=u.dtype)

    for _ in range(params.n_warps):
        # Linearise the data term around the current flow u0 ([RF] eq. 1): warp I1 and
        # its gradient (not the gradient of the warped image), then precompute what stays
        # constant during the iterations.
        warped = _warp(i1_stack, u, base, params.interpolation)
        g = warped[:, 1:3]
        if c == 3:
            g = torch.cat([g, torch.full_like(g[:, :1], params.gamma)], dim=1)
        grad2 = g.square().sum(dim=1, keepdim=True)
        # The illumination term gamma * u3 is linear already: only the flow part is
        # taken relative to u0, so rho = rho_c + g.u holds for all channels.
        rho_c = warped[:, :1] - (g[:, :2] * u[:, :2]).sum(dim=1, keepdim=True) - i0
        inv_g2 = torch.where(grad2 > _GRAD_IS_ZERO, 1.0 / grad2, torch.zeros_like(grad2))

        # Working set: every pair restarts with error = +inf at each warp.
        idx = torch.arange(b, device=u.device)
        wu, wp, wg, wr, wi = u, p_all, g, rho_c, inv_g2
        for _outer in range(params.outer_iterations):
            if idx.numel() == 0:
                break
            if params.median_filtering > 1:
                # OpenCV's addition: median-filter the flow before each outer iteration.
                wu = wu.clone()
                wu[:, :2] = median_filter(wu[:, :2], params.median_filtering)
            done = 0
            while done < params.inner_iterations and idx.numel() > 0:
                n = min(check_every, params.inner_iterations - done)
                mask = (
                    None if n == 1 else torch.ones(idx.numel(), dtype=torch.bool, device=u.device)
                )
                wu, wp, still, applied = step(
                    wu, wp, wg, wr, wi, mask, n, l_t, params.theta, taut, eps2
                )
                done += n
                if counts is not None:
                    counts[idx.cpu()] += applied.cpu().to(counts.dtype)
                if bool(still.all()):
                    continue
                # Some pairs converged: write the working set back and shrink it.
                u[idx] = wu
                p_all[idx] = wp
                keep = still.nonzero().squeeze(1)
                idx = idx[keep]
                wu, wp, wg, wr, wi = wu[keep], wp[keep], wg[keep], wr[keep], wi[keep]
        if idx.numel() == b:
            u, p_all = wu, wp
        elif idx.numel() > 0:
            u[idx] = wu
            p_all[idx] = wp
    return u


def tvl1_flow(
    i0: torch.Tensor,
    i1: torch.Tensor,
    params: TVL1Params | None = None,
    *,
    device: torch.device | str | None = None,
    compile: bool | None = None,
    check_every: int | None = None,
    stats: dict[str, Any] | None = None,
    num_threads: int | None = 1,
) -> torch.Tensor:
    """TV-L1 flow from frame `i0` to frame `i1` for a batch of pairs.

    i0, i1: (B, H, W) or (H, W) grayscale, float on a 0-255 scale (uint8 is converted).
    params: `TVL1Params` (default: OpenCV's CPU defaults).
    device: where to compute (default: CUDA if available, else CPU).
    compile: run the iterations through `torch.compile` (default off). On CPU it needs a
        C++ compiler, costs seconds once per process, and measured no faster than the
        hand-fused eager iteration; it is meant for GPUs, where it merges the ~20 small
        kernels of an iteration into a few.
    check_every: iterations between host-side convergence checks (default 1 on CPU, 10 on
        CUDA); in between, converged pairs are frozen by a per-pair mask, so the result
        does not depend on it.
    num_threads: on CPU, torch intra-op threads while this call runs (restored after);
        None keeps the current setting. The default 1 is deliberate: the per-op work here
        is small, a second thread gains little, and on a shared CPU an OpenMP thread that
        gets descheduled stalls every op (10x slow-downs measured on 2 busy cores). Run
        several processes (or `compute_flow(workers=...)`) to use more cores.
    stats: if given, filled with "iterations": (B,) numpy int64, the TV-L1 iterations each
        pair took over all scales and warps, and "work": (B,) float64, the same weighted
        by each scale's pixel count relative to full size (full-size-equivalent iterations).
    Returns (B, 2, H, W) float32 flow in pixels (x then y) on `device`.
    """
    params = params or TVL1Params()
    dev = torch.device(device) if device is not None else default_device()
    if i0.shape != i1.shape:
        raise ValueError(f"frame shapes differ: {tuple(i0.shape)} vs {tuple(i1.shape)}")
    squeeze = i0.dim() == 2
    if squeeze:
        i0, i1 = i0.unsqueeze(0), i1.unsqueeze(0)
    if i0.dim() != 3:
        raise ValueError(f"expected (B, H, W) or (H, W) frames, got {tuple(i0.shape)}")
    h, w = i0.shape[-2:]
    if h < 3 or w < 3:
        raise ValueError(f"frames must be at least 3x3 pixels, got {h}x{w}")
    if check_every is None:
        check_every = 1 if dev.type == "cpu" else 10
    step = _step_fn(bool(compile))

    threads_before = torch.get_num_threads()
    if dev.type == "cpu" and num_threads is not None and num_threads != threads_before:
        torch.set_num_threads(num_threads)
    try:
        with torch.no_grad():
            flow = _coarse_to_fine(i0, i1, params, dev, check_every, step, stats)
    finally:
        if torch.get_num_threads() != threads_before:
            torch.set_num_threads(threads_before)
    return flow[0] if squeeze else flow


def _coarse_to_fine(
    i0: torch.Tensor,
    i1: torch.Tensor,
    params: TVL1Params,
    dev: torch.device,
    check_every: int,
    step: StepFn,
    stats: dict[str, Any] | None,
) -> torch.Tensor:
    """The pyramid loop of [IPOL] (coarse to fine), on (B, H, W) frames."""
    b, h, w = i0.shape
    c = 3 if params.gamma > 0 else 2
    im0 = i0.to(dev, torch.float32).unsqueeze(1)
    im1 = i1.to(dev, torch.float32).unsqueeze(1)
    sizes = _pyramid_sizes(h, w, params)
    # Image pyramid: plain bilinear down-scaling by scale_step per level, as OpenCV.
    p0, p1 = [im0], [im1]
    for size in sizes[1:]:
        p0.append(_resize(p0[-1], size))
        p1.append(_resize(p1[-1], size))

    u = torch.zeros(b, c, *sizes[-1], device=dev)
    total = torch.zeros(b, dtype=torch.int64)
    work = torch.zeros(b, dtype=torch.float64)
    for level in range(len(sizes) - 1, -1, -1):
        counts = torch.zeros(b, dtype=torch.int64) if stats is not None else None
        u = _one_scale(p0[level], p1[level], u, params, check_every, step, counts)
        if counts is not None:
            total += counts
            work += counts.double() * (sizes[level][0] * sizes[level][1] / (h * w))
        if level > 0:
            # Upsample the flow to the next finer level and rescale its magnitude.
            (ch, cw), (nh, nw) = sizes[level], sizes[level - 1]
            u = _resize(u, (nh, nw))
            u[:, 0] *= nw / cw
            u[:, 1] *= nh / ch
    flow = u[:, :2].contiguous()
    if stats is not None:
        stats["iterations"] = total.numpy()
        stats["work"] = work.numpy()
    return flow
