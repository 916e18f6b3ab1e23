"""CT-Net (Li et al., ICLR 2021, section 3.3): a 2D ResNet-50/101 in which some bottlenecks
have their 3x3 convolution replaced by a CT-Module (`vidact.models.ct_module`).

Input (N, C, T, H, W), output (N, num_classes) logits. Frames fold into the batch,
(N*T, C, H, W), as in TSN; the CT-Blocks see T. After the last stage: global average pool,
average consensus over frames, dropout, linear classifier.

A CT-Block keeps the bottleneck's 1x1 convolutions and their BNs (so ImageNet weights load
into them) and drops its 3x3 conv + BN; the CT-Module that takes its place starts from
random weights (section 4). Every parameter trains (appendix A.1: "train the entire
network"), unless `freeze="released"`: the authors' released training freezes every
ImageNet parameter except the CT-Blocks' conv1/bn1/conv3/bn3, i.e. the stem and the
unreplaced bottlenecks (15,063,360 of CT-Net-R50's 20,959,150 parameters); their BN
running statistics still update in train mode.

The head follows the released code: dropout on each frame's features, the classifier per
frame, then the average over frames (the same function as average-then-classify in eval
mode, other dropout noise in training).

Registered: `ctnet_resnet50`, `ctnet_resnet101`. Keyword arguments (all optional):

    num_frames   frames per clip (default 8); used for profiling shapes, any T runs
    dropout      on each frame's features, before the classifier (default 0.5, App. A.1)
    freeze       "none" (default, the paper) or "released" (the authors' code, see above)
    weights      ImageNet weights for the ResNet parts: a torchvision name
                 ("IMAGENET1K_V1", "IMAGENET1K_V2", "DEFAULT") or a local .pth path
    ct_blocks    placement: a preset name of Table 2e ("alternate" = "stage2-5", the
                 default; "stage5", "stage4-5", "stage3-5", "all", "none") or one list of
                 block indices per stage, e.g. [[1], [1, 3], [1, 3, 5], [1]]
    module       "ct" (default), "c3d", "r2plus1d", "csn" (Table 2a / Table 7)
    excitation   "te" (default for "ct"), "se", "none" (default for the other modules)
    pwconv       point-wise conv between sub-operations (default: True for "ct" only)
    connection   "parallel" (default), "serial", "coupled" (Table 2c)
    num_subdims  K (default 2, Table 2b)
    kernel_sizes one kernel size per sub-dimension (default 3, Table 2f)
    te_reduction bottleneck ratio of the tensor excitation (default 4)
    channels_last run the 2D trunk in channels_last memory format (default True: faster
                 on CPU, and the CT-Module's temporal convolutions then need no copies)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn
from torchvision.models.resnet import Bottleneck

from vidact.errors import VidactError
from vidact.models.backbones import resnet2d
from vidact.models.ct_module import (
    CONNECTIONS,
    EXCITATIONS,
    MODULES,
    NUM_SUBDIMS,
    TE_REDUCTION,
    CTModule,
    module_ops,
)
from vidact.models.registry import DropoutRate, Positive, register_model
from vidact.models.released import load_released, split_weights

__all__ = ["CTBottleneck", "CTNet", "ct_block_indices", "ctnet_resnet"]

# ---------------------------------------------------------------------------------------
# Block placement, the number the paper fixes for the network (Fig. 2c, Table 2e): one of
# every two residual blocks of every stage, never the first block of a stage (it has the
# stride and the downsample path). For ResNet-50 (3, 4, 6, 3 blocks) that is blocks 1 /
# 1, 3 / 1, 3, 5 / 1 of stages 2-5: the 7 CT-Blocks of Table 2e; ResNet-101 gets 15.
STAGE_DEPTHS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
# Table 2e's rows, as the first stage (index 0 = stage 2) that gets alternate CT-Blocks.
PLACEMENT_PRESETS = {"stage2-5": 0, "alternate": 0, "stage3-5": 1, "stage4-5": 2, "stage5": 3}
# Which parameters train: all (the paper) or those the authors' released code trains.
FREEZE_CHOICES = ("none", "released")


def ct_block_indices(
    stage_depths: Sequence[int], ct_blocks: str | Sequence[Sequence[int]] = "alternate"
) -> tuple[tuple[int, ...], ...]:
    """The block indices, per stage, that become CT-Blocks (see the module docstring)."""
    if isinstance(ct_blocks, str):
        if ct_blocks == "none":
            return tuple(() for _ in stage_depths)
        if ct_blocks == "all":  # Table 2e '+12': every block without stride/downsample
            return tuple(tuple(range(1, d)) for d in stage_depths)
        if ct_blocks not in PLACEMENT_PRESETS:
            names = ", ".join([*PLACEMENT_PRESETS, "all", "none"])
            raise VidactError(f"ct_blocks: unknown placement {ct_blocks!r}; use one of {names}")
        first = PLACEMENT_PRESETS[ct_blocks]
        return tuple(
            tuple(range(1, d, 2)) if s >= first else () for s, d in enumerate(stage_depths)
        )
    stages = tuple(tuple(int(i) for i in stage) for stage in ct_blocks)
    if len(stages) != len(stage_depths):
        raise VidactError(
            f"ct_blocks: {len(stages)} lists of block indices given, the ResNet has "
            f"{len(stage_depths)} stages; give one list per stage (an empty list for none)"
        )
    for s, (stage, depth) in enumerate(zip(stages, stage_depths, strict=True)):
        for i in stage:
            if not 1 <= i < depth:
                raise VidactError(
                    f"ct_blocks: block {i} of stage {s + 2} cannot be a CT-Block; that stage "
                    f"has blocks 0-{depth - 1} and block 0 has the stride and downsample path"
                )
    return stages


class CTBottleneck(nn.Module):
    """A ResNet bottleneck whose 3x3 conv + BN is replaced by a CT-Module (Fig. 2a/b)."""

    def __init__(self, block: Bottleneck, module: nn.Module):
        super().__init__()
        if block.downsample is not None or block.conv2.stride != (1, 1):
            raise ValueError("a CT-Block cannot replace a block with stride or downsample")
        self.conv1, self.bn1 = block.conv1, block.bn1
        self.ct = module
        self.conv3, self.bn3 = block.conv3, block.bn3
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor, t: int) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn3(self.conv3(self.ct(out, t)))
        return self.relu(out + x)


def _init_module(module: nn.Module) -> None:
    """Random initialisation of a new CT-Module, as torchvision initialises ResNets."""
    for m in module.modules():
        if isinstance(m, nn.Conv1d | nn.Conv2d | nn.Conv3d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def _convs_to_channels_last(model: nn.Module) -> None:
    """`model.to(memory_format=torch.channels_last)` for the 4D weights only (it refuses
    modules that also hold 5D weights, as the 3D-kernel variants do)."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            weight = module.weight
            module.weight = nn.Parameter(
                weight.detach().contiguous(memory_format=torch.channels_last),
                requires_grad=weight.requires_grad,
            )


def _check_options(
    num_classes: int, depth: int, num_frames: int, dropout: float, module: str,
    excitation: str | None, connection: str, num_subdims: int, te_reduction: int,
    kernel_sizes: Sequence[int] | None, freeze: str,
) -> str:  # fmt: skip
    """One line for the first CT-Net option that does not fit; the excitation to use."""
    if freeze not in FREEZE_CHOICES:
        raise VidactError(f"freeze: unknown {freeze!r}; use one of {', '.join(FREEZE_CHOICES)}")
    if depth not in STAGE_DEPTHS:
        raise VidactError(f"CT-Net depth {depth} is not supported; use 50 or 101")
    if module not in MODULES:
        raise VidactError(f"module: unknown {module!r}; use one of {', '.join(MODULES)}")
    excitation = excitation if excitation is not None else ("te" if module == "ct" else "none")
    if excitation not in EXCITATIONS:
        raise VidactError(f"excitation: unknown {excitation!r}; use one of {EXCITATIONS}")
    if connection not in CONNECTIONS:
        raise VidactError(f"connection: unknown {connection!r}; use one of {CONNECTIONS}")
    if num_classes < 1 or num_frames < 1 or not 0.0 <= dropout < 1.0:
        raise VidactError(
            f"CT-Net needs num_classes >= 1, num_frames >= 1 and 0 <= dropout < 1; got "
            f"{num_classes}, {num_frames}, {dropout}"
        )
    if num_subdims < 1 or te_reduction < 1:
        raise VidactError(
            f"num_subdims and te_reduction must be >= 1, got {num_subdims}, {te_reduction}"
        )
    if kernel_sizes is not None and any(k < 1 or k % 2 == 0 for k in kernel_sizes):
        raise VidactError(f"kernel_sizes must be odd and positive, got {list(kernel_sizes)}")
    return excitation


class CTNet(nn.Module):
    """CT-Net on a torchvision ResNet-50/101 trunk (see the module docstring for kwargs)."""

    def __init__(
        self,
        num_classes: int,
        depth: int = 50,
        *,
        num_frames: int = 8,
        dropout: float = 0.5,
        weights: str | os.PathLike[str] | None = None,
        ct_blocks: str | Sequence[Sequence[int]] = "alternate",
        module: str = "ct",
        excitation: str | None = None,
        pwconv: bool | None = None,
        connection: str = "parallel",
        num_subdims: int = NUM_SUBDIMS,
        kernel_sizes: Sequence[int] | None = None,
        te_reduction: int = TE_REDUCTION,
        channels_last: bool = True,
        freeze: str = "none",
    ):
        super().__init__()
        excitation = _check_options(
            num_classes, depth, num_frames, dropout, module, excitation, connection,
            num_subdims, te_reduction, kernel_sizes, freeze,
        )  # fmt: skip
        self.depth, self.num_frames, self.channels_last = depth, num_frames, channels_last
        self.ct_blocks = ct_block_indices(STAGE_DEPTHS[depth], ct_blocks)

        # The ResNet parts, with ImageNet weights if asked (conv2/bn2 of the replaced blocks
        # load too, then are dropped with the block's 3x3 conv).
        trunk_weights, released = split_weights(weights)  # the authors' file: whole net
        trunk = resnet2d(depth, trunk_weights)
        self.stem = nn.Sequential(trunk.conv1, trunk.bn1, trunk.relu, trunk.maxpool)
        stages: list[nn.ModuleList] = []
        for layer, chosen in zip(
            (trunk.layer1, trunk.layer2, trunk.layer3, trunk.layer4), self.ct_blocks, strict=True
        ):
            blocks: list[nn.Module] = list(layer)
            for i in chosen:
                block = blocks[i]
                assert isinstance(block, Bottleneck)
                width = block.conv2.in_channels
                try:
                    ops = module_ops(
                        module, width, connection=connection, num_subdims=num_subdims,
                        kernel_sizes=kernel_sizes,
                    )  # fmt: skip
                    ct = CTModule(
                        width, ops, pwconv=module == "ct" if pwconv is None else pwconv,
                        excitation=excitation, te_reduction=te_reduction,
                    )  # fmt: skip
                except ValueError as exc:  # e.g. 3 kernel sizes for K = 2
                    raise VidactError(f"CT-Net, {width}-channel CT-Module: {exc}") from None
                _init_module(ct)
                blocks[i] = CTBottleneck(block, ct)
            stages.append(nn.ModuleList(blocks))
        self.stages = nn.ModuleList(stages)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(trunk.fc.in_features, num_classes)
        nn.init.normal_(self.fc.weight, std=0.001)
        nn.init.zeros_(self.fc.bias)
        if freeze == "released":
            self.freeze_as_released()
        if channels_last:  # 4D weights too: saves a reorder of every weight on every call
            _convs_to_channels_last(self)
        if released is not None:
            load_released(self, released, weights)

    def freeze_as_released(self) -> None:
        """Freeze the stem and every unreplaced bottleneck, as the authors' code does."""
        self.stem.requires_grad_(False)
        for stage in self.stages:
            assert isinstance(stage, nn.ModuleList)
            for block in stage:
                if not isinstance(block, CTBottleneck):
                    block.requires_grad_(False)

    def ct_modules(self) -> list[CTModule]:
        """The CT-Modules, bottom-up."""
        return [m for m in self.modules() if isinstance(m, CTModule)]

    def features(self, x: Tensor) -> Tensor:
        """(N, C, T, H, W) clips -> (N, T, 2048) per-frame features."""
        if x.dim() != 5:
            raise VidactError(
                f"CT-Net takes clips shaped (N, C, T, H, W); got a tensor of shape {tuple(x.shape)}"
            )
        n, c, t, h, w = x.shape
        if self.channels_last:  # (N, T, H, W, C) in memory is (N*T, C, H, W) channels_last
            x = x.permute(0, 2, 3, 4, 1).contiguous().view(n * t, h, w, c).permute(0, 3, 1, 2)
        else:
            x = x.transpose(1, 2).reshape(n * t, c, h, w)
        x = self.stem(x)
        for stage in self.stages:
            assert isinstance(stage, nn.ModuleList)
            for block in stage:
                x = block(x, t) if isinstance(block, CTBottleneck) else block(x)
        return x.mean((2, 3)).view(n, t, -1)

    def forward(self, x: Tensor) -> Tensor:
        # Per frame, then the average consensus over T, as released (module docstring).
        return self.fc(self.dropout(self.features(x))).mean(1)


@register_model("ctnet_resnet50", depth=50)  # CT-Net-R50: 7 CT-Blocks in stages 2-5 (Table 2e)
@register_model("ctnet_resnet101", depth=101)  # CT-Net-R101: one of every two blocks, 15
def ctnet_resnet(
    depth: int,
    *,
    num_classes: Positive,
    num_frames: Positive | None = None,
    dropout: DropoutRate = 0.5,
    weights: str | os.PathLike[str] | None = None,
    ct_blocks: str | Sequence[Sequence[int]] = "alternate",
    module: str = "ct",
    excitation: str | None = None,
    pwconv: bool | None = None,
    connection: str = "parallel",
    num_subdims: Positive = NUM_SUBDIMS,
    kernel_sizes: Sequence[int] | None = None,
    te_reduction: Positive = TE_REDUCTION,
    channels_last: bool = True,
    freeze: Literal["none", "released"] = "none",
) -> CTNet:
    """CT-Net on a ResNet-50/101 trunk (the options are CTNet's; see the module docstring)."""
    return CTNet(
        num_classes,
        depth,
        num_frames=8 if num_frames is None else num_frames,
        dropout=dropout,
        weights=weights,
        ct_blocks=ct_blocks,
        module=module,
        excitation=excitation,
        pwconv=pwconv,
        connection=connection,
        num_subdims=num_subdims,
        kernel_sizes=kernel_sizes,
        te_reduction=te_reduction,
        channels_last=channels_last,
        freeze=freeze,
    )
