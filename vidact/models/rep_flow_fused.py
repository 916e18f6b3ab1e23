"""The representation flow iterations as fused CPU loops (numba), forward and exact backward.

Why hand-written: one iteration of Algorithm 1 is about twenty elementwise operations on
maps that fit in a core's cache (a 28 x 28 map with its flow and dual fields is 19 KB),
but torch runs each operation as its own pass over all B*C maps in memory, and the
backward about sixty more; the layer is memory-bound. ``torch.compile`` (inductor) fuses
one iteration's forward but measured slower than eager in the backward on this CPU
(docs/models.md). Here every map runs all its iterations in cache, in two passes per
iteration forward (Eqs. 2-4, then Eq. 5) and four backward, compiled once by numba
(cached on disk) and spread over threads by map (the kernels release the GIL).

The operators are the layer's default ones (``rep_flow.py``): grad F2 given, grad u by the
forward difference with taps fx, fy and a Neumann border, Eq. 9's divergence with taps wx,
wy on p zero-padded first; the same floating-point operations as ``_step`` and
``_step_backward`` up to rounding (tested against them and the literal reference).

Layouts (C order): rho_c, inv_sq (M, H, W); grad_f2, u (M, 2, H, W); p (M, 2, 2, H, W) with
p[:, d, e] the dual field of flow component d, direction e; the scalars
(lam_theta, theta, tau_theta) and taps (wx0, wx1, wy0, wy1, fx0, fx1, fy0, fy1) as
arrays. The backward returns the per-map sums of the scalar gradients in ``SCALARS``
order.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

numba: Any
try:  # numba is a dependency; without it (an unsupported platform) the layer runs eagerly
    import numba
except ImportError:  # pragma: no cover - exercised only where numba does not install
    numba = None

NORM_EPS = 1e-12  # as rep_flow.NORM_EPS, inside sqrt(|grad u|^2 + eps), Eq. 5
SCALARS = (
    *("tau_theta", "theta", "lam_theta"),
    *("wx0", "wx1", "wy0", "wy1", "fx0", "fx1", "fy0", "fy1"),
)
DISABLE_ENV = "VIDACT_FUSED_FLOW"  # "0": never use the fused loops (run eagerly)


def available() -> bool:
    """Whether the fused loops can run here (numba imported, not disabled)."""
    return numba is not None and os.environ.get(DISABLE_ENV, "1") != "0"


def _jit(fn: Any) -> Any:
    if numba is None:  # pragma: no cover
        return fn
    return numba.njit(cache=True, nogil=True)(fn)


def _inline(fn: Any) -> Any:
    """A per-pixel step, inlined into its sweep so that the border flags (constants in the
    interior loop) fold away and the interior runs without branches."""
    if numba is None:  # pragma: no cover
        return fn
    return numba.njit(cache=True, nogil=True, inline="always")(fn)


# ------------------------------------------------------------------- forward (one map)
@_inline
def _primal_px(rho_c, g, inv_sq, u, p, s, t, i, j, left, up):
    """Eqs. 2-4 at (i, j), in place: u <- u - grad F2 clamp(rho / |grad F2|^2) + theta div p."""
    rho = rho_c[i, j] + g[0, i, j] * u[0, i, j] + g[1, i, j] * u[1, i, j]  # Eq. 2
    shrink = min(max(rho * inv_sq[i, j], -s[0]), s[0])  # Eq. 3's three cases
    for d in range(2):
        div = t[1] * p[d, 0, i, j] + t[3] * p[d, 1, i, j]  # Eq. 9
        if left:
            div += t[0] * p[d, 0, i, j - 1]
        if up:
            div += t[2] * p[d, 1, i - 1, j]
        u[d, i, j] = u[d, i, j] - g[d, i, j] * shrink + div * s[1]  # Eq. 4


@_inline
def _grad_px(u, d, t, i, j, right, down):
    """grad u_d at (i, j): forward differences, 0 on the last column (row) (Neumann)."""
    gx = t[4] * u[d, i, j] + t[5] * u[d, i, j + 1] if right else 0.0
    gy = t[6] * u[d, i, j] + t[7] * u[d, i + 1, j] if down else 0.0
    return gx, gy


@_inline
def _dual_px(u, p, s, t, i, j, right, down):
    """Eq. 5 at (i, j), in place: p <- (p + a grad u) / (1 + a |grad u|), a = tau / theta."""
    a = s[2]
    for d in range(2):
        gx, gy = _grad_px(u, d, t, i, j, right, down)
        den = 1.0 + a * math.sqrt(gx * gx + gy * gy + NORM_EPS)
        p[d, 0, i, j] = (p[d, 0, i, j] + a * gx) / den
        p[d, 1, i, j] = (p[d, 1, i, j] + a * gy) / den


@_jit
def _iterate_map(rho_c, g, inv_sq, s, t, u, p, us, ps, save):
    """All iterations for one map, in place on u, p; the state entering iteration k is
    copied to us[k], ps[k] when ``save``. Each sweep splits the first and last column
    off so that the interior loop has no border tests."""
    h, w = u.shape[1], u.shape[2]
    for k in range(us.shape[0]):
        if save:
            us[k] = u
            ps[k] = p
        for i in range(h):  # Eqs. 2-4 read p at (i, j - 1) and (i - 1, j)
            up = i > 0
            _primal_px(rho_c, g, inv_sq, u, p, s, t, i, 0, False, up)
            for j in range(1, w):
                _primal_px(rho_c, g, inv_sq, u, p, s, t, i, j, True, up)
        for i in range(h):  # Eq. 5 reads the new u at (i, j + 1) and (i + 1, j)
            down = i < h - 1
            for j in range(w - 1):
                _dual_px(u, p, s, t, i, j, True, down)
            _dual_px(u, p, s, t, i, w - 1, False, down)


@_jit
def _forward_chunk(rho_c, g, inv_sq, s, t, u, p, us, ps, save, m0, m1):
    for m in range(m0, m1):
        kept = m if save else 0
        _iterate_map(rho_c[m], g[m], inv_sq[m], s, t, u[m], p[m], us[kept], ps[kept], save)


# ------------------------------------------------------------------ backward (one map)
@_inline
def _recompute_px(rho_c, g, inv_sq, u, p, un, div, s, t, i, j, left, up):
    """One iteration's u' (Eq. 4) and div p (Eq. 9) at (i, j) from the entering state."""
    rho = rho_c[i, j] + g[0, i, j] * u[0, i, j] + g[1, i, j] * u[1, i, j]
    shrink = min(max(rho * inv_sq[i, j], -s[0]), s[0])
    for d in range(2):
        dv = t[1] * p[d, 0, i, j] + t[3] * p[d, 1, i, j]
        if left:
            dv += t[0] * p[d, 0, i, j - 1]
        if up:
            dv += t[2] * p[d, 1, i - 1, j]
        div[d, i, j] = dv
        un[d, i, j] = u[d, i, j] - g[d, i, j] * shrink + dv * s[1]


@_inline
def _dual_adjoint_px(p, dp, un, dgrad, s, t, acc, i, j, right, down):
    """Adjoint of Eq. 5 at (i, j): dp <- its direct part (d p' / d p), dgrad <- the
    gradient of grad u (0 where grad u is the constant 0); tap and a gradients to acc."""
    a = s[2]
    for d in range(2):
        gx, gy = _grad_px(un, d, t, i, j, right, down)
        nrm = math.sqrt(gx * gx + gy * gy + NORM_EPS)
        den = 1.0 + a * nrm
        pnx = (p[d, 0, i, j] + a * gx) / den
        pny = (p[d, 1, i, j] + a * gy) / den
        dnx, dny = dp[d, 0, i, j] / den, dp[d, 1, i, j] / den
        dden = -(dp[d, 0, i, j] * pnx + dp[d, 1, i, j] * pny) / den
        acc[0] += dnx * gx + dny * gy + dden * nrm
        c = dden * a / nrm
        dgx = dnx * a + gx * c if right else 0.0
        dgy = dny * a + gy * c if down else 0.0
        if right:
            acc[7] += dgx * un[d, i, j]
            acc[8] += dgx * un[d, i, j + 1]
        if down:
            acc[9] += dgy * un[d, i, j]
            acc[10] += dgy * un[d, i + 1, j]
        dgrad[d, 0, i, j], dgrad[d, 1, i, j] = dgx, dgy
        dp[d, 0, i, j], dp[d, 1, i, j] = dnx, dny


@_inline
def _primal_adjoint_px(rho_c, g, inv_sq, u, du, dgrad, div, ddiv, grads, s, t, acc, i, j, left, up):
    """Adjoint of grad u, Eq. 4, Eq. 3 and Eq. 2 at (i, j): du <- the gradient of the
    entering u, ddiv <- that of div p; grads (rho_c, g_x, g_y, inv_sq) accumulate."""
    lt = s[0]
    rho = rho_c[i, j] + g[0, i, j] * u[0, i, j] + g[1, i, j] * u[1, i, j]
    r = rho * inv_sq[i, j]
    shrink = min(max(r, -lt), lt)
    dshrink = 0.0
    for d in range(2):
        dun = du[d, i, j] + t[4] * dgrad[d, 0, i, j] + t[6] * dgrad[d, 1, i, j]
        if left:
            dun += t[5] * dgrad[d, 0, i, j - 1]
        if up:
            dun += t[7] * dgrad[d, 1, i - 1, j]
        acc[1] += dun * div[d, i, j]
        ddiv[d, i, j] = dun * s[1]
        dshrink -= dun * g[d, i, j]
        grads[1 + d, i, j] -= dun * shrink
        du[d, i, j] = dun
    dr = dshrink if -lt <= r <= lt else 0.0
    acc[2] += dshrink * ((1.0 if r > lt else 0.0) - (1.0 if r < -lt else 0.0))
    drho = dr * inv_sq[i, j]
    grads[3, i, j] += dr * rho
    grads[0, i, j] += drho
    for d in range(2):
        grads[1 + d, i, j] += drho * u[d, i, j]
        du[d, i, j] += drho * g[d, i, j]


@_inline
def _div_adjoint_px(p, dp, ddiv, t, acc, i, j, left, up, right, down):
    """Adds the adjoint of Eq. 9 (in p) at (i, j) to dp, its taps' gradients to acc."""
    for d in range(2):
        dd = ddiv[d, i, j]
        acc[4] += dd * p[d, 0, i, j]
        acc[6] += dd * p[d, 1, i, j]
        x, y = t[1] * dd, t[3] * dd
        if left:
            acc[3] += dd * p[d, 0, i, j - 1]
        if up:
            acc[5] += dd * p[d, 1, i - 1, j]
        if right:
            x += t[0] * ddiv[d, i, j + 1]
        if down:
            y += t[2] * ddiv[d, i + 1, j]
        dp[d, 0, i, j] += x
        dp[d, 1, i, j] += y


@_jit
def _backward_iteration(rho_c, g, inv_sq, s, t, u, p, du, dp, scratch, grads, acc):
    """The exact adjoint of one iteration at state (u, p): (du, dp), the gradients of the
    state leaving it, become those of the state entering it, in place."""
    h, w = u.shape[1], u.shape[2]
    un, div, ddiv, dgrad = scratch[0], scratch[1], scratch[2], scratch[3:5]
    for i in range(h):
        _recompute_px(rho_c, g, inv_sq, u, p, un, div, s, t, i, 0, False, i > 0)
        for j in range(1, w):
            _recompute_px(rho_c, g, inv_sq, u, p, un, div, s, t, i, j, True, i > 0)
    for i in range(h):
        for j in range(w - 1):
            _dual_adjoint_px(p, dp, un, dgrad, s, t, acc, i, j, True, i < h - 1)
        _dual_adjoint_px(p, dp, un, dgrad, s, t, acc, i, w - 1, False, i < h - 1)
    for i in range(h):
        _primal_adjoint_px(
            rho_c, g, inv_sq, u, du, dgrad, div, ddiv, grads, s, t, acc, i, 0, False, i > 0
        )
        for j in range(1, w):
            _primal_adjoint_px(
                rho_c, g, inv_sq, u, du, dgrad, div, ddiv, grads, s, t, acc, i, j, True, i > 0
            )
    for i in range(h):
        up, down = i > 0, i < h - 1
        _div_adjoint_px(p, dp, ddiv, t, acc, i, 0, False, up, w > 1, down)
        for j in range(1, w - 1):
            _div_adjoint_px(p, dp, ddiv, t, acc, i, j, True, up, True, down)
        if w > 1:
            _div_adjoint_px(p, dp, ddiv, t, acc, i, w - 1, True, up, False, down)


@_jit
def _backward_chunk(rho_c, g, inv_sq, s, t, us, ps, du_out, grads, acc, m0, m1):
    h, w = g.shape[2], g.shape[3]
    scratch = np.empty((5, 2, h, w), g.dtype)  # u', div p, d div p, d grad u (x, y)
    for m in range(m0, m1):
        du = du_out[m].copy()
        dp = np.zeros((2, 2, h, w), g.dtype)
        am = np.zeros(acc.shape[1], np.float64)
        for k in range(us.shape[1] - 1, -1, -1):
            _backward_iteration(
                rho_c[m], g[m], inv_sq[m], s, t, us[m, k], ps[m, k], du, dp, scratch, grads[m], am
            )
        acc[m] = am


class Inputs(NamedTuple):
    """What the iterations read: rho_c, inv_sq (M, 1, H, W) and grad_f2 (M, 2, H, W) maps;
    scalars (lam_theta, theta, tau_theta); taps (wx, wy, fx, fy), two each."""

    rho_c: Tensor
    grad_f2: Tensor
    inv_sq: Tensor
    scalars: tuple[Tensor, Tensor, Tensor]
    taps: tuple[Tensor, Tensor, Tensor, Tensor]

    def arrays(self, dtype: Any) -> tuple[np.ndarray, ...]:
        """The kernels' leading arguments: rho_c, g, inv_sq, scalars, taps as arrays."""
        s = np.array([float(x.detach()) for x in self.scalars], dtype)
        t = np.concatenate([_np(x).astype(dtype) for x in self.taps])
        return _np(self.rho_c[:, 0]), _np(self.grad_f2), _np(self.inv_sq[:, 0]), s, t


def _threads(maps: int) -> int:
    return max(1, min(torch.get_num_threads(), maps))


def _in_chunks(fn: Any, maps: int, *args: Any) -> None:
    """fn(*args, m0, m1) over contiguous chunks of the maps, one per thread."""
    n = _threads(maps)
    bounds = [maps * c // n for c in range(n + 1)]
    if n == 1:
        fn(*args, 0, maps)
        return
    with ThreadPoolExecutor(n) as pool:  # the kernels release the GIL
        list(pool.map(lambda c: fn(*args, bounds[c], bounds[c + 1]), range(n)))


def _np(x: Tensor) -> np.ndarray:
    return x.detach().contiguous().numpy()


def iterate(iterations: int, inputs: Inputs, save: bool) -> tuple[Tensor, Tensor, Tensor]:
    """The flow u after ``iterations`` from u = p = 0 -> (u, us, ps); us (M, K, 2, H, W)
    and ps (M, K, 2, 2, H, W) hold the state entering every iteration when ``save`` (else
    empty)."""
    m, _, h, w = inputs.grad_f2.shape
    dtype = inputs.grad_f2.dtype
    u = torch.zeros(m, 2, h, w, dtype=dtype)
    p = torch.zeros(m, 2, 2, h, w, dtype=dtype)
    kept = m if save else 1  # states by map, then iteration: each map's are contiguous
    us = torch.empty(kept, iterations, 2, h, w, dtype=dtype)
    ps = torch.empty(kept, iterations, 2, 2, h, w, dtype=dtype)
    args = inputs.arrays(u.numpy().dtype)
    _in_chunks(_forward_chunk, m, *args, u.numpy(), p.numpy(), us.numpy(), ps.numpy(), save)
    if not save:
        us, ps = us[:0], ps[:0]
    return u, us, ps


def iterate_backward(
    inputs: Inputs, us: Tensor, ps: Tensor, grad_out: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The exact backward of ``iterate`` -> gradients of (rho_c, grad_f2, inv_sq) shaped
    like them, and the per-map sums of the scalar gradients, (M, len(SCALARS)) float64."""
    m, _, h, w = inputs.grad_f2.shape
    grads = torch.zeros(m, 4, h, w, dtype=inputs.grad_f2.dtype)  # rho_c, g_x, g_y, inv_sq
    acc = torch.zeros(m, len(SCALARS), dtype=torch.float64)
    args = (*inputs.arrays(grads.numpy().dtype), _np(us), _np(ps), _np(grad_out))
    _in_chunks(_backward_chunk, m, *args, grads.numpy(), acc.numpy())
    return grads[:, :1], grads[:, 1:3], grads[:, 3:], acc
