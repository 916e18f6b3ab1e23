"""The one model registration form: decorated factories with a uniform keyword signature,
options (names and values) checked without building, did-you-mean, recipe error lines."""

from __future__ import annotations

from pathlib import Path

import pytest
from torch import nn

from vidact.models import (
    ModelOptionError,
    build_model,
    check_model_options,
    list_models,
    model_options,
    register_model,
    registry,
)
from vidact.models.registry import COMMON_OPTIONS, DropoutRate, Positive
from vidact.recipe import RecipeError, load_recipe


@pytest.mark.parametrize("name", list_models())
def test_every_model_takes_the_common_options(name: str) -> None:
    options = model_options(name)
    assert set(COMMON_OPTIONS) - {"num_classes"} <= set(options)
    check_model_options(name, {"num_frames": 8, "dropout": 0.0, "weights": None})


@pytest.fixture
def scratch_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Names registered by a test vanish after it."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))


@pytest.mark.usefixtures("scratch_registry")
def test_registration_binds_fixed_arguments_and_presets_defaults() -> None:
    @register_model("_test_linear_wide", width=16, bias=False)
    @register_model("_test_linear", width=4)
    def linear(
        width: int,
        *,
        num_classes: Positive,
        num_frames: Positive | None = None,
        dropout: DropoutRate = 0.5,
        weights: str | None = None,
        bias: bool = True,
    ) -> nn.Module:
        del num_frames, dropout, weights
        return nn.Linear(width, num_classes, bias=bias)

    assert model_options("_test_linear")["bias"] is True
    assert model_options("_test_linear_wide")["bias"] is False
    wide = build_model("_test_linear_wide", 3)
    assert isinstance(wide, nn.Linear) and wide.in_features == 16 and wide.bias is None
    assert build_model("_test_linear", 2, bias=True).weight.shape == (2, 4)
    with pytest.raises(ModelOptionError, match="no option 'width'"):
        build_model("_test_linear", 2, width=8)  # fixed by the name, not an option


@pytest.mark.usefixtures("scratch_registry")
def test_factories_without_the_uniform_signature_are_refused() -> None:
    def loose(num_classes: int, **kwargs: object) -> nn.Module:
        return nn.Identity()

    def no_weights(*, num_classes: int, num_frames: int | None = None, dropout: float = 0.0):  # type: ignore[no-untyped-def]
        return nn.Identity()

    with pytest.raises(TypeError, match="keyword-only options"):
        register_model("_test_loose")(loose)
    with pytest.raises(TypeError, match=r"missing \['weights'\]"):
        register_model("_test_no_weights")(no_weights)
    with pytest.raises(TypeError, match="factory function"):
        register_model("_test_class")(nn.Identity)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="registered twice"):
        register_model("tsn_resnet18")(loose)
    assert "_test_loose" not in list_models()


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        (
            "repflow_smallcnn",
            {"flow_channels": -1},
            "flow_channels=-1 is not valid: input should be greater than or equal to 1",
        ),
        (
            "repflow_smallcnn",
            {"flow_chanels": 3},
            "no option 'flow_chanels' \\(did you mean 'flow_channels'\\?\\)",
        ),
        (
            "repflow_resnet18",
            {"flow": "fcff"},
            "flow='fcff' is not valid: input should be 'none', 'flow'",
        ),
        ("repflow_resnet18", {"position": 7}, "position=7 is not valid"),
        ("tsn_resnet18", {"dropout": 1.0}, "dropout=1.0 is not valid: input should be less than 1"),
        ("ctnet_resnet50", {"num_subdims": 0}, "num_subdims=0 is not valid"),
        ("tsn_resnt18", {}, "unknown model 'tsn_resnt18' \\(did you mean 'tsn_resnet18'\\?\\)"),
    ],
)
def test_options_are_checked_by_name_and_value(
    name: str, options: dict[str, object], message: str
) -> None:
    with pytest.raises(ModelOptionError, match=message) as caught:
        check_model_options(name, options)
    assert caught.value.key == next(iter(options), None)
    with pytest.raises(ModelOptionError, match=message):
        build_model(name, 3, **options)


def test_a_bad_model_value_in_a_recipe_is_one_line_naming_file_and_key(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text("model: {name: repflow_smallcnn, flow_channels: -1}\n")
    with pytest.raises(RecipeError) as caught:
        load_recipe(path)
    text = str(caught.value)
    assert text.startswith(f"{path}: ") and "flow_channels=-1 is not valid" in text
    assert "\n" not in text
    with pytest.raises(RecipeError, match="^--set model.iterations: .*iterations=0 is not valid"):
        load_recipe(path, ["model.flow_channels=4", "model.iterations=0"])
