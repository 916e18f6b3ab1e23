"""Baselines: shapes, flow first-conv adaptation, parameter counts, two-stream input forms."""

from __future__ import annotations

import pytest
import torch

from vidact.errors import VidactError
from vidact.models import baselines, build_model


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", ["tsn_resnet18", "tsn_resnet50"])
def test_tsn_shapes(name: str) -> None:
    model = build_model(name, num_classes=5, dropout=0.0).eval()
    assert model(torch.randn(2, 3, 3, 32, 32)).shape == (2, 5)


def test_tsn_averages_frame_scores() -> None:
    model = build_model("tsn_resnet18", num_classes=4, dropout=0.0).eval()
    clip = torch.randn(1, 3, 2, 32, 32)
    per_frame = [model(clip[:, :, i : i + 1]) for i in range(2)]
    torch.testing.assert_close(model(clip), (per_frame[0] + per_frame[1]) / 2)


def test_flow_resnet34_stacks_and_adapts_first_conv() -> None:
    model = build_model("flow_resnet34", num_classes=3, stack=2, dropout=0.0).eval()
    assert isinstance(model, baselines.FlowResNet)
    w = model.backbone.conv1.weight
    assert w.shape == (64, 4, 7, 7)
    torch.testing.assert_close(w[:, 0], w[:, 3])  # the RGB mean, repeated 2L times
    assert model(torch.randn(2, 2, 4, 32, 32)).shape == (2, 3)
    with pytest.raises(VidactError, match="multiple of stack=2"):
        model(torch.randn(1, 2, 3, 32, 32))


def test_two_stream_takes_one_or_two_tensors() -> None:
    model = build_model("two_stream_resnet34", num_classes=3, stack=1, dropout=0.0).eval()
    rgb, flow = torch.randn(1, 3, 2, 32, 32), torch.randn(1, 2, 2, 32, 32)
    torch.testing.assert_close(model(torch.cat([rgb, flow], 1)), model(rgb, flow))
    expected = (model.rgb(rgb) + model.flow(flow)) / 2
    torch.testing.assert_close(model(rgb, flow), expected)


def test_parameter_counts() -> None:
    """Recorded in docs/models.md; the paper: rep-flow R34 ~21M vs two-stream 42M."""
    with torch.device("meta"):
        counts = {
            name: n_params(build_model(name, num_classes=400))
            for name in ("tsn_resnet18", "tsn_resnet34", "tsn_resnet50", "tsn_resnet101")
        }
        counts["flow_resnet34"] = n_params(build_model("flow_resnet34", num_classes=400))
        counts["two_stream_resnet34"] = n_params(
            build_model("two_stream_resnet34", num_classes=400)
        )
    assert counts == {
        "tsn_resnet18": 11_381_712,
        "tsn_resnet34": 21_489_872,
        "tsn_resnet50": 24_327_632,
        "tsn_resnet101": 43_319_760,
        "flow_resnet34": 21_543_184,
        "two_stream_resnet34": 43_033_056,
    }


def test_tsn_classifier_starts_as_tsn_code_initialises_it() -> None:
    torch.manual_seed(0)
    fc = build_model("tsn_resnet50", num_classes=400).head.fc
    assert torch.count_nonzero(fc.bias) == 0
    assert abs(fc.weight.std().item() - 0.001) < 2e-5  # N(0, 0.001), 819,200 draws
    assert abs(fc.weight.mean().item()) < 1e-5
