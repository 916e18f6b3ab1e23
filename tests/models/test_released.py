"""The authors' released CT-Net / TSN checkpoints load into vidact's networks and compute
what a literal reference of their network computes (float64, random BN statistics)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn
from typer.testing import CliRunner

from tests.models.released_reference import (
    ReferenceInteraction,
    ReferenceNet,
    randomize,
    released_file,
)
from vidact.cli import app
from vidact.engine.checkpoint import load_checkpoint, load_matching
from vidact.errors import VidactError
from vidact.models import build_model
from vidact.models.ct_module import CTModule
from vidact.models.released import channel_permutation, ct_module_state, released_state


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _pair(channels: int, t: int) -> tuple[ReferenceInteraction, CTModule]:
    torch.manual_seed(channels)
    ref = ReferenceInteraction(channels, t).double()
    randomize(ref, seed=channels)
    fast = CTModule(channels).double()
    fast.load_state_dict(ct_module_state(ref.state_dict(), fast))
    return ref, fast


@pytest.mark.parametrize("channels", [16, 32, 64])
def test_reference_module_equals_the_fast_one_after_the_permutation(channels: int) -> None:
    t = 4
    ref, fast = _pair(channels, t)
    perm = channel_permutation(fast)
    assert sorted(perm.tolist()) == list(range(channels))
    x = torch.randn(2 * t, channels, 6, 5, dtype=torch.float64)
    for mode in (False, True):  # eval (running statistics), then train (batch statistics)
        ref.train(mode), fast.train(mode)
        xr, xf = x.clone().requires_grad_(), x.clone().requires_grad_()
        out_ref, out_fast = ref(xr)[:, perm], fast(xf, t)
        torch.testing.assert_close(out_fast, out_ref, rtol=1e-10, atol=1e-12)
        weights = torch.randn_like(out_fast)
        (out_ref * weights).sum().backward()
        (out_fast * weights).sum().backward()
        torch.testing.assert_close(xf.grad, xr.grad, rtol=1e-9, atol=1e-11)
        grads = {**ref.state_dict(), **{k: p.grad for k, p in ref.named_parameters()}}
        mapped = ct_module_state(grads, fast)  # their gradients in vidact's layout
        for key, param in fast.named_parameters():
            torch.testing.assert_close(param.grad, mapped[key], rtol=1e-9, atol=1e-11)
        ref.zero_grad(), fast.zero_grad()
    # BN running statistics updated in train mode agree too (permuted like the weights).
    state = ct_module_state(ref.state_dict(), fast)
    for key, value in fast.state_dict().items():
        torch.testing.assert_close(value, state[key], rtol=1e-10, atol=1e-12)


def test_without_the_permutation_the_function_differs() -> None:
    """Loading their tensors by position alone gives another function (why the fold)."""
    ref, fast = _pair(32, 4)
    state = ct_module_state(ref.state_dict(), fast)
    inverse = torch.argsort(channel_permutation(fast))
    for key in [k for k in state if k.startswith("pwconvs.0.") and state[k].dim() >= 1]:
        state[key] = state[key][inverse]  # undo the fold
    fast.load_state_dict(state)
    ref.eval(), fast.eval()
    x = torch.randn(8, 32, 5, 5, dtype=torch.float64)
    perm = channel_permutation(fast)
    assert not torch.allclose(fast(x, 4), ref(x)[:, perm], rtol=1e-3, atol=1e-6)


def _saved_reference(folder: Path, ct: bool, classes: int = 7) -> tuple[ReferenceNet, Path]:
    torch.manual_seed(1)
    net = ReferenceNet(50, classes, t=3, ct=ct)
    randomize(net, seed=2)
    path = folder / ("ct_net_8f_r50.pth.tar" if ct else "tsn_r50.pth.tar")
    torch.save(released_file(net), path)  # float32 tensors, as released
    return net.double().eval(), path


@pytest.fixture(scope="module")
def released(tmp_path_factory: pytest.TempPathFactory) -> dict[bool, tuple[ReferenceNet, Path]]:
    """{ct: (reference network, its checkpoint)} for CT-Net-R50 and TSN-R50, 7 classes."""
    folder = tmp_path_factory.mktemp("released")
    return {ct: _saved_reference(folder, ct) for ct in (True, False)}


@pytest.mark.parametrize(("ct", "name"), [(True, "ctnet_resnet50"), (False, "tsn_resnet50")])
def test_a_released_checkpoint_loads_through_model_weights_and_gives_its_logits(
    released: dict[bool, tuple[ReferenceNet, Path]], ct: bool, name: str
) -> None:
    ref, path = released[ct]
    model = build_model(name, 7, weights=str(path)).double().eval()
    clips = torch.randn(2, 3, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        expected, got = ref(clips), model(clips)
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-11)
    assert expected.std() > 0.1  # logits that can tell a wrong map apart


def test_finetune_from_a_released_checkpoint_keeps_everything_but_the_head(
    released: dict[bool, tuple[ReferenceNet, Path]],
) -> None:
    path = released[True][1]
    model = build_model("ctnet_resnet50", 3)
    loaded, fresh = load_matching(model, load_checkpoint(path)["model"])
    assert fresh == ["fc.bias", "fc.weight"]
    assert len(loaded) == len(model.state_dict()) - 2


def test_mismatches_are_one_clear_line(released: dict[bool, tuple[ReferenceNet, Path]]) -> None:
    ct_path, tsn_path = released[True][1], released[False][1]
    with torch.device("meta"):
        with pytest.raises(VidactError, match="classifies 7 classes, the model 5"):
            build_model("ctnet_resnet50", 5, weights=str(ct_path))
        with pytest.raises(VidactError, match="ResNet-50 .*use model.name: ctnet_resnet50"):
            build_model("ctnet_resnet101", 7, weights=str(ct_path))
        with pytest.raises(VidactError, match="is CT-Net on ResNet-50 .* the model is TSN"):
            build_model("tsn_resnet50", 7, weights=str(ct_path))
        with pytest.raises(VidactError, match="released checkpoint is CT-Net .*7 CT-Blocks"):
            build_model("ctnet_resnet50", 7, weights=str(ct_path), ct_blocks="stage5")
        with pytest.raises(VidactError, match="is TSN on ResNet-50 .*use model.name: tsn_resnet50"):
            build_model("ctnet_resnet50", 7, weights=str(tsn_path))
        with pytest.raises(VidactError, match="K = 2 sub-operations with a fusion conv"):
            build_model("ctnet_resnet50", 7, weights=str(ct_path), pwconv=False)
    state = dict(load_checkpoint(ct_path)["model"])  # in memory: no file rewritten
    with torch.device("meta"):
        model = build_model("ctnet_resnet50", 7)
    extra = {**state, "base_model.extra.weight": torch.zeros(1)}
    with pytest.raises(VidactError, match="1 tensors this model does not use"):
        released_state(extra, model)
    missing = {
        k: v for k, v in state.items() if k != "base_model.layer2.1.conv2.fusion.1.running_var"
    }
    with pytest.raises(VidactError, match="no base_model.layer2.1.conv2.fusion.1.running_var"):
        released_state(missing, model)
    wider = {**state, "base_model.layer4.1.conv2.conv1_x.0.weight": torch.zeros(512, 32, 1, 5, 5)}
    with pytest.raises(VidactError, match=r"conv1_x.0.weight has shape \(512, 32, 5, 5\), the mod"):
        released_state(wider, model)
    with pytest.raises(VidactError, match="not into a"):
        load_matching(nn.Linear(2, 2), load_checkpoint(ct_path)["model"])


def _eval_recipe(tmp_path: Path, root: Path, name: str) -> Path:
    recipe = {
        "name": "released",
        "model": {"name": name, "weights": "IMAGENET1K_V1"},  # replaced by the file
        "data": {"root": str(root), "num_frames": 3, "sampler": "segment", "short_side": 32,
                 "input_size": 32, "num_workers": 0},
    }  # fmt: skip
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_evaluate_a_released_checkpoint_with_a_recipe(synthetic_root: Path, tmp_path: Path) -> None:
    _, path = _saved_reference(tmp_path, ct=False, classes=4)
    recipe = _eval_recipe(tmp_path, synthetic_root, "tsn_resnet50")
    out = tmp_path / "eval"
    args = ["evaluate", str(path), "--recipe", str(recipe), "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["videos"] == 4


def test_evaluate_refuses_another_class_count_in_one_line(
    released: dict[bool, tuple[ReferenceNet, Path]], synthetic_root: Path, tmp_path: Path
) -> None:
    recipe = _eval_recipe(tmp_path, synthetic_root, "ctnet_resnet50")
    args = ["evaluate", str(released[True][1]), "--recipe", str(recipe)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "classifies 7 classes, the model 4" in lines[0], result.output


@pytest.mark.parametrize(("depth", "ct"), [(101, True), (101, False)])
def test_resnet101_checkpoints_map_onto_every_tensor(depth: int, ct: bool) -> None:
    """Shapes only (meta device): every tensor of a released R101 file finds its place."""
    with torch.device("meta"):
        ref = ReferenceNet(depth, 400, t=8, ct=ct)
        model = build_model(f"{'ctnet' if ct else 'tsn'}_resnet{depth}", 400)
    state = released_file(ref)["state_dict"]
    assert isinstance(state, dict)
    mapped = released_state(state, model)
    assert mapped.keys() == model.state_dict().keys()
    if ct:
        assert len(model.ct_modules()) == 15  # type: ignore[operator]
