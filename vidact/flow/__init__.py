"""Classic optical flow outside any network: batched TV-L1 in torch, OpenCV backends,
quantisation to uint8 images, accuracy measures and colour visualisation."""

from __future__ import annotations

from vidact.flow.backends import (
    available_backends,
    compute_flow,
    dequantize_flow,
    quantize_flow,
)
from vidact.flow.tvl1 import TVL1Params, tvl1_flow

__all__ = [
    "TVL1Params",
    "available_backends",
    "compute_flow",
    "dequantize_flow",
    "quantize_flow",
    "tvl1_flow",
]
