"""The baselines of the papers: TSN RGB 2D CNNs, a TV-L1 flow CNN, two-stream late fusion.

Registered names (all take ``num_classes``, ``dropout``, ``weights``, ``num_frames``):

- ``tsn_resnet18/34/50/101``: per-frame ResNet on (N, 3, T, H, W); the T frame scores are
  averaged (TSN's average consensus, Wang et al. ECCV 2016).
- ``flow_resnet34``: input (N, 2, T, H, W) of TV-L1 flow (x, y). Each group of ``stack``
  (L, default 10) consecutive flow frames is stacked into 2L channels, interleaved
  x0, y0, x1, y1, ... as mmaction2 does; T must be a multiple of L and the T / L segment
  scores are averaged. The first conv is adapted by averaging the RGB filters over their
  three input channels and repeating the mean 2L times (TSN's cross-modality init).
- ``two_stream_resnet34``: the two above, late fusion by averaging their logits (weights
  ``fusion_weights``). Input (N, 5, T, H, W): channels 0-2 RGB, 3-4 the flow of frame t to
  t+1; or call ``model(rgb, flow)`` with two tensors.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor, nn

from vidact.errors import VidactError
from vidact.models.backbones import fold_time, resnet2d
from vidact.models.registry import DropoutRate, Positive, register_model
from vidact.models.released import load_released, split_weights


class FrameClassifier(nn.Module):
    """Dropout + linear over per-frame features (N*T, D), averaged over T -> (N, K)."""

    def __init__(self, in_features: int, num_classes: int, dropout: float = 0.5) -> None:
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise VidactError(f"model dropout {dropout} must be in [0, 1)")
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(in_features, num_classes)

    def forward(self, features: Tensor, num_frames: int) -> Tensor:
        logits = self.fc(self.dropout(features))
        return logits.reshape(-1, num_frames, logits.shape[-1]).mean(1)


class TSN(nn.Module):
    """RGB 2D ResNet applied to every frame, frame scores averaged (TSN consensus); the
    classifier starts from N(0, 0.001) with zero bias (TSN's init)."""

    def __init__(
        self,
        depth: int,
        num_classes: int,
        dropout: float = 0.5,
        weights: str | os.PathLike[str] | None = None,
    ) -> None:
        super().__init__()
        trunk_weights, released = split_weights(weights)  # the authors' TSN file: whole net
        self.backbone = resnet2d(depth, trunk_weights)
        features = self.backbone.fc.in_features
        self.backbone.fc = nn.Identity()
        self.head = FrameClassifier(features, num_classes, dropout)
        # N(0, 0.001) and zero bias, as TSN's code and the CT-Net authors' TSN initialise it.
        nn.init.normal_(self.head.fc.weight, std=0.001)
        nn.init.zeros_(self.head.fc.bias)
        if released is not None:
            load_released(self, released, weights)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.backbone(fold_time(x)), x.shape[2])


class FlowResNet(nn.Module):
    """A 2D ResNet on stacks of L TV-L1 flow frames (2L channels), segment scores averaged."""

    def __init__(
        self,
        depth: int,
        num_classes: int,
        stack: int = 10,
        dropout: float = 0.5,
        weights: str | os.PathLike[str] | None = None,
    ) -> None:
        super().__init__()
        if stack < 1:
            raise VidactError(f"flow model stack {stack} must be >= 1")
        self.stack = stack
        self.backbone = resnet2d(depth, weights)
        rgb = self.backbone.conv1
        conv = nn.Conv2d(2 * stack, rgb.out_channels, 7, stride=2, padding=3, bias=False)
        with torch.no_grad():  # cross-modality init: mean of the RGB filters, repeated 2L times
            conv.weight.copy_(rgb.weight.mean(1, keepdim=True).expand_as(conv.weight))
        self.backbone.conv1 = conv
        features = self.backbone.fc.in_features
        self.backbone.fc = nn.Identity()
        self.head = FrameClassifier(features, num_classes, dropout)

    def forward(self, x: Tensor) -> Tensor:
        n, c, t, h, w = x.shape
        if c != 2 or t % self.stack:
            raise VidactError(
                f"flow model input must be (N, 2, T, H, W) with T a multiple of stack="
                f"{self.stack}; got {tuple(x.shape)}: set the clip length or the model's stack"
            )
        segments = t // self.stack
        stacked = (
            x.reshape(n, 2, segments, self.stack, h, w)
            .permute(0, 2, 3, 1, 4, 5)  # N, S, L, 2, H, W -> channels x0, y0, x1, y1, ...
            .reshape(n * segments, 2 * self.stack, h, w)
        )
        return self.head(self.backbone(stacked), segments)


class TwoStream(nn.Module):
    """Late fusion of an RGB TSN and a flow CNN: weighted average of their logits."""

    def __init__(
        self, rgb: nn.Module, flow: nn.Module, fusion_weights: tuple[float, float] = (1.0, 1.0)
    ) -> None:
        super().__init__()
        self.rgb = rgb
        self.flow = flow
        total = sum(fusion_weights)
        self.fusion_weights = (fusion_weights[0] / total, fusion_weights[1] / total)

    def forward(self, x: Tensor, flow: Tensor | None = None) -> Tensor:
        if flow is None:
            if x.shape[1] != 5:
                raise VidactError(
                    f"two-stream input must be (N, 5, T, H, W) (RGB + 2 flow channels) or "
                    f"two tensors; got {tuple(x.shape)}"
                )
            x, flow = x[:, :3], x[:, 3:]
        a, b = self.fusion_weights
        return a * self.rgb(x) + b * self.flow(flow)


@register_model("tsn_resnet18", depth=18)
@register_model("tsn_resnet34", depth=34)
@register_model("tsn_resnet50", depth=50)
@register_model("tsn_resnet101", depth=101)
def tsn_resnet(
    depth: int,
    *,
    num_classes: Positive,
    num_frames: Positive | None = None,
    dropout: DropoutRate = 0.5,
    weights: str | os.PathLike[str] | None = None,
) -> TSN:
    """TSN-style RGB ResNet: per-frame scores averaged over T."""
    del num_frames  # any T works: scores are averaged over frames
    return TSN(depth, num_classes, dropout=dropout, weights=weights)


@register_model("flow_resnet34")
def flow_resnet34(
    *,
    num_classes: Positive,
    num_frames: Positive | None = None,
    dropout: DropoutRate = 0.5,
    weights: str | os.PathLike[str] | None = None,
    stack: Positive = 10,
) -> FlowResNet:
    """ResNet-34 on 2L stacked TV-L1 flow channels (two-stream temporal net, Simonyan 2014)."""
    if num_frames is not None and num_frames % stack:
        raise VidactError(
            f"flow_resnet34: num_frames={num_frames} is not a multiple of stack={stack}"
        )
    return FlowResNet(34, num_classes, stack=stack, dropout=dropout, weights=weights)


@register_model("two_stream_resnet34")
def two_stream_resnet34(
    *,
    num_classes: Positive,
    num_frames: Positive | None = None,
    dropout: DropoutRate = 0.5,
    weights: str | os.PathLike[str] | None = None,
    stack: Positive = 10,
    flow_weights: str | os.PathLike[str] | None = None,
    fusion_weights: tuple[float, float] = (1.0, 1.0),
) -> TwoStream:
    """RGB TSN ResNet-34 + flow ResNet-34, late fusion. ``weights`` initialise both streams
    unless ``flow_weights`` is given for the flow stream."""
    rgb = TSN(34, num_classes, dropout=dropout, weights=weights)
    flow = flow_resnet34(
        num_classes=num_classes,
        dropout=dropout,
        weights=flow_weights if flow_weights is not None else weights,
        num_frames=num_frames,
        stack=stack,
    )
    return TwoStream(rgb, flow, fusion_weights)


__all__ = ["TSN", "FlowResNet", "FrameClassifier", "TwoStream"]
