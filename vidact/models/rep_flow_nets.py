"""Representation-flow networks (rep-flow paper, Fig. 3, section 4, appendix A).

``RepFlowResNet`` is a torchvision ResNet (2D per frame, or (2+1)D / 3D inflated from 2D,
see ``backbones``) with flow blocks inserted after one stage. Input (N, 3, T, H, W) float,
output (N, num_classes) logits: per-frame (per time step) scores averaged over time.

Flow positions (Table 1). The paper's "block k" counts ResNet stages as He et al.'s
conv1..conv5_x, so block 3 is the 28x28 map at 224 px input, as the paper states:

====================  ==============================================  ===============
position              after                                           size at 224 px
====================  ==============================================  ===============
"input"               the RGB frames                                  224
"conv1"               conv1 + BN + ReLU                               112
"block1"              the stem max-pool                               56
"block2"              layer1                                          56
"block3" (default)    layer2                                          28
"block4"              layer3                                          14
"block5"              layer4                                          7
====================  ==============================================  ===============

``flow`` (Table 5): "flow" (one flow block), "fof" (two flow layers with no conv between:
flow-of-flow), "fcf" (flow block, flow block: flow-conv-flow, Fig. 6), "fcfcf", or "none"
(the plain RGB network). Each flow layer consumes one frame: T frames give T - 1 ("flow",
"fof" T - 2, "fcf" T - 2, "fcfcf" T - 3) frames to average over.

``fusion`` (Table 4, Fig. 4): "add" (the residual flow block: default), "none", "multiply",
"concat", "layer_multiply" (how the flow feature merges with the features it was computed
from, see ``FlowBlock``) or "late" (a separate RGB network of the same kind, logits
averaged with the flow network built with merge "none", Fig. 4b).

The networks use the paper's unnormalised Sobel kernels (flow in 1/8 pixel units) unless
``normalize_sobel=True``. ``non_local=True`` adds a non-local block after block 4 (Table 9).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable

from torch import Tensor, nn

from vidact.errors import VidactError
from vidact.models import register_model
from vidact.models.backbones import NonLocalBlock, resnet2d, resnet3d, stage_channels
from vidact.models.baselines import FrameClassifier
from vidact.models.rep_flow import FLOW_CHANNELS, ITERATIONS, LEARN_DEFAULT, FlowBlock

POSITIONS = ("input", "conv1", "block1", "block2", "block3", "block4", "block5")
FLOWS = {"none": 0, "flow": 1, "fof": 1, "fcf": 2, "fcfcf": 3}  # number of flow blocks
FUSIONS = ("add", "none", "multiply", "concat", "layer_multiply", "late")
ARCHS = ("2d", "2plus1d", "3d")
DEFAULT_POSITION = "block3"  # Table 1 (best), used for all later experiments
DEFAULT_DROPOUT = 0.5  # appendix A: 0.5 for Kinetics (0.8 for HMDB)


def _position(position: str | int) -> str:
    if isinstance(position, int) and 1 <= position <= 5:
        return f"block{position}"
    if position == "rgb":
        return "input"
    if position not in POSITIONS:
        raise VidactError(f"flow position {position!r} must be one of {POSITIONS} or 1..5")
    return str(position)


class RepFlowResNet(nn.Module):
    """A ResNet with representation-flow blocks; see the module docstring for the options."""

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
        learn: str | Iterable[str] = LEARN_DEFAULT,
        normalize_sobel: bool = False,
        non_local: bool = False,
        dropout: float = DEFAULT_DROPOUT,
        weights: str | os.PathLike[str] | None = None,
        num_frames: int | None = None,
    ) -> None:
        super().__init__()
        if arch not in ARCHS:
            raise VidactError(f"model arch {arch!r} must be one of {ARCHS}")
        if flow not in FLOWS:
            raise VidactError(f"model flow {flow!r} must be one of {tuple(FLOWS)}")
        if fusion not in FUSIONS:
            raise VidactError(f"model fusion {fusion!r} must be one of {FUSIONS}")
        self.arch = arch
        self.position = _position(position)
        self.frames_used = FLOWS[flow] + (flow == "fof")  # frames lost to the flow layers
        if num_frames is not None and num_frames <= self.frames_used:
            raise VidactError(
                f"num_frames={num_frames} is too short for flow={flow!r}: it needs at least "
                f"{self.frames_used + 1} frames"
            )
        net = resnet2d(depth, weights) if arch == "2d" else resnet3d(depth, weights, arch)  # type: ignore[arg-type]
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu)
        self.maxpool = net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = (
            net.layer1,
            net.layer2,
            net.layer3,
            net.layer4,
        )
        chans = stage_channels(net)
        in_ch = {
            "input": 3,
            "conv1": chans["conv1"],
            "block1": chans["maxpool"],
            "block2": chans["layer1"],
            "block3": chans["layer2"],
            "block4": chans["layer3"],
            "block5": chans["layer4"],
        }[self.position]
        merge = "none" if fusion == "late" else fusion
        blocks: list[nn.Module] = []
        if flow == "fof":
            blocks.append(
                FlowBlock(
                    in_ch,
                    flow_channels,
                    stacked=2,
                    merge=merge,
                    iterations=iterations,
                    learn=learn,
                    normalize_sobel=normalize_sobel,
                )
            )
        else:
            blocks.extend(
                FlowBlock(
                    in_ch,
                    flow_channels,
                    merge=merge,
                    iterations=iterations,
                    learn=learn,
                    normalize_sobel=normalize_sobel,
                )
                for _ in range(FLOWS[flow])
            )
        self.flow = nn.Sequential(*blocks)
        self.non_local = NonLocalBlock(chans["layer3"]) if non_local else None
        self.head = FrameClassifier(chans["layer4"], num_classes, dropout)
        self.rgb: RepFlowResNet | None = None
        if fusion == "late":  # Fig. 4b: a separate RGB network, predictions averaged
            self.rgb = RepFlowResNet(
                depth,
                num_classes,
                arch=arch,
                flow="none",
                fusion="none",
                non_local=non_local,
                dropout=dropout,
                weights=weights,
            )

    def _run(self, stage: nn.Module, x: Tensor) -> Tensor:
        if self.arch != "2d":
            return stage(x)
        n, c, t, h, w = x.shape
        y = stage(x.transpose(1, 2).reshape(n * t, c, h, w))
        return y.reshape(n, t, *y.shape[1:]).transpose(1, 2)

    def features(self, x: Tensor) -> Tensor:
        """(N, 3, T, H, W) -> (N, C, T', h, w) after layer4."""
        if x.dim() != 5:
            raise VidactError(f"video models take (N, C, T, H, W) input, got {tuple(x.shape)}")
        if x.shape[2] <= self.frames_used:
            raise VidactError(
                f"clip of {x.shape[2]} frames is too short for this model's flow layers; it "
                f"needs at least {self.frames_used + 1}"
            )
        stages = (
            ("conv1", self.stem),
            ("block1", self.maxpool),
            ("block2", self.layer1),
            ("block3", self.layer2),
            ("block4", self.layer3),
            ("block5", self.layer4),
        )
        if self.position == "input":
            x = self.flow(x)
        for name, stage in stages:
            x = self._run(stage, x)
            if name == self.position:
                x = self.flow(x)
            if name == "block4" and self.non_local is not None:
                x = self.non_local(x)
        return x

    def forward(self, x: Tensor) -> Tensor:
        f = self.features(x).mean((3, 4))  # (N, C, T')
        logits = self.head(f.transpose(1, 2).reshape(-1, f.shape[1]), f.shape[2])
        if self.rgb is not None:
            logits = (logits + self.rgb(x)) / 2
        return logits


def _factory(name: str, depth: int, arch: str, flow: str, doc: str) -> Callable[..., RepFlowResNet]:
    def factory(num_classes: int, **kwargs: object) -> RepFlowResNet:
        kwargs.setdefault("flow", flow)
        return RepFlowResNet(depth, num_classes, arch=arch, **kwargs)  # type: ignore[arg-type]

    factory.__name__ = name
    factory.__doc__ = doc
    return factory


_MODELS = {
    # 2D ResNets (Tables 1-5, Table 9 "2D CNN + Rep. Flow" / "+ FcF")
    **{
        f"repflow_resnet{d}": (d, "2d", "flow", f"2D ResNet-{d} + one flow block (Table 1/9)")
        for d in (18, 34, 50)
    },
    **{
        f"repflow_fcf_resnet{d}": (d, "2d", "fcf", f"2D ResNet-{d} + flow-conv-flow (Table 5/9)")
        for d in (18, 34, 50)
    },
    # (2+1)D and 3D ResNet-18 (Tables 6, 7, 9)
    "repflow_r2plus1d_18": (18, "2plus1d", "flow", "(2+1)D ResNet-18 + flow block (Table 7)"),
    "repflow_fcf_r2plus1d_18": (18, "2plus1d", "fcf", "(2+1)D ResNet-18 + FcF (Table 9)"),
    "repflow_r3d_18": (18, "3d", "flow", "I3D-inflated 3D ResNet-18 + flow block (Table 6)"),
    # the RGB rows of Tables 6 and 7
    "rgb_r2plus1d_18": (18, "2plus1d", "none", "(2+1)D ResNet-18, RGB only (Table 7)"),
    "rgb_r3d_18": (18, "3d", "none", "I3D-inflated 3D ResNet-18, RGB only (Table 6)"),
}
for _name, (_depth, _arch, _flow, _doc) in _MODELS.items():
    register_model(_name)(_factory(_name, _depth, _arch, _flow, _doc))


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (learnable or not) of ``model``."""
    return sum(p.numel() for p in model.parameters())


__all__ = ["POSITIONS", "RepFlowResNet", "count_parameters"]
