"""The representation flow iterations as fused CPU loops (numba), forward and exact backward.

Why hand-written: one iteration of Algorithm 1 is about twenty elementwise operations on
small maps, but torch runs each operation as its own pass over all B*C maps in memory
(and the backward about sixty more); the layer is memory-bound. ``torch.compile``
(inductor) fuses one iteration's forward but measured slower than eager in the backward on
this CPU (docs/models.md). Here the maps go in blocks of ``LANES``, laid out (H, W, LANES)
so that the innermost loop runs over the block's maps: every pixel's arithmetic is the same
across them, and LLVM turns that loop into SIMD instructions (16 float32 lanes with
AVX-512). A block's fields fit in a core's cache, so it runs all its iterations there, in
three sweeps per iteration forward (Eqs. 2-4, then Eq. 5 for each component). The
backward recomputes a block's iterations into a per-thread buffer (nothing is kept from
the forward but its inputs) and then applies the exact adjoint of each iteration in seven
sweeps (short loop bodies: the adjoint of Eqs. 2-4 as one loop measured slower than as
three). Blocks are spread over threads (the kernels release the GIL); numba compiles
once, cached on disk.
The kernels use numba's "numpy" error model: Python's checks for a division by zero
would be exits from the lane loops, which LLVM then does not vectorise (no division here
is by zero: 1 + a |grad u| >= 1, and |grad u| >= sqrt(eps)).

The operators are the layer's default ones (``rep_flow.py``): grad F2 given, grad u by the
forward difference with taps fx, fy and a Neumann border, Eq. 9's divergence with taps wx,
wy on p zero-padded first; the same floating-point operations as ``_step`` and
``_step_backward`` up to rounding (tested against them and the literal reference).

Names: u0, u1 are the flow's components; p_d = (px_d, py_d) the dual field of u_d (Eq. 5),
x along W, y along H. Every field of a block is a (H, W, LANES) array. ``s`` holds the
scalars (lam_theta, theta, tau_theta, 0, 1, eps) in the maps' dtype (so that no float64
constant widens float32 arithmetic), ``t`` the taps (wx0, wx1, wy0, wy1, fx0, fx1, fy0, fy1).
The backward returns the sums of the scalar gradients in ``SCALARS`` order: each sweep adds
into per-lane sums in the maps' dtype (float64 accumulators in the lane loops halve their
SIMD width and measured 9x slower), which go into float64 sums after every iteration.
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
LANES = 16  # maps per block: one AVX-512 register of float32
SCALARS = (
    *("tau_theta", "theta", "lam_theta"),
    *("wx0", "wx1", "wy0", "wy1", "fx0", "fx1", "fy0", "fy1"),
)
DISABLE_ENV = "VIDACT_FUSED_FLOW"  # "0": never use the fused loops (run eagerly)
LT, THETA, A, ZERO, ONE, EPS = range(6)  # indices into s
STATE = 6  # fields of the state (u, p) entering an iteration: u0, u1, px0, py0, px1, py1


def available() -> bool:
    """Whether the fused loops can run here (numba imported, not disabled)."""
    return numba is not None and os.environ.get(DISABLE_ENV, "1") != "0"


def _jit(fn: Any) -> Any:
    if numba is None:  # pragma: no cover
        return fn
    return numba.njit(cache=True, nogil=True, error_model="numpy")(fn)


def _inline(fn: Any) -> Any:
    """A per-pixel formula, inlined into its sweep's lane loop (which LLVM vectorises)."""
    if numba is None:  # pragma: no cover
        return fn
    return numba.njit(cache=True, nogil=True, error_model="numpy", inline="always")(fn)


# ----------------------------------------------------------------- per-pixel formulas
# The lane loops are branch-free, so that LLVM vectorises them: a neighbour beyond the
# border is read at a clamped index (jm, jp, im, ip) and weighted by 0 (a tap or a mask
# chosen once per pixel), which adds exactly 0 where the printed operators have no term.
@_inline
def _div(px, py, t, i, j, k, im, jm, tl, tu):
    """Eq. 9 at (i, j): wx1 px + wy1 py + wx0 px[j - 1] + wy0 py[i - 1] (tl = wx0 and tu =
    wy0 inside, 0 on the first column / row: p zero-padded)."""
    return t[1] * px[i, j, k] + t[3] * py[i, j, k] + tl * px[i, jm, k] + tu * py[im, j, k]


@_inline
def _grad(u, i, j, k, ip, jp, fx0, fx1, fy0, fy1):
    """grad u at (i, j): forward differences (the taps are 0 on the last column / row:
    Neumann)."""
    return fx0 * u[i, j, k] + fx1 * u[i, jp, k], fy0 * u[i, j, k] + fy1 * u[ip, j, k]


@_inline
def _shrink(rho_c, g0, g1, inv_sq, u0, u1, s, i, j, k):
    """rho (Eq. 2), r = rho / |grad F2|^2 and r clamped to [-lam theta, lam theta] (Eq. 3's
    three cases)."""
    rho = rho_c[i, j, k] + g0[i, j, k] * u0[i, j, k] + g1[i, j, k] * u1[i, j, k]
    r = rho * inv_sq[i, j, k]
    c = r if r > -s[LT] else -s[LT]  # selects, not min/max: numba's are calls
    return rho, r, c if c < s[LT] else s[LT]


@_inline
def _border(s, t, i, j, h, w):
    """Clamped neighbours and the border's weights at (i, j): (im, jm, ip, jp), the
    divergence's back taps (wx0, wy0 or 0), the grad-u taps (0 on the last column / row)
    and the masks (1 inside, 0 on the last column / row)."""
    left, up, right, down = j > 0, i > 0, j < w - 1, i < h - 1
    z = s[ZERO]
    return (
        (i - 1 if up else i, j - 1 if left else j, i + 1 if down else i, j + 1 if right else j),
        (t[0] if left else z, t[2] if up else z),
        (t[4] if right else z, t[5] if right else z, t[6] if down else z, t[7] if down else z),
        (s[ONE] if right else z, s[ONE] if down else z),
    )


# ------------------------------------------------------------------- forward sweeps
@_jit
def _primal_sweep(rho_c, g0, g1, inv_sq, u0, u1, p, s, t, n0, n1):
    """Eqs. 2-4 over the block: n_d <- u_d - grad F2_d clamp(rho / |grad F2|^2) + theta
    div p_d."""
    h, w, lanes = u0.shape
    for i in range(h):
        for j in range(w):
            (im, jm, _, _), (tl, tu), _, _ = _border(s, t, i, j, h, w)
            for k in range(lanes):
                _, _, c = _shrink(rho_c, g0, g1, inv_sq, u0, u1, s, i, j, k)
                d0 = _div(p[0], p[1], t, i, j, k, im, jm, tl, tu)
                d1 = _div(p[2], p[3], t, i, j, k, im, jm, tl, tu)
                n0[i, j, k] = u0[i, j, k] - g0[i, j, k] * c + d0 * s[THETA]
                n1[i, j, k] = u1[i, j, k] - g1[i, j, k] * c + d1 * s[THETA]


@_jit
def _dual_sweep(u, px, py, s, t, qx, qy):
    """Eq. 5 for one flow component: q <- (p + a grad u) / (1 + a |grad u|), a = tau /
    theta."""
    h, w, lanes = u.shape
    a = s[A]
    for i in range(h):
        for j in range(w):
            (_, _, ip, jp), _, (fx0, fx1, fy0, fy1), _ = _border(s, t, i, j, h, w)
            for k in range(lanes):
                gx, gy = _grad(u, i, j, k, ip, jp, fx0, fx1, fy0, fy1)
                den = s[ONE] + a * math.sqrt(gx * gx + gy * gy + s[EPS])
                qx[i, j, k] = (px[i, j, k] + a * gx) / den
                qy[i, j, k] = (py[i, j, k] + a * gy) / den


@_jit
def _iteration(rho_c, g0, g1, inv_sq, s, t, old, new):
    """One iteration from the state ``old`` into ``new`` (6, H, W, LANES) each; out of
    place, so that the vectorised loops' overlap checks pass."""
    _primal_sweep(rho_c, g0, g1, inv_sq, old[0], old[1], old[2:], s, t, new[0], new[1])
    _dual_sweep(new[0], old[2], old[3], s, t, new[2], new[3])
    _dual_sweep(new[1], old[4], old[5], s, t, new[4], new[5])


@_jit
def _forward_chunk(rho_c, g0, g1, inv_sq, s, t, out, iterations, b0, b1):
    """Blocks b0..b1, each through all iterations from u = p = 0 in two alternating
    state buffers; the flow to out (B, 2, H, W, LANES)."""
    h, w, lanes = rho_c.shape[1:]
    states = np.empty((2, STATE, h, w, lanes), rho_c.dtype)
    for b in range(b0, b1):
        states[0] = 0
        for n in range(iterations):
            _iteration(rho_c[b], g0[b], g1[b], inv_sq[b], s, t, states[n % 2], states[1 - n % 2])
        out[b] = states[iterations % 2, :2]


# ------------------------------------------------------------------ backward sweeps
@_jit
def _dual_adjoint_sweep(u, px, py, dpx, dpy, s, t, acc, dgx, dgy):
    """Adjoint of Eq. 5 for one component at the new u: dp <- its direct part (d p' / d p),
    dg <- the gradient of grad u (0 where grad u is the constant 0); the gradients of a
    and of the grad-u taps accumulate in acc (per lane)."""
    h, w, lanes = u.shape
    a = s[A]
    for i in range(h):
        for j in range(w):
            (_, _, ip, jp), _, (fx0, fx1, fy0, fy1), (mr, md) = _border(s, t, i, j, h, w)
            for k in range(lanes):
                gx, gy = _grad(u, i, j, k, ip, jp, fx0, fx1, fy0, fy1)
                nrm = math.sqrt(gx * gx + gy * gy + s[EPS])
                den = s[ONE] + a * nrm
                qx = (px[i, j, k] + a * gx) / den
                qy = (py[i, j, k] + a * gy) / den
                ex, ey = dpx[i, j, k] / den, dpy[i, j, k] / den
                dden = -(dpx[i, j, k] * qx + dpy[i, j, k] * qy) / den
                acc[0, k] += ex * gx + ey * gy + dden * nrm
                c = dden * a / nrm
                vx = (ex * a + gx * c) * mr
                vy = (ey * a + gy * c) * md
                acc[7, k] += vx * u[i, j, k]
                acc[8, k] += vx * u[i, jp, k]
                acc[9, k] += vy * u[i, j, k]
                acc[10, k] += vy * u[ip, j, k]
                dgx[i, j, k], dgy[i, j, k] = vx, vy
                dpx[i, j, k], dpy[i, j, k] = ex, ey


@_inline
def _through_grad_u(du, dgx, dgy, t, i, j, k, im, jm, tl, tu):
    """d loss / d u': its own gradient plus the adjoint of grad u applied to dg (tl = fx1,
    tu = fy1 inside, 0 on the first column / row)."""
    return (
        du[i, j, k]
        + t[4] * dgx[i, j, k]
        + t[6] * dgy[i, j, k]
        + tl * dgx[i, jm, k]
        + tu * dgy[im, j, k]
    )


@_jit
def _step_adjoint_sweep(du, dgx, dgy, px, py, s, t, acc, dd):
    """Adjoint of grad u and of Eq. 4's theta div p for one component: du <- d loss / d u'
    (in place), dd <- the gradient of div p; theta's gradient accumulates."""
    h, w, lanes = du.shape
    z = s[ZERO]
    for i in range(h):
        for j in range(w):
            (im, jm, _, _), (tl, tu), _, _ = _border(s, t, i, j, h, w)
            gl, gu = (t[5] if j > 0 else z), (t[7] if i > 0 else z)
            for k in range(lanes):
                e = _through_grad_u(du, dgx, dgy, t, i, j, k, im, jm, gl, gu)
                acc[1, k] += e * _div(px, py, t, i, j, k, im, jm, tl, tu)
                dd[i, j, k] = e * s[THETA]
                du[i, j, k] = e


@_jit
def _shrink_adjoint_sweep(rho_c, g0, g1, inv_sq, u0, u1, du0, du1, s, acc, grads):
    """Adjoint of Eq. 4's step along grad F2, Eq. 3 and Eq. 2 at the entering u: du (d loss
    / d u' on entry) <- the gradient of the entering u; grads (rho_c, g0, g1, inv_sq) and
    lam_theta's gradient accumulate."""
    h, w, lanes = rho_c.shape
    lt, z = s[LT], s[ZERO]
    for i in range(h):
        for j in range(w):
            for k in range(lanes):
                rho, r, c = _shrink(rho_c, g0, g1, inv_sq, u0, u1, s, i, j, k)
                e0, e1 = du0[i, j, k], du1[i, j, k]
                dc = z - e0 * g0[i, j, k] - e1 * g1[i, j, k]
                inside = (r >= -lt) & (r <= lt)  # no short circuit: a branch
                dr = dc if inside else z
                acc[2, k] += z if inside else (dc if r > lt else -dc)
                drho = dr * inv_sq[i, j, k]
                grads[0, i, j, k] += drho
                grads[1, i, j, k] += drho * u0[i, j, k] - e0 * c
                grads[2, i, j, k] += drho * u1[i, j, k] - e1 * c
                grads[3, i, j, k] += dr * rho
                du0[i, j, k] = e0 + drho * g0[i, j, k]
                du1[i, j, k] = e1 + drho * g1[i, j, k]


@_jit
def _div_adjoint_sweep(px, py, dpx, dpy, dd, s, t, acc):
    """Adds the adjoint of Eq. 9 (in p_d) applied to dd to dp_d; the divergence taps'
    gradients accumulate."""
    h, w, lanes = dd.shape
    z = s[ZERO]
    for i in range(h):
        for j in range(w):
            (im, jm, ip, jp), _, _, _ = _border(s, t, i, j, h, w)
            ml, mu = (s[ONE] if j > 0 else z), (s[ONE] if i > 0 else z)
            tr, td = (t[0] if j < w - 1 else z), (t[2] if i < h - 1 else z)
            for k in range(lanes):
                v = dd[i, j, k]
                acc[3, k] += v * px[i, jm, k] * ml
                acc[4, k] += v * px[i, j, k]
                acc[5, k] += v * py[im, j, k] * mu
                acc[6, k] += v * py[i, j, k]
                dpx[i, j, k] += t[1] * v + tr * dd[i, jp, k]
                dpy[i, j, k] += t[3] * v + td * dd[ip, j, k]


@_jit
def _backward_block(rho_c, g0, g1, inv_sq, s, t, states, du, grads, acc):
    """The exact backward of all iterations for one block: states (K + 1, 6, H, W, LANES)
    receives the recomputed iterations; du (2, H, W, LANES) holds the flow's gradient
    and becomes the entering u's; grads and acc accumulate."""
    states[0] = 0
    for n in range(states.shape[0] - 1):
        _iteration(rho_c, g0, g1, inv_sq, s, t, states[n], states[n + 1])
    dp = np.zeros((4, *du.shape[1:]), du.dtype)
    dg = np.empty_like(dp)  # the gradient of grad u (x, y of u0, then of u1)
    ddiv = np.empty_like(du)
    part = np.zeros(acc.shape, du.dtype)  # one iteration's scalar gradients, per lane
    for n in range(states.shape[0] - 2, -1, -1):
        st, new = states[n], states[n + 1]
        _dual_adjoint_sweep(new[0], st[2], st[3], dp[0], dp[1], s, t, part, dg[0], dg[1])
        _dual_adjoint_sweep(new[1], st[4], st[5], dp[2], dp[3], s, t, part, dg[2], dg[3])
        _step_adjoint_sweep(du[0], dg[0], dg[1], st[2], st[3], s, t, part, ddiv[0])
        _step_adjoint_sweep(du[1], dg[2], dg[3], st[4], st[5], s, t, part, ddiv[1])
        _shrink_adjoint_sweep(rho_c, g0, g1, inv_sq, st[0], st[1], du[0], du[1], s, part, grads)
        _div_adjoint_sweep(st[2], st[3], dp[0], dp[1], ddiv[0], s, t, part)
        _div_adjoint_sweep(st[4], st[5], dp[2], dp[3], ddiv[1], s, t, part)
        acc += part  # summed in float64 across iterations and blocks
        part[:] = 0


@_jit
def _backward_chunk(rho_c, g0, g1, inv_sq, s, t, du, grads, acc, iterations, b0, b1):
    h, w, lanes = rho_c.shape[1:]
    states = np.empty((iterations + 1, STATE, h, w, lanes), rho_c.dtype)
    for b in range(b0, b1):
        _backward_block(rho_c[b], g0[b], g1[b], inv_sq[b], s, t, states, du[b], grads[b], acc[b])


# ------------------------------------------------------------------------ the calls
class Inputs(NamedTuple):
    """What the iterations read: rho_c, inv_sq (M, 1, H, W) and grad_f2 (M, 2, H, W) maps;
    scalars (lam_theta, theta, tau_theta); taps (wx, wy, fx, fy), two each."""

    rho_c: Tensor
    grad_f2: Tensor
    inv_sq: Tensor
    scalars: tuple[Tensor, Tensor, Tensor]
    taps: tuple[Tensor, Tensor, Tensor, Tensor]

    def arrays(self) -> tuple[np.ndarray, ...]:
        """The kernels' leading arguments: rho_c, g0, g1, inv_sq in blocks; s; t."""
        dtype = self.grad_f2.dtype
        s = torch.stack([x.detach().to(dtype) for x in self.scalars])
        s = torch.cat([s, torch.tensor([0.0, 1.0, NORM_EPS], dtype=dtype)])
        t = torch.cat([x.detach().to(dtype) for x in self.taps])
        maps = torch.cat([self.rho_c, self.grad_f2, self.inv_sq], 1).detach()
        fields = _to_blocks(maps, pad=torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=dtype))
        blocks = (f.contiguous().numpy() for f in fields.unbind(1))  # C layout: SIMD loads
        return (*blocks, s.numpy(), t.contiguous().numpy())


def _to_blocks(x: Tensor, pad: Tensor | None = None) -> Tensor:
    """(M, F, H, W) -> (ceil(M / LANES), F, H, W, LANES), padding maps with ``pad`` (F,)
    (zeros by default)."""
    m, f, h, w = x.shape
    extra = -m % LANES
    if extra:
        fill = (
            x.new_zeros(extra, f, h, w)
            if pad is None
            else pad.view(1, f, 1, 1).expand(extra, f, h, w)
        )
        x = torch.cat([x, fill])
    return x.view(-1, LANES, f, h, w).permute(0, 2, 3, 4, 1).contiguous()


def _from_blocks(x: Tensor, m: int) -> Tensor:
    """(B, F, H, W, LANES) -> (M, F, H, W)."""
    return x.permute(0, 4, 1, 2, 3).reshape(-1, *x.shape[1:4])[:m]


def _in_chunks(fn: Any, blocks: int, *args: Any) -> None:
    """fn(*args, b0, b1) over contiguous chunks of the blocks, one per thread."""
    n = max(1, min(torch.get_num_threads(), blocks))
    bounds = [blocks * c // n for c in range(n + 1)]
    if n == 1:
        fn(*args, 0, blocks)
        return
    with ThreadPoolExecutor(n) as pool:  # the kernels release the GIL
        list(pool.map(lambda c: fn(*args, bounds[c], bounds[c + 1]), range(n)))


def iterate(iterations: int, inputs: Inputs) -> Tensor:
    """The flow u (M, 2, H, W) after ``iterations`` from u = p = 0."""
    m, _, h, w = inputs.grad_f2.shape
    args = inputs.arrays()
    out = torch.empty(args[0].shape[0], 2, h, w, LANES, dtype=inputs.grad_f2.dtype)
    _in_chunks(_forward_chunk, out.shape[0], *args, out.numpy(), iterations)
    return _from_blocks(out, m)


def iterate_backward(
    iterations: int, inputs: Inputs, grad_out: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The exact backward of ``iterate`` -> gradients of (rho_c, grad_f2, inv_sq) shaped
    like them, and the sums of the scalar gradients, (len(SCALARS),) float64."""
    m = inputs.grad_f2.shape[0]
    args = inputs.arrays()
    du = _to_blocks(grad_out.detach().to(inputs.grad_f2.dtype))
    grads = torch.zeros(du.shape[0], 4, *du.shape[2:], dtype=du.dtype)  # rho_c, g0, g1, inv_sq
    acc = torch.zeros(du.shape[0], len(SCALARS), LANES, dtype=torch.float64)
    _in_chunks(
        _backward_chunk, du.shape[0], *args, du.numpy(), grads.numpy(), acc.numpy(), iterations
    )
    grads = _from_blocks(grads, m)
    return grads[:, :1], grads[:, 1:3], grads[:, 3:], acc.sum((0, 2))
