"""ResNet backbones: 2D and video (torchvision's R(2+1)D and R3D), weight loading.

Public helpers (other model families build on these):

- ``resnet2d(depth, weights=None) -> torchvision.models.ResNet``: a torchvision ResNet-18/34/
  50/101/152 with its 1000-way ImageNet head still attached (callers replace ``fc``). Random
  init unless ``weights`` is given.
- ``load_weights(module, weights, arch=None)``: load ``weights`` into ``module``. ``weights``
  is a torchvision weights name of ``arch`` ("IMAGENET1K_V1", "DEFAULT",
  "ResNet50_Weights.IMAGENET1K_V2") or a local ``.pth``/``.pt`` file holding a state dict
  (optionally under a "state_dict" or "model" key, "module." prefixes are stripped). Keys of
  the classifier head ``fc.`` may be missing or of another shape (they are then left
  untouched); anything else that does not match is a ``VidactError``. Torchvision weights
  come from the torch hub cache; when they are neither cached nor downloadable (offline),
  the ``VidactError`` names the weights and tells the user to pass a local ``.pth``.
- ``video_resnet(arch="r2plus1d" | "r3d", depth=18 | 34 | 50, weights=None)``:
  torchvision's ``VideoResNet`` (``r2plus1d_18`` / ``r3d_18`` themselves at depth 18, the
  same blocks at 34 and 50), so torchvision's Kinetics-400 weights load key for key; R3D
  also takes ImageNet weights, inflated as I3D does (``inflate_imagenet``).
- ``NonLocalBlock``: the embedded-Gaussian non-local block of Wang et al. (CVPR 2018) over
  (T, H, W), used by the rep-flow paper's Table 9 "(2+1)D + FcF + Non-local" model.
- ``fold_time`` / ``unfold_time``: (N, C, T, H, W) <-> (N*T, C, H, W) for per-frame 2D CNNs.

Every ResNet here is the torchvision module, so ``conv1, bn1, relu, maxpool, layer1..layer4``
(2D) or ``stem, layer1..layer4`` (video) are the stages a model calls.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import torch
import torchvision
from torch import Tensor, nn
from torchvision.models import video
from torchvision.models.video import VideoResNet
from torchvision.models.video import resnet as video_resnet_blocks

from vidact.errors import VidactError
from vidact.safe_load import load_tensors_file

DEPTHS = (18, 34, 50, 101, 152)
VIDEO_DEPTHS = (18, 34, 50)
VIDEO_ARCHS = ("r2plus1d", "r3d")
VideoArch = Literal["r2plus1d", "r3d"]


# --------------------------------------------------------------------------- weights
def _is_path(weights: str | os.PathLike[str]) -> bool:
    text = os.fspath(weights)
    return (
        isinstance(weights, os.PathLike)
        or text.endswith((".pth", ".pt", ".bin", ".ckpt"))
        or os.sep in text
        or Path(text).exists()
    )


def _load_local(path: Path) -> dict[str, Tensor]:
    if not path.is_file():
        raise VidactError(
            f"weights file {path} not found; pass an existing .pth state-dict path or a "
            "torchvision weights name such as IMAGENET1K_V1"
        )
    obj: Any = load_tensors_file(path, "weights file")  # weights_only: never runs code
    for key in ("state_dict", "model", "model_state"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise VidactError(
            f"weights file {path} does not hold a state dict of tensors; save it with "
            "torch.save(model.state_dict(), path)"
        )
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _load_torchvision(name: str, arch: str | None) -> dict[str, Tensor]:
    if arch is None:
        raise VidactError(
            f"weights {name!r} look like a torchvision weights name but the model has no "
            "torchvision architecture; pass a local .pth path instead"
        )
    enum = torchvision.models.get_model_weights(arch)
    member = name.split(".")[-1]
    valid = sorted(enum.__members__)
    if member not in enum.__members__:
        raise VidactError(
            f"unknown weights {name!r} for {arch}; use one of {', '.join(valid)} or a local "
            ".pth path"
        )
    entry = enum[member]
    try:
        state = torch.hub.load_state_dict_from_url(entry.url, progress=False, map_location="cpu")
    except Exception as exc:  # URLError, socket errors, HTTP errors, corrupt downloads
        cache = Path(torch.hub.get_dir()) / "checkpoints"
        raise VidactError(
            f"could not load torchvision weights {arch} {member} ({entry.url}): "
            f"{type(exc).__name__}: {exc}. Offline? Put the file in {cache} or pass a local "
            ".pth path as `weights`"
        ) from exc
    return dict(state)


def state_dict_from(weights: str | os.PathLike[str], arch: str | None = None) -> dict[str, Tensor]:
    """The state dict named by ``weights`` (torchvision weights name of ``arch`` or a path)."""
    if _is_path(weights):
        return _load_local(Path(weights))
    return _load_torchvision(str(weights), arch)


def load_weights(
    module: nn.Module,
    weights: str | os.PathLike[str] | None,
    arch: str | None = None,
    ignore_prefixes: tuple[str, ...] = ("fc.",),
) -> None:
    """Load ``weights`` into ``module`` (no-op for None). See the module docstring."""
    if weights is None:
        return
    label = f"weights {os.fspath(weights)} do not fit {arch or type(module).__name__}"
    fit_state_dict(module, state_dict_from(weights, arch), label, ignore_prefixes)


def fit_state_dict(
    module: nn.Module,
    source: Mapping[str, Tensor],
    label: str,
    ignore_prefixes: tuple[str, ...] = ("fc.",),
) -> None:
    """Load ``source`` into ``module``: every key but ``ignore_prefixes`` must match in name
    and shape (else a ``VidactError`` starting with ``label``)."""
    own = module.state_dict()
    missing = [k for k in own if k not in source and not k.startswith(ignore_prefixes)]
    wrong = [
        k
        for k in own
        if k in source and source[k].shape != own[k].shape and not k.startswith(ignore_prefixes)
    ]
    extra = [k for k in source if k not in own and not k.startswith(ignore_prefixes)]
    if missing or wrong or extra:
        problems = {"missing": missing, "shape mismatch": wrong, "unexpected": extra}
        detail = "; ".join(
            f"{what} {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
            for what, keys in problems.items()
            if keys
        )
        raise VidactError(f"{label}: {detail}; pass weights of the same architecture")
    usable = {k: v for k, v in source.items() if k in own and v.shape == own[k].shape}
    module.load_state_dict(usable, strict=False)


# --------------------------------------------------------------------------- 2D
def resnet2d(
    depth: int, weights: str | os.PathLike[str] | None = None
) -> torchvision.models.ResNet:
    """A torchvision ResNet of ``depth`` layers (1000-way head attached), random or loaded."""
    if depth not in DEPTHS:
        raise VidactError(f"ResNet depth {depth} is not one of {DEPTHS}")
    arch = f"resnet{depth}"
    model = torchvision.models.get_model(arch, weights=None)
    assert isinstance(model, torchvision.models.ResNet)
    load_weights(model, weights, arch=arch)
    return model


def stage_channels(model: torchvision.models.ResNet | VideoResNet) -> dict[str, int]:
    """Channels after each stage: conv1 (the video stem), maxpool, layer1..layer4."""
    expansion = model.fc.in_features // 512  # 1 for basic blocks, 4 for bottlenecks
    return {
        "conv1": 64,
        "maxpool": 64,
        "layer1": 64 * expansion,
        "layer2": 128 * expansion,
        "layer3": 256 * expansion,
        "layer4": 512 * expansion,
    }


def fold_time(x: Tensor) -> Tensor:
    """(N, C, T, H, W) -> (N*T, C, H, W), frames of a clip adjacent."""
    n, c, t, h, w = x.shape
    return x.transpose(1, 2).reshape(n * t, c, h, w)


def unfold_time(x: Tensor, t: int) -> Tensor:
    """(N*T, C, H, W) -> (N, C, T, H, W); inverse of ``fold_time``."""
    nt, c, h, w = x.shape
    return x.reshape(nt // t, t, c, h, w).transpose(1, 2)


# --------------------------------------------------------------------------- video
def _video_builder(arch: VideoArch, depth: int) -> VideoResNet:
    """torchvision's VideoResNet of ``arch`` at ``depth``: its own r3d_18 / r2plus1d_18, or
    the same blocks, stem and conv makers with the ResNet-34/50 stage depths."""
    if arch not in VIDEO_ARCHS:
        raise VidactError(f"video ResNet arch {arch!r} must be one of {VIDEO_ARCHS}")
    if depth not in VIDEO_DEPTHS:
        raise VidactError(f"video ResNet depth {depth} is not one of {VIDEO_DEPTHS}")
    if depth == 18:
        builder = video.r2plus1d_18 if arch == "r2plus1d" else video.r3d_18
        return builder(weights=None)
    block = video_resnet_blocks.BasicBlock if depth == 34 else video_resnet_blocks.Bottleneck
    if arch == "r2plus1d":
        conv, stem = video_resnet_blocks.Conv2Plus1D, video_resnet_blocks.R2Plus1dStem
    else:
        conv, stem = video_resnet_blocks.Conv3DSimple, video_resnet_blocks.BasicStem
    return VideoResNet(block, [conv] * 4, [3, 4, 6, 3], stem)


def video_resnet(
    arch: VideoArch, depth: int, weights: str | os.PathLike[str] | None = None
) -> VideoResNet:
    """A torchvision video ResNet (400-way Kinetics head attached), random or loaded.

    ``arch="r2plus1d"``: R(2+1)D (Tran et al. CVPR 2018): every 3x3x3 conv is a spatial
    1x3x3 conv to M channels, BN, ReLU, a temporal 3x1x1 conv, with
    M = floor(t d^2 N_in N_out / (d^2 N_in + t N_out)) (t = d = 3) so that the pair has the
    parameters of the 3D conv. N_in is the block's input width for every conv of a block
    and N_out the block's planes, as torchvision builds it (its Kinetics weights have these
    shapes; for a conv whose own input width differs, e.g. a block's second conv, M is
    then not Tran et al.'s exact parameter match).
    ``arch="r3d"``: full 3x3x3 convs (Tran et al.'s R3D). Both have a stem without max-pool
    and stride 2 in time and space in layer2-4. ``weights``: a torchvision weights name of
    ``{arch}_18`` ("KINETICS400_V1", "DEFAULT", from the torch hub cache) or a local .pth of
    the same architecture; depths 34 and 50 have no torchvision weights. For ``"r3d"``,
    ImageNet weights of the 2D ResNet of the same depth ("IMAGENET1K_V1") are inflated as
    I3D does (``inflate_imagenet``), as the rep-flow paper's Table 6 starts its 3D CNN.
    """
    model = _video_builder(arch, depth)
    if arch == "r3d" and weights is not None and _is_imagenet_name(weights, depth):
        state = inflate_imagenet(state_dict_from(weights, f"resnet{depth}"))
        fit_state_dict(model, state, f"weights {weights} inflated do not fit r3d-{depth}")
        return model
    load_weights(model, weights, arch=f"{arch}_18" if depth == 18 else None)
    return model


def _is_imagenet_name(weights: str | os.PathLike[str], depth: int) -> bool:
    member = os.fspath(weights).split(".")[-1]
    enum = torchvision.models.get_model_weights(f"resnet{depth}")
    return not _is_path(weights) and member in enum.__members__ and member != "DEFAULT"


def inflate_imagenet(state: Mapping[str, Tensor], time_kernel: int = 3) -> dict[str, Tensor]:
    """A 2D torchvision ResNet state dict as one of torchvision's R3D of the same depth:
    I3D inflation (Carreira & Zisserman 2017, section 2.3), each k x k kernel (k > 1)
    repeated over ``time_kernel`` frames and divided by it, so a clip of identical frames
    gives the 2D response; 1 x 1 kernels become 1 x 1 x 1. Keys are renamed (conv1 / bn1 ->
    stem.0 / stem.1, a block's conv{i} / bn{i} -> conv{i}.0 / conv{i}.1)."""
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if key.startswith(("conv1.", "bn1.")):
            new = key.replace("conv1.", "stem.0.").replace("bn1.", "stem.1.")
        else:
            new = re.sub(r"\.conv(\d)\.", r".conv\1.0.", key)
            new = re.sub(r"\.bn(\d)\.", r".conv\1.1.", new)
        if value.dim() == 4:  # a conv kernel (out, in, kh, kw)
            t = time_kernel if value.shape[-1] > 1 else 1
            value = value.unsqueeze(2).repeat(1, 1, t, 1, 1) / t
        out[new] = value
    return out


# --------------------------------------------------------------------------- non-local
class NonLocalBlock(nn.Module):
    """Embedded-Gaussian non-local block over (T, H, W) (Wang et al. 2018, Eq. 1-3, Fig. 2).

    Input and output (N, C, T, H, W). theta/phi/g are 1x1x1 convs to C/2 channels, the output
    projection is followed by BN initialised to zero, so the block starts as the identity.
    ``subsample`` max-pools phi and g by 2 in space, as the paper does to cut the cost.
    """

    def __init__(self, channels: int, inner: int | None = None, subsample: bool = True) -> None:
        super().__init__()
        inner = inner or max(channels // 2, 1)
        self.theta = nn.Conv3d(channels, inner, 1)
        self.phi = nn.Conv3d(channels, inner, 1)
        self.g = nn.Conv3d(channels, inner, 1)
        self.out = nn.Conv3d(inner, channels, 1, bias=False)
        self.bn = nn.BatchNorm3d(channels)
        nn.init.zeros_(self.bn.weight)
        self.pool: nn.Module = (
            nn.MaxPool3d((1, 2, 2), stride=(1, 2, 2), ceil_mode=True)
            if subsample
            else nn.Identity()
        )

    def forward(self, x: Tensor) -> Tensor:
        n, _, t, h, w = x.shape
        q = self.theta(x).flatten(2).transpose(1, 2)  # (N, THW, C')
        k = self.phi(self.pool(x)).flatten(2)  # (N, C', THW')
        v = self.g(self.pool(x)).flatten(2).transpose(1, 2)  # (N, THW', C')
        attn = torch.softmax(q @ k, dim=-1)
        y = (attn @ v).transpose(1, 2).reshape(n, -1, t, h, w)
        return x + self.bn(self.out(y))


__all__ = [
    "DEPTHS",
    "VIDEO_ARCHS",
    "VIDEO_DEPTHS",
    "NonLocalBlock",
    "fold_time",
    "inflate_imagenet",
    "load_weights",
    "resnet2d",
    "stage_channels",
    "state_dict_from",
    "unfold_time",
    "video_resnet",
]
