"""The rep-flow authors' released Kinetics-400 network, computing what their code computes.

Their repository ships one Kinetics model, `models/rep_flow.pt`, a plain state dict that
their `kinetics_2p1d_model.py` loads into `resnet_3d_v1(50, 400)`, with the flow layer of
their `rep_flow_layer.py` (`FlowLayer(512)`). It is neither the network the paper
describes nor vidact's `repflow_r2plus1d_50`; this module rebuilds it, quirks included,
so that the file loads (`model.weights: rep_flow.pt`, mapped by `vidact.models.released`)
and gives their logits. Read from their code (not the issue's summary), in their order:

Trunk (the non-local paper's ResNet-50 in TensorFlow style):
- stem: 7x7x7 conv, stride 2, *no* padding ("VALID": their stem conv has `padding=0` and
  no SamePadding before it, unlike every other conv; issue 19's "SAME" does not single it
  out), BN with eps 1e-3 and momentum 0.01, ReLU, then TF "SAME" zero padding and a
  3x3x3 stride-2 max pool;
- bottlenecks: a temporal (kt,1,1) conv first, then the spatial (1,3,3) conv (which carries
  the stride), then 1x1x1 to 4x the width, each with BN; all with TF "SAME" padding (odd
  totals put the extra row/column at the end). Within a stage the first two blocks have
  kt = 3, then kt alternates 1, 3, 1, ... (their `Block3D`);
- the first block of a stage has a projection shortcut: 1x1x1 conv with the spatial stride,
  then *two* BatchNorms in a row (kept "so that old weights load", their comment);
- one flow layer after res3 (512 channels, `ReleasedFlowLayer`);
- head: spatial mean, dropout, a 1x1x1 conv classifier (with bias) per frame, then the
  temporal mean.

Flow layer (`ReleasedFlowLayer`): a 1x1x1 conv 512 -> 32 (no bias); the features are
rescaled to 255 (x - min) / (min - max), min and max over the *whole batch* (all clips,
channels and frames: a clip's output depends on the other clips of its batch, and the
range is [-255, 0], the sign flipped); the flow between each pair of consecutive frames
by 10 TV-L1 iterations whose every kernel mixes all 32 channels:
- image gradient of the second frame F2 by a learnable (32, 32, 1, 3) / (32, 32, 3, 1)
  kernel, initially the central difference [-0.5, 0, 0.5] for every channel pair, on F2
  zero-padded; the first and last column (row) are replaced by the one-sided difference of
  the *first* frame F1, per channel;
- grad u and the divergence by learnable (32, 32, 2, 1) kernels, initially [[-1], [1]];
  both directions are vertical (`f_grad2 = f_grad`, `div2 = div` at their init, both of
  shape (2, 1)), so the smoothing acts along the height only. grad u is the forward
  difference with 0 on the last row; div p is applied to p shifted down one row (its last
  row dropped, a zero row on top), i.e. a backward difference (the issue calls both
  forward differences);
- 1e-12 added to rho, to |grad F2|^2 and under the square root of Eq. 5; theta, lambda,
  tau (their t, l, a) learnable, initially 0.3, 0.15, 0.25;
- the flow (u_1 of all 32 channels, then u_2) -> 1x1x1 conv 64 -> 512 (no bias), BN
  (default init, gamma 1), added to the input's first T - 1 frames, ReLU.
Their Eq. 3 masks use `mask ^ 1`, which was a logical not on the torch 0.4 they used
(comparisons gave uint8) and is integer arithmetic on current torch (their layer fails
there); the not is what is computed here. The three cases are one clamp,
v = u - grad F2 * clamp(rho / |grad F2|^2, -lambda theta, lambda theta), equal to the masks.

Speed: both flow components go through one tensor (stacked on the batch axis), so each
iteration is two channel-mixing `conv2d` calls (grad u with both kernels, div with both)
instead of their eight, plus elementwise work; the backward is autograd through
`torch.utils.checkpoint` per iteration (only each iteration's input state is kept). The
hand-written backward of `rep_flow.RepresentationFlow` does not apply: its iterations are
per channel.

Input and labels (their demo in `kinetics_2p1d_model.py`): RGB clips scaled to [-1, 1]
(x / 127.5 - 1: the kinetics-i3d sample `v_CricketShot_g04_c01_rgb.npy` it feeds), 224 x
224; class index = line of `data/label_map.txt` (kinetics-i3d's, not shipped in their
repository), the 400 Kinetics names in sorted order, which is vidact's Kinetics order.
Their `kinetics_cls.json` (another, unsorted order) and `1 - 2 x / 255` scaling belong to
their PyTorch data loader for the other (HMDB / flow_2p1d) models.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from types import MappingProxyType
from typing import ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from vidact.errors import VidactError
from vidact.models.registry import DropoutRate, Positive, register_model
from vidact.models.rep_flow import LAMBDA, PIXEL_RANGE, TAU, THETA

# ----------------------------------------------------------------- their numbers
STAGE_DEPTHS = (3, 4, 6, 3)  # resnet_3d_v1(50): res2 .. res5
STAGE_WIDTHS = (64, 128, 256, 512)  # bottleneck widths; outputs are 4x
STAGE_STRIDES = (1, 2, 2, 2)  # spatial only
STEM_BN_EPS = 1e-3  # their bn1
STEM_BN_MOMENTUM = 0.01
FLOW_INPUT = 512  # res3's output channels: FlowLayer(512)
FLOW_CHANNELS = 32  # FlowLayer's bottleneck
ITERATIONS = 10  # FlowLayer's n_iter
IMAGE_GRAD = (-0.5, 0.0, 0.5)  # img_grad / img_grad2 at init (central difference)
DIFFERENCE = (-1.0, 1.0)  # f_grad, f_grad2, div, div2 at init: [[-1], [1]] (vertical)
EPS = 1e-12  # added to rho, to |grad F2|^2 and under Eq. 5's square root
# tau, lambda, theta start at their a, l, t = 0.25, 0.15, 0.3 (the classic TV-L1 values
# that rep_flow.py also starts from).
NUM_CLASSES = 400
# What their demo feeds: RGB in [-1, 1], i.e. the recipe's mean/std on [0, 1] pixels.
INPUT_MEAN = (0.5, 0.5, 0.5)
INPUT_STD = (0.5, 0.5, 0.5)
INPUT_SIZE = 224
CLIP_FRAMES = 32  # the paper's Kinetics input, 32 x 224 x 224 (their demo feeds 79 frames)
CLASS_ORDER = "sorted"  # kinetics-i3d's label_map.txt: the 400 names in sorted order
MIN_FRAMES = 11  # stem (VALID, stride 2) + pool leave ceil(((T - 7) // 2 + 1) / 2) >= 2
MIN_SIZE = 15  # the flow layer needs a 2 x 2 map after res3


def same_pad(x: Tensor, kernel: tuple[int, ...], stride: tuple[int, ...]) -> Tensor:
    """TensorFlow "SAME" zero padding of (N, C, T, H, W) for a conv or pool of `kernel` /
    `stride`: total max(k - s, 0), or max(k - size % s, 0) when s does not divide the
    size; the odd one at the end."""
    pads: list[int] = []
    for size, k, s in zip(reversed(x.shape[2:]), reversed(kernel), reversed(stride), strict=True):
        total = max(k - (s if size % s == 0 else size % s), 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads) if any(pads) else x


class SameConv3d(nn.Conv3d):
    """A bias-free Conv3d with TensorFlow "SAME" padding (their SamePadding + Conv3d)."""

    def __init__(self, cin: int, cout: int, kernel: tuple[int, int, int], stride: int = 1):
        super().__init__(cin, cout, kernel, stride=(1, stride, stride), bias=False)

    def forward(self, x: Tensor) -> Tensor:
        kernel, stride = tuple(self.kernel_size), tuple(self.stride)
        return super().forward(same_pad(x, kernel, stride))


class ReleasedBottleneck(nn.Module):
    """(kt,1,1) conv, BN, ReLU, (1,3,3) conv (stride), BN, ReLU, 1x1x1 conv, BN; plus the
    shortcut (projection: 1x1x1 conv with the stride and two BNs); ReLU of the sum."""

    def __init__(self, cin: int, width: int, stride: int, temporal: int, projection: bool):
        super().__init__()
        out = 4 * width
        self.shortcut: nn.Module | None = None
        if projection:
            self.shortcut = nn.Sequential(
                SameConv3d(cin, out, (1, 1, 1), stride), nn.BatchNorm3d(out), nn.BatchNorm3d(out)
            )
        self.conv1 = SameConv3d(cin, width, (temporal, 1, 1))
        self.bn1 = nn.BatchNorm3d(width)
        self.conv2 = SameConv3d(width, width, (1, 3, 3), stride)
        self.bn2 = nn.BatchNorm3d(width)
        self.conv3 = nn.Conv3d(width, out, 1, bias=False)
        self.bn3 = nn.BatchNorm3d(out)

    def forward(self, x: Tensor) -> Tensor:
        res = x if self.shortcut is None else self.shortcut(x)
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        return F.relu(self.bn3(self.conv3(y)) + res)


def stage_kernels(blocks: int) -> list[int]:
    """Temporal kernel of each block of a stage: 3, 3, then 1, 3, 1, ... (their Block3D)."""
    return [3 if i < 2 or i % 2 == 1 else 1 for i in range(blocks)]


def released_stage(cin: int, width: int, blocks: int, stride: int) -> nn.ModuleList:
    """One res stage: the first block projects and strides, the rest keep the size."""
    layers = [ReleasedBottleneck(cin, width, stride, 3, projection=True)]
    for temporal in stage_kernels(blocks)[1:]:
        layers.append(ReleasedBottleneck(4 * width, width, 1, temporal, projection=False))
    return nn.ModuleList(layers)


# ----------------------------------------------------------------- the flow layer
def flipped_range(x: Tensor) -> Tensor:
    """Their norm_img: 255 (x - min) / (min - max), min and max over the whole tensor."""
    lo, hi = torch.min(x), torch.max(x)
    return PIXEL_RANGE * (x - lo) / (lo - hi)


def image_gradient(f1: Tensor, f2: Tensor, kx: Tensor, ky: Tensor) -> tuple[Tensor, Tensor]:
    """grad F2 (M, k, H, W): channel-mixing kernels on zero-padded F2; the border columns
    (rows) are F1's one-sided differences, per channel (their grad2_x / grad2_y)."""
    gx = F.conv2d(F.pad(f2, (1, 1, 0, 0)), kx)[..., 1:-1]
    left, right = f1[..., 1:2] - f1[..., :1], f1[..., -1:] - f1[..., -2:-1]
    gx = torch.cat([0.5 * left, gx, 0.5 * right], dim=-1)
    gy = F.conv2d(F.pad(f2, (0, 0, 1, 1)), ky)[..., 1:-1, :]
    top, bottom = f1[..., 1:2, :] - f1[..., :1, :], f1[..., -1:, :] - f1[..., -2:-1, :]
    gy = torch.cat([0.5 * top, gy, 0.5 * bottom], dim=-2)
    return gx, gy


class _Terms(NamedTuple):
    """What every iteration reads: rho_c, grad F2 stacked as (2, M, k, H, W), |grad F2|^2
    + eps, lambda theta, theta, tau / theta, and the stacked grad u / div kernels."""

    rho_c: Tensor
    grad_f2: Tensor
    grad_sq: Tensor
    lam_theta: Tensor
    theta: Tensor
    tau_theta: Tensor
    grad_kernel: Tensor  # (2k, k, 2, 1): f_grad then f_grad2
    div_kernel: Tensor  # (k, 2k, 2, 1): div then div2


def _step(u: Tensor, p: Tensor, t: _Terms) -> tuple[Tensor, Tensor]:
    """One iteration. u: (2M, k, H, W), u_1 of every pair then u_2; p: (2M, 2k, H, W), the
    dual fields of each component (their p11 | p12 for u_1, p21 | p22 for u_2)."""
    m = u.shape[0] // 2
    u2 = u.unflatten(0, (2, m))
    rho = t.rho_c + t.grad_f2[0] * u2[0] + t.grad_f2[1] * u2[1] + EPS  # Eq. 2
    shrink = torch.clamp(rho / t.grad_sq, -t.lam_theta, t.lam_theta)  # Eq. 3's three cases
    v = (u2 - t.grad_f2 * shrink).flatten(0, 1)
    div = F.conv2d(F.pad(p[:, :, :-1], (0, 0, 1, 1)), t.div_kernel)  # p shifted down a row
    u = v + t.theta * div  # Eq. 4
    grad_u = F.pad(F.conv2d(u, t.grad_kernel), (0, 0, 0, 1))  # forward difference, last row 0
    k = u.shape[1]
    norm = torch.sqrt(grad_u[:, :k] ** 2 + grad_u[:, k:] ** 2 + EPS)
    den = (1.0 + t.tau_theta * norm).repeat(1, 2, 1, 1)
    return u, (p + t.tau_theta * grad_u) / den  # Eq. 5


class ReleasedFlowLayer(nn.Module):
    """Their FlowLayer(channels) (module docstring): (N, C, T, H, W) -> (N, C, T-1, H, W).

    Parameter names are vidact's (`vidact.models.released` maps theirs): reduce /
    expand / bn = bottleneck / unbottleneck / bn; image_grad_x, image_grad_y = img_grad,
    img_grad2; grad_x, grad_y, div_x, div_y = f_grad, f_grad2, div, div2 (all vertical);
    theta, lam, tau = t, l, a. Everything is learnable, as in their Kinetics model."""

    def __init__(
        self,
        channels: int = FLOW_INPUT,
        flow_channels: int = FLOW_CHANNELS,
        iterations: int = ITERATIONS,
        checkpoint: bool = True,
    ) -> None:
        super().__init__()
        if iterations < 1:
            raise VidactError(f"flow iterations={iterations} must be >= 1")
        k = flow_channels
        self.iterations, self.checkpoint = iterations, checkpoint
        self.reduce = nn.Conv3d(channels, k, 1, bias=False)
        self.expand = nn.Conv3d(2 * k, channels, 1, bias=False)
        self.bn = nn.BatchNorm3d(channels)
        central = torch.tensor(IMAGE_GRAD).repeat(k, k, 1, 1)  # (k, k, 1, 3)
        self.image_grad_x = nn.Parameter(central.clone())
        self.image_grad_y = nn.Parameter(central.transpose(2, 3).clone())
        vertical = torch.tensor(DIFFERENCE).view(2, 1).repeat(k, k, 1, 1)  # (k, k, 2, 1)
        for name in ("grad_x", "grad_y", "div_x", "div_y"):
            self.register_parameter(name, nn.Parameter(vertical.clone()))
        for name, value in (("theta", THETA), ("lam", LAMBDA), ("tau", TAU)):
            self.register_parameter(name, nn.Parameter(torch.tensor([value])))

    image_grad_x: Tensor
    image_grad_y: Tensor
    grad_x: Tensor
    grad_y: Tensor
    div_x: Tensor
    div_y: Tensor
    theta: Tensor
    lam: Tensor
    tau: Tensor

    def extra_repr(self) -> str:
        return f"iterations={self.iterations}, checkpoint={self.checkpoint}"

    def lr_scaled_flow_parameters(self) -> list[nn.Parameter]:
        """What their train_model.py trains at 0.01 x lr (`rep_flow.flow_parameters` finds
        them): the image-gradient and grad u kernels and t, l, a; div and div2 are not in
        their list and keep the base lr."""
        names = ("image_grad_x", "image_grad_y", "grad_x", "grad_y", "theta", "lam", "tau")
        return [getattr(self, name) for name in names]

    def _terms(self, f1: Tensor, f2: Tensor) -> _Terms:
        gx, gy = image_gradient(f1, f2, self.image_grad_x, self.image_grad_y)
        return _Terms(
            rho_c=f2 - f1,
            grad_f2=torch.stack([gx, gy]),
            grad_sq=gx**2 + gy**2 + EPS,
            lam_theta=self.lam * self.theta,
            theta=self.theta,
            tau_theta=self.tau / self.theta,
            grad_kernel=torch.cat([self.grad_x, self.grad_y], 0),
            div_kernel=torch.cat([self.div_x, self.div_y], 1),
        )

    def flow(self, f1: Tensor, f2: Tensor) -> Tensor:
        """The flow of (M, k, H, W) maps F1 -> F2: (M, 2k, H, W), u_1 of the k channels
        then u_2 (their torch.cat([u1, u2], 1))."""
        t = self._terms(f1, f2)
        m = f1.shape[0]
        u = f1.new_zeros(2 * m, *f1.shape[1:])
        p = f1.new_zeros(2 * m, 2 * f1.shape[1], *f1.shape[2:])
        recompute = self.checkpoint and torch.is_grad_enabled()
        for _ in range(self.iterations):
            if recompute:
                u, p = checkpoint(_step, u, p, t, use_reentrant=False)
            else:
                u, p = _step(u, p, t)
        return u.unflatten(0, (2, m)).transpose(0, 1).flatten(1, 2)

    def forward(self, x: Tensor) -> Tensor:
        n, _, t, h, w = x.shape
        if t < 2 or h < 2 or w < 2:
            raise VidactError(
                f"the released flow layer needs at least 2 frames of 2 x 2 features, got "
                f"{t} frames of {h} x {w}; use clips of at least {MIN_FRAMES} frames of "
                f"{MIN_SIZE} x {MIN_SIZE} px"
            )
        r = flipped_range(self.reduce(x))
        k = r.shape[1]
        f1 = r[:, :, :-1].transpose(1, 2).reshape(-1, k, h, w)
        f2 = r[:, :, 1:].transpose(1, 2).reshape(-1, k, h, w)
        flow = self.flow(f1, f2).reshape(n, t - 1, 2 * k, h, w).transpose(1, 2)
        return F.relu(x[:, :, :-1] + self.bn(self.expand(flow)))


# ----------------------------------------------------------------- the network
class ReleasedRepFlowNet(nn.Module):
    """resnet_3d_v1(50, num_classes) with FlowLayer(512) after res3 (module docstring).

    (N, 3, T, H, W) RGB in [-1, 1] -> (N, num_classes). Names: stem, stem_bn, stages.S.B
    (res2..res5 blocks), flow, classify (theirs: stem, bn1, resS.blocks.B, rep_flow,
    classify). `released_input` records what the released weights expect."""

    released_input: ClassVar[Mapping[str, object]] = MappingProxyType({
        "mean": INPUT_MEAN,
        "std": INPUT_STD,
        "size": INPUT_SIZE,
        "frames": CLIP_FRAMES,
        "class_order": CLASS_ORDER,
        "classes": NUM_CLASSES,
    })  # fmt: skip

    def __init__(
        self,
        num_classes: int = NUM_CLASSES,
        dropout: float = 0.5,
        iterations: int = ITERATIONS,
        checkpoint: bool = True,
    ) -> None:
        super().__init__()
        self.stem = nn.Conv3d(3, 64, 7, stride=2, bias=False)  # VALID: no padding
        self.stem_bn = nn.BatchNorm3d(64, eps=STEM_BN_EPS, momentum=STEM_BN_MOMENTUM)
        stages, cin = [], 64
        for width, blocks, stride in zip(STAGE_WIDTHS, STAGE_DEPTHS, STAGE_STRIDES, strict=True):
            stages.append(released_stage(cin, width, blocks, stride))
            cin = 4 * width
        self.stages = nn.ModuleList(stages)
        self.flow = ReleasedFlowLayer(FLOW_INPUT, FLOW_CHANNELS, iterations, checkpoint)
        self.dropout = nn.Dropout(dropout)
        self.classify = nn.Conv3d(cin, num_classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        t, h, w = x.shape[2:]
        if t < MIN_FRAMES or min(h, w) < MIN_SIZE:
            raise VidactError(
                f"repflow_released_r50 needs clips of at least {MIN_FRAMES} frames of "
                f"{MIN_SIZE} x {MIN_SIZE} px (its stem and pool leave too little for the flow "
                f"layer otherwise), got {t} x {h} x {w}; the released weights expect "
                f"{CLIP_FRAMES} x {INPUT_SIZE} x {INPUT_SIZE}"
            )
        x = F.relu(self.stem_bn(self.stem(x)))
        x = F.max_pool3d(same_pad(x, (3, 3, 3), (2, 2, 2)), 3, 2)
        for index, stage in enumerate(self.stages):
            assert isinstance(stage, nn.ModuleList)
            for block in stage:
                x = block(x)
            if index == 1:  # after res3
                x = self.flow(x)
        x = self.dropout(x.mean((3, 4), keepdim=True))  # spatial mean, then dropout
        return self.classify(x).mean(2).flatten(1)  # classifier per frame, temporal mean


@register_model("repflow_released_r50")
def repflow_released(
    *,
    num_classes: Positive,
    num_frames: Positive | None = None,
    dropout: DropoutRate = 0.5,
    weights: str | os.PathLike[str] | None = None,
    iterations: Positive = ITERATIONS,
) -> ReleasedRepFlowNet:
    """The authors' released Kinetics-400 rep-flow network; `weights`: their rep_flow.pt
    (a state dict in their names) or a state dict of this model."""
    from vidact.models.released import load_repflow_weights

    if num_frames is not None and num_frames < MIN_FRAMES:
        raise VidactError(
            f"repflow_released_r50 needs num_frames >= {MIN_FRAMES}, got {num_frames}; "
            f"the released weights expect {CLIP_FRAMES}"
        )
    model = ReleasedRepFlowNet(num_classes, dropout, iterations)
    if weights is not None:
        load_repflow_weights(model, weights)
    return model


__all__ = [
    "ReleasedFlowLayer",
    "ReleasedRepFlowNet",
    "flipped_range",
    "image_gradient",
    "same_pad",
]
