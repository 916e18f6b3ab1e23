"""Representation-flow networks: shapes of every name, positions, fusions, Fig. 6's FoF /
FcF against a literal reference, the zero-gamma start, torchvision's video weights key for
key, gradients into the flow parameters, parameter counts (recorded in docs/models.md)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from vidact.engine.profile import count_params
from vidact.errors import VidactError
from vidact.models import build_model, list_models
from vidact.models.rep_flow import FlowBlock, flow_parameters, normalize_range
from vidact.models.rep_flow_nets import POSITIONS, RepFlowResNet

# (repflow_released_r50 is tested in test_released_repflow.py: it needs 11+ frames.)
NAMES = [
    n
    for n in list_models()
    if n.startswith(("repflow_", "rgb_r")) and "_50" not in n and "released" not in n
]


def _clip(t: int = 3, size: int = 32) -> torch.Tensor:
    return torch.randn(2, 3, t, size, size)


def _wake(model: nn.Module) -> None:
    """gamma = 1 in every flow block's last BN, so the flow branch contributes (tests that
    look at the branch itself; at init it is silent by design)."""
    for module in model.modules():
        if isinstance(module, FlowBlock):
            nn.init.ones_(module.bn.weight)


@pytest.mark.parametrize("name", NAMES)
def test_every_registered_network_gives_logits(name: str) -> None:
    model = build_model(name, num_classes=3, iterations=2).eval()
    with torch.no_grad():
        assert model(_clip(6)).shape == (2, 3)


def test_depth_50_r2plus1d_gives_logits() -> None:
    model = build_model("repflow_fcf_r2plus1d_50", num_classes=3, iterations=1, flow_channels=2)
    with torch.no_grad():
        assert model.eval()(_clip(6, 16)).shape == (2, 3)


@pytest.mark.parametrize("position", POSITIONS)
def test_flow_positions(position: str) -> None:
    model = RepFlowResNet(18, 3, position=position, iterations=1, flow_channels=4).eval()
    with torch.no_grad():
        assert model.features(_clip()).shape[2] == 2  # T - 1 frames after one flow layer
        assert model(_clip()).shape == (2, 3)


@pytest.mark.parametrize("fusion", ["none", "late", "add", "multiply", "concat", "layer_multiply"])
def test_fusions(fusion: str) -> None:
    model = RepFlowResNet(18, 3, fusion=fusion, iterations=1, flow_channels=4).eval()
    assert (model.rgb is not None) == (fusion == "late")
    with torch.no_grad():
        assert model(_clip()).shape == (2, 3)


@pytest.mark.parametrize(("flow", "frames_out"), [("fof", 2), ("fcf", 2), ("fcfcf", 1)])
def test_flow_of_flow_variants(flow: str, frames_out: int) -> None:
    model = RepFlowResNet(18, 3, flow=flow, iterations=1, flow_channels=4).eval()
    with torch.no_grad():
        assert model.features(_clip(4)).shape[2] == frames_out
    with pytest.raises(VidactError, match="too short"):
        model(_clip(4 - frames_out))


def _pairwise_flow(layer: nn.Module, r: torch.Tensor) -> torch.Tensor:
    """The flow of each consecutive frame pair, one pair at a time: (N, k, T) -> (N, 2k, T-1)."""
    r = normalize_range(r)
    pairs = [layer(r[:, :, i], r[:, :, i + 1]) for i in range(r.shape[2] - 1)]
    return torch.stack(pairs, 2)


def _per_frame(conv: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return torch.stack([conv(x[:, :, i]) for i in range(x.shape[2])], 2)


def _literal_block(block: FlowBlock, x: torch.Tensor, conv_between: bool) -> torch.Tensor:
    """Fig. 6 step by step: reduce, then flow (-> conv -> flow ...), expand, BN, one residual."""
    r = _per_frame(block.reduce, x)
    for index, layer in enumerate(block.flows):
        if index > 0 and conv_between:
            r = _per_frame(block.between[index - 1], r)  # only a convolution in between
        r = _pairwise_flow(layer, r)
    y = _per_frame(lambda f: block.bn(block.expand(f)), r)
    return torch.relu(x[:, :, : y.shape[2]] + y)


@pytest.mark.parametrize(
    ("stacked", "conv_between", "expand_in"),
    [(1, False, 8), (2, False, 16), (2, True, 8), (3, True, 8)],
)
def test_flow_block_is_fig6_literally(stacked: int, conv_between: bool, expand_in: int) -> None:
    """FoF: flow layers back to back (4 -> 8 -> 16 channels); FcF, FcFcF: one 3x3 conv
    8 -> 4 between flow layers, no BN, ReLU or residual until the end."""
    torch.manual_seed(0)
    block = FlowBlock(6, flow_channels=4, stacked=stacked, conv_between=conv_between, iterations=3)
    _wake(block)
    block.eval()  # BN with running statistics: frames are independent, as in the reference
    x = torch.relu(torch.randn(2, 6, 5, 9, 9))
    assert block.expand.in_channels == expand_in
    assert len(block.between) == (stacked - 1 if conv_between else 0)
    assert all(isinstance(m, nn.Conv2d) for m in block.between)
    with torch.no_grad():
        out = block(x)
        torch.testing.assert_close(
            out, _literal_block(block, x, conv_between), atol=1e-4, rtol=1e-4
        )
    assert out.shape == (2, 6, 5 - stacked, 9, 9)
    assert not torch.allclose(out, x[:, :, : 5 - stacked])  # the flow branch did something


@pytest.mark.parametrize("flow", ["flow", "fof", "fcf", "fcfcf"])
def test_residual_flow_block_starts_as_the_identity(flow: str) -> None:
    """The last BN's gamma starts at 0 (released code): on post-ReLU features the block
    returns its input frames, so a pretrained trunk is unchanged at step 0."""
    model = RepFlowResNet(18, 3, flow=flow, iterations=2, flow_channels=4)
    assert model.flow is not None
    assert torch.equal(model.flow.bn.weight, torch.zeros(128))
    x = torch.relu(torch.randn(2, 128, 5, 6, 6))
    model.flow.train()  # batch statistics: the BN's output is still gamma * x_hat + beta = 0
    out = model.flow(x)
    torch.testing.assert_close(out, x[:, :, : out.shape[2]], atol=0, rtol=0)
    assert torch.equal(FlowBlock(8, 2, zero_init=False).bn.weight, torch.ones(8))


def _randomized(model: nn.Module) -> nn.Module:
    """Random weights and BN statistics everywhere, so that a load that misses a key shows."""
    torch.manual_seed(3)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.endswith("running_var"):
                tensor.uniform_(0.5, 1.5)
            elif tensor.is_floating_point():
                tensor.normal_(0.0, 0.05 if "weight" in name else 0.1)
    return model


def _torchvision_truncated(net: nn.Module, x: torch.Tensor, frames_used: int) -> torch.Tensor:
    """torchvision's own forward with the flow block's one effect at init, dropping the last
    `frames_used` frames after layer2 (block 3)."""
    x = net.layer2(net.layer1(net.stem(x)))
    x = x[:, :, : x.shape[2] - frames_used]
    x = net.avgpool(net.layer4(net.layer3(x))).flatten(1)
    return net.fc(x)


@pytest.mark.parametrize(
    ("name", "builder", "frames_used"),
    [
        ("rgb_r2plus1d_18", "r2plus1d_18", 0),
        ("repflow_fcf_r2plus1d_18", "r2plus1d_18", 2),
        ("rgb_r3d_18", "r3d_18", 0),
        ("repflow_r3d_18", "r3d_18", 1),
    ],
)
def test_torchvision_video_weights_load_key_for_key(
    name: str, builder: str, frames_used: int, tmp_path: Path
) -> None:
    """torchvision's own r2plus1d_18 / r3d_18 state dict loads strictly into the RGB network
    and, but for the flow block's keys, into the rep-flow one (as `weights`, a local .pth);
    with gamma = 0 both give torchvision's logits (the flow network those of the frames its
    block keeps)."""
    source = _randomized(getattr(torchvision.models.video, builder)(weights=None)).eval()
    state = source.state_dict()
    path = tmp_path / f"{builder}.pth"
    torch.save(state, path)
    model = build_model(name, num_classes=400, iterations=2, flow_channels=4, weights=str(path))
    own = model.state_dict()
    assert [k for k in own if k not in state and not k.startswith("flow.")] == []
    for key, value in state.items():
        assert torch.equal(own[key], value), key
    missing, unexpected = model.load_state_dict(state, strict=frames_used == 0)
    assert unexpected == [] and all(key.startswith("flow.") for key in missing)
    x = torch.randn(2, 3, 6, 16, 16)
    with torch.no_grad():
        expected = _torchvision_truncated(source, x, frames_used)
        if frames_used == 0:
            torch.testing.assert_close(source(x), expected)
        torch.testing.assert_close(model.eval()(x), expected, atol=1e-5, rtol=1e-4)


def test_gradients_reach_every_flow_parameter_in_a_network() -> None:
    model = build_model("repflow_fcf_resnet18", num_classes=3, iterations=2, learn="all")
    _wake(model)
    model.train()
    loss = torch.nn.functional.cross_entropy(model(_clip()), torch.tensor([0, 2]))
    loss.backward()
    params = list(flow_parameters(model))
    assert len(params) == 2 * 9
    for p in params:
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0


def test_non_local_dropout_and_frame_options() -> None:
    model = build_model("repflow_fcf_r2plus1d_18", num_classes=3, non_local=True, dropout=0.8)
    assert model.non_local is not None and model.dropout.p == 0.8
    with pytest.raises(VidactError, match="too short"):
        build_model("repflow_resnet18", num_classes=3, num_frames=1)
    # (2+1)D halves time in layer2: block 3 sees ceil(T / 2) frames, FcF needs 3 there
    with pytest.raises(VidactError, match="at least 5 frames"):
        build_model("repflow_fcf_r2plus1d_18", num_classes=3, num_frames=4)
    build_model("repflow_fcf_r2plus1d_18", num_classes=3, num_frames=5)
    with pytest.raises(VidactError, match="fusion"):
        build_model("repflow_resnet18", num_classes=3, fusion="sum")


def test_parameter_counts() -> None:
    """Recorded in docs/models.md. The paper: 2D ResNet-34 + rep. flow has about half the
    parameters of the two-stream ResNet-34 (21M vs 42M)."""
    names = [
        "repflow_resnet18",
        "repflow_resnet34",
        "repflow_resnet50",
        "repflow_fcf_resnet34",
        "repflow_fcf_resnet50",
        "rgb_r2plus1d_18",
        "repflow_r2plus1d_18",
        "repflow_fcf_r2plus1d_18",
        "repflow_fcf_r2plus1d_50",
        "rgb_r3d_18",
        "repflow_r3d_18",
        "two_stream_resnet34",
    ]
    with torch.device("meta"):
        counts = {n: count_params(build_model(n, num_classes=400)) for n in names}
        tv = {
            n: count_params(getattr(torchvision.models.video, n)())
            for n in ("r2plus1d_18", "r3d_18")
        }
    assert counts["rgb_r2plus1d_18"] == tv["r2plus1d_18"]
    assert counts["rgb_r3d_18"] == tv["r3d_18"]
    assert counts == {
        "repflow_resnet18": 11_459_835,
        "repflow_resnet34": 21_567_995,
        "repflow_resnet50": 24_639_995,
        "repflow_fcf_resnet34": 21_586_438,
        "repflow_fcf_resnet50": 24_658_438,
        "rgb_r2plus1d_18": 31_505_325,
        "repflow_r2plus1d_18": 31_583_448,
        "repflow_fcf_r2plus1d_18": 31_601_891,
        "repflow_fcf_r2plus1d_50": 54_280_497,
        "rgb_r3d_18": 33_371_472,
        "repflow_r3d_18": 33_449_595,
        "two_stream_resnet34": 43_033_056,
    }
    ratio = counts["repflow_resnet34"] / counts["two_stream_resnet34"]
    assert 0.49 < ratio < 0.51
