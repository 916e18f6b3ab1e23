"""A small 2D CNN with an optional representation-flow block, sized for a CPU.

This is the quickstart network: four 3x3 conv stages (32, 64, 128, 128 channels; the
first three with stride 2) applied to every frame, the paper's FlowBlock after stage 2
(a quarter of the input resolution, like "after block 2/3" of Table 1 at this size),
global average pooling, dropout and a linear classifier whose per-frame scores are
averaged over time (Fig. 3). At 64x64 it costs about 20M multiply-adds per frame,
a seventh of ResNet-18, so a few epochs on the synthetic motion dataset take a minute or
two on 2 CPU cores.

Registered: `repflow_smallcnn`; `flow=False` removes the flow block, giving the RGB twin
whose accuracy shows what appearance alone can do.
Input (N, 3, T, H, W), output (N, num_classes).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

from torch import Tensor, nn

from vidact.errors import VidactError
from vidact.models.backbones import load_weights
from vidact.models.baselines import FrameClassifier
from vidact.models.registry import DropoutRate, Positive, register_model
from vidact.models.rep_flow import LEARN_DEFAULT, FlowBlock

WIDTHS = (32, 64, 128, 128)
STRIDES = (2, 2, 2, 1)
FLOW_AFTER_STAGE = 2


def _stage(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class SmallFlowCNN(nn.Module):
    """Per-frame small CNN; `flow=True` inserts a FlowBlock after stage 2, `flow=False`
    gives the same network without it (RGB appearance only)."""

    def __init__(
        self,
        num_classes: int,
        flow: bool = True,
        iterations: int = 10,
        flow_channels: int = 16,
        learn: str | Iterable[str] = LEARN_DEFAULT,
        dropout: float = 0.2,
        num_frames: int | None = None,
    ) -> None:
        super().__init__()
        if flow and num_frames is not None and num_frames < 2:
            raise VidactError("the flow block needs clips of at least 2 frames (data.num_frames)")
        widths = (3, *WIDTHS)
        self.stages = nn.ModuleList(
            _stage(widths[i], widths[i + 1], STRIDES[i]) for i in range(len(WIDTHS))
        )
        self.flow = (
            FlowBlock(
                WIDTHS[FLOW_AFTER_STAGE - 1],
                flow_channels,
                iterations=iterations,
                learn=learn,
                # a random trunk has nothing to preserve; a silent start (gamma = 0) left
                # the quickstart test at 33% after 3 epochs (21 steps) against 75% needed
                zero_init=False,
            )
            if flow
            else None
        )
        self.head = FrameClassifier(WIDTHS[-1], num_classes, dropout)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 5:
            raise VidactError(f"video models take (N, C, T, H, W) input, got {tuple(x.shape)}")
        n, c, t, h, w = x.shape
        y = x.transpose(1, 2).reshape(n * t, c, h, w)
        for index, stage in enumerate(self.stages, start=1):
            y = stage(y)
            if index == FLOW_AFTER_STAGE and self.flow is not None:
                video = y.reshape(n, t, *y.shape[1:]).transpose(1, 2)
                video = self.flow(video)  # (N, C, T - 1, h, w): frame t holds flow t -> t+1
                t = video.shape[2]
                y = video.transpose(1, 2).reshape(n * t, *video.shape[1:2], *video.shape[3:])
        features = y.mean((2, 3))  # (N * T', C)
        return self.head(features, t)


@register_model("repflow_smallcnn")
def repflow_smallcnn(
    *,
    num_classes: Positive,
    num_frames: Positive | None = None,
    dropout: DropoutRate = 0.2,
    weights: str | os.PathLike[str] | None = None,
    flow: bool = True,
    iterations: Positive = 10,
    flow_channels: Positive = 16,
    learn: str | Sequence[str] = LEARN_DEFAULT,
) -> SmallFlowCNN:
    """The quickstart CNN (``flow=False``: its RGB twin); ``weights``: a local .pth."""
    model = SmallFlowCNN(
        num_classes,
        flow=flow,
        iterations=iterations,
        flow_channels=flow_channels,
        learn=learn,
        dropout=dropout,
        num_frames=num_frames,
    )
    load_weights(model, weights, ignore_prefixes=())
    return model
