"""The authors' released checkpoints, mapped onto vidact's networks (state dicts only: the
caller reads the file, safely).

CT-Net (Li et al., ICLR 2021) and its TSN baseline, as the authors' `main.py` saves them:
a dict whose `state_dict` holds DataParallel names, `module.base_model.<torchvision ResNet
name>` for the trunk and `module.new_fc.*` for the classifier (`base_model.fc.*` when they
trained without dropout). A CT-Block of theirs is `base_model.layerL.B.` with `conv1.0/1`
(the bottleneck's conv1 + bn1), `conv2.*` (the CT-Module: `conv1_x`, `conv1_z` and the
`sx/tx/cx_attention` of the first sub-operation, `fusion`, then `conv2_y`, `conv2_z` and
`sy/ty/cy_attention`) and `conv3.0/1`. Their CT-Module convolutions are Conv3d, with 5-D
kernels (O, I, t, h, w); vidact's are 2D / 1D on folded frames (`ct_module` docstring).

The channel permutation. Their module views the C = x*y channels as (x, y) with channel
a = xi*y + yi, runs the first sub-operation over groups of y, permutes to b = yi*x + xi
after the fusion conv, runs the second over groups of x, and permutes back before conv3.
vidact's `CTModule` skips both permutes (its fusion conv writes b-order directly), so a
checkpoint loads after folding the permutation into the weights: vidact row b of the
fusion conv and of its BN is their row a(b) = (b mod x)*y + floor(b/x), and vidact input
column b of conv3 is their column a(b). Everything else keeps its order.

Checks. Every tensor of the file must be used and every tensor of the model filled; a
checkpoint of another depth, class count or CT-Block layout is one clear VidactError.
The profiler counters that `thop` leaves in some of their files (`*.total_ops`,
`*.total_params`) are dropped, as their own loader drops them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping

import torch
from torch import Tensor, nn

from vidact.errors import VidactError
from vidact.models.backbones import _is_path, state_dict_from
from vidact.models.ct_module import CTModule, TSConv

__all__ = [
    "channel_permutation",
    "ct_module_state",
    "flow_layer_state",
    "is_released",
    "is_released_repflow",
    "load_released",
    "load_repflow_weights",
    "released_state",
    "repflow_name",
    "repflow_state",
    "split_weights",
]

_PROFILER_COUNTERS = ("total_ops", "total_params")
# vidact sub-operation k of a CT-Module <-> their names (k = 0: x, k = 1: y).
_SUBOP_NAMES = ({"conv": "conv1_x", "temporal": "conv1_z", "att": "x"},
                {"conv": "conv2_y", "temporal": "conv2_z", "att": "y"})  # fmt: skip


def _clean(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Without DataParallel's `module.` prefix and without profiler counters."""
    return {
        key.removeprefix("module."): value
        for key, value in state.items()
        if key.rsplit(".", 1)[-1] not in _PROFILER_COUNTERS
    }


def is_released(state: Mapping[str, Tensor]) -> bool:
    """Whether `state` is in the authors' layout: CT-Net / TSN (`base_model.*` +
    `new_fc.*`) or rep-flow's Kinetics model (`res2.blocks.*`, `rep_flow.*`)."""
    keys = _clean(state)
    if is_released_repflow(keys):
        return True
    return any(k.startswith("base_model.") for k in keys) and not any(
        k.startswith(("backbone.", "stem.", "stages.")) for k in keys
    )


# ------------------------------------------------------------------- tensor reshaping
def _as_kernel_of(weight: Tensor, target: Tensor, temporal: bool) -> Tensor:
    """Their Conv3d kernel (O, I, t, h, w) as vidact's: (O, I, h, w) for a spatial or
    1x1 conv, (O, I, t, 1) for a temporal Conv2d, (O, I, t) for a Conv1d."""
    if weight.dim() != 5 or weight.dim() == target.dim():
        return weight
    o, i, t, h, w = weight.shape
    if target.dim() == 3 and h == w == 1:  # Conv1d over frames
        return weight.reshape(o, i, t)
    if target.dim() == 4 and temporal and h == w == 1:  # (k, 1) Conv2d over frames
        return weight.reshape(o, i, t, 1)
    if target.dim() == 4 and not temporal and t == 1:  # spatial or point-wise
        return weight.reshape(o, i, h, w)
    return weight  # the shape check names it


def channel_permutation(module: CTModule) -> Tensor:
    """Index a(b) of the module-doc permutation: vidact channel b is their channel a(b)."""
    if len(module.ops) != 2 or module.pwconvs is None:
        raise VidactError(
            "a released CT-Module has K = 2 sub-operations with a fusion conv; this model's "
            "CT-Modules are built with other options (remove module / pwconv / num_subdims "
            "from the recipe's model section)"
        )
    first = module.ops[0]
    assert isinstance(first, TSConv)
    y = first.group_size
    x = module.channels // y
    b = torch.arange(module.channels)
    return (b % x) * y + b // x


def _subop_name(rest: str, names: dict[str, str]) -> str:
    """vidact name inside TSConv k -> theirs inside their ReshapeInteraction."""
    att = names["att"]
    rules = (
        (r"spatial\.weight", f"{names['conv']}.0.weight"),
        (r"spatial_bn\.0\.(.+)", f"{names['conv']}.1.\\1"),
        (r"temporal\.conv\.weight", f"{names['temporal']}.0.weight"),
        (r"temporal_bn\.0\.(.+)", f"{names['temporal']}.1.\\1"),
        (r"spatial_att\.reduce\.weight", f"s{att}_attention.fc1.0.weight"),
        (r"spatial_att\.bn_relu\.0\.(.+)", f"s{att}_attention.fc1.1.\\1"),
        (r"spatial_att\.expand\.weight", f"s{att}_attention.fc2.0.weight"),
        (r"(temporal|channel)_att\.reduce\.weight", "\\1_attention.fc1.0.weight"),
        (r"(temporal|channel)_att\.bn\.(.+)", "\\1_attention.fc1.1.\\2"),
        (r"(temporal|channel)_att\.expand\.weight", "\\1_attention.fc2.0.weight"),
    )
    for pattern, replacement in rules:
        if re.fullmatch(pattern, rest):
            name = re.sub(pattern, replacement, rest)
            return name.replace("temporal_attention", f"t{att}_attention").replace(
                "channel_attention", f"c{att}_attention"
            )
    raise VidactError(f"CT-Module tensor {rest!r} has no counterpart in the released layout")


def _ct_module_name(key: str) -> str:
    """A CTModule state-dict key -> the released ReshapeInteraction key."""
    match = re.fullmatch(r"ops\.(\d)\.(.+)", key)
    if match:
        return _subop_name(match[2], _SUBOP_NAMES[int(match[1])])
    match = re.fullmatch(r"pwconvs\.0\.([01])\.(.+)", key)
    if match:
        return f"fusion.{match[1]}.{match[2]}"
    raise VidactError(f"CT-Module tensor {key!r} has no counterpart in the released layout")


def ct_module_state(theirs: Mapping[str, Tensor], module: CTModule) -> dict[str, Tensor]:
    """Their ReshapeInteraction state dict (keys `conv1_x.0.weight`, ...) as `module`'s,
    with the fusion conv's output rows and its BN permuted (module docstring)."""
    perm = channel_permutation(module)
    out: dict[str, Tensor] = {}
    for key, target in module.state_dict().items():
        name = _ct_module_name(key)
        if name not in theirs:
            raise VidactError(f"the released checkpoint has no {name} (for {key})")
        value = _as_kernel_of(theirs[name], target, temporal="temporal" in key)
        if key.startswith("pwconvs.0.") and value.dim() >= 1:
            value = value[perm]
        out[key] = value
    return out


# ------------------------------------------------------------------- whole networks
def _stage_depths(keys: list[str]) -> tuple[int, ...]:
    depths = [0, 0, 0, 0]
    for key in keys:
        match = re.match(r"base_model\.layer([1-4])\.(\d+)\.", key)
        if match:
            stage = int(match[1]) - 1
            depths[stage] = max(depths[stage], int(match[2]) + 1)
    return tuple(depths)


def _ct_blocks(keys: list[str]) -> set[tuple[int, int]]:
    """(stage index, block index) of every CT-Block of their checkpoint."""
    found = (re.match(r"base_model\.layer([1-4])\.(\d+)\.conv2\.conv1_x\.", k) for k in keys)
    return {(int(m[1]) - 1, int(m[2])) for m in found if m}


def _describe(depths: tuple[int, ...], ct: set[tuple[int, int]]) -> str:
    names: dict[tuple[int, ...], str] = {(3, 4, 6, 3): "ResNet-50", (3, 4, 23, 3): "ResNet-101"}
    name = names.get(depths, f"{depths}")
    return f"{'CT-Net' if ct else 'TSN'} on {name} ({len(ct)} CT-Blocks)"


def _ctnet_name(key: str, model: nn.Module) -> str:
    """vidact CTNet key -> their key."""
    from vidact.models.ctnet import CTBottleneck

    if key.startswith("stem."):
        index, rest = key.removeprefix("stem.").split(".", 1)
        return f"base_model.{ {'0': 'conv1', '1': 'bn1'}[index] }.{rest}"
    if key.startswith("fc."):
        return f"new_fc.{key.removeprefix('fc.')}"
    match = re.fullmatch(r"stages\.(\d)\.(\d+)\.(.+)", key)
    assert match, key
    stage, block, rest = int(match[1]), int(match[2]), match[3]
    prefix = f"base_model.layer{stage + 1}.{block}."
    if not isinstance(model.stages[stage][block], CTBottleneck):  # type: ignore[index]
        return prefix + rest
    part, _, tail = rest.partition(".")
    renamed = {"conv1": "conv1.0", "bn1": "conv1.1", "conv3": "conv3.0", "bn3": "conv3.1"}
    if part in renamed:
        return f"{prefix}{renamed[part]}.{tail}"
    return f"{prefix}conv2.{_ct_module_name(tail)}"


def _tsn_name(key: str, model: nn.Module) -> str:
    if key.startswith("head.fc."):
        return f"new_fc.{key.removeprefix('head.fc.')}"
    return f"base_model.{key.removeprefix('backbone.')}"


def _check_architecture(theirs: list[str], model: nn.Module, head: str) -> None:
    """One clear line for a checkpoint of another depth or CT-Block layout."""
    ct_blocks: tuple[tuple[int, ...], ...] | None = getattr(model, "ct_blocks", None)
    want_ct: set[tuple[int, int]] = set()
    if ct_blocks is not None:
        want_depths = tuple(len(stage) for stage in getattr(model, "stages"))  # noqa: B009
        want_ct = {(s, b) for s, blocks in enumerate(ct_blocks) for b in blocks}
    else:
        trunk = getattr(model, "backbone")  # noqa: B009
        want_depths = tuple(len(getattr(trunk, f"layer{i}")) for i in range(1, 5))
    depths, ct = _stage_depths(theirs), _ct_blocks(theirs)
    if (depths, ct) != (want_depths, want_ct):
        hint = "ctnet_resnet101" if depths == (3, 4, 23, 3) else "ctnet_resnet50"
        if not ct:
            hint = "tsn_resnet101" if depths == (3, 4, 23, 3) else "tsn_resnet50"
        raise VidactError(
            f"the released checkpoint is {_describe(depths, ct)}, the model is "
            f"{_describe(want_depths, want_ct)}; use model.name: {hint} with its default "
            "ct_blocks"
        )
    if head not in theirs:
        raise VidactError(
            "the released checkpoint has no classifier (new_fc or base_model.fc); is it one of "
            "the authors' CT-Net / TSN checkpoints?"
        )


def released_state(
    state: Mapping[str, Tensor], model: nn.Module, *, new_head: bool = False
) -> dict[str, Tensor]:
    """The authors' checkpoint `state` (module docstring) as `model`'s state dict: a
    `CTNet` or a `TSN`. With `new_head`, a classifier of another class count is left out
    (fine-tuning); otherwise it is an error, as is any tensor left over or missing."""
    if is_released_repflow(list(state)) or hasattr(model, "released_input"):
        return repflow_state(state, model, new_head=new_head)
    if not hasattr(model, "ct_blocks") and not hasattr(model, "head"):
        raise VidactError(
            f"the authors' released checkpoints load into ctnet_resnet50/101 and "
            f"tsn_resnet50/101, not into a {type(model).__name__}"
        )
    theirs = _clean(state)
    if "new_fc.weight" not in theirs and "base_model.fc.weight" in theirs:  # dropout 0
        theirs = {k.replace("base_model.fc.", "new_fc.", 1): v for k, v in theirs.items()}
    name_of: Callable[[str, nn.Module], str] = (
        _ctnet_name if hasattr(model, "ct_blocks") else _tsn_name
    )
    _check_architecture(list(theirs), model, "new_fc.weight")
    own = model.state_dict()
    classes, want = theirs["new_fc.weight"].shape[0], own[_head_key(own)].shape[0]
    if classes != want and not new_head:
        raise VidactError(
            f"the released checkpoint classifies {classes} classes, the model {want}; use the "
            f"label map of the dataset it was trained on ({classes} classes) or fine-tune "
            "with `vidact finetune --from`"
        )
    out: dict[str, Tensor] = {}
    used: set[str] = set()
    for key, target in own.items():
        theirs_key = name_of(key, model)
        if theirs_key.startswith("new_fc.") and classes != want:
            used.add(theirs_key)
            continue  # a new head: it keeps its fresh initialisation
        if theirs_key not in theirs:
            raise VidactError(f"the released checkpoint has no {theirs_key} (for {key})")
        used.add(theirs_key)
        out[key] = _as_kernel_of(theirs[theirs_key], target, temporal="temporal" in key)
    _check_shapes(out, own, name_of, model)  # first: the fold indexes rows and columns
    _fold_permutations(out, model)
    left = sorted(set(theirs) - used)
    if left:
        raise VidactError(
            f"the released checkpoint has {len(left)} tensors this model does not use "
            f"({', '.join(left[:3])}{' ...' if len(left) > 3 else ''})"
        )
    return out


def _head_key(own: Mapping[str, Tensor]) -> str:
    return "fc.weight" if "fc.weight" in own else "head.fc.weight"


def _fold_permutations(out: dict[str, Tensor], model: nn.Module) -> None:
    """Fusion rows + BN and conv3's input columns of every CT-Block (module docstring)."""
    for name, module in model.named_modules():
        if not isinstance(module, CTModule):
            continue
        perm = channel_permutation(module)
        block = name.removesuffix(".ct")
        for key in list(out):
            if key.startswith(f"{name}.pwconvs.0.") and out[key].dim() >= 1:
                out[key] = out[key][perm]
        out[f"{block}.conv3.weight"] = out[f"{block}.conv3.weight"][:, perm]


def _check_shapes(
    out: Mapping[str, Tensor],
    own: Mapping[str, Tensor],
    name_of: Callable[[str, nn.Module], str],
    model: nn.Module,
) -> None:
    for key, value in out.items():
        if value.shape != own[key].shape:
            raise VidactError(
                f"the released checkpoint's {name_of(key, model)} has shape "
                f"{tuple(value.shape)}, the model's {key} {tuple(own[key].shape)}; it is "
                "another layout (other widths, kernel sizes or CT-Module options)"
            )


# ------------------------------------------------------------------- model.weights
Weights = str | os.PathLike[str] | None


def split_weights(weights: Weights) -> tuple[Weights, dict[str, Tensor] | None]:
    """`weights` of a model -> (what its ImageNet trunk loads, a released state or None).

    A local file in the authors' layout loads into the whole network (`load_released`), so
    the trunk starts random; anything else is the trunk's, as before."""
    if weights is None or not _is_path(weights):
        return weights, None
    state = state_dict_from(weights)  # backbones' loader: weights_only, one-line errors
    return (None, state) if is_released(state) else (weights, None)


def load_released(model: nn.Module, state: Mapping[str, Tensor], source: Weights) -> None:
    """Load the authors' checkpoint `state` into `model`, every tensor checked."""
    try:
        mapped = released_state(state, model)
    except VidactError as exc:
        raise VidactError(f"{os.fspath(source) if source else 'weights'}: {exc}") from None
    model.load_state_dict(mapped)


# ------------------------------------------------------------------- rep-flow's Kinetics model
# Their kinetics_2p1d_model.resnet_3d_v1(50, 400) state dict (`models/rep_flow.pt`): `stem`,
# `bn1`, `resS.blocks.B.layers.I` (I: 1 the (kt,1,1) conv, 2 its BN, 5 the (1,3,3) conv,
# 6 its BN, 8 the 1x1x1 conv, 9 its BN; the SamePadding and ReLU modules hold nothing),
# `resS.blocks.B.shortcut.{1,2,3}` (conv, BN, BN), `rep_flow.*` and `classify`.
_REPFLOW_BLOCK = {"conv1": "layers.1", "bn1": "layers.2", "conv2": "layers.5",
                  "bn2": "layers.6", "conv3": "layers.8", "bn3": "layers.9",
                  "shortcut.0": "shortcut.1", "shortcut.1": "shortcut.2",
                  "shortcut.2": "shortcut.3"}  # fmt: skip
_REPFLOW_LAYER = {"reduce": "bottleneck", "expand": "unbottleneck", "bn": "bn",
                  "image_grad_x": "img_grad", "image_grad_y": "img_grad2", "grad_x": "f_grad",
                  "grad_y": "f_grad2", "div_x": "div", "div_y": "div2", "theta": "t",
                  "lam": "l", "tau": "a"}  # fmt: skip


def is_released_repflow(keys: list[str] | Mapping[str, Tensor]) -> bool:
    """Whether the keys are those of the rep-flow authors' Kinetics model."""
    names = [k.removeprefix("module.") for k in keys]
    return any(k.startswith("rep_flow.") for k in names) and any(
        k.startswith("res2.blocks.") for k in names
    )


def repflow_name(key: str) -> str:
    """A `ReleasedRepFlowNet` state-dict key -> theirs (the comment above)."""
    if key.startswith("stem_bn."):
        return "bn1." + key.removeprefix("stem_bn.")
    if key.startswith(("stem.", "classify.")):
        return key
    if key.startswith("flow."):
        part, _, rest = key.removeprefix("flow.").partition(".")
        return f"rep_flow.{_REPFLOW_LAYER[part]}{'.' + rest if rest else ''}"
    match = re.fullmatch(r"stages\.(\d)\.(\d+)\.(shortcut\.\d|\w+)\.(\w+)", key)
    if match is None or match[3] not in _REPFLOW_BLOCK:
        raise VidactError(f"{key!r} has no counterpart in the released rep-flow layout")
    stage, block, part, rest = int(match[1]), match[2], match[3], match[4]
    return f"res{stage + 2}.blocks.{block}.{_REPFLOW_BLOCK[part]}.{rest}"


def flow_layer_state(theirs: Mapping[str, Tensor], layer: nn.Module) -> dict[str, Tensor]:
    """Their FlowLayer's state dict (keys `bottleneck.weight`, `img_grad`, `t`, ...) as a
    `ReleasedFlowLayer`'s."""
    out = {}
    for key in layer.state_dict():
        name = repflow_name(f"flow.{key}").removeprefix("rep_flow.")
        if name not in theirs:
            raise VidactError(f"the released flow layer has no {name} (for {key})")
        out[key] = theirs[name]
    return out


def _repflow_depths(keys: list[str]) -> tuple[int, ...]:
    depths = [0, 0, 0, 0]
    for key in keys:
        match = re.match(r"res([2-5])\.blocks\.(\d+)\.", key)
        if match:
            stage = int(match[1]) - 2
            depths[stage] = max(depths[stage], int(match[2]) + 1)
    return tuple(depths)


def _check_repflow(theirs: Mapping[str, Tensor], model: nn.Module) -> None:
    """One line for a file that is not their Kinetics model or a model that is not ours."""
    if not hasattr(model, "released_input"):
        raise VidactError(
            "the rep-flow authors' Kinetics checkpoint (rep_flow.pt) loads into model.name: "
            f"repflow_released_r50, not into a {type(model).__name__}"
        )
    if not is_released_repflow(list(theirs)):
        raise VidactError(
            "repflow_released_r50 loads the rep-flow authors' Kinetics state dict "
            "(resS.blocks.*, rep_flow.*, classify.*); this file is in another layout"
        )
    from vidact.models.released_repflow import STAGE_DEPTHS

    depths = _repflow_depths(list(theirs))
    if depths != STAGE_DEPTHS:
        raise VidactError(
            f"the released checkpoint's 3D ResNet has {depths} blocks per stage; "
            f"repflow_released_r50 is their resnet_3d_v1(50), {STAGE_DEPTHS}"
        )
    for key in ("rep_flow.bottleneck.weight", "classify.weight"):
        if key not in theirs:
            raise VidactError(f"the released checkpoint has no {key}; is it rep_flow.pt?")


def repflow_state(
    state: Mapping[str, Tensor], model: nn.Module, *, new_head: bool = False
) -> dict[str, Tensor]:
    """Their Kinetics state dict as a `ReleasedRepFlowNet`'s, every tensor checked; with
    `new_head`, a classifier of another class count is left out (fine-tuning). BN
    `num_batches_tracked` counters, which files of torch < 0.4.1 lack, keep the model's."""
    theirs = _clean(state)
    _check_repflow(theirs, model)
    own = model.state_dict()
    classes, want = theirs["classify.weight"].shape[0], own["classify.weight"].shape[0]
    if classes != want and not new_head:
        raise VidactError(
            f"the released checkpoint classifies {classes} classes, the model {want}; use the "
            f"Kinetics-{classes} label map (sorted class names) or fine-tune with "
            "`vidact finetune --from`"
        )
    out: dict[str, Tensor] = {}
    used: set[str] = set()
    for key, target in own.items():
        name = repflow_name(key)
        used.add(name)
        if name.startswith("classify.") and classes != want:
            continue  # a new head keeps its fresh initialisation
        if name not in theirs:
            if key.endswith("num_batches_tracked"):
                continue
            raise VidactError(f"the released checkpoint has no {name} (for {key})")
        value = theirs[name]
        if value.shape != target.shape:
            raise VidactError(
                f"the released checkpoint's {name} has shape {tuple(value.shape)}, the "
                f"model's {key} {tuple(target.shape)}; it is another layout"
            )
        out[key] = value
    left = sorted(set(theirs) - used)
    if left:
        raise VidactError(
            f"the released checkpoint has {len(left)} tensors this model does not use "
            f"({', '.join(left[:3])}{' ...' if len(left) > 3 else ''})"
        )
    return out


def load_repflow_weights(model: nn.Module, weights: Weights) -> None:
    """`model.weights` of repflow_released_r50: their rep_flow.pt (mapped) or a state
    dict of this model (loaded as is); a torchvision name is refused."""
    if weights is None:
        return
    if not _is_path(weights):
        raise VidactError(
            f"repflow_released_r50 has no torchvision weights ({os.fspath(weights)!r}); pass "
            "the authors' rep_flow.pt or a state dict of this model, or leave weights unset"
        )
    state = state_dict_from(weights)  # weights_only: never runs code
    try:
        mapped = repflow_state(state, model) if is_released_repflow(list(state)) else state
        missing = set(model.state_dict()) - set(mapped)
        model.load_state_dict(mapped, strict=False)
        extra = set(mapped) - set(model.state_dict())
        real_missing = sorted(k for k in missing if not k.endswith("num_batches_tracked"))
        if real_missing or extra:
            raise VidactError(
                f"its tensors do not fit repflow_released_r50 (missing {real_missing[:3]}, "
                f"unexpected {sorted(extra)[:3]})"
            )
    except VidactError as exc:
        raise VidactError(f"{os.fspath(weights)}: {exc}") from None
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise VidactError(f"{os.fspath(weights)}: {first}") from None
