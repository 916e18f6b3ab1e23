"""Representation-flow networks (rep-flow paper, Fig. 3, Fig. 6, section 4, appendix A).

``RepFlowResNet`` is a torchvision ResNet with a flow block inserted after one stage:
``arch="2d"`` a 2D ResNet-18/34/50 applied to every frame; ``"r2plus1d"`` / ``"r3d"``
torchvision's video ResNets (R(2+1)D and R3D of Tran et al. 2018, see
``backbones.video_resnet``), whose module names and shapes it keeps, so a state dict of
torchvision's ``r2plus1d_18`` / ``r3d_18`` loads into it key for key (the flow block's keys
are its own, under ``flow.``). Input (N, 3, T, H, W) float, output (N, num_classes) logits:
per-frame (per time step) scores averaged over time, which equals torchvision's pooled
head on the same features.

Flow positions (Table 1). The paper's "block k" counts ResNet stages as He et al.'s
conv1..conv5_x, so block 3 is the 28x28 map at 224 px input, as the paper states:

====================  ==============================================  ===============
position              after                                           size at 224 px
====================  ==============================================  ===============
"input"               the RGB frames                                  224
"conv1"               conv1 + BN + ReLU (video: the stem)             112
"block1"              the stem max-pool (video: the stem, no pool)    56 (video 112)
"block2"              layer1                                          56 (video 112)
"block3" (default)    layer2                                          28 (video 56)
"block4"              layer3                                          14 (video 28)
"block5"              layer4                                          7 (video 14)
====================  ==============================================  ===============

The video ResNets halve time in layer2, layer3 and layer4 (stride 2), so T input frames
are ceil(T / 2) frames after layer2 (block 3).

``flow`` (Table 5, Fig. 6): "flow" (one flow layer), "fof" (two flow layers back to
back: flow-of-flow), "fcf" (flow -> conv -> flow, Fig. 6), "fcfcf", or "none" (the plain
RGB network). All are one ``FlowBlock`` with one BN and one merge at the end. Each flow
layer consumes one frame: "flow" leaves T - 1 frames, "fof" and "fcf" T - 2, "fcfcf" T - 3.

``fusion`` (Table 4, Fig. 4): "add" (the residual flow block: default; it starts as the
identity), "none", "multiply", "concat", "layer_multiply" (how the flow feature merges with
the features it was computed from, see ``FlowBlock``) or "late" (a separate RGB network of
the same kind, logits averaged with the flow network built with merge "none", Fig. 4b).

The networks use the flow layer's units, pixels (Sobel / 8), unless ``normalize_sobel=False``
(the printed kernels: flow in 1/8 px).
``non_local=True`` adds a non-local block after block 4 (Table 9).
"""

from __future__ import annotations

import functools
import math
import os
import typing
from collections.abc import Callable, Sequence
from typing import Annotated, Final, Literal

import torchvision
from pydantic import Field
from torch import Tensor, nn

from vidact.errors import VidactError
from vidact.models.backbones import (
    NonLocalBlock,
    fold_time,
    resnet2d,
    stage_channels,
    unfold_time,
    video_resnet,
)
from vidact.models.registry import DropoutRate, Positive, register_model
from vidact.models.rep_flow import FLOW_CHANNELS, ITERATIONS, LEARN_DEFAULT, FlowBlock

FlowKind = Literal["none", "flow", "fof", "fcf", "fcfcf"]
Fusion = Literal["add", "none", "multiply", "concat", "layer_multiply", "late"]
Arch = Literal["2d", "r2plus1d", "r3d"]
PositionName = Literal["input", "conv1", "block1", "block2", "block3", "block4", "block5", "rgb"]
Position = PositionName | Annotated[int, Field(ge=1, le=5)]

POSITIONS = ("input", "conv1", "block1", "block2", "block3", "block4", "block5")
FLOW_LAYERS = {"none": 0, "flow": 1, "fof": 2, "fcf": 2, "fcfcf": 3}  # flow layers per kind
FUSIONS = typing.get_args(Fusion)
ARCHS = typing.get_args(Arch)
DEFAULT_POSITION: Final = "block3"  # Table 1 (best), used for all later experiments
DEFAULT_DROPOUT = 0.5  # appendix A: 0.5 for Kinetics (0.8 for HMDB)
# torchvision's video ResNets halve time in layer2-4: frames after a position are
# ceil(T / TIME_STRIDE[position]) of T input frames.
TIME_STRIDE = {"block3": 2, "block4": 4, "block5": 8}


def _position(position: str | int) -> str:
    if isinstance(position, int) and 1 <= position <= 5:
        return f"block{position}"
    if position == "rgb":
        return "input"
    if position not in POSITIONS:
        raise VidactError(f"flow position {position!r} must be one of {POSITIONS} or 1..5")
    return str(position)


class RepFlowResNet(nn.Module):
    """A ResNet with a representation-flow block; see the module docstring for the options."""

    def __init__(
        self,
        depth: int,
        num_classes: int,
        arch: str = "2d",
        position: str | int = DEFAULT_POSITION,
        flow: str = "flow",
        fusion: str = "add",
        iterations: int = ITERATIONS,
        flow_channels: int = FLOW_CHANNELS,
        learn: str | Sequence[str] = LEARN_DEFAULT,
        normalize_sobel: bool = True,
        non_local: bool = False,
        dropout: float = DEFAULT_DROPOUT,
        weights: str | os.PathLike[str] | None = None,
        num_frames: int | None = None,
    ) -> None:
        super().__init__()
        _check_choices(arch, flow, fusion)
        self.arch = arch
        self.position = _position(position)
        self.frames_used = FLOW_LAYERS[flow]  # frames lost to the flow layers
        self._check_frames(num_frames)
        trunk = resnet2d(depth, weights) if arch == "2d" else video_resnet(arch, depth, weights)  # type: ignore[arg-type]
        if isinstance(trunk, torchvision.models.ResNet):
            self.conv1, self.bn1, self.relu, self.maxpool = (
                trunk.conv1,
                trunk.bn1,
                trunk.relu,
                trunk.maxpool,
            )
        else:
            self.stem = trunk.stem
        self.layer1, self.layer2, self.layer3, self.layer4 = (
            trunk.layer1,
            trunk.layer2,
            trunk.layer3,
            trunk.layer4,
        )
        chans = stage_channels(trunk)
        self.flow = _flow_block(
            _channels_at(self.position, chans),
            flow,
            merge="none" if fusion == "late" else fusion,
            flow_channels=flow_channels,
            iterations=iterations,
            learn=learn,
            normalize_sobel=normalize_sobel,
        )
        self.non_local = NonLocalBlock(chans["layer3"]) if non_local else None
        self.dropout = nn.Dropout(dropout)
        # torchvision's head, applied per frame; loaded weights keep theirs if it fits
        fits = trunk.fc.out_features == num_classes
        self.fc = trunk.fc if fits else nn.Linear(chans["layer4"], num_classes)
        self.rgb: RepFlowResNet | None = None
        if fusion == "late":  # Fig. 4b: a separate RGB network, predictions averaged
            self.rgb = RepFlowResNet(
                depth, num_classes, arch, flow="none", fusion="none", non_local=non_local,
                dropout=dropout, weights=weights,
            )  # fmt: skip

    def _check_frames(self, num_frames: int | None) -> None:
        """A clear error at build time when clips are too short for the flow layers."""
        if num_frames is None or self.frames_used == 0:
            return
        stride = TIME_STRIDE.get(self.position, 1) if self.arch != "2d" else 1
        if math.ceil(num_frames / stride) <= self.frames_used:
            need = self.frames_used * stride + 1
            raise VidactError(
                f"num_frames={num_frames} is too short for this model's flow layers at "
                f"{self.position}: it needs at least {need} frames"
            )

    def _stages(self) -> list[tuple[str, Callable[[Tensor], Tensor]]]:
        """(position after it, stage) in order; 2D stages run on every frame."""
        if self.arch != "2d":
            return [
                ("conv1", self.stem),
                ("block2", self.layer1),
                ("block3", self.layer2),
                ("block4", self.layer3),
                ("block5", self.layer4),
            ]
        stem = nn.Sequential(self.conv1, self.bn1, self.relu)
        stages = (stem, self.maxpool, self.layer1, self.layer2, self.layer3, self.layer4)
        return [
            (name, functools.partial(_per_frame, stage))
            for name, stage in zip(POSITIONS[1:], stages, strict=True)
        ]

    def features(self, x: Tensor) -> Tensor:
        """(N, 3, T, H, W) -> (N, C, T', h, w) after layer4."""
        if x.dim() != 5:
            raise VidactError(f"video models take (N, C, T, H, W) input, got {tuple(x.shape)}")
        video_block1 = self.arch != "2d" and self.position == "block1"
        at = "conv1" if video_block1 else self.position  # the video stem has no max-pool
        if at == "input" and self.flow is not None:
            x = self._flow(x)
        for name, stage in self._stages():
            x = stage(x)
            if name == at and self.flow is not None:
                x = self._flow(x)
            if name == "block4" and self.non_local is not None:
                x = self.non_local(x)
        return x

    def _flow(self, x: Tensor) -> Tensor:
        assert self.flow is not None
        if x.shape[2] <= self.frames_used:
            raise VidactError(
                f"a clip of {x.shape[2]} frames at {self.position} is too short for this "
                f"model's flow layers; it needs at least {self.frames_used + 1} there (use "
                "longer clips)"
            )
        return self.flow(x)

    def forward(self, x: Tensor) -> Tensor:
        f = self.features(x).mean((3, 4)).transpose(1, 2)  # (N, T', C)
        logits = self.fc(self.dropout(f)).mean(1)  # per-frame scores averaged over time
        if self.rgb is not None:
            logits = (logits + self.rgb(x)) / 2
        return logits


def _per_frame(stage: nn.Module, x: Tensor) -> Tensor:
    return unfold_time(stage(fold_time(x)), x.shape[2])


def _check_choices(arch: str, flow: str, fusion: str) -> None:
    if arch not in ARCHS:
        raise VidactError(f"model arch {arch!r} must be one of {ARCHS}")
    if flow not in FLOW_LAYERS:
        raise VidactError(f"model flow {flow!r} must be one of {tuple(FLOW_LAYERS)}")
    if fusion not in FUSIONS:
        raise VidactError(f"model fusion {fusion!r} must be one of {FUSIONS}")


def _channels_at(position: str, chans: dict[str, int]) -> int:
    if position == "input":
        return 3
    stage = {"conv1": "conv1", "block1": "maxpool", "block2": "layer1", "block3": "layer2"}
    return chans[stage.get(position) or f"layer{int(position[-1]) - 1}"]


def _flow_block(in_channels: int, flow: str, **kwargs: object) -> FlowBlock | None:
    """One FlowBlock for ``flow`` (Table 5): FoF back to back, FcF/FcFcF a conv between."""
    if flow == "none":
        return None
    stacked = FLOW_LAYERS[flow]
    return FlowBlock(in_channels, stacked=stacked, conv_between=flow.startswith("fc"), **kwargs)  # type: ignore[arg-type]


# Table 1-5, 9: 2D ResNets; Tables 6, 7, 9: (2+1)D and 3D; rgb_*: their RGB rows.
@register_model("repflow_resnet18", depth=18, arch="2d")
@register_model("repflow_resnet34", depth=34, arch="2d")
@register_model("repflow_resnet50", depth=50, arch="2d")
@register_model("repflow_fcf_resnet18", depth=18, arch="2d", flow="fcf")
@register_model("repflow_fcf_resnet34", depth=34, arch="2d", flow="fcf")
@register_model("repflow_fcf_resnet50", depth=50, arch="2d", flow="fcf")
@register_model("repflow_r2plus1d_18", depth=18, arch="r2plus1d")
@register_model("repflow_fcf_r2plus1d_18", depth=18, arch="r2plus1d", flow="fcf")
@register_model("rgb_r2plus1d_18", depth=18, arch="r2plus1d", flow="none")
@register_model("repflow_r2plus1d_50", depth=50, arch="r2plus1d")
@register_model("repflow_fcf_r2plus1d_50", depth=50, arch="r2plus1d", flow="fcf")
@register_model("rgb_r2plus1d_50", depth=50, arch="r2plus1d", flow="none")
@register_model("repflow_r3d_18", depth=18, arch="r3d")
@register_model("rgb_r3d_18", depth=18, arch="r3d", flow="none")
def repflow_resnet(
    depth: int,
    arch: Arch,
    *,
    num_classes: Positive,
    num_frames: Positive | None = None,
    dropout: DropoutRate = DEFAULT_DROPOUT,
    weights: str | os.PathLike[str] | None = None,
    flow: FlowKind = "flow",
    position: Position = DEFAULT_POSITION,
    fusion: Fusion = "add",
    iterations: Positive = ITERATIONS,
    flow_channels: Positive = FLOW_CHANNELS,
    learn: str | Sequence[str] = LEARN_DEFAULT,
    normalize_sobel: bool = True,
    non_local: bool = False,
) -> RepFlowResNet:
    """A ResNet (2D, R(2+1)D or R3D) with a representation-flow block (see the module)."""
    return RepFlowResNet(
        depth, num_classes, arch, position=position, flow=flow, fusion=fusion,
        iterations=iterations, flow_channels=flow_channels, learn=learn,
        normalize_sobel=normalize_sobel, non_local=non_local, dropout=dropout,
        weights=weights, num_frames=num_frames,
    )  # fmt: skip


__all__ = ["ARCHS", "POSITIONS", "RepFlowResNet", "repflow_resnet"]
