"""Backbones: 2D and video (R(2+1)D, R3D) construction, weight loading and its errors."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import pytest
import torch
import torchvision
from torchvision.models import video

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


def _m(n_in: int, n_out: int, t: int = 3, d: int = 3) -> int:
    """R(2+1)D's middle width (Tran et al. 2018, section 3.5), as the paper writes it."""
    return (t * d * d * n_in * n_out) // (d * d * n_in + t * n_out)


@pytest.mark.parametrize("depth", [18, 34, 50])
def test_r2plus1d_blocks_are_spatial_bn_relu_temporal_with_trans_middle_width(depth: int) -> None:
    with torch.device("meta"):
        net = backbones.video_resnet("r2plus1d", depth)
    pairs = [m for m in net.modules() if isinstance(m, video.resnet.Conv2Plus1D)]
    assert len(pairs) == {18: 16, 34: 32, 50: 16}[depth]
    for stage in (net.layer1, net.layer2, net.layer3, net.layer4):
        for block in stage:
            first = next(m for m in block.modules() if isinstance(m, torch.nn.Conv3d))
            n_in = first.in_channels  # the block's input width: torchvision's N_in
            for pair in (m for m in block.modules() if isinstance(m, video.resnet.Conv2Plus1D)):
                spatial, bn, relu, temporal = pair
                assert spatial.kernel_size == (1, 3, 3) and temporal.kernel_size == (3, 1, 1)
                assert isinstance(bn, torch.nn.BatchNorm3d) and isinstance(relu, torch.nn.ReLU)
                n_out = temporal.out_channels
                assert spatial.out_channels == _m(n_in, n_out) == bn.num_features
    x = torch.randn(1, 3, 8, 32, 32)
    net = backbones.video_resnet("r2plus1d", depth).eval()
    with torch.no_grad():
        y = net.layer4(net.layer3(net.layer2(net.layer1(net.stem(x)))))
    assert y.shape == (1, backbones.stage_channels(net)["layer4"], 1, 2, 2)  # time halves x3


@pytest.mark.parametrize("arch", ["r2plus1d", "r3d"])
def test_video_weights_come_from_the_torch_hub_cache(
    arch: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A torchvision weights name is read from $TORCH_HOME/hub/checkpoints, never fetched."""
    builder = getattr(video, f"{arch}_18")
    source = builder(weights=None)
    enum = torchvision.models.get_model_weights(f"{arch}_18")
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(source.state_dict(), cache / Path(enum.KINETICS400_V1.url).name)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    monkeypatch.setattr(torch.hub, "download_url_to_file", _no_download)
    net = backbones.video_resnet(arch, 18, "KINETICS400_V1")  # type: ignore[arg-type]
    for key, value in source.state_dict().items():
        assert torch.equal(net.state_dict()[key], value), key
    with pytest.raises(VidactError, match="unknown weights 'IMAGENET1K_V1' for " + arch):
        backbones.video_resnet(arch, 18, "IMAGENET1K_V1")  # type: ignore[arg-type]
    with pytest.raises(VidactError, match="local .pth"):
        backbones.video_resnet(arch, 50, "KINETICS400_V1")  # type: ignore[arg-type]


def _no_download(*args: object, **kwargs: object) -> None:
    raise AssertionError("a test tried to download weights")


def test_nonlocal_starts_as_identity() -> None:
    block = backbones.NonLocalBlock(16)
    y = torch.randn(2, 16, 3, 5, 5)
    torch.testing.assert_close(block(y), y)
    block.bn.weight.data.fill_(1.0)
    assert not torch.allclose(block(y), y)
