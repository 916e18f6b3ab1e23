"""A literal reference of the rep-flow authors' released Kinetics network, in their names.

Written from the structure and order of operations of their `kinetics_2p1d_model.py`
(`resnet_3d_v1(50, 400)`) and `rep_flow_layer.py` (`FlowLayer`), not copied: modules in
`nn.Sequential`s indexed as theirs (so that the state dict has their key names), a
SamePadding module, and the flow layer as they write it: four dual fields p11, p12, p21,
p22, one conv2d per operator and component, Eq. 3 as three boolean masks with masked
assignment, the borders of the image gradient overwritten in place. Slow and plain on
purpose: `vidact.models.released_repflow` must compute the same.

Their `mask ^ 1` is a logical not here (what it was on the torch 0.4 they used).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class SamePadding(nn.Module):
    """TensorFlow SAME zero padding for a (t, h, w) kernel and stride."""

    def __init__(self, kernel: tuple[int, int, int], stride: tuple[int, int, int]):
        super().__init__()
        self.kernel, self.stride = kernel, stride

    def amount(self, dim: int, size: int) -> int:
        k, s = self.kernel[dim], self.stride[dim]
        if size % s == 0:
            return max(k - s, 0)
        return max(k - (size % s), 0)

    def forward(self, x: Tensor) -> Tensor:
        _, _, t, h, w = x.shape
        pt, ph, pw = self.amount(0, t), self.amount(1, h), self.amount(2, w)
        pad = (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2, pt // 2, pt - pt // 2)
        return F.pad(x, pad)


class Bottleneck(nn.Module):
    """layers: 0 pad, 1 (T,1,1) conv, 2 BN, 3 ReLU, 4 pad, 5 (1,3,3) conv, 6 BN, 7 ReLU,
    8 1x1x1 conv, 9 BN; shortcut: 0 pad, 1 conv, 2 BN, 3 BN."""

    def __init__(self, cin: int, filters: int, stride: int, projection: bool, T: int = 3):
        super().__init__()
        out = 4 * filters
        self.shortcut = None
        if projection:
            self.shortcut = nn.Sequential(
                SamePadding((1, 1, 1), (1, stride, stride)),
                nn.Conv3d(cin, out, 1, stride=(1, stride, stride), bias=False),
                nn.BatchNorm3d(out),
                nn.BatchNorm3d(out),
            )
        self.layers = nn.Sequential(
            SamePadding((T, 1, 1), (1, 1, 1)),
            nn.Conv3d(cin, filters, (T, 1, 1), bias=False),
            nn.BatchNorm3d(filters),
            nn.ReLU(),
            SamePadding((1, 3, 3), (1, stride, stride)),
            nn.Conv3d(filters, filters, (1, 3, 3), stride=(1, stride, stride), bias=False),
            nn.BatchNorm3d(filters),
            nn.ReLU(),
            nn.Conv3d(filters, out, 1, bias=False),
            nn.BatchNorm3d(out),
        )

    def forward(self, x: Tensor) -> Tensor:
        res = self.shortcut(x) if self.shortcut is not None else x
        return F.relu(self.layers(x) + res)


class Block(nn.Module):
    """A stage: the first block projects (T = 3), then T = 3, 1, 3, 1, ..."""

    def __init__(self, cin: int, filters: int, blocks: int, stride: int):
        super().__init__()
        self.blocks = nn.ModuleList([Bottleneck(cin, filters, stride, projection=True)])
        T = 3
        for _ in range(1, blocks):
            self.blocks.append(Bottleneck(4 * filters, filters, 1, projection=False, T=T))
            T = 3 if T == 1 else 1

    def forward(self, x: Tensor) -> Tensor:
        for block in self.blocks:
            x = block(x)
        return x


class FlowLayer(nn.Module):
    """Their FlowLayer(channels), every parameter learnable, bottleneck 32, 10 iterations."""

    def __init__(self, channels: int, bottleneck: int = 32, n_iter: int = 10):
        super().__init__()
        self.bottleneck = nn.Conv3d(channels, bottleneck, 1, bias=False)
        self.unbottleneck = nn.Conv3d(bottleneck * 2, channels, 1, bias=False)
        self.bn = nn.BatchNorm3d(channels)
        c = bottleneck
        self.n_iter = n_iter
        row = torch.tensor([[[[-0.5, 0.0, 0.5]]]])  # (1, 1, 1, 3)
        self.img_grad = nn.Parameter(row.repeat(c, c, 1, 1))
        self.img_grad2 = nn.Parameter(row.transpose(3, 2).repeat(c, c, 1, 1))
        column = torch.tensor([[[[-1.0], [1.0]]]])  # (1, 1, 2, 1)
        self.f_grad = nn.Parameter(column.repeat(c, c, 1, 1))
        self.f_grad2 = nn.Parameter(column.repeat(c, c, 1, 1))
        self.div = nn.Parameter(column.repeat(c, c, 1, 1))
        self.div2 = nn.Parameter(column.repeat(c, c, 1, 1))
        self.t = nn.Parameter(torch.tensor([0.3]))
        self.l = nn.Parameter(torch.tensor([0.15]))
        self.a = nn.Parameter(torch.tensor([0.25]))

    def norm_img(self, x: Tensor) -> Tensor:
        mx = torch.max(x)
        mn = torch.min(x)
        return 255 * (x - mn) / (mn - mx)

    def forward_grad(self, x: Tensor) -> tuple[Tensor, Tensor]:
        grad_x = F.conv2d(F.pad(x, (0, 0, 0, 1)), self.f_grad)
        grad_x[:, :, -1, :] = 0
        grad_y = F.conv2d(F.pad(x, (0, 0, 0, 1)), self.f_grad2)
        grad_y[:, :, -1, :] = 0
        return grad_x, grad_y

    def divergence(self, x: Tensor, y: Tensor) -> Tensor:
        tx = F.pad(x[:, :, :-1, :], (0, 0, 1, 0))
        ty = F.pad(y[:, :, :-1, :], (0, 0, 1, 0))
        grad_x = F.conv2d(F.pad(tx, (0, 0, 0, 1)), self.div)
        grad_y = F.conv2d(F.pad(ty, (0, 0, 0, 1)), self.div2)
        return grad_x + grad_y

    def iterate(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """The TV-L1 iterations on (b*t, c, h, w) frames x (first) and y (second)."""
        self.cases = [0, 0, 0]
        u1 = torch.zeros_like(x)
        u2 = torch.zeros_like(x)
        l_t = self.l * self.t
        taut = self.a / self.t
        grad2_x = F.conv2d(F.pad(y, (1, 1, 0, 0)), self.img_grad)
        grad2_x[:, :, :, 0] = 0.5 * (x[:, :, :, 1] - x[:, :, :, 0])
        grad2_x[:, :, :, -1] = 0.5 * (x[:, :, :, -1] - x[:, :, :, -2])
        grad2_y = F.conv2d(F.pad(y, (0, 0, 1, 1)), self.img_grad2)
        grad2_y[:, :, 0, :] = 0.5 * (x[:, :, 1, :] - x[:, :, 0, :])
        grad2_y[:, :, -1, :] = 0.5 * (x[:, :, -1, :] - x[:, :, -2, :])
        p11, p12 = torch.zeros_like(x), torch.zeros_like(x)
        p21, p22 = torch.zeros_like(x), torch.zeros_like(x)
        grad = grad2_x**2 + grad2_y**2 + 1e-12
        rho_c = y - grad2_x * u1 - grad2_y * u2 - x
        for _ in range(self.n_iter):
            rho = rho_c + grad2_x * u1 + grad2_y * u2 + 1e-12
            v1 = torch.zeros_like(x)
            v2 = torch.zeros_like(x)
            mask1 = (rho < -l_t * grad).detach()
            v1[mask1] = (l_t * grad2_x)[mask1]
            v2[mask1] = (l_t * grad2_y)[mask1]
            mask2 = (rho > l_t * grad).detach()
            v1[mask2] = (-l_t * grad2_x)[mask2]
            v2[mask2] = (-l_t * grad2_y)[mask2]
            mask3 = (~mask1 & ~mask2 & (grad > 1e-12)).detach()
            v1[mask3] = ((-rho / grad) * grad2_x)[mask3]
            v2[mask3] = ((-rho / grad) * grad2_y)[mask3]
            for i, mask in enumerate((mask1, mask2, mask3)):  # for the tests: cases hit
                self.cases[i] += int(mask.sum())
            v1 = v1 + u1
            v2 = v2 + u2
            u1 = v1 + self.t * self.divergence(p11, p12)
            u2 = v2 + self.t * self.divergence(p21, p22)
            u1x, u1y = self.forward_grad(u1)
            u2x, u2y = self.forward_grad(u2)
            p11 = (p11 + taut * u1x) / (1.0 + taut * torch.sqrt(u1x**2 + u1y**2 + 1e-12))
            p12 = (p12 + taut * u1y) / (1.0 + taut * torch.sqrt(u1x**2 + u1y**2 + 1e-12))
            p21 = (p21 + taut * u2x) / (1.0 + taut * torch.sqrt(u2x**2 + u2y**2 + 1e-12))
            p22 = (p22 + taut * u2y) / (1.0 + taut * torch.sqrt(u2x**2 + u2y**2 + 1e-12))
        return u1, u2

    def forward(self, x: Tensor) -> Tensor:
        residual = x[:, :, :-1]
        inp = self.norm_img(self.bottleneck(x))
        first, second = inp[:, :, :-1], inp[:, :, 1:]
        b, c, t, h, w = first.shape
        first = first.permute(0, 2, 1, 3, 4).contiguous().view(b * t, c, h, w)
        second = second.permute(0, 2, 1, 3, 4).contiguous().view(b * t, c, h, w)
        u1, u2 = self.iterate(first, second)
        flow = torch.cat([u1, u2], dim=1)
        flow = flow.view(b, t, c * 2, h, w).contiguous().permute(0, 2, 1, 3, 4)
        return F.relu(residual + self.bn(self.unbottleneck(flow)))


class ResNet3D(nn.Module):
    """resnet_3d_v1(50, num_classes): stem, bn1, res2..res5, rep_flow after res3,
    dropout, classify, temporal mean."""

    def __init__(self, num_classes: int = 400, layers: tuple[int, ...] = (3, 4, 6, 3)):
        super().__init__()
        self.stem = nn.Conv3d(3, 64, kernel_size=7, bias=False, stride=2)
        self.bn1 = nn.BatchNorm3d(64, eps=0.001, momentum=0.01)
        self.pad = SamePadding((3, 3, 3), (2, 2, 2))
        self.maxpool = nn.MaxPool3d(kernel_size=3, stride=2, padding=0)
        self.rep_flow = FlowLayer(512)
        self.res2 = Block(64, 64, layers[0], 1)
        self.res3 = Block(256, 128, layers[1], 2)
        self.res4 = Block(512, 256, layers[2], 2)
        self.res5 = Block(1024, 512, layers[3], 2)
        self.dropout = nn.Dropout(0.5)
        self.classify = nn.Conv3d(2048, num_classes, kernel_size=1, stride=1)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.stem(x)))
        x = self.maxpool(self.pad(x))
        x = self.res3(self.res2(x))
        x = self.rep_flow(x)
        x = self.res5(self.res4(x))
        x = x.mean(3).mean(3).unsqueeze(3).unsqueeze(3)
        x = self.classify(self.dropout(x))
        return x.mean(2).squeeze(-1).squeeze(-1)


def randomize(module: nn.Module, seed: int = 0) -> None:
    """Random BN statistics and affine parameters, and random flow-layer kernels and
    t, l, a near their initial values, so that a wrong map or a wrong operator shows."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                assert m.running_mean is not None and m.running_var is not None
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            elif isinstance(m, nn.Conv3d) and m.bias is not None:
                m.bias.normal_(0, 0.05, generator=gen)
            if isinstance(m, FlowLayer):
                scale = 1 / math.sqrt(m.img_grad.shape[1])  # keep the mixed sums in range
                for kernel in (m.img_grad, m.img_grad2, m.f_grad, m.f_grad2, m.div, m.div2):
                    noise = torch.randn(kernel.shape, generator=gen) * 0.3
                    kernel.mul_(scale).add_(noise * scale)
                for value in (m.t, m.l, m.a):
                    value.mul_(1 + 0.2 * torch.rand(1, generator=gen))
