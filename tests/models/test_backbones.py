"""Backbones: 2D/3D/(2+1)D construction, I3D inflation, weight loading and its errors."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import pytest
import torch
import torchvision

from vidact.errors import VidactError
from vidact.models import backbones


def test_resnet2d_is_torchvision_and_random_by_default() -> None:
    a = backbones.resnet2d(18)
    b = backbones.resnet2d(18)
    assert isinstance(a, torchvision.models.ResNet)
    assert not torch.equal(a.conv1.weight, b.conv1.weight)
    with pytest.raises(VidactError, match="depth 19"):
        backbones.resnet2d(19)


def test_local_pth_loads_and_head_may_differ(tmp_path: Path) -> None:
    src = backbones.resnet2d(18)
    state = src.state_dict()
    state["fc.weight"] = torch.zeros(7, 512)  # a fine-tuned head of another size is ignored
    state["fc.bias"] = torch.zeros(7)
    path = tmp_path / "r18.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    dst = backbones.resnet2d(18, weights=path)
    assert torch.equal(dst.layer3[0].conv1.weight, src.layer3[0].conv1.weight)
    assert dst.fc.weight.shape == (1000, 512)


def test_weight_errors_are_clear(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(VidactError, match="not found"):
        backbones.resnet2d(18, weights=tmp_path / "missing.pth")
    r34 = tmp_path / "r34.pth"
    torch.save(backbones.resnet2d(34).state_dict(), r34)
    with pytest.raises(VidactError, match="do not fit resnet18"):
        backbones.resnet2d(18, weights=r34)
    with pytest.raises(VidactError, match="IMAGENET1K_V1"):
        backbones.resnet2d(18, weights="IMAGENET_V9")

    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(VidactError, match=r"resnet50 IMAGENET1K_V2.*local \.pth"):
        backbones.resnet2d(50, weights="ResNet50_Weights.IMAGENET1K_V2")


@pytest.mark.parametrize("mode", ["3d", "2plus1d"])
def test_video_resnet_matches_2d_on_a_static_clip(mode: str) -> None:
    """Inflation (I3D: kernel / t; (2+1)D: identity temporal conv) keeps the 2D features on a
    clip of identical frames, away from the temporal zero padding (eval-mode BN)."""
    torch.manual_seed(1)
    src = backbones.resnet2d(18).eval()
    copy = torchvision.models.resnet18()
    copy.load_state_dict(src.state_dict())
    net3d = backbones.inflate_resnet(copy, mode).eval()  # type: ignore[arg-type]
    frame = torch.randn(1, 3, 32, 32)
    clip = frame.unsqueeze(2).repeat(1, 1, 11, 1, 1)

    def stages(net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        for name in ("conv1", "bn1", "relu", "maxpool", "layer1"):
            x = getattr(net, name)(x)
        return x

    ref = stages(src, frame)
    out = stages(net3d, clip)
    assert out.shape == (1, 64, 11, 8, 8)
    # temporal receptive radius 1 (stem) + 4 (layer1): the middle frame never sees padding
    torch.testing.assert_close(out[:, :, 5], ref, rtol=1e-4, atol=1e-4)


def test_video_resnet_keeps_time_and_nonlocal_starts_as_identity() -> None:
    net = backbones.resnet3d(18, mode="2plus1d")
    x = torch.randn(1, 64, 4, 8, 8)
    assert net.layer2(net.layer1(x)).shape == (1, 128, 4, 4, 4)
    block = backbones.NonLocalBlock(16)
    y = torch.randn(2, 16, 3, 5, 5)
    torch.testing.assert_close(block(y), y)
    block.bn.weight.data.fill_(1.0)
    assert not torch.allclose(block(y), y)
