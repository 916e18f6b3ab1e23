"""The representation flow layer (Piergiovanni & Ryoo, CVPR 2019) and the blocks built on it.

- ``RepresentationFlow``: Algorithm 1, the unrolled single-scale TV-L1 of Eqs. 2-10, on two
  feature maps F1, F2 of shape (B, C, H, W) -> flow (B, 2C, H, W), x then y per channel.
- ``FlowBlock``: 1x1 conv C -> C' (32), [0, 255] normalisation, the flow between
  consecutive frames, 3x3 conv 2C' -> C, BN, merge with the input features (residual by
  default), ReLU. (N, C, T, H, W) in, (N, C, T - 1, H, W) out; with ``stacked=2`` the
  flow-of-flow (Table 5 "FoF") and T - 2 frames out.
- ``flow_parameters(model)``: the flow layers' learnable parameters, which the trainer puts
  in a group with lr = ``FLOW_LR_SCALE`` x base lr (paper, appendix A).

Conventions (tested):

- x grows with the width index (right), y with the height index (down); the flow u of a
  pair satisfies F1(p) ~ F2(p + u): content moving right gives u_x > 0, moving down u_y > 0.
- grad F2 (Eq. 8): the printed Sobel kernels as true convolutions (*). torch's conv2d is
  cross-correlation, so the kernels (stored as printed) are flipped before use; they then
  give +d/dx, +d/dy. Borders replicate the edge (a constant map has zero gradient).
- div p (Eq. 9): the kernels stored as printed, applied to p zero-padded on its first
  column (row) as w0 * p[j-1] + w1 * p[j], Eq. 6's backward difference for [-1, 1].
- grad u (Eq. 5), default ``grad_u="forward"``: the forward difference fx[0] u[j] +
  fx[1] u[j + 1] (and the same along y), 0 on the last column (row), a Neumann border, with
  its own taps, initially [-1, 1] and learned with the divergence. At initialisation it is
  exactly the negative adjoint of div on the dual fields it produces (p_x = 0 on the last
  column, p_y on the last row), so Eq. 5 is the TV-L1 dual step (Chambolle 2004; Zach et
  al. 2007) and the iterations converge. Learning moves the two pairs independently: the
  adjoint pairing then holds only while w = -(fx[1], fx[0]), and the smoothing step becomes
  a learned one. This is what the authors' code does. ``grad_u="sobel"`` is Eq. 10 as
  printed: Sobel is not adjoint to Eq. 9 (<grad u, p> + <u, div p> is far from 0) and blind
  to checkerboard and stripe patterns, so they are never smoothed and the flow degrades
  with iterations (0.5 px shift: EPE 0.25 px at 10, 0.75 at 20, 1.48 at 100 iterations,
  against 0.10, 0.066, 0.065 for the default); kept to reproduce the paper as printed.
- Eq. 5 is applied per flow component d in {x, y}, each with its own dual field p_d in R^2
  (the TV-L1 the paper unrolls). |grad u_d| is sqrt(. + ``NORM_EPS``) so that its
  gradient exists at 0.
- Units, default ``normalize_sobel=True``: the printed Sobel (which answers a unit ramp
  with 8) divided by 8, the forward difference as is: flow in pixels, the units in which
  the classic tau, lambda, theta are defined (TV-L1 on [0, 255] images, section 3.2), so
  they keep their meaning (Chambolle's proof covers tau <= 1/8 for this gradient pair,
  and 1/4, OpenCV's default, converges in practice). ``normalize_sobel=False`` keeps the
  printed Sobel: the flow is 1/8 of the displacement in pixels, which is the pixel layer
  with lambda and theta 8x (tau unchanged).
- Eq. 3's third case divides by |grad F2|^2 (Algorithm 1's "|F2|^2" is a typo); where it
  is 0 the update is v = u (the limit of the first two cases), computed without a NaN.

Speed: the three cases of Eq. 3 are one clamp, v = u - grad F2 * clamp(rho / |grad F2|^2,
-lambda*theta, lambda*theta). On a CPU, with the default grad u, the iterations run in
fused loops (``rep_flow_fused``, numba): each map does all its iterations in cache, two
passes per iteration, and an exact hand-written backward in four. Elsewhere (GPU,
``fused=False``) all B*C channels and both flow components go through the same
elementwise/shifted-view torch operations (no Python work per channel). Either way, in
training ``_Iterations`` keeps only the state (u, p) entering each iteration and the
backward recomputes each iteration and applies its exact adjoint (every setting but
learned Sobel kernels in Eq. 10, which take autograd with ``torch.utils.checkpoint`` per
iteration, also exact, same memory bound). The core runs in float32 (float64 for float64
input) with autocast disabled.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from vidact.errors import VidactError
from vidact.models import rep_flow_fused
from vidact.models.backbones import fold_time, unfold_time

# ----------------------------------------------------------------------- the paper's numbers
SOBEL_X = ((1.0, 0.0, -1.0), (2.0, 0.0, -2.0), (1.0, 0.0, -1.0))  # Eq. 8 / 10, as printed
SOBEL_Y = ((1.0, 2.0, 1.0), (0.0, 0.0, 0.0), (-1.0, -2.0, -1.0))  # Eq. 8 / 10, as printed
SOBEL_GAIN = 8.0  # response of the printed Sobel to a unit ramp; /8 gives flow in pixels
DIV_X = (-1.0, 1.0)  # Eq. 9, initial w_x
DIV_Y = (-1.0, 1.0)  # Eq. 9, initial w_y (a column: top, bottom)
GRAD_X = (-1.0, 1.0)  # grad u along x: taps on u[j], u[j + 1] (the released code's f_grad)
GRAD_Y = (-1.0, 1.0)  # grad u along y: taps on u[i], u[i + 1]; both -adjoint of DIV_X/DIV_Y
GRAD_U = ("forward", "sobel")  # grad u of Eq. 5: forward difference (default) or Eq. 10
IMAGE_GRAD = ("sobel", "central")  # grad F2: Eq. 8 (default) or the released code's
CENTRAL = 0.5  # the released code's image gradient: 0.5 (F[j + 1] - F[j - 1])
# Initial tau, lambda, theta: the classic TV-L1 values (Zach, Pock & Bischof, DAGM 2007;
# Sanchez, Meinhardt-Llopis & Facciolo, "TV-L1 Optical Flow Estimation", IPOL 2013; the
# defaults of OpenCV's DualTVL1OpticalFlow), tuned for images in [0, 255] (section 3.2)
# and flow in pixels, the units of this layer by default.
TAU = 0.25  # time step
LAMBDA = 0.15  # data-term weight
THETA = 0.3  # coupling between u and v
NORM_EPS = 1e-12  # inside sqrt(|grad u|^2 + eps), Eq. 5
FLOW_CHANNELS = 32  # C' of the 1x1 reduction (appendix A)
ITERATIONS = 20  # Table 3 / Table 9: 10 or 20 iterations; 20 for the final models
FLOW_LR_SCALE = 0.01  # appendix A: lr of tau, lambda, theta, div. and Sobel = 0.01 x lr
LEARN_DEFAULT = ("divergence", "tvl1")  # Table 2's best: divergence + tau, lambda, theta
PIXEL_RANGE = 255.0  # section 3.2: reduced features are normalised to [0, 255]
LEARNABLE_GROUPS = ("sobel", "divergence", "tvl1")
MERGES = ("add", "none", "multiply", "concat", "layer_multiply")


def _learn_set(learn: str | Iterable[str]) -> set[str]:
    if isinstance(learn, str):
        if learn == "all":
            return set(LEARNABLE_GROUPS)
        if learn == "none":
            return set()
        learn = (learn,)
    groups = set(learn)
    unknown = groups - set(LEARNABLE_GROUPS)
    if unknown:
        raise VidactError(
            f"flow learn={sorted(unknown)} not understood; use a subset of {LEARNABLE_GROUPS}, "
            "'all' or 'none'"
        )
    return groups


def _gradient(x: Tensor, kx: Tensor | None, ky: Tensor | None) -> Tensor:
    """Sobel gradient (Eq. 8 / Eq. 10) of every (H, W) map of x -> (..., 2, H, W) = d/dx,
    d/dy, edge-replicated borders, true convolution with the printed kernels.

    ``kx``/``ky`` None: the printed Sobel kernels, evaluated separably (central difference
    then [1, 2, 1] smoothing); otherwise any 3x3 kernels, tap by tap on shifted views."""
    h, w = x.shape[-2:]
    padded = F.pad(x, (1, 1, 1, 1), mode="replicate")  # padded[i + 1, j + 1] = x[i, j]
    if kx is None or ky is None:
        dx = padded[..., :, 2:] - padded[..., :, :-2]
        gx = torch.add(dx[..., :-2, :] + dx[..., 2:, :], dx[..., 1:-1, :], alpha=2)
        dy = padded[..., 2:, :] - padded[..., :-2, :]
        gy = torch.add(dy[..., :, :-2] + dy[..., :, 2:], dy[..., :, 1:-1], alpha=2)
    else:
        # (K * x)(i, j) = sum_ab K[a, b] x(i + 1 - a, j + 1 - b) = K[a, b] padded[i + 2 - a, ...]
        views = [
            [padded[..., 2 - a : 2 - a + h, 2 - b : 2 - b + w] for b in range(3)] for a in range(3)
        ]
        gx = views[0][0] * kx[0, 0]
        gy = views[0][0] * ky[0, 0]
        for a in range(3):
            for b in range(3):
                if a or b:
                    gx = torch.addcmul(gx, views[a][b], kx[a, b])
                    gy = torch.addcmul(gy, views[a][b], ky[a, b])
    return torch.stack([gx, gy], dim=-3)


def _gradient_adjoint(grad: Tensor, like: Tensor) -> Tensor:
    """Adjoint of ``_gradient`` with the printed Sobel kernels: (..., 2, H, W) -> (..., H, W)."""
    gx, gy = grad.unbind(-3)
    # gx = s_y(dx), dx = padded[:, 2:] - padded[:, :-2], s_y = rows [1, 2, 1]
    dx = F.pad(gx, (0, 0, 0, 2)) + F.pad(gx, (0, 0, 2, 0))
    dx[..., 1:-1, :] += 2 * gx
    dy = F.pad(gy, (0, 2, 0, 0)) + F.pad(gy, (2, 0, 0, 0))
    dy[..., :, 1:-1] += 2 * gy
    padded = F.pad(dx, (2, 0, 0, 0)) - F.pad(dx, (0, 2, 0, 0))
    padded += F.pad(dy, (0, 0, 2, 0)) - F.pad(dy, (0, 0, 0, 2))
    return torch.ops.aten.replication_pad2d_backward(padded, like, [1, 1, 1, 1])


def _central_gradient(f1: Tensor, f2: Tensor) -> Tensor:
    """grad F2 as the authors' released layer computes it, per channel (their grouped
    form): 0.5 (F2[j + 1] - F2[j - 1]) inside, and on the first / last column (row) the
    one-sided difference of F1, 0.5 (F1[1] - F1[0]) / 0.5 (F1[-1] - F1[-2]) -> (..., 2, H, W)."""
    gx = torch.cat(
        [f1[..., 1:2] - f1[..., :1], f2[..., 2:] - f2[..., :-2], f1[..., -1:] - f1[..., -2:-1]],
        dim=-1,
    )
    gy = torch.cat(
        [f1[..., 1:2, :] - f1[..., :1, :], f2[..., 2:, :] - f2[..., :-2, :],
         f1[..., -1:, :] - f1[..., -2:-1, :]],
        dim=-2,
    )  # fmt: skip
    return torch.stack([gx, gy], dim=-3) * CENTRAL


def _forward_difference(u: Tensor, fx: Tensor, fy: Tensor) -> Tensor:
    """grad u by forward differences with a Neumann border -> (..., 2, H, W):
    fx[0] u[i, j] + fx[1] u[i, j + 1] along x, 0 on the last column; the same along y,
    0 on the last row. For fx = fy = [-1, 1] it is the negative adjoint of ``_divergence``
    on the dual fields it produces (p_x = 0 on the last column, p_y on the last row)."""
    out = u.new_zeros(*u.shape[:-2], 2, *u.shape[-2:])
    out[..., 0, :, :-1] = torch.addcmul(u[..., :, :-1] * fx[0], u[..., :, 1:], fx[1])
    out[..., 1, :-1, :] = torch.addcmul(u[..., :-1, :] * fy[0], u[..., 1:, :], fy[1])
    return out


def _forward_difference_adjoint(grad: Tensor, fx: Tensor, fy: Tensor) -> Tensor:
    """Adjoint of ``_forward_difference`` in u: (..., 2, H, W) -> (..., H, W)."""
    gx, gy = grad[..., 0, :, :-1], grad[..., 1, :-1, :]
    out = grad.new_zeros(*grad.shape[:-3], *grad.shape[-2:])
    out[..., :, :-1] += gx * fx[0]
    out[..., :, 1:] += gx * fx[1]
    out[..., :-1, :] += gy * fy[0]
    out[..., 1:, :] += gy * fy[1]
    return out


def _divergence(px: Tensor, py: Tensor, wx: Tensor, wy: Tensor) -> Tensor:
    """Eq. 9 on p zero-padded on its first column / row: w0 * p[j-1] + w1 * p[j] along x,
    the same along y (Eq. 6 for w = [-1, 1])."""
    div = torch.addcmul(px * wx[1], py, wy[1])
    div[..., :, 1:] += px[..., :, :-1] * wx[0]
    div[..., 1:, :] += py[..., :-1, :] * wy[0]
    return div


class _Terms(NamedTuple):
    """What every iteration of Algorithm 1 reads (the same for all iterations).

    rho_c: (M, 1, H, W); grad_f2: (M, 2, H, W) (Eq. 8); inv_sq: 1 / |grad F2|^2 (1 where
    it is 0); lam_theta, theta, tau_theta: scalars; wx, wy: Eq. 9's taps; grad u of Eq. 5
    is ``gain`` x the forward difference with taps fx, fy, or (fx None) the Sobel kernels
    kx, ky (None: the printed ones)."""

    rho_c: Tensor
    grad_f2: Tensor
    inv_sq: Tensor
    lam_theta: Tensor
    theta: Tensor
    tau_theta: Tensor
    wx: Tensor
    wy: Tensor
    fx: Tensor | None
    fy: Tensor | None
    kx: Tensor | None
    ky: Tensor | None
    gain: float


def _grad_u(u: Tensor, t: _Terms) -> Tensor:
    """grad u for Eq. 5, (M, 2, H, W) -> (M, 2, 2, H, W) (flow component, direction)."""
    if t.fx is not None and t.fy is not None:
        g = _forward_difference(u, t.fx, t.fy)
    else:
        g = _gradient(u, t.kx, t.ky)  # Eq. 10 as printed
    return g * t.gain if t.gain != 1.0 else g


def _shrink(u: Tensor, t: _Terms) -> tuple[Tensor, Tensor, Tensor]:
    """Eq. 2 and Eq. 3 -> (rho, rho / |grad F2|^2, the clamped step): the three cases of
    Eq. 3 are v = u - grad F2 * clamp(rho / |grad F2|^2, -lambda theta, lambda theta)."""
    g = t.grad_f2
    rho = torch.addcmul(t.rho_c, g[:, :1], u[:, :1]).addcmul_(g[:, 1:], u[:, 1:])
    r = rho * t.inv_sq
    return rho, r, torch.clamp(r, -t.lam_theta, t.lam_theta)


def _dual_norm(grad_u: Tensor) -> Tensor:
    """|grad u_d| per flow component, sqrt(. + NORM_EPS) (Eq. 5), (M, 2, 1, H, W)."""
    return torch.sqrt(
        torch.addcmul(grad_u[:, :, :1] ** 2, grad_u[:, :, 1:], grad_u[:, :, 1:]) + NORM_EPS
    )


def _step(u: Tensor, p: Tensor, t: _Terms) -> tuple[Tensor, Tensor]:
    """One iteration of Algorithm 1 for all maps at once: u (M, 2, H, W) flow (x, y),
    p (M, 2, 2, H, W) dual fields, p[:, d, e] for flow component d and direction e."""
    _, _, shrink = _shrink(u, t)  # Eq. 2, Eq. 3
    v = torch.addcmul(u, t.grad_f2, shrink, value=-1)
    u = torch.addcmul(v, _divergence(p[:, :, 0], p[:, :, 1], t.wx, t.wy), t.theta)  # Eq. 4
    grad_u = _grad_u(u, t)
    norm = _dual_norm(grad_u)
    p = torch.addcmul(p, grad_u, t.tau_theta) / torch.addcmul(
        torch.ones_like(norm), norm, t.tau_theta
    )
    return u, p  # Eq. 5 above


def _step_backward(
    t: _Terms, u: Tensor, p: Tensor, du: Tensor, dp: Tensor, acc: dict[str, Tensor]
) -> tuple[Tensor, Tensor]:
    """The exact adjoint of ``_step`` at state (u, p): the gradients (du, dp) of the state
    leaving it -> those of the state entering it; parameter gradients are added to ``acc``.
    Tie-breaking at the clamp bounds follows torch.clamp (bounds inclusive)."""
    g, a, theta, lt = t.grad_f2, t.tau_theta, t.theta, t.lam_theta
    rho, r, shrink = _shrink(u, t)  # recompute the iteration (see _step)
    px, py = p[:, :, 0], p[:, :, 1]
    div = _divergence(px, py, t.wx, t.wy)
    u_new = torch.addcmul(u, g, shrink, value=-1).addcmul_(div, theta)
    grad_u = _grad_u(u_new, t)
    nrm = _dual_norm(grad_u)
    den = torch.addcmul(torch.ones_like(nrm), nrm, a)
    p_new = torch.addcmul(p, grad_u, a) / den
    # Eq. 5: p' = (p + a G) / (1 + a |G|), G = gain * grad u
    d_num = dp / den
    d_den = -(dp * p_new).sum(2, keepdim=True) / den
    acc["tau_theta"] += (d_num * grad_u).sum() + (d_den * nrm).sum()
    d_grad = torch.addcmul(d_num * a, grad_u, d_den * a / nrm)
    if t.gain != 1.0:
        d_grad *= t.gain
    if t.fx is not None and t.fy is not None:
        d_u_new = du + _forward_difference_adjoint(d_grad, t.fx, t.fy)
        _add_tap_grads(acc, d_grad, u_new)
    else:
        d_u_new = du + _gradient_adjoint(d_grad, u_new)
    # Eq. 4 and Eq. 9
    acc["theta"] += (d_u_new * div).sum()
    dp = _divergence_backward(d_u_new * theta, px, py, t, d_num, acc)
    # Eq. 3: v = u - g * clamp(rho / |g|^2, -lt, lt)
    d_shrink = -(d_u_new * g).sum(1, keepdim=True)
    acc["grad_f2"] -= d_u_new * shrink
    d_r = torch.where((r >= -lt) & (r <= lt), d_shrink, torch.zeros_like(d_shrink))
    acc["lam_theta"] += (d_shrink * ((r > lt).to(r.dtype) - (r < -lt).to(r.dtype))).sum()
    # Eq. 2
    d_rho = d_r * t.inv_sq
    acc["inv_sq"] += d_r * rho
    acc["rho_c"] += d_rho
    acc["grad_f2"] += d_rho * u
    return torch.addcmul(d_u_new, d_rho, g), dp


def _add_tap_grads(acc: dict[str, Tensor], d_grad: Tensor, u: Tensor) -> None:
    """Gradients of the forward-difference taps fx, fy given that of its output."""
    gx, gy = d_grad[:, :, 0, :, :-1], d_grad[:, :, 1, :-1, :]
    acc["fx"][0] += (gx * u[..., :, :-1]).sum()
    acc["fx"][1] += (gx * u[..., :, 1:]).sum()
    acc["fy"][0] += (gy * u[..., :-1, :]).sum()
    acc["fy"][1] += (gy * u[..., 1:, :]).sum()


def _divergence_backward(
    d_div: Tensor, px: Tensor, py: Tensor, t: _Terms, dp: Tensor, acc: dict[str, Tensor]
) -> Tensor:
    """Adds the adjoint of ``_divergence`` (in p) to dp, and its taps' gradients to acc."""
    acc["wx"][1] += (d_div * px).sum()
    acc["wx"][0] += (d_div[..., :, 1:] * px[..., :, :-1]).sum()
    acc["wy"][1] += (d_div * py).sum()
    acc["wy"][0] += (d_div[..., 1:, :] * py[..., :-1, :]).sum()
    dp[:, :, 0] += d_div * t.wx[1]
    dp[:, :, 0, :, :-1] += d_div[..., :, 1:] * t.wx[0]
    dp[:, :, 1] += d_div * t.wy[1]
    dp[:, :, 1, :-1, :] += d_div[..., 1:, :] * t.wy[0]
    return dp


_DIFFERENTIABLE = ("rho_c", "grad_f2", "inv_sq", "lam_theta", "theta", "tau_theta", "wx", "wy")
COMPILE_ENV = "VIDACT_COMPILE_FLOW"  # "1": every layer built with compiled=None compiles
_COMPILE_BACKEND = "inductor"  # torch.compile backend (tests use a lighter one)
_compiled_fns: dict[str, Callable[..., Any]] = {}
_compile_failed: list[str] = []  # the error, once compilation failed here


def compile_error() -> str | None:
    """Why torch.compile of the flow iterations failed in this process (None: it did not)."""
    return _compile_failed[0] if _compile_failed else None


def _run(fn: Callable[..., Any], compiled: bool, *args: Any) -> Any:
    """fn(*args), through torch.compile when asked (inductor fuses one iteration's
    elementwise and shifted-view work into a few loops), falling back to eager, with one
    warning, where compilation is unavailable (no C++ compiler, unsupported platform)."""
    if not compiled or _compile_failed:
        return fn(*args)
    key = f"{fn.__name__}:{_COMPILE_BACKEND}"
    try:
        if key not in _compiled_fns:
            _compiled_fns[key] = torch.compile(fn, backend=_COMPILE_BACKEND, dynamic=False)
        return _compiled_fns[key](*args)
    except Exception as error:  # a missing compiler surfaces as many exception types
        _compile_failed.append(str(error).splitlines()[0] if str(error) else repr(error))
        warnings.warn(
            f"representation flow: torch.compile failed ({_compile_failed[0]}); running the "
            f"flow layer eagerly (unset {COMPILE_ENV} or pass compiled=False to silence this)",
            RuntimeWarning,
            stacklevel=2,
        )
        return fn(*args)


class _Iterations(torch.autograd.Function):
    """All iterations of Algorithm 1 with a hand-written backward, for any grad u except
    learned Sobel kernels (Eq. 10 with kx, ky set).

    The forward keeps only the state (u, p) entering each iteration (the fused CPU loops
    keep nothing: their backward recomputes the iterations); the backward recomputes each
    iteration's intermediates from it and applies the exact adjoint of ``_step`` (tested
    against autograd through the literal reference)."""

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        iterations: int,
        gain: float,
        compiled: bool,
        fused: bool,
        fx: Tensor | None,
        fy: Tensor | None,
        *tensors: Tensor,
    ) -> Tensor:
        t = _Terms._make((*tensors, fx, fy, None, None, gain))
        if fused:  # nothing kept: the backward recomputes each block's iterations in cache
            u = rep_flow_fused.iterate(iterations, _fused_inputs(t))
            us = ps = u.new_zeros(0)
        else:
            m, _, h, w = t.grad_f2.shape
            us = t.grad_f2.new_zeros(iterations, m, 2, h, w)
            ps = t.grad_f2.new_zeros(iterations, m, 2, 2, h, w)
            u, p = us[0].clone(), ps[0].clone()
            for k in range(iterations):
                us[k], ps[k] = u, p
                u, p = _run(_step, compiled, u, p, t)
        taps = () if fx is None or fy is None else (fx, fy)
        ctx.save_for_backward(*tensors, *taps, us, ps)
        ctx.gain = gain  # type: ignore[attr-defined]
        ctx.compiled = compiled  # type: ignore[attr-defined]
        ctx.fused = fused  # type: ignore[attr-defined]
        ctx.iterations = iterations  # type: ignore[attr-defined]
        return u

    @staticmethod
    def backward(
        ctx: torch.autograd.function.FunctionCtx, grad_out: Tensor
    ) -> tuple[Tensor | None, ...]:
        saved = ctx.saved_tensors  # type: ignore[attr-defined]
        n = len(_DIFFERENTIABLE)
        tensors, us, ps = saved[:n], saved[-2], saved[-1]
        fx, fy = saved[n : n + 2] if len(saved) == n + 4 else (None, None)
        t = _Terms._make((*tensors, fx, fy, None, None, ctx.gain))  # type: ignore[attr-defined]
        if ctx.fused:  # type: ignore[attr-defined]
            return None, None, None, None, *_fused_backward(t, ctx.iterations, grad_out)  # type: ignore[attr-defined]
        acc = {name: torch.zeros_like(x) for name, x in zip(_DIFFERENTIABLE, tensors, strict=True)}
        if fx is not None and fy is not None:
            acc["fx"], acc["fy"] = torch.zeros_like(fx), torch.zeros_like(fy)
        du, dp = grad_out.contiguous(), torch.zeros_like(ps[0])
        for k in range(us.shape[0] - 1, -1, -1):
            du, dp = _run(_step_backward, ctx.compiled, t, us[k], ps[k], du, dp, acc)  # type: ignore[attr-defined]
        fx_grad, fy_grad = acc.get("fx"), acc.get("fy")
        return None, None, None, None, fx_grad, fy_grad, *(acc[k] for k in _DIFFERENTIABLE)


def _fused_inputs(t: _Terms) -> rep_flow_fused.Inputs:
    """What the fused loops (and their backward) read, from the terms."""
    assert t.fx is not None and t.fy is not None and t.gain == 1.0
    scalars = (t.lam_theta, t.theta, t.tau_theta)
    return rep_flow_fused.Inputs(t.rho_c, t.grad_f2, t.inv_sq, scalars, (t.wx, t.wy, t.fx, t.fy))


def _fused_backward(t: _Terms, iterations: int, grad_out: Tensor) -> tuple[Tensor, ...]:
    """The gradients of (fx, fy, *_DIFFERENTIABLE) from the fused loops' backward."""
    d_rho_c, d_grad_f2, d_inv_sq, sums = rep_flow_fused.iterate_backward(
        iterations, _fused_inputs(t), grad_out
    )
    acc = dict(zip(rep_flow_fused.SCALARS, sums.unbind(), strict=True))
    like = t.theta

    def taps(a: str, b: str) -> Tensor:
        return torch.stack([acc[a], acc[b]]).to(like.dtype)

    return (
        taps("fx0", "fx1"),
        taps("fy0", "fy1"),
        d_rho_c,
        d_grad_f2,
        d_inv_sq,
        *(acc[k].to(like.dtype) for k in ("lam_theta", "theta", "tau_theta")),
        taps("wx0", "wx1"),
        taps("wy0", "wy1"),
    )


class RepresentationFlow(nn.Module):
    """Algorithm 1: unrolled TV-L1 between feature maps, every channel on its own.

    Args:
        iterations: number of unrolled iterations (parameters shared across them, Fig. 2).
        learn: learnable parameter groups among "sobel" (Eq. 8/10 kernels), "divergence"
            (w_x, w_y of Eq. 9 and the grad u taps) and "tvl1" (tau, lambda, theta); or
            "all" / "none". Default: divergence + tvl1 (Table 2). Fixed ones are buffers.
        grad_u: "forward" (default): grad u of Eq. 5 by a forward difference, the negative
            adjoint of the divergence at initialisation (as the authors' code); "sobel":
            Eq. 10 as printed, which is not adjoint to Eq. 9 and does not converge (see
            docs/flow.md).
        normalize_sobel: True (default): Sobel / 8, flow in pixels; False: the printed
            kernels, grad F2 8x, flow in 1/8 px.
        image_grad: grad F2 of Eq. 8: "sobel" (default, as printed) or "central", the
            authors' released layer's central difference [-0.5, 0, 0.5] on F2 with F1's
            one-sided differences on the border columns / rows (per channel; in pixels;
            ``normalize_sobel`` does not apply to it).
        tau, lam, theta: initial values (default: the classic TV-L1 values above).
        checkpoint: with autograd, recompute each iteration in the backward pass (exact,
            bounded memory).
        custom_backward: use the hand-written exact backward where it applies (every
            setting but grad_u="sobel" with learned Sobel kernels; fastest).
        compiled: run each iteration (forward and hand-written backward) through
            torch.compile; None (default): when the environment sets VIDACT_COMPILE_FLOW=1.
            The first call per shape compiles (tens of seconds on a CPU; cached on disk by
            torch); falls back to eager with a warning where compilation fails.
        fused: on a CPU, run the iterations (default grad u) in the fused numba loops of
            ``rep_flow_fused`` (default; the same numbers as the torch ops up to rounding,
            several times faster); False, ``compiled=True`` or VIDACT_FUSED_FLOW=0: torch's
            ops. Compiled once per machine (about 10-30 s, cached on disk by numba).
    """

    def __init__(
        self,
        iterations: int = ITERATIONS,
        learn: str | Iterable[str] = LEARN_DEFAULT,
        normalize_sobel: bool = True,
        tau: float = TAU,
        lam: float = LAMBDA,
        theta: float = THETA,
        sobel_x: Sequence[Sequence[float]] = SOBEL_X,
        sobel_y: Sequence[Sequence[float]] = SOBEL_Y,
        div_x: Sequence[float] = DIV_X,
        div_y: Sequence[float] = DIV_Y,
        checkpoint: bool = True,
        custom_backward: bool = True,
        grad_u: str = "forward",
        grad_x: Sequence[float] = GRAD_X,
        grad_y: Sequence[float] = GRAD_Y,
        compiled: bool | None = None,
        image_grad: str = "sobel",
        fused: bool = True,
    ) -> None:
        super().__init__()
        if iterations < 1:
            raise VidactError(f"flow iterations={iterations} must be >= 1")
        if grad_u not in GRAD_U:
            raise VidactError(f"flow grad_u={grad_u!r} must be one of {GRAD_U}")
        if image_grad not in IMAGE_GRAD:
            raise VidactError(f"flow image_grad={image_grad!r} must be one of {IMAGE_GRAD}")
        self.image_grad = image_grad
        self.iterations = iterations
        self.normalize_sobel = normalize_sobel
        self.grad_u = grad_u
        self.checkpoint = checkpoint
        self.custom_backward = custom_backward
        self.compiled = os.environ.get(COMPILE_ENV) == "1" if compiled is None else compiled
        self.fused = fused
        groups = _learn_set(learn)
        divergence: dict[str, object] = {"div_x": div_x, "div_y": div_y}
        if grad_u == "forward":
            divergence.update(grad_x=grad_x, grad_y=grad_y)
        values: dict[str, dict[str, object]] = {
            "sobel": {"sobel_x": sobel_x, "sobel_y": sobel_y},
            "divergence": divergence,
            "tvl1": {"tau": tau, "lam": lam, "theta": theta},
        }
        for group, tensors in values.items():
            for name, value in tensors.items():
                t = torch.tensor(value, dtype=torch.float32)
                if group in groups:
                    self.register_parameter(name, nn.Parameter(t))
                else:
                    self.register_buffer(name, t)

    sobel_x: Tensor
    sobel_y: Tensor
    div_x: Tensor
    div_y: Tensor
    grad_x: Tensor
    grad_y: Tensor
    tau: Tensor
    lam: Tensor
    theta: Tensor

    def extra_repr(self) -> str:
        learned = [n for n, _ in self.named_parameters(recurse=False)]
        return (
            f"iterations={self.iterations}, grad_u={self.grad_u!r}, "
            f"normalize_sobel={self.normalize_sobel}, learned={learned}"
        )

    def _printed_sobel(self) -> bool:
        return (
            not self.sobel_x.requires_grad
            and not self.sobel_y.requires_grad
            and torch.equal(self.sobel_x, self.sobel_x.new_tensor(SOBEL_X))
            and torch.equal(self.sobel_y, self.sobel_y.new_tensor(SOBEL_Y))
        )

    def _terms(self, f1: Tensor, f2: Tensor) -> _Terms:
        """Eq. 8 and everything else the iterations read, for (M, 1, H, W) maps."""
        dtype = f1.dtype
        m, _, h, w = f1.shape
        printed = self._printed_sobel()
        kx = None if printed else self.sobel_x.to(dtype)
        ky = None if printed else self.sobel_y.to(dtype)
        scale = 1.0 / SOBEL_GAIN if self.normalize_sobel else 1.0
        if self.image_grad == "central":  # the released code's, not Eq. 8
            grad_f2 = _central_gradient(f1, f2).reshape(m, 2, h, w)
        else:
            grad_f2 = _gradient(f2, kx, ky).reshape(m, 2, h, w)  # Eq. 8
            if scale != 1.0:
                grad_f2 = grad_f2 * scale
        sq = (grad_f2 * grad_f2).sum(1, keepdim=True)
        theta = self.theta.to(dtype)
        forward = self.grad_u == "forward"
        return _Terms(
            rho_c=f2 - f1,
            grad_f2=grad_f2,
            inv_sq=1.0 / torch.where(sq > 0, sq, torch.ones_like(sq)),
            lam_theta=self.lam.to(dtype) * theta,
            theta=theta,
            tau_theta=self.tau.to(dtype) / theta,
            wx=self.div_x.to(dtype),
            wy=self.div_y.to(dtype),
            fx=self.grad_x.to(dtype) if forward else None,
            fy=self.grad_y.to(dtype) if forward else None,
            kx=None if forward else kx,
            ky=None if forward else ky,
            gain=1.0 if forward else scale,
        )

    def _fused_applies(self, t: _Terms) -> bool:
        """The fused CPU loops run the default operators (forward-difference grad u) on
        CPU tensors, unless torch.compile was asked for or they are switched off."""
        return (
            self.fused
            and not self.compiled
            and t.fx is not None
            and t.grad_f2.device.type == "cpu"
            and not torch.jit.is_tracing()  # export: TorchScript / ONNX trace torch ops
            and not torch.compiler.is_compiling()
            and rep_flow_fused.available()
        )

    def forward(self, f1: Tensor, f2: Tensor) -> Tensor:
        if f1.shape != f2.shape or f1.dim() != 4:
            raise ValueError(
                f"flow inputs must be two (B, C, H, W) maps, got {f1.shape}, {f2.shape}"
            )
        b, c, h, w = f1.shape
        dtype = torch.float64 if f1.dtype == torch.float64 else torch.float32
        with torch.autocast(f1.device.type, enabled=False):
            t = self._terms(
                f1.to(dtype).reshape(b * c, 1, h, w), f2.to(dtype).reshape(b * c, 1, h, w)
            )
            custom = t.kx is None and self.custom_backward
            fused = self._fused_applies(t)
            if custom and torch.is_grad_enabled():
                tensors = (t.rho_c, t.grad_f2, t.inv_sq, t.lam_theta, t.theta, t.tau_theta)
                u = _Iterations.apply(
                    self.iterations, t.gain, self.compiled, fused, t.fx, t.fy, *tensors, t.wx, t.wy
                )
                return u.reshape(b, 2 * c, h, w)
            if fused and not torch.is_grad_enabled():
                u = rep_flow_fused.iterate(self.iterations, _fused_inputs(t))
                return u.reshape(b, 2 * c, h, w)
            u = t.grad_f2.new_zeros(b * c, 2, h, w)
            p = t.grad_f2.new_zeros(b * c, 2, 2, h, w)
            recompute = self.checkpoint and torch.is_grad_enabled()
            for _ in range(self.iterations):
                if recompute:
                    u, p = checkpoint(_step, u, p, t, use_reentrant=False)
                else:
                    u, p = _run(_step, self.compiled and not torch.is_grad_enabled(), u, p, t)
        return u.reshape(b, 2 * c, h, w)


def normalize_range(x: Tensor, dims: tuple[int, ...] = (2, 3, 4), eps: float = 1e-6) -> Tensor:
    """Min-max normalise each (sample, channel) to [0, 255] over ``dims`` (section 3.2).

    A whole clip shares one range per channel, so F1 and F2 are scaled alike and the
    brightness-constancy residual F2 - F1 means the same at every frame pair."""
    lo = x.amin(dim=dims, keepdim=True)
    hi = x.amax(dim=dims, keepdim=True)
    return (x - lo) / (hi - lo).clamp_min(eps) * PIXEL_RANGE


class FlowBlock(nn.Module):
    """The flow layer as it sits inside a network (section 3.2, Fig. 3, Fig. 6, appendix A).

    (N, C, T, H, W) -> (N, C, T - stacked, H, W). Steps: 1x1 conv C -> C' per frame, then
    ``stacked`` flow layers, each normalising its input to [0, 255] (``normalize_range``) and
    computing the flow of every consecutive pair of frames; then a 3x3 conv -> C, BN,
    ``merge`` with the input features, ReLU.

    Between two flow layers (Table 5, Fig. 6): ``conv_between=False`` puts nothing, the
    flow-of-flow "FoF" (k channels -> 2k -> 4k); ``conv_between=True`` puts one 3x3 conv
    2C' -> C' and nothing else (no BN, no ReLU, no residual: the next normalisation would
    undo a BN), "FcF" with ``stacked=2``, "FcFcF" with 3. Flow -> conv -> flow -> conv -> BN
    -> one merge at the end, as the released (2+1)D code does (it converts 2C' -> C' with a
    3x3 then a 1x1 conv; one 3x3 conv does both here).

    With ``merge="add"`` the BN's gamma starts at 0 (``zero_init=False``: 1), so the block
    starts as the identity on its (post-ReLU) input: a pretrained trunk is unchanged at
    step 0 (the released code zero-initialises the same BN). The other merges start at
    gamma = 1: with gamma = 0 they would start from a constant feature.

    Temporal alignment: output frame t holds the flow from frame t to t + 1 (for two layers,
    of the frames t, t + 1, t + 2) and is merged with input frame t; the last frames are
    dropped. This is the grid the flow lives on: u is defined at F1's pixels.

    ``merge`` (Table 4, Fig. 4): "add" (residual, the CNN continues; default), "none" (the
    flow feature alone, Fig. 4a), "multiply", "concat" (then a 1x1 conv 2C -> C and BN),
    "layer_multiply" (a 1x1 conv + BN on the input features, times the flow feature).
    """

    def __init__(
        self,
        in_channels: int,
        flow_channels: int = FLOW_CHANNELS,
        stacked: int = 1,
        conv_between: bool = False,
        merge: str = "add",
        zero_init: bool = True,
        **flow_kwargs: object,
    ) -> None:
        super().__init__()
        if merge not in MERGES:
            raise VidactError(f"flow block merge {merge!r} must be one of {MERGES}")
        if stacked < 1 or flow_channels < 1:
            raise VidactError(
                f"flow block stacked={stacked} and flow_channels={flow_channels} must be >= 1"
            )
        self.merge = merge
        self.stacked = stacked
        self.reduce = nn.Conv2d(in_channels, flow_channels, 1)
        self.flows = nn.ModuleList(
            RepresentationFlow(**flow_kwargs)  # type: ignore[arg-type]
            for _ in range(stacked)
        )
        self.between = nn.ModuleList(
            nn.Conv2d(2 * flow_channels, flow_channels, 3, padding=1, bias=False)
            for _ in range(stacked - 1 if conv_between else 0)
        )
        out_flow = 2 * flow_channels if conv_between else flow_channels * 2**stacked
        self.expand = nn.Conv2d(out_flow, in_channels, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(in_channels)
        if merge == "add" and zero_init:
            nn.init.zeros_(self.bn.weight)
        self.mix: nn.Module | None = None
        if merge in ("concat", "layer_multiply"):
            mix_in = 2 * in_channels if merge == "concat" else in_channels
            self.mix = nn.Sequential(
                nn.Conv2d(mix_in, in_channels, 1, bias=False), nn.BatchNorm2d(in_channels)
            )

    def _flow(self, layer: nn.Module, r: Tensor) -> Tensor:
        """(N, k, T, H, W) -> (N, 2k, T - 1, H, W): the flow of each consecutive pair."""
        r = normalize_range(r)
        n, k, t, h, w = r.shape
        f1 = r[:, :, :-1].transpose(1, 2).reshape(-1, k, h, w)
        f2 = r[:, :, 1:].transpose(1, 2).reshape(-1, k, h, w)
        flow = layer(f1, f2)  # (N * (T - 1), 2k, H, W)
        return flow.reshape(n, t - 1, 2 * k, h, w).transpose(1, 2)

    def _merge(self, base: Tensor, y: Tensor) -> Tensor:
        if self.merge == "add":
            return base + y
        if self.merge == "multiply":
            return base * y
        if self.merge == "concat":
            assert self.mix is not None
            return self.mix(torch.cat([base, y], 1))
        if self.merge == "layer_multiply":
            assert self.mix is not None
            return self.mix(base) * y
        return y

    def forward(self, x: Tensor) -> Tensor:
        t = x.shape[2]
        if t <= self.stacked:
            raise VidactError(
                f"a flow block with {self.stacked} stacked flow layer(s) needs more than "
                f"{self.stacked} frames, got T={t}; use longer clips"
            )
        r = unfold_time(self.reduce(fold_time(x)), t)
        for index, layer in enumerate(self.flows):
            if index > 0 and self.between:
                r = unfold_time(self.between[index - 1](fold_time(r)), r.shape[2])
            r = self._flow(layer, r)
        t_out = t - self.stacked
        y = self.bn(self.expand(fold_time(r)))
        base = fold_time(x[:, :, :t_out])
        return unfold_time(F.relu(self._merge(base, y)), t_out)


def flow_parameters(model: nn.Module) -> Iterator[nn.Parameter]:
    """The learnable parameters of every ``RepresentationFlow`` in ``model`` (tau, lambda,
    theta, divergence and Sobel kernels, whichever are learned); nothing for other models.
    The trainer gives them lr = ``FLOW_LR_SCALE`` x base lr (appendix A). A module with a
    ``lr_scaled_flow_parameters()`` method (the released flow layer) names its own."""
    for module in model.modules():
        if isinstance(module, RepresentationFlow):
            yield from (p for p in module.parameters(recurse=False) if p.requires_grad)
        elif callable(own := getattr(module, "lr_scaled_flow_parameters", None)):
            yield from (p for p in own() if p.requires_grad)


__all__ = [
    "FLOW_LR_SCALE",
    "FlowBlock",
    "RepresentationFlow",
    "compile_error",
    "flow_parameters",
    "normalize_range",
]
