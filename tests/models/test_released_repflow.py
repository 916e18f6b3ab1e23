"""repflow_released_r50 computes what the rep-flow authors' released Kinetics network
computes (a literal reference of it in the tests, float64), and their state dict loads."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn
from typer.testing import CliRunner

from tests.models.reference_flow import reference_flow_of
from tests.models.released_repflow_reference import FlowLayer, ResNet3D, SamePadding, randomize
from vidact.cli import app
from vidact.engine.checkpoint import load_checkpoint, load_matching
from vidact.errors import VidactError
from vidact.models import build_model
from vidact.models.released import flow_layer_state, released_state, repflow_state
from vidact.models.released_repflow import (
    ReleasedFlowLayer,
    ReleasedRepFlowNet,
    flipped_range,
    image_gradient,
    same_pad,
    stage_kernels,
)
from vidact.models.rep_flow import RepresentationFlow, flow_parameters


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _layer_pair(channels: int, seed: int) -> tuple[FlowLayer, ReleasedFlowLayer]:
    torch.manual_seed(seed)
    ref = FlowLayer(channels).double()
    randomize(ref, seed=seed)
    fast = ReleasedFlowLayer(channels).double()
    fast.load_state_dict(flow_layer_state(ref.state_dict(), fast))
    return ref, fast


@pytest.mark.parametrize(("seed", "shape"), [(0, (2, 8, 4, 6, 7)), (1, (1, 8, 3, 2, 5))])
def test_flow_layer_equals_the_literal_reference_forward_and_gradients(
    seed: int, shape: tuple[int, ...]
) -> None:
    ref, fast = _layer_pair(shape[1], seed)
    x = torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    for mode in (True, False):  # train (batch statistics), then eval
        ref.train(mode), fast.train(mode)
        xr, xf = x.clone().requires_grad_(), x.clone().requires_grad_()
        out_ref, out_fast = ref(xr), fast(xf)
        assert min(ref.cases) > 0, ref.cases  # all three cases of Eq. 3 are hit
        torch.testing.assert_close(out_fast, out_ref, rtol=1e-9, atol=1e-9)
        weights = torch.randn_like(out_ref)
        (out_ref * weights).sum().backward()
        (out_fast * weights).sum().backward()
        torch.testing.assert_close(xf.grad, xr.grad, rtol=1e-8, atol=1e-9)
        grads = {**ref.state_dict(), **{k: p.grad for k, p in ref.named_parameters()}}
        mapped = flow_layer_state(grads, fast)
        for key, param in fast.named_parameters():
            assert param.grad is not None and mapped[key] is not None, key
            torch.testing.assert_close(param.grad, mapped[key], rtol=1e-7, atol=1e-9)
            if min(shape[-2:]) >= 3:  # (2-px maps are all border: no interior gradient)
                assert mapped[key].abs().sum() > 0, key  # every parameter takes part
        ref.zero_grad(), fast.zero_grad()


def test_checkpointed_and_plain_iterations_agree() -> None:
    _, fast = _layer_pair(8, 2)
    plain = ReleasedFlowLayer(8, checkpoint=False).double()
    plain.load_state_dict(fast.state_dict())
    x = torch.randn(2, 8, 3, 5, 5, dtype=torch.float64)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    fast(xa).square().sum().backward()
    plain(xb).square().sum().backward()
    torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-12, atol=1e-12)


def test_the_feature_range_is_taken_over_the_whole_batch() -> None:
    """Their norm_img: one min and max for all clips, so a clip's output depends on the
    other clips of its batch (and the range is [-255, 0])."""
    _, fast = _layer_pair(8, 3)
    fast.eval()
    x = torch.randn(2, 8, 3, 5, 5, dtype=torch.float64)
    with torch.no_grad():
        together = fast(x)[:1]
        other = fast(torch.cat([x[:1], 10 * x[1:]]))[:1]
        scaled = flipped_range(fast.reduce(x))
    assert not torch.allclose(together, other)
    assert scaled.max().item() == pytest.approx(0.0) and scaled.min().item() == pytest.approx(-255)


def test_same_padding_matches_the_reference_and_tensorflow_sizes() -> None:
    for size in range(5, 10):
        for stride in (1, 2):
            x = torch.randn(1, 1, size, size, size)
            kernel, strides = (3, 3, 3), (stride, stride, stride)
            torch.testing.assert_close(
                same_pad(x, kernel, strides), SamePadding(kernel, strides)(x), rtol=0, atol=0
            )
            out = nn.functional.max_pool3d(same_pad(x, kernel, strides), 3, stride)
            assert out.shape[-1] == -(-size // stride)  # TF SAME: ceil(size / stride)


def _expected_parameters(num_classes: int) -> int:
    """Counted from the structure: stem + BN, bottlenecks (kt,1,1) / (1,3,3) / 1x1x1 with
    their BNs, projections with two BNs, the flow layer, the 1x1x1 classifier."""
    total = 3 * 64 * 7**3 + 2 * 64
    cin = 64
    for width, blocks in zip((64, 128, 256, 512), (3, 4, 6, 3), strict=True):
        for i, kt in enumerate(stage_kernels(blocks)):
            inp = cin if i == 0 else 4 * width
            total += inp * width * kt + width * width * 9 + width * 4 * width
            total += 2 * (width + width + 4 * width)
            if i == 0:
                total += inp * 4 * width + 2 * 2 * 4 * width
        cin = 4 * width
    k = 32
    total += 512 * k + 2 * k * 512 + 2 * 512  # reduce, expand, BN
    total += 2 * k * k * 3 + 4 * k * k * 2 + 3  # image gradient, grad u / div, t l a
    return total + 2048 * num_classes + num_classes


def test_trunk_structure_and_parameter_count() -> None:
    assert [stage_kernels(n) for n in (3, 4, 6, 3)] == [
        [3, 3, 1], [3, 3, 1, 3], [3, 3, 1, 3, 1, 3], [3, 3, 1],
    ]  # fmt: skip
    with torch.device("meta"):
        model = build_model("repflow_released_r50", 400)
        ref = ResNet3D(400)
    count = sum(p.numel() for p in model.parameters())
    assert count == sum(p.numel() for p in ref.parameters()) == _expected_parameters(400)
    assert count == 29_805_651
    own, theirs = model.state_dict(), ref.state_dict()
    mapped = released_state(theirs, model)  # every tensor of theirs has its place
    assert mapped.keys() == own.keys()
    assert all(mapped[k].shape == own[k].shape for k in own)
    stage = model.stages[2]  # type: ignore[index]
    assert [b.conv1.kernel_size[0] for b in stage] == [3, 3, 1, 3, 1, 3]  # type: ignore[union-attr]
    assert model.stem_bn.eps == 1e-3 and model.stem_bn.momentum == 0.01  # type: ignore[union-attr]


def test_the_flow_layer_sits_after_res3_on_512_channels() -> None:
    model = build_model("repflow_released_r50", 5).eval()
    seen: list[tuple[int, ...]] = []
    model.flow.register_forward_hook(lambda m, i, o: seen.append(tuple(i[0].shape)))  # type: ignore[union-attr, operator]
    with torch.no_grad():
        assert model(torch.randn(1, 3, 16, 32, 32)).shape == (1, 5)
    # stem VALID: 16 -> 5 frames, 32 -> 13 px; SAME pool: 3 frames, 7 px; res3: 4 px
    assert seen == [(1, 512, 3, 4, 4)]


def test_the_flow_lr_group_is_their_list() -> None:
    """train_model.py: img_grad(2), f_grad(2), t, l, a at 0.01 x lr; div, div2 not."""
    with torch.device("meta"):
        model = build_model("repflow_released_r50", 7)
    names = {id(p): n for n, p in model.named_parameters()}
    scaled = sorted(names[id(p)] for p in flow_parameters(model))
    assert scaled == sorted(
        f"flow.{n}" for n in ("image_grad_x", "image_grad_y", "grad_x", "grad_y", "lam", "tau",
                              "theta")
    )  # fmt: skip


def _saved_reference(folder: Path, classes: int = 7, prefix: str = "") -> tuple[ResNet3D, Path]:
    torch.manual_seed(4)
    net = ResNet3D(classes)
    randomize(net, seed=5)
    path = folder / f"rep_flow{prefix.strip('.')}.pt"
    torch.save({prefix + k: v for k, v in net.state_dict().items()}, path)  # float32
    return net.double().eval(), path


@pytest.fixture(scope="module")
def released(tmp_path_factory: pytest.TempPathFactory) -> tuple[ResNet3D, Path]:
    return _saved_reference(tmp_path_factory.mktemp("released_repflow"))


def test_their_state_dict_loads_through_model_weights_and_gives_their_logits(
    released: tuple[ResNet3D, Path],
) -> None:
    ref, path = released
    model = build_model("repflow_released_r50", 7, weights=str(path)).double().eval()
    clips = torch.randn(2, 3, 16, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        expected, got = ref(clips), model(clips)
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-10)
    assert expected.std() > 0.05  # logits that can tell a wrong map apart
    assert isinstance(model, ReleasedRepFlowNet)
    assert model.released_input["mean"] == (0.5, 0.5, 0.5)  # RGB in [-1, 1]


def test_a_dataparallel_file_loads_too_and_trains_like_theirs(tmp_path: Path) -> None:
    ref, path = _saved_reference(tmp_path, prefix="module.")
    model = build_model("repflow_released_r50", 7, weights=str(path), dropout=0.0).double()
    ref.dropout.p = 0.0
    clips = torch.randn(2, 3, 12, 24, 24, dtype=torch.float64)
    ref.eval(), model.eval()  # gradients with fixed statistics: every path of the network
    a, b = clips.clone().requires_grad_(), clips.clone().requires_grad_()
    out_ref, out = ref(a), model(b)
    torch.testing.assert_close(out, out_ref, rtol=1e-9, atol=1e-10)
    (out_ref * torch.arange(7.0)).sum().backward()
    (out * torch.arange(7.0)).sum().backward()
    torch.testing.assert_close(b.grad, a.grad, rtol=1e-8, atol=1e-12)
    ref.train(), model.train()  # batch statistics and their running averages
    with torch.no_grad():
        out_ref, out = ref(clips), model(clips)
    # res5's BN sees 2 clips x 1 frame x 1 px here: it amplifies rounding to ~1e-8.
    torch.testing.assert_close(out, out_ref, rtol=1e-6, atol=1e-7)
    theirs = repflow_state(ref.state_dict(), model)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, theirs[key], rtol=1e-6, atol=1e-8)


def test_finetune_from_their_file_keeps_everything_but_the_classifier(
    released: tuple[ResNet3D, Path],
) -> None:
    model = build_model("repflow_released_r50", 3)
    loaded, fresh = load_matching(model, load_checkpoint(released[1])["model"])
    assert fresh == ["classify.bias", "classify.weight"]
    assert len(loaded) == len(model.state_dict()) - 2


def test_mismatches_are_one_clear_line(released: tuple[ResNet3D, Path]) -> None:
    path = released[1]
    with pytest.raises(VidactError, match="classifies 7 classes, the model 5"):
        build_model("repflow_released_r50", 5, weights=str(path))
    with pytest.raises(VidactError, match="loads into model.name: repflow_released_r50"):
        build_model("ctnet_resnet50", 7, weights=str(path))
    with pytest.raises(VidactError, match="no torchvision weights"):
        build_model("repflow_released_r50", 7, weights="IMAGENET1K_V1")
    with pytest.raises(VidactError, match="num_frames >= 11"):
        build_model("repflow_released_r50", 7, num_frames=8)
    state = load_checkpoint(path)["model"]
    with torch.device("meta"):
        model = build_model("repflow_released_r50", 7)
        deeper = ResNet3D(7, layers=(3, 4, 23, 3)).state_dict()
    with pytest.raises(VidactError, match=r"\(3, 4, 23, 3\) blocks per stage"):
        repflow_state(deeper, model)
    with pytest.raises(VidactError, match="1 tensors this model does not use"):
        repflow_state({**state, "rep_flow.extra": torch.zeros(1)}, model)
    missing = {k: v for k, v in state.items() if k != "res4.blocks.2.layers.6.running_var"}
    with pytest.raises(VidactError, match="no res4.blocks.2.layers.6.running_var"):
        repflow_state(missing, model)
    wider = {**state, "rep_flow.img_grad": torch.zeros(16, 16, 1, 3)}
    with pytest.raises(VidactError, match=r"rep_flow.img_grad has shape \(16, 16, 1, 3\)"):
        repflow_state(wider, model)
    old = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    assert repflow_state(old, model).keys() < model.state_dict().keys()  # torch < 0.4.1
    with pytest.raises(VidactError, match="too little for the flow layer"):
        build_model("repflow_released_r50", 7).eval()(torch.zeros(1, 3, 10, 32, 32))


def test_evaluate_their_checkpoint_with_the_shipped_recipe(
    synthetic_root: Path, tmp_path: Path
) -> None:
    """The docs' one command, on a tiny dataset: the recipe's input scaling and batch 1."""
    _, path = _saved_reference(tmp_path, classes=4)
    recipe = Path(__file__).parents[2] / "recipes" / "repflow_released_kinetics400.yaml"
    out = tmp_path / "eval"
    sets = [f"data.root={synthetic_root}", "data.num_frames=12", "data.short_side=32",
            "data.input_size=32", "data.num_workers=0"]  # fmt: skip
    args = ["evaluate", str(path), "--recipe", str(recipe), "--out", str(out)]
    result = CliRunner().invoke(app, [*args, *(x for s in sets for x in ("--set", s))])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "metrics.json").read_text())["videos"] == 4
    loaded = yaml.safe_load(recipe.read_text())
    assert loaded["data"]["mean"] == list(ReleasedRepFlowNet.released_input["mean"])  # type: ignore[call-overload]
    assert loaded["data"]["std"] == list(ReleasedRepFlowNet.released_input["std"])  # type: ignore[call-overload]
    assert loaded["eval"]["batch_size"] == 1


# --------------------------------------------- the released image gradient in vidact's layer
def _feature_pair() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(6)
    f1 = torch.rand(2, 3, 9, 11, generator=g, dtype=torch.float64) * 255
    f2 = (f1 + torch.randn(2, 3, 9, 11, generator=g, dtype=torch.float64) * 20).clamp(0, 255)
    return f1, f2


def test_central_image_gradient_is_the_released_one_per_channel() -> None:
    """RepresentationFlow(image_grad="central") uses their image gradient in its grouped
    form: the released layer's with channel-diagonal kernels."""
    f1, f2 = _feature_pair()
    eye = torch.eye(3, dtype=torch.float64).view(3, 3, 1, 1)
    kx = eye * torch.tensor([-0.5, 0.0, 0.5], dtype=torch.float64).view(1, 1, 1, 3)
    gx, gy = image_gradient(f1, f2, kx, kx.transpose(2, 3))
    layer = RepresentationFlow(image_grad="central").double()
    terms = layer._terms(f1.reshape(6, 1, 9, 11), f2.reshape(6, 1, 9, 11))
    torch.testing.assert_close(terms.grad_f2.reshape(2, 3, 2, 9, 11), torch.stack([gx, gy], 2))


@pytest.mark.parametrize("learn", [("divergence", "tvl1"), "tvl1"])
def test_fast_layer_with_the_central_gradient_matches_the_literal_algorithm(
    learn: str | tuple[str, ...],
) -> None:
    """The hand-written backward carries over: forward and gradients wrt F1, F2 and every
    learnable parameter against reference_flow with the released image gradient."""
    f1, f2 = (t.requires_grad_() for t in _feature_pair())
    layer = RepresentationFlow(iterations=5, learn=learn, image_grad="central").double()
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    out, ref = layer(f1, f2), reference_flow_of(layer, f1, f2)
    torch.testing.assert_close(out, ref, rtol=1e-8, atol=1e-9)
    weights = torch.randn_like(out)
    inputs = [f1, f2, *layer.parameters()]
    got = torch.autograd.grad((out * weights).sum(), inputs)
    want = torch.autograd.grad((ref * weights).sum(), inputs)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-9 * b.abs().max().item())
    with pytest.raises(VidactError, match="image_grad='prewitt' must be one of"):
        RepresentationFlow(image_grad="prewitt")
