"""A slow, literal Algorithm 1 (rep-flow paper), written straight from Eqs. 2-10.

Deliberately naive: one channel at a time (Algorithm 1 takes "a single channel" F1, F2),
convolutions written out tap by tap, the three cases of Eq. 3 as boolean masks with masked
assignment, every iteration kept in the autograd graph. It shares no code with
``vidact.models.rep_flow``; the fast layer is tested against it (forward and gradients) and
``benchmarks/flow_layer.py`` times it.

Conventions (the same as the fast layer's, stated by its docstring):
- x grows to the right (width index), y grows down (height index); flow u satisfies
  F1(p) ~ F2(p + u), so content moving right gives u_x > 0.
- Eq. 8 / Eq. 10 kernels are applied as printed, as true convolutions (kernel flipped):
  the printed Sobel then yields +d/dx and +d/dy. Borders replicate the edge pixel.
- Eq. 9's kernels w = [w0, w1] are applied to p zero-padded on the first column (row) as
  w0 * p[j-1] + w1 * p[j]; with the initial [-1, 1] this is exactly Eq. 6's backward
  difference p[j] - p[j-1].
- Eq. 5 is applied to each flow component d in {x, y} with its own dual field
  p_d = (p_d1, p_d2) (Zach et al. 2007's TV-L1). grad u_d is, by default, the forward
  difference g0 * u[j] + g1 * u[j + 1] (initially [-1, 1], the authors' code), set to 0 on
  the last column (row) (Neumann border), always in pixels; with ``grad_u="sobel"`` it is
  Eq. 10 as printed, (Sobel_x * u_d, Sobel_y * u_d), scaled like Eq. 8.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from vidact.models.rep_flow import RepresentationFlow


def true_conv3x3(img: Tensor, kernel: Tensor) -> Tensor:
    """(K * F)(i, j) = sum_ab K[a, b] F(i + 1 - a, j + 1 - b), F replicated past the border."""
    h, w = img.shape[-2:]
    padded = torch.nn.functional.pad(img, (1, 1, 1, 1), mode="replicate")
    out = torch.zeros_like(img)
    for a in range(3):
        for b in range(3):
            # F(i + 1 - a, j + 1 - b) is padded[i + 2 - a, j + 2 - b]
            out = out + kernel[a, b] * padded[..., 2 - a : 2 - a + h, 2 - b : 2 - b + w]
    return out


def divergence(px: Tensor, py: Tensor, wx: Tensor, wy: Tensor) -> Tensor:
    """Eq. 9 (= Eq. 6 for wx = [-1, 1], wy = [-1, 1]^T): zero-pad the first column / row."""
    px_left = torch.cat([torch.zeros_like(px[..., :, :1]), px[..., :, :-1]], dim=-1)
    py_up = torch.cat([torch.zeros_like(py[..., :1, :]), py[..., :-1, :]], dim=-2)
    return wx[0] * px_left + wx[1] * px + wy[0] * py_up + wy[1] * py


def forward_difference(img: Tensor, taps: Tensor, dim: int) -> Tensor:
    """g0 * F[k] + g1 * F[k + 1] along ``dim`` (-1: x, -2: y), 0 at the last index."""
    n = img.shape[dim]
    here = img.narrow(dim, 0, n - 1)
    after = img.narrow(dim, 1, n - 1)
    last = torch.zeros_like(img.narrow(dim, 0, 1))
    return torch.cat([taps[0] * here + taps[1] * after, last], dim=dim)


def reference_flow(
    f1: Tensor,
    f2: Tensor,
    *,
    iterations: int,
    sobel_x: Tensor,
    sobel_y: Tensor,
    div_x: Tensor,
    div_y: Tensor,
    tau: Tensor,
    lam: Tensor,
    theta: Tensor,
    grad_x: Tensor | None = None,
    grad_y: Tensor | None = None,
    sobel_scale: float = 1.0,
    eps: float = 1e-12,
    image_gradient: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]] | None = None,
) -> Tensor:
    """Algorithm 1 for every channel of (B, C, H, W) inputs -> (B, 2C, H, W) = [u_x, u_y]
    per channel. ``div_x``/``div_y`` hold the two taps [w0, w1]; ``sobel_scale`` multiplies
    the printed Sobel kernels (1/8 gives flow in pixels); ``grad_x``/``grad_y``: the taps
    of grad u's forward difference, or None for grad u by Eq. 10's Sobel kernels;
    ``image_gradient(F1, F2) -> (gx, gy)`` replaces Eq. 8 (for ``image_grad="central"``)."""
    kx, ky = sobel_x * sobel_scale, sobel_y * sobel_scale

    def grad_u(u: Tensor) -> tuple[Tensor, Tensor]:
        if grad_x is None or grad_y is None:
            return true_conv3x3(u, kx), true_conv3x3(u, ky)  # Eq. 10
        return forward_difference(u, grad_x, -1), forward_difference(u, grad_y, -2)

    flows = []
    for c in range(f1.shape[1]):  # Algorithm 1 is defined for one channel
        F1 = f1[:, c]
        F2 = f2[:, c]
        # Eq. 8: feature-map gradients of F2 (or another image gradient of F1, F2)
        if image_gradient is None:
            gx = true_conv3x3(F2, kx)
            gy = true_conv3x3(F2, ky)
        else:
            gx, gy = image_gradient(F1, F2)
        grad_sq = gx**2 + gy**2
        # u = 0, p = 0; rho_c = F2 - F1
        ux = torch.zeros_like(F1)
        uy = torch.zeros_like(F1)
        p11 = torch.zeros_like(F1)  # p for u_x, x and y parts
        p12 = torch.zeros_like(F1)
        p21 = torch.zeros_like(F1)  # p for u_y
        p22 = torch.zeros_like(F1)
        rho_c = F2 - F1
        for _ in range(iterations):
            # Eq. 2
            rho = rho_c + gx * ux + gy * uy
            # Eq. 3: three cases; |grad F2|^2 == 0 means v = u
            thr = lam * theta * grad_sq
            case1 = rho < -thr
            case2 = rho > thr
            case3 = ~(case1 | case2) & (grad_sq > 0)
            vx = ux.clone()
            vy = uy.clone()
            vx[case1] = ux[case1] + lam * theta * gx[case1]
            vy[case1] = uy[case1] + lam * theta * gy[case1]
            vx[case2] = ux[case2] - lam * theta * gx[case2]
            vy[case2] = uy[case2] - lam * theta * gy[case2]
            vx[case3] = ux[case3] - rho[case3] * gx[case3] / grad_sq[case3]
            vy[case3] = uy[case3] - rho[case3] * gy[case3] / grad_sq[case3]
            # Eq. 4 with Eq. 9
            ux = vx + theta * divergence(p11, p12, div_x, div_y)
            uy = vy + theta * divergence(p21, p22, div_x, div_y)
            # grad u (forward difference, or Eq. 10) and Eq. 5
            ux_x, ux_y = grad_u(ux)
            uy_x, uy_y = grad_u(uy)
            norm_x = torch.sqrt(ux_x**2 + ux_y**2 + eps)
            norm_y = torch.sqrt(uy_x**2 + uy_y**2 + eps)
            step = tau / theta
            p11 = (p11 + step * ux_x) / (1 + step * norm_x)
            p12 = (p12 + step * ux_y) / (1 + step * norm_x)
            p21 = (p21 + step * uy_x) / (1 + step * norm_y)
            p22 = (p22 + step * uy_y) / (1 + step * norm_y)
        flows += [ux, uy]
    return torch.stack(flows, dim=1)


def reference_flow_of(layer: RepresentationFlow, f1: Tensor, f2: Tensor) -> Tensor:
    """``reference_flow`` with every setting and parameter taken from ``layer`` (its
    iterations, Sobel/divergence/grad u kernels, tau, lambda, theta, Sobel normalisation)."""
    forward = layer.grad_u == "forward"
    return reference_flow(
        f1,
        f2,
        iterations=layer.iterations,
        sobel_x=layer.sobel_x,
        sobel_y=layer.sobel_y,
        div_x=layer.div_x,
        div_y=layer.div_y,
        tau=layer.tau,
        lam=layer.lam,
        theta=layer.theta,
        grad_x=layer.grad_x if forward else None,
        grad_y=layer.grad_y if forward else None,
        sobel_scale=1 / 8 if layer.normalize_sobel else 1.0,
        image_gradient=central_gradient if layer.image_grad == "central" else None,
    )


def central_gradient(f1: Tensor, f2: Tensor) -> tuple[Tensor, Tensor]:
    """The released layer's image gradient, one channel: 0.5 (F2[j + 1] - F2[j - 1]) on F2
    zero-padded, then the first / last column (row) overwritten with F1's one-sided
    differences, as their code does it."""
    px = torch.nn.functional.pad(f2, (1, 1))  # px[j + 1] = F2[j]
    gx = 0.5 * (px[..., 2:] - px[..., :-2])
    gx[..., 0] = 0.5 * (f1[..., 1] - f1[..., 0])
    gx[..., -1] = 0.5 * (f1[..., -1] - f1[..., -2])
    py = torch.nn.functional.pad(f2, (0, 0, 1, 1))
    gy = 0.5 * (py[..., 2:, :] - py[..., :-2, :])
    gy[..., 0, :] = 0.5 * (f1[..., 1, :] - f1[..., 0, :])
    gy[..., -1, :] = 0.5 * (f1[..., -1, :] - f1[..., -2, :])
    return gx, gy
