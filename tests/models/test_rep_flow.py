"""The representation flow layer: parity with the literal Algorithm 1, signs, units, blocks."""

from __future__ import annotations

import math

import pytest
import torch

from tests.models.reference_flow import reference_flow_of
from vidact.models import build_model
from vidact.models.rep_flow import (
    LAMBDA,
    THETA,
    FlowBlock,
    RepresentationFlow,
    flow_parameters,
    normalize_range,
)


def _pair(dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    f1 = torch.rand(2, 3, 12, 12, generator=g, dtype=dtype) * 255
    f2 = (f1 + torch.randn(2, 3, 12, 12, generator=g, dtype=dtype) * 20).clamp(0, 255)
    f2[:, :, :5, :5] = 100.0  # a flat patch: |grad F2|^2 == 0 there (Eq. 3's safe case)
    f1[:, :, :5, :5] = 100.0
    f1[0, 0, 1, 1] = 90.0  # ... with rho != 0 at one flat pixel
    return f1, f2


def test_inputs_hit_all_three_cases_of_eq3() -> None:
    """Guard for the parity test: its inputs exercise every branch of Eq. 3."""
    f1, f2 = _pair()
    pad = torch.nn.functional.pad(f2, (1, 1, 1, 1), mode="replicate")
    gx = (pad[..., 1:-1, 2:] - pad[..., 1:-1, :-2]) * 2  # enough to find the flat pixels
    rho = f2 - f1
    thr = LAMBDA * THETA * 64 * gx**2  # any positive threshold scale tells the cases apart
    assert (rho < -thr).any() and (rho > thr).any() and (rho.abs() <= thr).any()
    assert ((gx == 0) & (rho != 0)).any()


@pytest.mark.parametrize(
    ("learn", "normalize", "iterations"),
    [("all", False, 6), ("all", True, 4), (("divergence", "tvl1"), False, 6), ("none", True, 5)],
)
def test_fast_layer_matches_literal_algorithm(
    learn: str | tuple[str, ...], normalize: bool, iterations: int
) -> None:
    """Forward and gradients wrt F1, F2 and every learnable parameter, 1e-4 relative."""
    f1, f2 = (t.requires_grad_() for t in _pair())
    torch.manual_seed(1)
    layer = RepresentationFlow(iterations=iterations, learn=learn, normalize_sobel=normalize)
    layer = layer.double()
    with torch.no_grad():  # move off the printed values so that nothing is special-cased
        for p in layer.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    out = layer(f1, f2)
    ref = reference_flow_of(layer, f1, f2)
    assert out.shape == (2, 6, 12, 12)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-6)
    weights = torch.randn_like(out)
    inputs = [f1, f2, *layer.parameters()]
    assert len(inputs) == 2 + {"all": 7, "none": 0}.get(str(learn), 5)
    got = torch.autograd.grad((out * weights).sum(), inputs)
    want = torch.autograd.grad((ref * weights).sum(), inputs)
    for g, w in zip(got, want, strict=True):
        assert torch.isfinite(g).all()
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6 * w.abs().max().item())


@pytest.mark.parametrize("learn", ["all", "default"])
def test_float32_backward_paths_agree_withreference_flow_of(learn: str) -> None:
    """float32: the hand-written backward (printed Sobel), checkpointed autograd and plain
    autograd all match the literal reference within 1e-4 (relative to the norm)."""
    f1, f2 = (t.float().requires_grad_() for t in _pair())
    kwargs = {"learn": learn} if learn != "default" else {}
    layer = RepresentationFlow(iterations=5, **kwargs)  # type: ignore[arg-type]
    ref = reference_flow_of(layer, f1, f2)
    g_ref = torch.autograd.grad(ref.square().sum(), [f1, *layer.parameters()])
    for custom, checkpoint in ((True, True), (False, True), (False, False)):
        layer.custom_backward, layer.checkpoint = custom, checkpoint
        out = layer(f1, f2)
        assert ((out - ref).norm() / ref.norm()).item() < 1e-4
        g = torch.autograd.grad(out.square().sum(), [f1, *layer.parameters()])
        for a, b in zip(g, g_ref, strict=True):
            assert ((a - b).norm() / b.norm()).item() < 1e-4


def _pattern(dx: float, dy: float, n: int = 40) -> torch.Tensor:
    """A smooth textured image, translated by (dx, dy) pixels (analytically, sub-pixel)."""
    y, x = torch.meshgrid(torch.arange(n) * 1.0, torch.arange(n) * 1.0, indexing="ij")
    x, y = x - dx, y - dy
    return (
        127.5
        + 60 * torch.sin(2 * math.pi * x / 13 + 0.3) * torch.cos(2 * math.pi * y / 11)
        + 40 * torch.sin(2 * math.pi * (x + y) / 17)
    )


@pytest.mark.parametrize("normalize", [False, True])
def test_sign_convention_right_and_down_are_positive(normalize: bool) -> None:
    """Content moving right gives u_x > 0, moving down u_y > 0. The printed (unnormalised)
    Sobel gives the flow in 1/8 px: the mean of a 0.5 px shift is ~0.5 / 8. (Pointwise the
    unnormalised flow is noisy with the classic tau: its TV step is 8x too large.)"""
    layer = RepresentationFlow(iterations=20, learn="none", normalize_sobel=normalize)
    gain = 1.0 if normalize else 8.0
    still = _pattern(0, 0)[None, None]
    with torch.no_grad():
        right = layer(still, _pattern(0.5, 0)[None, None])[0, :, 6:-6, 6:-6].mean((1, 2))
        down = layer(still, _pattern(0, 0.5)[None, None])[0, :, 6:-6, 6:-6].mean((1, 2))
    assert 0.35 < right[0].item() * gain < 0.7 and abs(right[1].item()) * gain < 0.15
    assert 0.35 < down[1].item() * gain < 0.7 and abs(down[0].item()) * gain < 0.15


@pytest.mark.parametrize(("dx", "dy"), [(0.5, 0.0), (0.0, -0.5), (-0.3, 0.4)])
def test_subpixel_translation_in_pixels(dx: float, dy: float) -> None:
    """Normalised Sobel, fixed classic parameters, 50 iterations: the mean flow over the
    interior is the true shift within 0.1 px (20% of 0.5 px), measured: <= 0.07 px."""
    layer = RepresentationFlow(iterations=50, learn="none", normalize_sobel=True)
    with torch.no_grad():
        flow = layer(_pattern(0, 0)[None, None], _pattern(dx, dy)[None, None])[0]
    inner = flow[:, 6:-6, 6:-6].mean((1, 2))
    assert abs(inner[0].item() - dx) <= 0.1
    assert abs(inner[1].item() - dy) <= 0.1


def test_channels_are_independent_and_flat_input_is_safe() -> None:
    f1, f2 = _pair(torch.float32)
    layer = RepresentationFlow(iterations=4)
    base = layer(f1, f2)
    f2b = f2.clone()
    f2b[:, 1] = torch.rand_like(f2b[:, 1]) * 255  # change channel 1 only
    other = layer(f1, f2b)
    torch.testing.assert_close(other[:, [0, 1, 4, 5]], base[:, [0, 1, 4, 5]])
    assert not torch.allclose(other[:, 2:4], base[:, 2:4])
    flat = torch.full((1, 2, 8, 8), 50.0, requires_grad=True)
    out = layer(flat, flat + 3.0)
    out.sum().backward()
    assert torch.equal(out, torch.zeros_like(out))
    assert flat.grad is not None and torch.isfinite(flat.grad).all()


def test_learn_groups_and_flow_parameters() -> None:
    default = RepresentationFlow()
    assert sorted(n for n, _ in default.named_parameters()) == [
        "div_x",
        "div_y",
        "lam",
        "tau",
        "theta",
    ]
    assert not RepresentationFlow(learn="none").sobel_x.requires_grad
    assert len(list(RepresentationFlow(learn="all").parameters())) == 7
    model = build_model("repflow_fcf_resnet18", num_classes=3)
    assert len(list(flow_parameters(model))) == 2 * 5
    assert list(flow_parameters(build_model("tsn_resnet18", num_classes=3))) == []


def test_flow_block_shapes_alignment_and_gradients() -> None:
    torch.manual_seed(0)
    block = FlowBlock(8, flow_channels=4, iterations=3)
    torch.nn.init.ones_(block.bn.weight)  # gamma starts at 0 (a silent branch): wake it
    x = torch.randn(2, 8, 4, 10, 10, requires_grad=True)
    out = block(x)
    assert out.shape == (2, 8, 3, 10, 10)
    out.square().sum().backward()
    for p in flow_parameters(block):
        assert p.grad is not None and p.grad.abs().sum() > 0
    # with the flow branch silenced the residual shows the alignment: output t = input t
    torch.nn.init.zeros_(block.expand.weight)
    with torch.no_grad():
        torch.testing.assert_close(block(x), torch.relu(x[:, :, :3]))
    fof = FlowBlock(8, flow_channels=4, stacked=2, iterations=2)
    assert fof(x).shape == (2, 8, 2, 10, 10)
    assert fof.expand.in_channels == 16


def test_normalize_range_per_sample_and_channel() -> None:
    x = torch.randn(2, 3, 4, 5, 5) * torch.tensor([0.1, 1.0, 10.0]).view(1, 3, 1, 1, 1)
    y = normalize_range(x)
    torch.testing.assert_close(y.amin((2, 3, 4)), torch.zeros(2, 3))
    torch.testing.assert_close(y.amax((2, 3, 4)), torch.full((2, 3), 255.0))
