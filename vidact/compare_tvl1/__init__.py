"""`vidact compare-tvl1`: classic TV-L1 against the representation-flow layer, on frames.

For every consecutive frame pair of a video (or of a few videos of a prepared dataset):

- the TV-L1 flow (`vidact.flow.compute_flow`, any backend), the reference;
- the representation-flow layer's flow (Algorithm 1 of Piergiovanni & Ryoo, CVPR 2019,
  `vidact.models.rep_flow.RepresentationFlow`) on the grayscale frames (BT.601, 0-255, the
  same conversion TV-L1 gets), all pairs of a video in one batched call;
- the flow-of-flow: the same layer applied to consecutive rep-flow fields. It runs on the
  *magnitude* of each field, min-max normalised to [0, 255] over the clip (section 3.2),
  which gives one displayable motion field per pair of fields: the motion of the motion
  pattern. (Inside the networks, FoF runs on every flow channel separately; on a single
  grayscale input that would give one field per flow component, which cannot be drawn as
  one picture.) Field t is the flow between rep-flow t and t + 1 (frames t, t+1, t+2).

The layer's parameters are either the paper's initial values (tau 0.25, lambda 0.15,
theta 0.3, divergence [-1, 1], the printed Sobel kernels) or those of the first flow layer
of a checkpoint. Units:

- Paper values (default): the layer runs with ``normalize_sobel=True``, so it is
  single-scale TV-L1 in pixels with the same tau, lambda, theta as the TV-L1 reference.
- A checkpoint (or ``printed_sobel=True``): the layer runs exactly as inside the network,
  with the unnormalised (printed or learned) Sobel kernels, and its output is multiplied by
  the Sobel gain 8 to give pixels. That is *not* the same as the learned tau, lambda, theta
  with normalised kernels: with a kernel of gain g, the layer equals the normalised one
  with tau, lambda and theta each multiplied by g, output divided by g (exactly; a test
  checks it). The report lists the values as stored and these pixel-unit equivalents.

Measures (per video and averaged): end-point error and cosine similarity of rep-flow
against TV-L1 and, when the video has stored ground truth (the synthetic dataset's val
videos), of both methods against it on the stored pairs; all over a border-masked
region. Times per pair and per video for each method.

Pictures: ``panel.png`` (RGB | TV-L1 | rep-flow | flow-of-flow [| ground truth], like the
paper's Figures 1 and 5) for one pair of the first video, and ``clip.gif`` over all its
pairs. Table-9-style timing: a flow CNN that must first run TV-L1 (``flow_resnet34``) against
the rep-flow network (``repflow_resnet34``), end to end on the same clip (32x224x224 by
default). Everything goes to ``report.json``.
"""

# `X as X`: public names of the former single module, importable here but not in __all__.
from vidact.compare_tvl1.inputs import DEFAULT_VIDEOS as DEFAULT_VIDEOS
from vidact.compare_tvl1.inputs import resolve_input as resolve_input
from vidact.compare_tvl1.layers import PIXEL_BUDGET as PIXEL_BUDGET
from vidact.compare_tvl1.layers import (
    FlowLayerSpec,
    checkpoint_layer,
    flow_of_flow,
    paper_layer,
    representation_flow,
)
from vidact.compare_tvl1.measure import MOVING_PX as MOVING_PX
from vidact.compare_tvl1.measure import VideoResult
from vidact.compare_tvl1.pictures import GIF_FRAME_MS as GIF_FRAME_MS
from vidact.compare_tvl1.pictures import PANEL_TILE_INCHES as PANEL_TILE_INCHES
from vidact.compare_tvl1.pipeline import DEFAULT_MAX_FRAMES as DEFAULT_MAX_FRAMES
from vidact.compare_tvl1.pipeline import CompareResult, compare_tvl1
from vidact.compare_tvl1.pipeline import default_out as default_out
from vidact.compare_tvl1.timing import DEFAULT_TIMING_SHAPE, parse_shape, time_table9
from vidact.compare_tvl1.timing import TIMING_CLASSES as TIMING_CLASSES

__all__ = [
    "DEFAULT_TIMING_SHAPE",
    "CompareResult",
    "FlowLayerSpec",
    "VideoResult",
    "checkpoint_layer",
    "compare_tvl1",
    "flow_of_flow",
    "paper_layer",
    "parse_shape",
    "representation_flow",
    "time_table9",
]
