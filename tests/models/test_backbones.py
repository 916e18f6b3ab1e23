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
    if arch == "r2plus1d":  # (2+1)D middle widths have no 2D counterpart
        with pytest.raises(VidactError, match="unknown weights 'IMAGENET1K_V1' for r2plus1d"):
            backbones.video_resnet(arch, 18, "IMAGENET1K_V1")
    with pytest.raises(VidactError, match="local .pth"):
        backbones.video_resnet(arch, 50, "KINETICS400_V1")  # type: ignore[arg-type]


def test_imagenet_weights_inflate_into_r3d_as_i3d(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """I3D inflation (kernel repeated over 3 frames / 3) keeps the 2D features on a clip of
    identical frames, away from the temporal zero padding (eval-mode BN). The r3d stem has
    no max-pool, so the 2D reference skips it too."""
    torch.manual_seed(1)
    src = backbones.resnet2d(18).eval()
    with torch.no_grad():
        for m in src.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1), m.running_var.uniform_(0.5, 1.5)
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    url = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url
    torch.save(src.state_dict(), cache / Path(url).name)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    monkeypatch.setattr(torch.hub, "download_url_to_file", _no_download)
    net = backbones.video_resnet("r3d", 18, "IMAGENET1K_V1").eval()
    frame = torch.randn(1, 3, 16, 16)
    clip = frame.unsqueeze(2).repeat(1, 1, 11, 1, 1)
    with torch.no_grad():
        ref = src.layer1(src.relu(src.bn1(src.conv1(frame))))
        out = net.layer1(net.stem(clip))
    # temporal receptive radius 1 (stem) + 4 (layer1): the middle frame never sees padding
    torch.testing.assert_close(out[:, :, 5], ref, rtol=1e-4, atol=1e-4)


def _no_download(*args: object, **kwargs: object) -> None:
    raise AssertionError("a test tried to download weights")


def test_nonlocal_starts_as_identity() -> None:
    block = backbones.NonLocalBlock(16)
    y = torch.randn(2, 16, 3, 5, 5)
    torch.testing.assert_close(block(y), y)
    block.bn.weight.data.fill_(1.0)
    assert not torch.allclose(block(y), y)
