"""A literal reference of the authors' released CT-Net, in their order and their names.

Written from the paper (section 3, appendix A.2) and the order of operations of their
`ReshapeInteraction.forward`: Conv3d on (N, C, T, H, W), the channels viewed as (x, y),
the first sub-operation over groups of y channels, the fusion conv, a channel permute
to (y, x), the second sub-operation over groups of x channels, and the permute back. Slow
and plain on purpose: it is what `vidact.models.released` must reproduce.
"""

from __future__ import annotations

import math

import torch
import torchvision
from torch import Tensor, nn


def conv3d_bn(cin: int, cout: int, kernel: tuple[int, int, int], groups: int) -> nn.Sequential:
    """Conv3d + BN3d + ReLU, 'same' padding."""
    pad = tuple(k // 2 for k in kernel)
    conv = nn.Conv3d(cin, cout, kernel, padding=pad, groups=groups, bias=False)
    return nn.Sequential(conv, nn.BatchNorm3d(cout), nn.ReLU())


class Attention(nn.Module):
    """x * sigmoid(fc2(fc1(pool(x)))): Eq. 6 (pool over T, 1x3x3), Eq. 7 (pool over H, W,
    3x1x1), Eq. 8 (pool over H, W, 1x1x1); fc1 reduces 4x and carries BN + ReLU (A.2)."""

    def __init__(self, planes: int, groups: int, kernel: tuple[int, int, int], pool: str):
        super().__init__()
        self.pool = pool
        self.fc1 = conv3d_bn(planes, planes // 4, kernel, groups)
        pad = tuple(k // 2 for k in kernel)
        self.fc2 = nn.Sequential(
            nn.Conv3d(planes // 4, planes, kernel, padding=pad, groups=groups, bias=False)
        )

    def forward(self, x: Tensor) -> Tensor:
        pooled = x.mean(2, keepdim=True) if self.pool == "time" else x.mean((3, 4), keepdim=True)
        return x * torch.sigmoid(self.fc2(self.fc1(pooled)))


class ReferenceInteraction(nn.Module):
    """The released CT-Module: two tensor-separable sub-operations, both permutes written."""

    def __init__(self, planes: int, t: int):
        super().__init__()
        self.t = t
        self.x = 2 ** math.floor(math.log2(planes) / 2)  # their split: x <= y, powers of 2
        self.y = planes // self.x
        x, y = self.x, self.y
        self.conv1_x = conv3d_bn(planes, planes, (1, 3, 3), x)  # x groups of y channels
        self.conv1_z = conv3d_bn(planes, planes, (3, 1, 1), x)
        self.sx_attention = Attention(planes, x, (1, 3, 3), "time")
        self.tx_attention = Attention(planes, x, (3, 1, 1), "space")
        self.cx_attention = Attention(planes, x, (1, 1, 1), "space")
        self.fusion = conv3d_bn(planes, planes, (1, 1, 1), 1)
        self.conv2_y = conv3d_bn(planes, planes, (1, 3, 3), y)  # y groups of x channels
        self.conv2_z = conv3d_bn(planes, planes, (3, 1, 1), y)
        self.sy_attention = Attention(planes, y, (1, 3, 3), "time")
        self.ty_attention = Attention(planes, y, (3, 1, 1), "space")
        self.cy_attention = Attention(planes, y, (1, 1, 1), "space")

    def forward(self, frames: Tensor) -> Tensor:
        nt, c, h, w = frames.shape
        n, t, x, y = nt // self.t, self.t, self.x, self.y
        v = frames.reshape(n, t, c, h, w).permute(0, 2, 1, 3, 4)  # channel a = xi*y + yi
        v = self.cx_attention(
            self.sx_attention(self.conv1_x(v)) + self.tx_attention(self.conv1_z(v))
        )
        v = self.fusion(v)
        v = v.reshape(n, x, y, t, h, w).transpose(1, 2).reshape(n, c, t, h, w)  # b = yi*x + xi
        v = self.cy_attention(
            self.sy_attention(self.conv2_y(v)) + self.ty_attention(self.conv2_z(v))
        )
        v = v.reshape(n, y, x, t, h, w).transpose(1, 2).reshape(n, c, t, h, w)  # back to a
        return v.permute(0, 2, 1, 3, 4).reshape(nt, c, h, w)


class ReferenceBlock(nn.Module):
    """A CT-Block: the bottleneck's conv1 + bn1 (+ReLU), the CT-Module, conv3 + bn3."""

    def __init__(self, block: torchvision.models.resnet.Bottleneck, t: int):
        super().__init__()
        self.conv1 = nn.Sequential(block.conv1, block.bn1, nn.ReLU())
        self.conv2 = ReferenceInteraction(block.conv2.in_channels, t)
        self.conv3 = nn.Sequential(block.conv3, block.bn3)
        self.relu = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.conv3(self.conv2(self.conv1(x))) + x)


class ReferenceNet(nn.Module):
    """Their TSN wrapper: `base_model` (a ResNet whose fc is dropout), `new_fc` per frame,
    then the average over the T frames. CT-Blocks at the odd blocks of every stage."""

    def __init__(self, depth: int, num_classes: int, t: int, ct: bool = True):
        super().__init__()
        self.t = t
        self.base_model = torchvision.models.get_model(f"resnet{depth}", weights=None)
        if ct:
            for name in ("layer1", "layer2", "layer3", "layer4"):
                layer = getattr(self.base_model, name)
                for i in range(1, len(layer), 2):
                    layer[i] = ReferenceBlock(layer[i], t)
        self.base_model.fc = nn.Dropout(0.5)  # type: ignore[assignment]
        self.new_fc = nn.Linear(2048, num_classes)

    def forward(self, clips: Tensor) -> Tensor:
        n, c, t, h, w = clips.shape
        frames = clips.transpose(1, 2).reshape(n * t, c, h, w)
        return self.new_fc(self.base_model(frames)).reshape(n, t, -1).mean(1)


def randomize(module: nn.Module, seed: int = 0) -> None:
    """Random weights and BN statistics everywhere, so that a wrong map shows."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                assert m.running_mean is not None and m.running_var is not None
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            elif isinstance(m, nn.Linear):
                m.weight.normal_(0, 0.05, generator=gen)
                m.bias.normal_(0, 0.05, generator=gen)


def released_file(net: nn.Module) -> dict[str, object]:
    """What their main.py saves: DataParallel names, plus an optimizer, epoch and the
    profiler counters some of their files carry."""
    state = {f"module.{k}": v.detach().clone() for k, v in net.state_dict().items()}
    state["module.base_model.conv1.total_ops"] = torch.zeros(1)
    state["module.base_model.conv1.total_params"] = torch.zeros(1)
    optimizer = {"state": {}, "param_groups": [{"lr": 0.02, "momentum": 0.9, "params": [0]}]}
    return {"epoch": 45, "arch": "resnet50", "state_dict": state, "optimizer": optimizer,
            "best_prec1": 49.9}  # fmt: skip
