"""ResNet backbones: 2D (torchvision), (2+1)D and 3D (inflated from 2D as I3D does), weights.

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
- ``resnet3d(depth, weights=None, mode="3d" | "2plus1d")``: the same network with every
  Conv2d/BatchNorm2d/MaxPool2d replaced by its video counterpart (see ``inflate_resnet``).
  Temporal strides are all 1, so a clip of T frames stays T frames deep: the representation
  flow layer needs consecutive frames and predictions are averaged over time.
- ``NonLocalBlock``: the embedded-Gaussian non-local block of Wang et al. (CVPR 2018) over
  (T, H, W), used by the rep-flow paper's Table 9 "(2+1)D + FcF + Non-local" model.
- ``fold_time`` / ``unfold_time``: (N, C, T, H, W) <-> (N*T, C, H, W) for per-frame 2D CNNs.

Every ResNet here is the torchvision module, so ``conv1, bn1, relu, maxpool, layer1..layer4``
are the stages a model calls; ``ResNet.forward`` itself is never used on video tensors.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import torch
import torchvision
from torch import Tensor, nn

from vidact.errors import VidactError
from vidact.safe_load import load_tensors_file

DEPTHS = (18, 34, 50, 101, 152)
VideoMode = Literal["3d", "2plus1d"]


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
    source = state_dict_from(weights, arch)
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
        raise VidactError(
            f"weights {os.fspath(weights)} do not fit {arch or type(module).__name__}: {detail}; "
            "pass weights of the same architecture"
        )
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


def stage_channels(model: torchvision.models.ResNet) -> dict[str, int]:
    """Channels after each stage: conv1, maxpool, layer1..layer4."""
    expansion = 4 if isinstance(model.layer1[0], torchvision.models.resnet.Bottleneck) else 1
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


# --------------------------------------------------------------------------- inflation
def _hw(value: object) -> tuple[int, int]:
    """A Conv2d kernel/stride/padding as (h, w) ints (string paddings are not supported)."""
    if isinstance(value, int):
        return value, value
    if isinstance(value, tuple) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return value[0], value[1]
    raise ValueError(f"cannot inflate a conv with kernel/stride/padding {value!r}")


def inflate_conv(conv: nn.Conv2d, time_kernel: int) -> nn.Conv3d:
    """I3D inflation: a (k, k) conv becomes (t, k, k); the 2D kernel is repeated over t and
    divided by t, so a clip of identical frames gives the 2D response (Carreira & Zisserman
    2017, section 2.3). Temporal stride 1, padding t // 2."""
    kh, kw = _hw(conv.kernel_size)
    sh, sw = _hw(conv.stride)
    ph, pw = _hw(conv.padding)
    out = nn.Conv3d(
        conv.in_channels,
        conv.out_channels,
        (time_kernel, kh, kw),
        stride=(1, sh, sw),
        padding=(time_kernel // 2, ph, pw),
        groups=conv.groups,
        bias=conv.bias is not None,
    )
    with torch.no_grad():
        out.weight.copy_(conv.weight.unsqueeze(2).repeat(1, 1, time_kernel, 1, 1) / time_kernel)
        if conv.bias is not None:
            assert out.bias is not None
            out.bias.copy_(conv.bias)
    return out


def factorize_conv(conv: nn.Conv2d, time_kernel: int = 3) -> nn.Sequential:
    """(2+1)D factorisation (Tran et al. CVPR 2018): a (1, k, k) spatial conv holding the 2D
    weights followed by a (t, 1, 1) temporal conv. The intermediate width is the output width
    (so the 2D weights load unchanged) and the temporal conv starts as the identity (centre
    tap = I), so at initialisation a static clip gives exactly the 2D network's features, as
    I3D inflation does. Unlike R(2+1)D there is no BN + ReLU between the two convs: it would
    clip the pretrained spatial responses (the block's own BN + ReLU follow the pair)."""
    kh, kw = _hw(conv.kernel_size)
    sh, sw = _hw(conv.stride)
    ph, pw = _hw(conv.padding)
    spatial = nn.Conv3d(
        conv.in_channels,
        conv.out_channels,
        (1, kh, kw),
        stride=(1, sh, sw),
        padding=(0, ph, pw),
        groups=conv.groups,
        bias=conv.bias is not None,
    )
    temporal = nn.Conv3d(
        conv.out_channels,
        conv.out_channels,
        (time_kernel, 1, 1),
        padding=(time_kernel // 2, 0, 0),
        bias=False,
    )
    with torch.no_grad():
        spatial.weight.copy_(conv.weight.unsqueeze(2))
        if conv.bias is not None:
            assert spatial.bias is not None
            spatial.bias.copy_(conv.bias)
        temporal.weight.zero_()
        eye = torch.eye(conv.out_channels, dtype=temporal.weight.dtype)
        temporal.weight[:, :, time_kernel // 2, 0, 0] = eye
    return nn.Sequential(spatial, temporal)


def _bn3d(bn: nn.BatchNorm2d) -> nn.BatchNorm3d:
    out = nn.BatchNorm3d(bn.num_features, eps=bn.eps, momentum=bn.momentum, affine=bn.affine)
    out.load_state_dict(bn.state_dict())
    return out


def inflate_resnet(
    model: torchvision.models.ResNet, mode: VideoMode, time_kernel: int = 3
) -> torchvision.models.ResNet:
    """Turn a 2D torchvision ResNet into a video ResNet in place and return it.

    ``mode="3d"``: every k x k conv with k > 1 becomes t x k x k (I3D inflation), 1 x 1 convs
    become 1 x 1 x 1. ``mode="2plus1d"``: every k x k conv with k > 1 becomes the (2+1)D pair
    of ``factorize_conv``. BatchNorm2d -> BatchNorm3d, max-pool -> (1, 3, 3). The torchvision
    BasicBlock/Bottleneck forward is dimension-agnostic, so blocks run on (N, C, T, H, W).
    """
    if mode not in ("3d", "2plus1d"):
        raise VidactError(f"video ResNet mode {mode!r} must be '3d' or '2plus1d'")

    def convert(parent: nn.Module) -> None:
        for name, child in parent.named_children():
            new: nn.Module | None = None
            if isinstance(child, nn.Conv2d):
                k = _hw(child.kernel_size)[0]
                if k == 1:
                    new = inflate_conv(child, 1)
                elif mode == "3d":
                    new = inflate_conv(child, time_kernel)
                else:
                    new = factorize_conv(child, time_kernel)
            elif isinstance(child, nn.BatchNorm2d):
                new = _bn3d(child)
            elif isinstance(child, nn.MaxPool2d):
                new = nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1))
            elif isinstance(child, nn.AdaptiveAvgPool2d):
                new = nn.AdaptiveAvgPool3d((None, 1, 1))
            else:
                convert(child)
            if new is not None:
                setattr(parent, name, new)

    convert(model)
    return model


def resnet3d(
    depth: int,
    weights: str | os.PathLike[str] | None = None,
    mode: VideoMode = "3d",
    time_kernel: int = 3,
) -> torchvision.models.ResNet:
    """A video ResNet: ``resnet2d(depth, weights)`` inflated by ``inflate_resnet``.

    ImageNet (or local 2D) weights are loaded into the 2D network first, then inflated, as
    I3D does. Stages take and return (N, C, T, H, W) with T unchanged.
    """
    return inflate_resnet(resnet2d(depth, weights), mode, time_kernel)


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
    "NonLocalBlock",
    "factorize_conv",
    "fold_time",
    "inflate_conv",
    "inflate_resnet",
    "load_weights",
    "resnet2d",
    "resnet3d",
    "stage_channels",
    "state_dict_from",
    "unfold_time",
]
