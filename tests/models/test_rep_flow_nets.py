"""Representation-flow networks: shapes of every name, positions, fusions, FoF variants,
gradients into the flow parameters, parameter counts (recorded in docs/models.md)."""

from __future__ import annotations

import pytest
import torch

from vidact.errors import VidactError
from vidact.models import build_model, list_models
from vidact.models.rep_flow import flow_parameters
from vidact.models.rep_flow_nets import POSITIONS, RepFlowResNet, count_parameters

NAMES = [n for n in list_models() if n.startswith(("repflow_", "rgb_r"))]


def _clip(t: int = 3, size: int = 32) -> torch.Tensor:
    return torch.randn(2, 3, t, size, size)


@pytest.mark.parametrize("name", NAMES)
def test_every_registered_network_gives_logits(name: str) -> None:
    model = build_model(name, num_classes=3, iterations=2).eval()
    with torch.no_grad():
        assert model(_clip(4)).shape == (2, 3)


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


def test_gradients_reach_every_flow_parameter_in_a_network() -> None:
    model = build_model("repflow_fcf_resnet18", num_classes=3, iterations=2, learn="all")
    model.train()
    loss = torch.nn.functional.cross_entropy(model(_clip()), torch.tensor([0, 2]))
    loss.backward()
    params = list(flow_parameters(model))
    assert len(params) == 2 * 9
    for p in params:
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0


def test_non_local_and_dropout_options() -> None:
    model = build_model("repflow_fcf_r2plus1d_18", num_classes=3, non_local=True, dropout=0.8)
    assert model.non_local is not None and model.head.dropout.p == 0.8
    with pytest.raises(VidactError, match="too short"):
        build_model("repflow_resnet18", num_classes=3, num_frames=1)
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
        "repflow_r2plus1d_18",
        "repflow_fcf_r2plus1d_18",
        "repflow_r3d_18",
        "two_stream_resnet34",
    ]
    with torch.device("meta"):
        counts = {n: count_parameters(build_model(n, num_classes=400)) for n in names}
    assert counts == {
        "repflow_resnet18": 11_459_835,
        "repflow_resnet34": 21_567_995,
        "repflow_resnet50": 24_639_995,
        "repflow_fcf_resnet34": 21_646_118,
        "repflow_fcf_resnet50": 24_952_358,
        "repflow_r2plus1d_18": 15_650_043,
        "repflow_fcf_r2plus1d_18": 15_728_166,
        "repflow_r3d_18": 33_449_595,
        "two_stream_resnet34": 43_033_056,
    }
    ratio = counts["repflow_resnet34"] / counts["two_stream_resnet34"]
    assert 0.49 < ratio < 0.51
