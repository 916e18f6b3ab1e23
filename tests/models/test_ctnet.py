"""CT-Net: the CT-Module, tensor excitation, CT-Blocks and parity with the paper's figures.

Parity figures are counted on the meta device (shapes only), everything else runs on tiny
clips (32 px, 4 frames).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import nn

from vidact.engine.profile import count_params_and_macs
from vidact.errors import VidactError
from vidact.models import build_model
from vidact.models.ct_module import CTModule, SubOp, channel_split, module_ops
from vidact.models.ctnet import CTBottleneck, CTNet, ct_block_indices

TINY = (2, 3, 4, 32, 32)  # N, C, T, H, W


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Tiny convolutions run faster on one thread, above all on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


PAPER_INPUT = (1, 3, 8, 256, 256)  # one 8-frame clip at 256 x 256, as the paper counts


def meta_counts(name: str, num_classes: int, **kwargs: object) -> tuple[float, float]:
    """(millions of parameters, GMACs per clip) of a registered model, built on meta."""
    with torch.device("meta"):
        model = build_model(name, num_classes=num_classes, **kwargs)
    params, macs = count_params_and_macs(model, PAPER_INPUT)
    return params / 1e6, macs / 1e9


# ----------------------------------------------------------------------- channel split
@pytest.mark.parametrize(
    ("channels", "split"), [(64, (8, 8)), (128, (16, 8)), (256, (16, 16)), (512, (32, 16))]
)
def test_channel_split_of_each_resnet_stage(channels: int, split: tuple[int, int]) -> None:
    assert channel_split(channels) == split
    assert sorted(split)[0] == max(
        d for d in range(1, 23) if channels % d == 0 and d * d <= channels
    )


def test_channel_split_other_widths_and_orders() -> None:
    assert channel_split(96) == (12, 8)
    assert channel_split(100) == (10, 10)
    assert channel_split(97) == (97, 1)  # a prime: full conv, then depthwise
    assert channel_split(512, 3) == (8, 8, 8)
    assert channel_split(128, 3) == (8, 4, 4)
    assert channel_split(64, 1) == (64,)
    for c in (48, 96, 160, 192, 320, 2048):
        for k in (2, 3, 4):
            split = channel_split(c, k)
            assert len(split) == k and torch.tensor(split).prod().item() == c


def test_ctnet_r50_modules_use_the_split_of_their_stage() -> None:
    with torch.device("meta"):
        model = CTNet(10)
    splits = [tuple(op.group_size for op in m.ops) for m in model.ct_modules()]  # type: ignore[attr-defined]
    assert [m.channels for m in model.ct_modules()] == [64, 128, 128, 256, 256, 256, 512]
    assert splits == [(8, 8), (16, 8), (16, 8), (16, 16), (16, 16), (16, 16), (32, 16)]
    # The TSConv of sub-dimension C_k is a grouped conv of C / C_k groups.
    first = model.ct_modules()[-1].ops[0]
    assert first.spatial.groups == 512 // 32 and first.temporal.conv.groups == 512 // 32  # type: ignore[union-attr]


# ----------------------------------------------------------------------- placement
def test_block_placement_follows_table_2e() -> None:
    r50 = (3, 4, 6, 3)
    assert ct_block_indices(r50) == ((1,), (1, 3), (1, 3, 5), (1,))
    counts = {
        p: sum(map(len, ct_block_indices(r50, p)))
        for p in ("stage5", "stage4-5", "stage3-5", "stage2-5", "all", "none")
    }
    assert counts == {
        "stage5": 1,
        "stage4-5": 4,
        "stage3-5": 6,
        "stage2-5": 7,
        "all": 12,
        "none": 0,
    }
    assert sum(map(len, ct_block_indices((3, 4, 23, 3)))) == 15
    assert ct_block_indices(r50, [[], [2], [], [1, 2]]) == ((), (2,), (), (1, 2))
    with pytest.raises(VidactError, match="block 0 of stage 3"):
        ct_block_indices(r50, [[], [0], [], []])
    with pytest.raises(VidactError, match="one list per stage"):
        ct_block_indices(r50, [[1]])
    with pytest.raises(VidactError, match="unknown placement"):
        ct_block_indices(r50, "every-other")


def test_ct_blocks_replace_only_blocks_without_stride_or_downsample() -> None:
    import torchvision

    with torch.device("meta"):
        model = CTNet(10)
        reference = torchvision.models.resnet50()
    layers = (reference.layer1, reference.layer2, reference.layer3, reference.layer4)
    replaced = 0
    for stage, layer, chosen in zip(model.stages, layers, model.ct_blocks, strict=True):
        for i, block in enumerate(stage):  # type: ignore[arg-type]
            assert isinstance(block, CTBottleneck) == (i in chosen)
            if i in chosen:
                replaced += 1
                assert layer[i].downsample is None and layer[i].conv2.stride == (1, 1)
    assert replaced == 7


# ----------------------------------------------------------------------- parity
def test_ctnet_r50_parameters_and_gflops_match_the_paper() -> None:
    params, gmacs = meta_counts("ctnet_resnet50", 174, num_frames=8)
    assert params == pytest.approx(21.0, rel=0.01)  # Table 8 / Table 3
    assert gmacs == pytest.approx(37.3, rel=0.025)


def test_tsn_r50_parameters_and_gflops_match_the_paper() -> None:
    params, gmacs = meta_counts("tsn_resnet50", 174, num_frames=8)
    assert params == pytest.approx(23.9, rel=0.01)  # Table 8
    assert gmacs == pytest.approx(43.0, rel=0.025)
    # CT-Net without CT-Blocks is TSN-R50 (Table 2e '+0'), up to the classifier's per-frame MACs.
    params0, gmacs0 = meta_counts("ctnet_resnet50", 174, ct_blocks="none")
    assert params0 == pytest.approx(params, rel=1e-6)
    assert gmacs0 == pytest.approx(gmacs, rel=1e-3)


NO_EXTRAS = {"pwconv": False, "excitation": "none"}  # the bare CT-Module of Tables 2a-2f
PAPER_GFLOPS = [
    # Table 7 (Mini-Kinetics, 200 classes)
    ("table7-c3d", 200, {"module": "c3d"}, 59.9),
    ("table7-r2plus1d", 200, {"module": "r2plus1d"}, 45.8),
    ("table7-csn", 200, {"module": "csn"}, 35.6),
    ("table7-ct", 200, NO_EXTRAS, 36.3),
    # Table 2b: number of sub-dimensions K
    ("table2b-K1", 174, {**NO_EXTRAS, "num_subdims": 1}, 45.8),
    ("table2b-K3", 174, {**NO_EXTRAS, "num_subdims": 3}, 35.7),
    ("table2b-K4", 174, {**NO_EXTRAS, "num_subdims": 4}, 35.6),
    # Table 2e: number and location of CT-Blocks
    ("table2e-stage5", 174, {**NO_EXTRAS, "ct_blocks": "stage5"}, 41.9),
    ("table2e-stage4-5", 174, {**NO_EXTRAS, "ct_blocks": "stage4-5"}, 38.9),
    ("table2e-stage3-5", 174, {**NO_EXTRAS, "ct_blocks": "stage3-5"}, 37.1),
    ("table2e-all", 174, {**NO_EXTRAS, "ct_blocks": "all"}, 31.5),
    # Table 2f: kernel sizes along (C_1, C_2)
    ("table2f-1-3", 174, {**NO_EXTRAS, "kernel_sizes": (1, 3)}, 35.5),
    ("table2f-1-5", 174, {**NO_EXTRAS, "kernel_sizes": (1, 5)}, 36.6),
    ("table2f-3-5", 174, {**NO_EXTRAS, "kernel_sizes": (3, 5)}, 37.4),
    ("table2f-5-5", 174, {**NO_EXTRAS, "kernel_sizes": (5, 5)}, 38.9),
    # Table 2g: PWConv, SE, TE
    ("table2g-pw", 174, {"excitation": "none"}, 37.2),
    ("table2g-pw-se", 174, {"excitation": "se"}, 37.2),
]


@pytest.mark.parametrize(
    ("num_classes", "kwargs", "paper"),
    [c[1:] for c in PAPER_GFLOPS],
    ids=[c[0] for c in PAPER_GFLOPS],
)
def test_variant_gflops_match_the_paper(
    num_classes: int, kwargs: dict[str, object], paper: float
) -> None:
    _, gmacs = meta_counts("ctnet_resnet50", num_classes, **kwargs)
    assert gmacs == pytest.approx(paper, rel=0.025)


# ----------------------------------------------------------------------- shapes, layouts
@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"channels_last": False},
        {"module": "c3d"},
        {"module": "r2plus1d"},
        {"module": "csn", "excitation": "te"},
        {"connection": "serial"},
        {"connection": "coupled"},
        {"excitation": "se", "pwconv": False},
        {"num_subdims": 3, "kernel_sizes": (3, 1, 5)},
    ],
    ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()) or "default",
)
def test_shapes_on_tiny_clips(kwargs: dict[str, object]) -> None:
    model = build_model("ctnet_resnet50", num_classes=5, num_frames=2, dropout=0.3, **kwargs)
    with torch.no_grad():
        out = model.eval()(torch.randn(1, 3, 2, 32, 32))
    assert out.shape == (1, 5) and torch.isfinite(out).all()


def test_ctnet_r101_shape_and_block_count() -> None:
    model = build_model("ctnet_resnet101", num_classes=3, num_frames=2)
    assert len(model.ct_modules()) == 15  # type: ignore[operator]
    assert model.eval()(torch.randn(1, 3, 2, 32, 32)).shape == (1, 3)


def test_layouts_and_inference_fast_path_agree() -> None:
    torch.manual_seed(0)
    model = CTNet(7, num_frames=4).eval()
    x = torch.randn(TINY)
    with torch.no_grad():
        fast = model(x)  # channels_last, in-place excitation
    model.channels_last = False
    with torch.enable_grad():
        slow = model(x)  # contiguous, out-of-place
    torch.testing.assert_close(fast, slow, rtol=1e-4, atol=1e-5)


def test_module_without_pwconv_lets_all_channels_interact() -> None:
    """C_1 channels interact after the first sub-operation, C_1 x C_2 = C after the second
    (Fig. 1): checks the channel transpose between sub-operations."""
    torch.manual_seed(0)
    c, t = 24, 3  # split (6, 4)
    x = torch.randn(2 * t, c, 6, 6)
    bump = x.clone()
    bump[:, 0] += 10.0
    module = CTModule(c, pwconv=False, excitation="none").eval()
    assert [op.group_size for op in module.ops] == [6, 4]
    with torch.no_grad():
        for run, expected in ((lambda v: module.ops[0](v, t), 6), (lambda v: module(v, t), 24)):
            changed = (run(bump) - run(x)).abs().amax((0, 2, 3)) > 1e-6
            assert int(changed.sum()) == expected
    for layout in (torch.contiguous_format, torch.channels_last):
        module = CTModule(c, pwconv=False, excitation="none").eval()
        with torch.no_grad():
            a = module(x, t)
            b = module(x.contiguous(memory_format=layout), t)
        torch.testing.assert_close(a, b)


def test_variant_modules_are_the_papers_special_cases() -> None:
    assert module_ops("c3d", 64) == [SubOp(64, "coupled")]
    assert module_ops("r2plus1d", 64) == [SubOp(64, "spatial"), SubOp(64, "temporal")]
    assert module_ops("csn", 64) == [SubOp(64, "point"), SubOp(1, "coupled")]
    assert module_ops("ct", 128, connection="serial") == [SubOp(16, "serial"), SubOp(8, "serial")]
    # The CT-Block has fewer parameters than the 3x3 convolution it replaces (section 3.3).
    module = CTModule(512)
    assert sum(p.numel() for p in module.parameters()) < 512 * 512 * 9
    assert sum(p.numel() for p in module.parameters()) == 723_456


# ----------------------------------------------------------------------- training
def test_gradients_reach_every_parameter() -> None:
    torch.manual_seed(0)
    model = build_model("ctnet_resnet50", num_classes=4, num_frames=4)
    model.train()
    params = dict(model.named_parameters())
    assert all(p.requires_grad for p in params.values())  # nothing frozen by default
    loss = nn.functional.cross_entropy(model(torch.randn(TINY)), torch.tensor([1, 3]))
    loss.backward()
    missing = [n for n, p in params.items() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing


def test_attention_maps_lie_in_unit_interval() -> None:
    torch.manual_seed(0)
    module = CTModule(64).train()
    x = torch.randn(2 * 4, 64, 7, 7) * 5
    maps: list[dict[str, torch.Tensor]] = []
    out = module(x, 4, maps)
    assert out.shape == x.shape
    assert [sorted(m) for m in maps] == [["channel", "spatial", "temporal"]] * 2
    for op_maps in maps:
        assert op_maps["spatial"].shape == (2, 1, 64, 7, 7)  # shared by the T frames
        assert op_maps["temporal"].shape == (8, 64, 1, 1)
        for att in op_maps.values():
            assert att.min() >= 0.0 and att.max() <= 1.0 and att.std() > 0


def test_imagenet_weights_load_into_the_resnet_parts(tmp_path: object) -> None:
    from pathlib import Path

    import torchvision

    torch.manual_seed(1)
    reference = torchvision.models.resnet50()
    path = Path(str(tmp_path)) / "r50.pth"
    torch.save(reference.state_dict(), path)
    model = build_model("ctnet_resnet50", num_classes=3, weights=str(path))
    block = model.stages[1][1]  # type: ignore[index]
    assert isinstance(block, CTBottleneck)
    torch.testing.assert_close(block.conv1.weight, reference.layer2[1].conv1.weight)
    torch.testing.assert_close(block.bn3.running_var, reference.layer2[1].bn3.running_var)
    torch.testing.assert_close(model.stem[0].weight, reference.conv1.weight)  # type: ignore[index]
    torch.testing.assert_close(model.stages[3][2].conv2.weight, reference.layer4[2].conv2.weight)  # type: ignore[index]


def test_user_errors_are_vidact_errors() -> None:
    with pytest.raises(VidactError, match="no option .frames. \\(did you mean .num_frames.\\?\\)"):
        build_model("ctnet_resnet50", num_classes=3, frames=8)
    with pytest.raises(VidactError, match="module"):
        build_model("ctnet_resnet50", num_classes=3, module="i3d")
    with pytest.raises(VidactError, match="excitation"):
        build_model("ctnet_resnet50", num_classes=3, excitation="cbam")
    with pytest.raises(VidactError, match="3 kernel sizes for 2 sub-dimensions"):
        build_model("ctnet_resnet50", num_classes=3, kernel_sizes=[3, 3, 3])
    with pytest.raises(VidactError, match="num_subdims"):
        build_model("ctnet_resnet50", num_classes=3, num_subdims=0)
    with torch.device("meta"):
        model = build_model("ctnet_resnet50", num_classes=3)
    with pytest.raises(VidactError, match=r"\(N, C, T, H, W\)"):
        model(torch.zeros(2, 3, 32, 32, device="meta"))


def test_recipes_select_variants_and_misspelt_keys_are_caught() -> None:
    from pathlib import Path

    from vidact.errors import RecipeError
    from vidact.recipe import load_recipe

    recipe = Path(__file__).parents[2] / "recipes" / "ctnet_r50.yaml"
    loaded = load_recipe(recipe, ["model.module=csn", "model.excitation=se"])
    assert loaded.model.kwargs()["module"] == "csn"
    with pytest.raises(RecipeError, match="excitation"):
        load_recipe(recipe, ["model.excitatoin=se"])


@pytest.mark.parametrize("batch", [1, 2])
def test_channels_last_runs_the_trunk_and_modules_channels_last(batch: int) -> None:
    model = CTNet(3, num_frames=2).eval()
    seen: list[bool] = []
    hooks = [
        m.register_forward_hook(
            lambda _m, _i, out: seen.append(out.is_contiguous(memory_format=torch.channels_last))
        )
        for m in (model.stem, model.stages[0][1].ct, model.stages[3][2])  # type: ignore[index]
    ]
    with torch.no_grad():
        model(torch.randn(batch, 3, 2, 32, 32))
    for hook in hooks:
        hook.remove()
    assert seen == [True, True, True]
    assert (
        model.stages[0][1]
        .ct.ops[0]
        .spatial.weight.is_contiguous(  # type: ignore[index]
            memory_format=torch.channels_last
        )
    )


# ----------------------------------------------------------------- as the authors train
def test_released_freeze_trains_what_the_authors_code_trains() -> None:
    with torch.device("meta"):
        model = build_model("ctnet_resnet50", 174, freeze="released")
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    assert (frozen, total) == (15_063_360, 20_959_150)  # issue 19, their code's count
    trainable = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"stages", "fc"}
    for name, param in model.named_parameters():
        in_ct_block = ".ct." in name or any(
            f"stages.{s}.{b}.{part}" in name
            for s, blocks in enumerate(model.ct_blocks)  # type: ignore[arg-type]
            for b in blocks
            for part in ("conv1", "bn1", "conv3", "bn3")
        )
        assert param.requires_grad == (in_ct_block or name.startswith("fc.")), name
    with torch.device("meta"):
        default = build_model("ctnet_resnet50", 174)
    assert all(p.requires_grad for p in default.parameters())  # the paper: all train
    with pytest.raises(VidactError, match="freeze: unknown 'all'"):
        CTNet(4, freeze="all")


def test_frozen_blocks_still_update_their_bn_statistics() -> None:
    model = CTNet(3, ct_blocks="stage5", freeze="released")
    stem_bn = model.stem[1]
    before = stem_bn.running_mean.clone()
    model.train()(torch.randn(2, 3, 2, 32, 32))
    assert not torch.equal(before, stem_bn.running_mean)
    assert not stem_bn.weight.requires_grad


def test_dropout_is_drawn_per_frame_before_the_average_as_released() -> None:
    model = CTNet(5, ct_blocks="stage5", dropout=0.5).eval()
    clips = torch.randn(2, 3, 3, 32, 32)
    with torch.no_grad():
        features = model.features(clips)  # (N, T, 2048)
        # Eval mode: per frame then average == average then classify.
        torch.testing.assert_close(model(clips), model.fc(features.mean(1)))
        model.dropout.train()
        torch.manual_seed(7)
        got = model(clips)
        torch.manual_seed(7)
        per_frame = model.fc(nn.functional.dropout(features, 0.5, training=True)).mean(1)
        torch.manual_seed(7)
        averaged = model.fc(nn.functional.dropout(features.mean(1), 0.5, training=True))
    torch.testing.assert_close(got, per_frame)
    assert not torch.allclose(got, averaged)
