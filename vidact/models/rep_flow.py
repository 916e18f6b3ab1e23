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
- The paper writes Eq. 8 / Eq. 10 as true convolutions (*). torch's conv2d is
  cross-correlation, so the printed Sobel kernels (stored as printed in the parameters) are
  flipped before use; they then give +d/dx, +d/dy. The divergence kernels of Eq. 9 are
  stored as printed and applied to p zero-padded on its first column (row) as
  w0 * p[j-1] + w1 * p[j], which with the initial [-1, 1] is Eq. 6's backward difference.
  grad u and div p must be (minus) adjoint to each other; with any other pairing the
  "smoothing" step anti-smooths and the layer stops computing flow.
- Sobel borders replicate the edge (a constant map has zero gradient, also at the border).
- Eq. 5 is applied per flow component d in {x, y}, each with its own dual field p_d in R^2
  and grad u_d = (Sobel_x * u_d, Sobel_y * u_d): the TV-L1 of Zach et al. 2007 that the
  paper unrolls. |grad u_d| is sqrt(. + ``NORM_EPS``) so that its gradient exists at 0.
- Units: the printed Sobel sums to 8 times the gradient, so the flow comes out 1/8 of the
  displacement in pixels. ``normalize_sobel=True`` divides the kernels by 8 and gives
  pixels (compare-tvl1 uses it). The networks use the paper's unnormalised kernels.
- Eq. 3's third case divides by |grad F2|^2 (Algorithm 1's "|F2|^2" is a typo); where it
  is 0 the update is v = u (the limit of the first two cases), computed without a NaN.

Speed: the three cases of Eq. 3 are one clamp, v = u - grad F2 * clamp(rho / |grad F2|^2,
-lambda*theta, lambda*theta); all B*C channels and both flow components go through the same
elementwise/shifted-view operations (no Python work per channel; CPU depthwise conv2d is far
slower here). In training, the printed (fixed) Sobel kernels take ``_Iterations``: the
forward keeps only the state (u, p) entering each iteration and a hand-written backward
recomputes each iteration and applies its exact adjoint. Learned Sobel kernels take
autograd with ``torch.utils.checkpoint`` per iteration (also exact, same memory bound).
The core runs in float32 (float64 for float64 input) with autocast disabled.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from vidact.errors import VidactError
from vidact.models.backbones import fold_time, unfold_time

# ----------------------------------------------------------------------- the paper's numbers
SOBEL_X = ((1.0, 0.0, -1.0), (2.0, 0.0, -2.0), (1.0, 0.0, -1.0))  # Eq. 8 / 10, as printed
SOBEL_Y = ((1.0, 2.0, 1.0), (0.0, 0.0, 0.0), (-1.0, -2.0, -1.0))  # Eq. 8 / 10, as printed
SOBEL_GAIN = 8.0  # response of the printed Sobel to a unit ramp; /8 gives flow in pixels
DIV_X = (-1.0, 1.0)  # Eq. 9, initial w_x
DIV_Y = (-1.0, 1.0)  # Eq. 9, initial w_y (a column: top, bottom)
# Initial tau, lambda, theta: the classic TV-L1 values (Zach, Pock & Bischof, DAGM 2007;
# Sanchez, Meinhardt-Llopis & Facciolo, "TV-L1 Optical Flow Estimation", IPOL 2013; the
# defaults of OpenCV's DualTVL1OpticalFlow), tuned for images in [0, 255] (section 3.2).
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


def _divergence(px: Tensor, py: Tensor, wx: Tensor, wy: Tensor) -> Tensor:
    """Eq. 9 on p zero-padded on its first column / row: w0 * p[j-1] + w1 * p[j] along x,
    the same along y (Eq. 6 for w = [-1, 1])."""
    div = torch.addcmul(px * wx[1], py, wy[1])
    div[..., :, 1:] += px[..., :, :-1] * wx[0]
    div[..., 1:, :] += py[..., :-1, :] * wy[0]
    return div


def _step(
    u: Tensor,
    p: Tensor,
    rho_c: Tensor,
    grad_f2: Tensor,
    inv_sq: Tensor,
    kx: Tensor | None,
    ky: Tensor | None,
    scale: float,
    wx: Tensor,
    wy: Tensor,
    lam_theta: Tensor,
    theta: Tensor,
    tau_theta: Tensor,
) -> tuple[Tensor, Tensor]:
    """One iteration of Algorithm 1 for all maps at once.

    u: (M, 2, H, W) flow (x, y); p: (M, 2, 2, H, W) dual fields, p[:, d, e] for flow
    component d and direction e; grad_f2: (M, 2, H, W); inv_sq: 1 / |grad F2|^2 (1 where it
    is 0), rho_c: (M, 1, H, W).
    """
    rho = torch.addcmul(rho_c, grad_f2[:, :1], u[:, :1])  # Eq. 2
    rho = torch.addcmul(rho, grad_f2[:, 1:], u[:, 1:])
    shrink = torch.clamp(rho * inv_sq, -lam_theta, lam_theta)  # Eq. 3, the three cases
    v = torch.addcmul(u, grad_f2, shrink, value=-1)
    u = torch.addcmul(v, _divergence(p[:, :, 0], p[:, :, 1], wx, wy), theta)  # Eq. 4
    grad_u = _gradient(u, kx, ky)  # Eq. 10, (M, 2, 2, H, W)
    if scale != 1.0:
        grad_u = grad_u * scale
    norm = torch.sqrt(
        torch.addcmul(grad_u[:, :, :1] ** 2, grad_u[:, :, 1:], grad_u[:, :, 1:]) + NORM_EPS
    )
    p = torch.addcmul(p, grad_u, tau_theta) / torch.addcmul(torch.ones_like(norm), norm, tau_theta)
    return u, p  # Eq. 5 above


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


class _Iterations(torch.autograd.Function):
    """All iterations of Algorithm 1 (printed Sobel kernels) with a hand-written backward.

    The forward keeps only the state (u, p) entering each iteration; the backward recomputes
    each iteration's intermediates from it and applies the exact adjoint of ``_step``
    (tested against autograd through the literal reference). Tie-breaking at the clamp
    bounds follows torch.clamp (bounds inclusive for the input's gradient)."""

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        rho_c: Tensor,
        grad_f2: Tensor,
        inv_sq: Tensor,
        wx: Tensor,
        wy: Tensor,
        lam_theta: Tensor,
        theta: Tensor,
        tau_theta: Tensor,
        iterations: int,
        scale: float,
    ) -> Tensor:
        m, _, h, w = grad_f2.shape
        us = grad_f2.new_zeros(iterations, m, 2, h, w)
        ps = grad_f2.new_zeros(iterations, m, 2, 2, h, w)
        u, p = us[0].clone(), ps[0].clone()
        for k in range(iterations):
            us[k], ps[k] = u, p
            u, p = _step(
                u, p, rho_c, grad_f2, inv_sq, None, None, scale, wx, wy, lam_theta, theta, tau_theta
            )
        ctx.save_for_backward(rho_c, grad_f2, inv_sq, wx, wy, lam_theta, theta, tau_theta, us, ps)
        ctx.scale = scale  # type: ignore[attr-defined]
        return u

    @staticmethod
    def backward(
        ctx: torch.autograd.function.FunctionCtx, grad_out: Tensor
    ) -> tuple[Tensor | None, ...]:
        rho_c, g, inv_sq, wx, wy, lt, theta, a, us, ps = ctx.saved_tensors  # type: ignore[attr-defined]
        scale: float = ctx.scale  # type: ignore[attr-defined]
        d_rho_c = torch.zeros_like(rho_c)
        d_g = torch.zeros_like(g)
        d_inv = torch.zeros_like(inv_sq)
        d_wx, d_wy = torch.zeros_like(wx), torch.zeros_like(wy)
        d_lt, d_theta, d_a = (torch.zeros_like(lt) for _ in range(3))
        du = grad_out.contiguous()
        dp = torch.zeros_like(ps[0])
        for k in range(us.shape[0] - 1, -1, -1):
            u, p = us[k], ps[k]
            # recompute the iteration (see _step)
            rho = torch.addcmul(rho_c, g[:, :1], u[:, :1]).addcmul_(g[:, 1:], u[:, 1:])
            r = rho * inv_sq
            shrink = torch.clamp(r, -lt, lt)
            px, py = p[:, :, 0], p[:, :, 1]
            div = _divergence(px, py, wx, wy)
            u_new = torch.addcmul(u, g, shrink, value=-1).addcmul_(div, theta)
            grad_u = _gradient(u_new, None, None)
            if scale != 1.0:
                grad_u *= scale
            nrm = torch.sqrt(
                torch.addcmul(grad_u[:, :, :1] ** 2, grad_u[:, :, 1:], grad_u[:, :, 1:]) + NORM_EPS
            )
            den = torch.addcmul(torch.ones_like(nrm), nrm, a)
            p_new = torch.addcmul(p, grad_u, a) / den
            # Eq. 5: p' = (p + a G) / (1 + a |G|)
            d_num = dp / den
            d_den = -(dp * p_new).sum(2, keepdim=True) / den
            d_a += (d_num * grad_u).sum() + (d_den * nrm).sum()
            d_grad = torch.addcmul(d_num * a, grad_u, d_den * a / nrm)
            if scale != 1.0:
                d_grad *= scale
            d_u_new = du + _gradient_adjoint(d_grad, u_new)
            # Eq. 4 and Eq. 9
            d_theta += (d_u_new * div).sum()
            d_div = d_u_new * theta
            d_wx[1] += (d_div * px).sum()
            d_wx[0] += (d_div[..., :, 1:] * px[..., :, :-1]).sum()
            d_wy[1] += (d_div * py).sum()
            d_wy[0] += (d_div[..., 1:, :] * py[..., :-1, :]).sum()
            dp = d_num
            dp[:, :, 0] += d_div * wx[1]
            dp[:, :, 0, :, :-1] += d_div[..., :, 1:] * wx[0]
            dp[:, :, 1] += d_div * wy[1]
            dp[:, :, 1, :-1, :] += d_div[..., 1:, :] * wy[0]
            # Eq. 3: v = u - g * clamp(rho / |g|^2, -lt, lt)
            d_shrink = -(d_u_new * g).sum(1, keepdim=True)
            d_g -= d_u_new * shrink
            inside = (r >= -lt) & (r <= lt)
            d_r = torch.where(inside, d_shrink, torch.zeros_like(d_shrink))
            d_lt += (d_shrink * ((r > lt).to(r.dtype) - (r < -lt).to(r.dtype))).sum()
            # Eq. 2
            d_rho = d_r * inv_sq
            d_inv += d_r * rho
            d_rho_c += d_rho
            d_g += d_rho * u
            du = torch.addcmul(d_u_new, d_rho, g)
        return d_rho_c, d_g, d_inv, d_wx, d_wy, d_lt, d_theta, d_a, None, None


class RepresentationFlow(nn.Module):
    """Algorithm 1: unrolled TV-L1 between feature maps, every channel on its own.

    Args:
        iterations: number of unrolled iterations (parameters shared across them, Fig. 2).
        learn: learnable parameter groups among "sobel" (Eq. 8/10 kernels), "divergence"
            (w_x, w_y of Eq. 9) and "tvl1" (tau, lambda, theta); or "all" / "none".
            Default: divergence + tvl1 (Table 2). Fixed ones are buffers.
        normalize_sobel: divide the Sobel kernels by 8 so the flow is in pixels.
        tau, lam, theta: initial values (default: the classic TV-L1 values above).
        checkpoint: with autograd, recompute each iteration in the backward pass (exact,
            bounded memory).
        custom_backward: with the printed Sobel kernels, use the hand-written exact backward
            (fastest; stores only the per-iteration state).
    """

    def __init__(
        self,
        iterations: int = ITERATIONS,
        learn: str | Iterable[str] = LEARN_DEFAULT,
        normalize_sobel: bool = False,
        tau: float = TAU,
        lam: float = LAMBDA,
        theta: float = THETA,
        sobel_x: Sequence[Sequence[float]] = SOBEL_X,
        sobel_y: Sequence[Sequence[float]] = SOBEL_Y,
        div_x: Sequence[float] = DIV_X,
        div_y: Sequence[float] = DIV_Y,
        checkpoint: bool = True,
        custom_backward: bool = True,
    ) -> None:
        super().__init__()
        if iterations < 1:
            raise VidactError(f"flow iterations={iterations} must be >= 1")
        self.iterations = iterations
        self.normalize_sobel = normalize_sobel
        self.checkpoint = checkpoint
        self.custom_backward = custom_backward
        groups = _learn_set(learn)
        values: dict[str, dict[str, object]] = {
            "sobel": {"sobel_x": sobel_x, "sobel_y": sobel_y},
            "divergence": {"div_x": div_x, "div_y": div_y},
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
    tau: Tensor
    lam: Tensor
    theta: Tensor

    def extra_repr(self) -> str:
        learned = [n for n, _ in self.named_parameters(recurse=False)]
        return (
            f"iterations={self.iterations}, normalize_sobel={self.normalize_sobel}, "
            f"learned={learned}"
        )

    def forward(self, f1: Tensor, f2: Tensor) -> Tensor:
        if f1.shape != f2.shape or f1.dim() != 4:
            raise ValueError(
                f"flow inputs must be two (B, C, H, W) maps, got {f1.shape}, {f2.shape}"
            )
        b, c, h, w = f1.shape
        dtype = torch.float64 if f1.dtype == torch.float64 else torch.float32
        scale = 1.0 / SOBEL_GAIN if self.normalize_sobel else 1.0
        printed = (
            not self.sobel_x.requires_grad
            and not self.sobel_y.requires_grad
            and torch.equal(self.sobel_x, self.sobel_x.new_tensor(SOBEL_X))
            and torch.equal(self.sobel_y, self.sobel_y.new_tensor(SOBEL_Y))
        )
        kx = None if printed else self.sobel_x.to(dtype)
        ky = None if printed else self.sobel_y.to(dtype)
        with torch.autocast(f1.device.type, enabled=False):
            f1 = f1.to(dtype).reshape(b * c, 1, h, w)
            f2 = f2.to(dtype).reshape(b * c, 1, h, w)
            grad_f2 = _gradient(f2, kx, ky).reshape(b * c, 2, h, w)  # Eq. 8
            if scale != 1.0:
                grad_f2 = grad_f2 * scale
            sq = (grad_f2 * grad_f2).sum(1, keepdim=True)
            inv_sq = 1.0 / torch.where(sq > 0, sq, torch.ones_like(sq))
            rho_c = f2 - f1
            theta = self.theta.to(dtype)
            lam_theta = self.lam.to(dtype) * theta
            tau_theta = self.tau.to(dtype) / theta
            wx, wy = self.div_x.to(dtype), self.div_y.to(dtype)
            u = f1.new_zeros(b * c, 2, h, w)
            p = f1.new_zeros(b * c, 2, 2, h, w)
            consts = (rho_c, grad_f2, inv_sq, kx, ky, scale, wx, wy, lam_theta, theta, tau_theta)
            if printed and torch.is_grad_enabled() and self.custom_backward:
                u = _Iterations.apply(
                    rho_c,
                    grad_f2,
                    inv_sq,
                    wx,
                    wy,
                    lam_theta,
                    theta,
                    tau_theta,
                    self.iterations,
                    scale,
                )
                return u.reshape(b, 2 * c, h, w)
            recompute = self.checkpoint and torch.is_grad_enabled()
            for _ in range(self.iterations):
                if recompute:
                    u, p = checkpoint(_step, u, p, *consts, use_reentrant=False)
                else:
                    u, p = _step(u, p, *consts)
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

    With ``merge="add"`` the BN's gamma starts at 0, so the block starts as the identity on
    its (post-ReLU) input: a pretrained trunk is unchanged at step 0 (the released code
    zero-initialises the same BN). The other merges start at gamma = 1: with gamma = 0 they
    would start from a constant feature.

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
        if merge == "add":
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
    The trainer gives them lr = ``FLOW_LR_SCALE`` x base lr (appendix A)."""
    for module in model.modules():
        if isinstance(module, RepresentationFlow):
            yield from (p for p in module.parameters(recurse=False) if p.requires_grad)


__all__ = [
    "FLOW_LR_SCALE",
    "FlowBlock",
    "RepresentationFlow",
    "flow_parameters",
    "normalize_range",
]
