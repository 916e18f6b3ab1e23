"""Numbers of the papers and of the data that several parts of vidact share, defined once.

This module imports nothing, so the recipe schema, the CLI and the worker processes can all
take their defaults from here without loading torch.
"""

from __future__ import annotations

# ImageNet statistics of torchvision's pretrained weights: the recipes' default normalisation.
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

# The usual two-stream flow quantisation: +-FLOW_BOUND px maps onto [0, 255] (TSN, I3D).
FLOW_BOUND = 20.0

# TV-L1 backends `compute_flow` knows ("auto" picks one at run time; see vidact.flow.backends).
FLOW_BACKENDS: tuple[str, ...] = ("auto", "torch", "opencv-cuda", "opencv")

# Video decoders `read_frames` knows, in the order "auto" tries them (see vidact.data.video).
VIDEO_BACKENDS: tuple[str, ...] = ("auto", "decord", "pyav", "opencv")
