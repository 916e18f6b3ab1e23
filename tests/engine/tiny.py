"""A tiny registered video model for fast engine tests (not part of the package)."""

from __future__ import annotations

import torch
from torch import nn

from vidact.models import list_models, register_model


class TinyVideoNet(nn.Module):
    """conv3d -> BN (or none) -> ReLU -> global pool -> dropout -> linear; (N,C,T,H,W) -> (N,K)."""

    def __init__(
        self, num_classes: int, dropout: float = 0.0, in_channels: int = 3, batch_norm: bool = True
    ) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv3d(in_channels, 8, kernel_size=(2, 3, 3), padding=(0, 1, 1)),
            nn.BatchNorm3d(8) if batch_norm else nn.Identity(),
            nn.ReLU(),
            nn.AdaptiveAvgPool3d(1),
        )
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(self.features(x).flatten(1)))


def tiny_test_net(
    *,
    num_classes: int,
    num_frames: int | None = None,
    dropout: float = 0.0,
    weights: str | None = None,
    in_channels: int = 3,
    batch_norm: bool = True,
) -> TinyVideoNet:
    del num_frames, weights
    return TinyVideoNet(num_classes, dropout, in_channels, batch_norm)


if "tiny_test_net" not in list_models():
    register_model("tiny_test_net")(tiny_test_net)
