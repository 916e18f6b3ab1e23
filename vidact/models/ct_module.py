"""The CT-Module of CT-Net (Li et al., ICLR 2021): channel tensorization (section 3.1),
tensor-separable convolution (Eq. 2-5) and tensor excitation (section 3.2, Eq. 6-8, App. A.2).

Layout. Every module here takes frames folded into the batch, (N*T, C, H, W), the TSN
layout of the 2D ResNet around it, plus the number of frames T. Spatial operations are 2D
convolutions on that layout as it is. Temporal operations are 2D convolutions with a
(k, 1) kernel on the view (N, C, T, H*W) of the same memory: for a channels_last tensor
that view is itself channels_last, so no data moves; for a contiguous (NCHW) tensor the
convolution makes one copy. No module here holds a 5D weight unless a 3D kernel
(`coupled`) is asked for, so `model.to(memory_format=torch.channels_last)` works for the
default CT-Net.

Channel order. A tensor-separable convolution along sub-dimension C_k is a grouped
convolution whose groups are the C_k channels that share every other sub-index; grouped
convolutions need each group contiguous, so before sub-operation k the sub-index k must be
the fastest-varying one. Between two sub-operations either the point-wise convolution of
Table 2g ('PWConv') or, without it, one channel transpose (a ShuffleNet-style permute)
brings it there. A PWConv is a full C x C convolution: it can write its output in any
channel order, so with it no permute is needed at all. The module's output channels come
in the order of its last sub-operation; as the module starts from random weights
(section 4) this relabelling changes nothing that training can tell apart.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

# ---------------------------------------------------------------------------------------
# Numbers the paper fixes, in one place.
# K = 2 sub-dimensions: the best trade-off of Table 2b.
NUM_SUBDIMS = 2
# Kernel size along every sub-dimension: two concatenated 3^3 (1x3x3 + 3x1x1), Table 2f.
KERNEL_SIZE = 3
# Tensor excitation (Eq. 6-8, Fig. 4, App. A.2): each attention is an SE-style bottleneck of
# two tensor-separable convolutions, C -> C/4 (+ BN + ReLU) -> C, then a sigmoid. With
# reduction 4, CT-Net-R50 has the 21.0M parameters of Table 8; single convolutions without
# a bottleneck would give 21.3M.
TE_REDUCTION = 4
# The SE alternative of Table 2g uses the reduction of Hu et al. (2020).
SE_REDUCTION = 16
# Connections of the spatial and temporal convolutions, Table 2c ('parallel' is Eq. 5).
CONNECTIONS = ("parallel", "serial", "coupled")
EXCITATIONS = ("te", "se", "none")


def channel_split(channels: int, num_subdims: int = NUM_SUBDIMS) -> tuple[int, ...]:
    """Tensorize C = C_1 x ... x C_K, each factor as close to C^(1/K) as divisibility allows.

    The smallest factor is the largest divisor of C not above C^(1/K) (the "rounded middle
    size" of Table 2d) and the rest of C splits recursively. As sets, the splits of
    ResNet's widths are {8, 8} for 64, {8, 16} for 128, {16, 16} for 256, {16, 32} for 512.

    The factors come in the order the sub-operations run, largest first: the paper sets
    C_2 = floor(sqrt(C)) (Table 2d), i.e. the second sub-dimension is the smaller one, and
    the FLOPs of Table 2f (kernel 5 on C_2 costs less than on C_1) confirm it. So
    128 -> (16, 8) and 512 -> (32, 16). The order changes neither parameters nor FLOPs
    when all kernel sizes are equal.

    A C that is not a power of two splits the same way: 96 -> (12, 8), 192 -> (16, 12),
    100 -> (10, 10). A prime C has no such divisor and splits as (C, 1): a full
    convolution, then a depthwise one.
    """
    if channels < 1 or num_subdims < 1:
        raise ValueError(f"cannot split {channels} channels into {num_subdims} sub-dimensions")
    if num_subdims == 1:
        return (channels,)
    root = channels ** (1.0 / num_subdims)
    smallest = max(
        d for d in range(1, math.isqrt(channels) + 1) if channels % d == 0 and d <= root + 1e-9
    )
    rest = channel_split(channels // smallest, num_subdims - 1)
    return tuple(sorted((smallest, *rest), reverse=True))


def _scale(x: Tensor, weights: Tensor) -> Tensor:
    """x * weights; in place when autograd is off (inference), which saves an allocation
    and a pass over memory. Every x given here is a fresh intermediate of its caller."""
    return x.mul_(weights) if not torch.is_grad_enabled() else x * weights


def _is_channels_last(x: Tensor) -> bool:
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def _mean_over_frames(x: Tensor, t: int) -> Tensor:
    """(N*T, C, H, W) -> (N, C, H, W), the mean of the T frames, in x's memory format (a
    reduction over a middle dimension of a channels_last view is ~10x slower on CPU)."""
    # sum, then scale the small result: the backward of a sum is a broadcast view, that of
    # a mean a full-size division.
    if _is_channels_last(x):
        pooled = x.permute(0, 2, 3, 1).unflatten(0, (-1, t)).sum(1).permute(0, 3, 1, 2)
    else:
        pooled = x.unflatten(0, (-1, t)).sum(1)
    return pooled * (1.0 / t)


def _mean_over_space(x: Tensor) -> Tensor:
    """(N*T, C, H, W) -> (N*T, C), the S-Pool, with a cheap backward (see above)."""
    return x.sum((2, 3)) * (1.0 / (x.shape[2] * x.shape[3]))


def _bn_relu(channels: int) -> nn.Sequential:
    return nn.Sequential(nn.BatchNorm2d(channels), nn.ReLU(inplace=True))


def _as_time_rows(x: Tensor, t: int) -> Tensor:
    """(N*T, C, H, W) -> (N, C, T, H*W): a view when x is channels_last (see module doc)."""
    nt, c, h, w = x.shape
    return x.reshape(nt // t, t, c, h * w).transpose(1, 2)


def _from_time_rows(y: Tensor, h: int, w: int) -> Tensor:
    """(N, C, T, H*W) -> (N*T, C, H, W), the inverse of `_as_time_rows`."""
    n, c, t, _ = y.shape
    return y.transpose(1, 2).reshape(n * t, c, h, w)


class TemporalConv(nn.Module):
    """A grouped k x 1 x 1 convolution over frames: the T-TSConv of Eq. 4."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, groups: int):
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels, out_channels, (kernel_size, 1), padding=(kernel_size // 2, 0),
            groups=groups, bias=False,
        )  # fmt: skip

    def forward(self, x: Tensor, t: int) -> Tensor:
        return _from_time_rows(self.conv(_as_time_rows(x, t)), x.shape[2], x.shape[3])


class Conv3dFolded(nn.Module):
    """A grouped t x h x w 3D convolution on folded frames (the coupled kernel of Table 2c)."""

    def __init__(self, channels: int, kernel: tuple[int, int, int], groups: int):
        super().__init__()
        self.conv = nn.Conv3d(
            channels, channels, kernel, padding=(kernel[0] // 2, kernel[1] // 2, kernel[2] // 2),
            groups=groups, bias=False,
        )  # fmt: skip

    def forward(self, x: Tensor, t: int) -> Tensor:
        nt, c, h, w = x.shape
        y = self.conv(x.reshape(nt // t, t, c, h, w).transpose(1, 2))
        return y.transpose(1, 2).reshape(nt, c, h, w)


class SpatialExcitation(nn.Module):
    """Spatial attention of Eq. 6: temporal average pool, spatial TSConv bottleneck, sigmoid."""

    def __init__(self, channels: int, groups: int, kernel_size: int, hidden: int):
        super().__init__()
        pad = kernel_size // 2
        self.reduce = nn.Conv2d(
            channels, hidden, kernel_size, padding=pad, groups=groups, bias=False
        )
        self.bn_relu = _bn_relu(hidden)
        self.expand = nn.Conv2d(
            hidden, channels, kernel_size, padding=pad, groups=groups, bias=False
        )

    def attention(self, x: Tensor, t: int) -> Tensor:
        """The (N, 1, C, H, W) heatmap in [0, 1], broadcast over the T frames of x."""
        pooled = _mean_over_frames(x, t)  # T-Pool: (N, C, H, W)
        return torch.sigmoid(self.expand(self.bn_relu(self.reduce(pooled)))).unsqueeze(1)

    def forward(self, x: Tensor, t: int) -> Tensor:
        return _scale(x.unflatten(0, (-1, t)), self.attention(x, t)).flatten(0, 1)


class PooledExcitation(nn.Module):
    """Attention on spatially pooled features: temporal (Eq. 7, kernel k) or channel (Eq. 8,
    kernel 1, the PW-TSConv), a grouped conv bottleneck over frames, then a sigmoid."""

    def __init__(self, channels: int, groups: int, kernel_size: int, hidden: int):
        super().__init__()
        pad = kernel_size // 2
        self.reduce = nn.Conv1d(
            channels, hidden, kernel_size, padding=pad, groups=groups, bias=False
        )
        self.bn = nn.BatchNorm1d(hidden)
        self.relu = nn.ReLU(inplace=True)
        self.expand = nn.Conv1d(
            hidden, channels, kernel_size, padding=pad, groups=groups, bias=False
        )

    def attention(self, x: Tensor, t: int) -> Tensor:
        """The (N*T, C, 1, 1) weights in [0, 1]."""
        pooled = _mean_over_space(x).unflatten(0, (-1, t)).transpose(1, 2)  # S-Pool: N, C, T
        att = torch.sigmoid(self.expand(self.relu(self.bn(self.reduce(pooled)))))
        # contiguous: a broadcast multiply with transposed weights is several times slower
        return att.transpose(1, 2).contiguous().flatten(0, 1)[:, :, None, None]

    def forward(self, x: Tensor, t: int) -> Tensor:
        return _scale(x, self.attention(x, t))


class SqueezeExcitation(nn.Module):
    """SE (Hu et al.) per frame: the alternative to TE in Table 2g."""

    def __init__(self, channels: int, reduction: int = SE_REDUCTION):
        super().__init__()
        hidden = max(1, channels // reduction)
        self.fc = nn.Sequential(
            nn.Linear(channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, channels)
        )

    def attention(self, x: Tensor, t: int) -> Tensor:
        return torch.sigmoid(self.fc(_mean_over_space(x)))[:, :, None, None]

    def forward(self, x: Tensor, t: int) -> Tensor:
        return _scale(x, self.attention(x, t))


@dataclass(frozen=True)
class SubOp:
    """One sub-operation of a (generalised) CT-Module.

    `group_size`: how many channels interact (C_k; 1 is depthwise, C a full convolution).
    `kernel`: 'parallel' (1xkxk + kx1x1 summed, Eq. 3-5), 'serial' (1xkxk then kx1x1),
    'coupled' (kxkxk), 'spatial' (1xkxk), 'temporal' (kx1x1) or 'point' (1x1x1).
    """

    group_size: int
    kernel: str = "parallel"
    kernel_size: int = KERNEL_SIZE


_KERNELS = ("parallel", "serial", "coupled", "spatial", "temporal", "point")


class TSConv(nn.Module):
    """A spatial-temporal tensor-separable convolution along one sub-dimension (Eq. 2-5),
    each branch followed by BN + ReLU, with its excitation on the same sub-dimension."""

    def __init__(
        self,
        channels: int,
        op: SubOp,
        excitation: str = "te",
        te_reduction: int = TE_REDUCTION,
    ):
        super().__init__()
        if op.kernel not in _KERNELS:
            raise ValueError(f"unknown sub-operation kernel {op.kernel!r}; one of {_KERNELS}")
        if excitation not in EXCITATIONS:
            raise ValueError(f"unknown excitation {excitation!r}; one of {EXCITATIONS}")
        if channels % op.group_size:
            raise ValueError(f"group size {op.group_size} does not divide {channels} channels")
        self.kernel, self.group_size = op.kernel, op.group_size
        c, k = channels, op.kernel_size
        groups = c // op.group_size
        has_s = op.kernel in ("parallel", "serial", "spatial")
        has_t = op.kernel in ("parallel", "serial", "temporal")
        self.spatial = (
            nn.Conv2d(c, c, k, padding=k // 2, groups=groups, bias=False) if has_s else None
        )
        self.spatial_bn = _bn_relu(c) if has_s else None
        self.temporal = TemporalConv(c, c, k, groups) if has_t else None
        self.temporal_bn = _bn_relu(c) if has_t else None
        self.coupled = Conv3dFolded(c, (k, k, k), groups) if op.kernel == "coupled" else None
        self.point = nn.Conv2d(c, c, 1, groups=groups, bias=False) if op.kernel == "point" else None
        self.other_bn = _bn_relu(c) if op.kernel in ("coupled", "point") else None

        # Tensor excitation: every attention groups channels like the convolution it follows.
        hidden = groups * max(1, op.group_size // te_reduction)
        te = excitation == "te"
        sa = te and op.kernel in ("parallel", "serial", "spatial", "coupled")
        ta = te and op.kernel in ("parallel", "serial", "temporal", "coupled")
        self.spatial_att = SpatialExcitation(c, groups, k, hidden) if sa else None
        self.temporal_att = PooledExcitation(c, groups, k, hidden) if ta else None
        self.channel_att: PooledExcitation | SqueezeExcitation | None = None
        if te:
            self.channel_att = PooledExcitation(c, groups, 1, hidden)
        elif excitation == "se":
            self.channel_att = SqueezeExcitation(c)

    @staticmethod
    def _excite(
        name: str, att: nn.Module | None, x: Tensor, t: int, maps: dict[str, Tensor] | None
    ) -> Tensor:
        if att is None:
            return x
        if maps is not None:  # inspection only: the attention is computed twice
            maps[name] = att.attention(x, t)  # type: ignore[operator]
        return att(x, t)

    def forward(self, x: Tensor, t: int, maps: dict[str, Tensor] | None = None) -> Tensor:
        """Apply the sub-operation; if `maps` is given, store the attention weights in it."""
        xs = xt = x
        if self.spatial is not None and self.spatial_bn is not None:  # Eq. 3 and 6
            xs = self._excite(
                "spatial", self.spatial_att, self.spatial_bn(self.spatial(x)), t, maps
            )
        if self.temporal is not None and self.temporal_bn is not None:  # Eq. 4 and 7
            src = xs if self.kernel == "serial" else x
            xt = self.temporal_bn(self.temporal(src, t))
            xt = self._excite("temporal", self.temporal_att, xt, t, maps)
        if self.kernel == "parallel":
            r = xs.add_(xt) if not torch.is_grad_enabled() else xs + xt  # Eq. 5: R = U + V
        elif self.kernel in ("serial", "temporal"):
            r = xt
        elif self.kernel == "spatial":
            r = xs
        else:  # coupled or point
            assert self.other_bn is not None
            if self.coupled is not None:
                y = self.other_bn(self.coupled(x, t))
            else:
                assert self.point is not None
                y = self.other_bn(self.point(x))
            y = self._excite("spatial", self.spatial_att, y, t, maps)
            r = self._excite("temporal", self.temporal_att, y, t, maps)
        return self._excite("channel", self.channel_att, r, t, maps)  # Eq. 8


def _permute_channels(x: Tensor, sizes: Sequence[int], perm: Sequence[int]) -> Tensor:
    """Reorder the tensorized channel sub-indices of (N*T, C, H, W) by `perm`, keeping the
    memory format: one copy for a contiguous or a channels_last tensor."""
    nt, c, h, w = x.shape
    k = len(sizes)
    if _is_channels_last(x):
        y = x.permute(0, 2, 3, 1).reshape(nt, h, w, *sizes)  # a view: (N*T, H, W, C)
        y = y.permute(0, 1, 2, *(3 + p for p in perm)).reshape(nt, h, w, c)
        return y.permute(0, 3, 1, 2)
    y = x.reshape(nt, *sizes, h, w).permute(0, *(1 + p for p in perm), k + 1, k + 2)
    return y.reshape(nt, c, h, w)


class CTModule(nn.Module):
    """Channel Tensorization Module (section 3.1-3.2): K tensor-separable convolutions, one
    per channel sub-dimension, with tensor excitation, and a point-wise conv + BN + ReLU
    between sub-operations (none after the last, Fig. 2b / Table 2g 'PWConv').

    With the default sub-operations this is the paper's CT-Module; other `ops` give the
    C3D, R(2+1)D and CSN modules of Table 2a (see `module_ops`). Input and output are
    (N*T, C, H, W); `forward(x, t)` needs T.
    """

    def __init__(
        self,
        channels: int,
        ops: Sequence[SubOp] | None = None,
        *,
        pwconv: bool = True,
        excitation: str = "te",
        te_reduction: int = TE_REDUCTION,
    ):
        super().__init__()
        if ops is None:
            ops = [SubOp(size) for size in channel_split(channels)]
        ops = list(ops)
        sizes = [op.group_size for op in ops]
        self.channels = channels
        self.ops = nn.ModuleList(TSConv(channels, op, excitation, te_reduction) for op in ops)
        self.pwconvs = nn.ModuleList(
            nn.Sequential(nn.Conv2d(channels, channels, 1, bias=False), *_bn_relu(channels))
            for _ in ops[1:]
        ) if pwconv else None  # fmt: skip

        # The channel permutes between sub-operations (module docstring, 'Channel order').
        # The layout is a list of sub-dimension ids, slowest first; sub-operation k needs k last.
        self._perms: list[tuple[tuple[int, ...], tuple[int, ...]] | None] = [None] * len(ops)
        if math.prod(sizes) == channels:
            layout = [*range(1, len(ops)), 0]
            for k in range(1, len(ops)):
                new = [d for d in layout if d != k] + [k]
                moved = [d for d in layout if sizes[d] > 1] != [d for d in new if sizes[d] > 1]
                if moved and not pwconv:
                    perm = tuple(layout.index(d) for d in new)
                    self._perms[k] = (tuple(sizes[d] for d in layout), perm)
                layout = new
        elif any(s not in (1, channels) for s in sizes):
            raise ValueError(
                f"group sizes {sizes} neither tensorize {channels} channels (product) nor are "
                "each 1 or all channels"
            )

    def forward(self, x: Tensor, t: int, maps: list[dict[str, Tensor]] | None = None) -> Tensor:
        """Apply the module; if `maps` is a list, append each sub-operation's attention maps."""
        for k, op in enumerate(self.ops):
            if k:
                if self.pwconvs is not None:
                    x = self.pwconvs[k - 1](x)
                perm = self._perms[k]
                if perm is not None:
                    x = _permute_channels(x, *perm)
            op_maps: dict[str, Tensor] | None = None if maps is None else {}
            x = op(x, t, op_maps)
            if maps is not None and op_maps is not None:
                maps.append(op_maps)
        return x


MODULES = ("ct", "c3d", "r2plus1d", "csn")


def module_ops(
    module: str,
    channels: int,
    *,
    connection: str = "parallel",
    num_subdims: int = NUM_SUBDIMS,
    kernel_sizes: Sequence[int] | None = None,
) -> list[SubOp]:
    """Sub-operations of the modules of Table 2a, as special cases of the CT-Module (3.3).

    'ct': K = `num_subdims` tensor-separable convolutions over `channel_split(C, K)`, with
    the connection of Table 2c and a kernel size per sub-dimension (Table 2f).
    'c3d': K = 1, a full 3x3x3 convolution. 'r2plus1d': K = 2, C_1 = C_2 = C, a full 1x3x3
    then a full 3x1x1 convolution. 'csn': K = 2, C = C x 1, a full 1x1x1 then a depthwise
    3x3x3 convolution.
    """
    if module == "ct":
        if connection not in CONNECTIONS:
            raise ValueError(f"unknown connection {connection!r}; one of {CONNECTIONS}")
        split = channel_split(channels, num_subdims)
        ks = list(kernel_sizes) if kernel_sizes is not None else [KERNEL_SIZE] * len(split)
        if len(ks) != len(split):
            raise ValueError(f"{len(ks)} kernel sizes for {len(split)} sub-dimensions")
        kernel = {"parallel": "parallel", "serial": "serial", "coupled": "coupled"}[connection]
        return [SubOp(s, kernel, k) for s, k in zip(split, ks, strict=True)]
    if module == "c3d":
        return [SubOp(channels, "coupled")]
    if module == "r2plus1d":
        return [SubOp(channels, "spatial"), SubOp(channels, "temporal")]
    if module == "csn":
        return [SubOp(channels, "point"), SubOp(1, "coupled")]
    raise ValueError(f"unknown module {module!r}; one of {MODULES}")
