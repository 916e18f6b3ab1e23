"""Recipe loading, `_base_` inheritance, `--set` overrides, schema errors, dump/reload."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from vidact.errors import RecipeError
from vidact.recipe import Recipe, load_recipe, recipe_from_dict

MODEL = "model: {name: tsn_resnet18}\n"


def _write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_defaults_and_name_from_file(tmp_path: Path) -> None:
    recipe = load_recipe(_write(tmp_path, "exp1.yaml", f"{MODEL}optim:\n  lr: 0.05\n"))
    assert recipe.name == "exp1"
    assert recipe.optim.lr == 0.05
    assert recipe.optim.momentum == 0.9
    assert recipe.data.scales == [1.0, 0.875, 0.75, 0.66]


def test_base_inheritance_is_relative_and_deep(tmp_path: Path) -> None:
    _write(
        tmp_path,
        "bases/common.yaml",
        "optim: {lr: 0.1, weight_decay: 0.0005}\ntrain: {epochs: 3}\n",
    )
    _write(
        tmp_path,
        "bases/data.yaml",
        "_base_: common.yaml\ndata: {num_frames: 8, scales: [1.0, 0.5]}\n",
    )
    child = _write(
        tmp_path,
        "exp/child.yaml",
        "_base_: [../bases/data.yaml]\n" + MODEL + "optim: {lr: 0.01}\ndata: {scales: [0.9]}\n",
    )
    recipe = load_recipe(child)
    assert recipe.optim.lr == 0.01  # child wins
    assert recipe.optim.weight_decay == 0.0005  # deep merge keeps sibling keys
    assert recipe.train.epochs == 3
    assert recipe.data.num_frames == 8
    assert recipe.data.scales == [0.9]  # lists replace, not append
    assert recipe.name == "child"


def test_base_cycle_is_a_clear_error(tmp_path: Path) -> None:
    _write(tmp_path, "a.yaml", "_base_: b.yaml\n")
    _write(tmp_path, "b.yaml", "_base_: c.yaml\n")
    _write(tmp_path, "c.yaml", "_base_: a.yaml\n")
    with pytest.raises(RecipeError, match="cycle: a.yaml -> b.yaml -> c.yaml -> a.yaml"):
        load_recipe(tmp_path / "a.yaml")


def test_missing_base_names_the_file_that_asked(tmp_path: Path) -> None:
    path = _write(tmp_path, "x.yaml", "_base_: nowhere.yaml\n")
    with pytest.raises(
        RecipeError, match=r"nowhere.yaml: recipe file not found \(named in .*x.yaml\)"
    ):
        load_recipe(path)


def test_overrides_parse_yaml_values(tmp_path: Path) -> None:
    path = _write(tmp_path, "r.yaml", "optim: {lr: 0.1}\n")
    recipe = load_recipe(
        path,
        [
            "optim.lr=0.05",
            "train.amp=bf16",
            "data.scales=[1, 0.5]",
            "train.ema=true",
            "optim.clip_grad_norm=20",
            "model.name=tsn_resnet18",
        ],
    )
    assert recipe.optim.lr == 0.05
    assert recipe.train.amp == "bf16"
    assert recipe.data.scales == [1.0, 0.5]
    assert recipe.train.ema is True
    assert recipe.optim.clip_grad_norm == 20.0
    assert recipe.model.name == "tsn_resnet18"


@pytest.mark.parametrize("bad", ["optim.lr", "=3", "optim..lr=1"])
def test_malformed_override(tmp_path: Path, bad: str) -> None:
    with pytest.raises(RecipeError, match="KEY=VALUE"):
        load_recipe(_write(tmp_path, "r.yaml", ""), [bad])


def test_override_into_a_value_is_rejected(tmp_path: Path) -> None:
    path = _write(tmp_path, "r.yaml", "model: {name: tsn_resnet18}\noptim: {lr: 0.1}\n")
    with pytest.raises(RecipeError, match="'optim.lr' is a value, not a section"):
        load_recipe(path, ["optim.lr.x=1"])


def test_unknown_key_has_did_you_mean_and_file(tmp_path: Path) -> None:
    path = _write(tmp_path, "recipes/x.yaml", f"{MODEL}optim:\n  lrr: 0.1\n")
    with pytest.raises(RecipeError) as caught:
        load_recipe(path)
    assert str(caught.value) == f"{path}: unknown key 'optim.lrr' (did you mean 'optim.lr'?)"


def test_unknown_key_names_the_base_file_that_set_it(tmp_path: Path) -> None:
    base = _write(tmp_path, "base.yaml", MODEL + "train:\n  epocs: 3\n")
    child = _write(tmp_path, "child.yaml", "_base_: base.yaml\n")
    with pytest.raises(
        RecipeError, match=f"^{base}: unknown key 'train.epocs' \\(did you mean 'train.epochs'"
    ):
        load_recipe(child)


def test_unknown_section_and_override_source(tmp_path: Path) -> None:
    path = _write(tmp_path, "r.yaml", MODEL)
    with pytest.raises(RecipeError, match="unknown key 'optimizer' \\(did you mean 'optim'\\?"):
        load_recipe(path, ["optimizer.lr=1"])
    with pytest.raises(RecipeError, match="^--set train.batchsize: unknown key"):
        load_recipe(path, ["train.batchsize=4"])


def test_type_error_names_key_file_and_expected_type(tmp_path: Path) -> None:
    path = _write(tmp_path, "r.yaml", f"{MODEL}optim:\n  lr: fast\ntrain:\n  epochs: 2.5\n")
    with pytest.raises(RecipeError) as caught:
        load_recipe(path)
    message = str(caught.value)
    assert f"{path}: 'optim.lr' must be a number, got 'fast'" in message
    assert "'train.epochs' must be an integer" in message


def test_constraint_and_choice_errors(tmp_path: Path) -> None:
    path = _write(tmp_path, "r.yaml", f"{MODEL}train: {{amp: fp8}}\neval: {{crops: 7}}\n")
    with pytest.raises(RecipeError) as caught:
        load_recipe(path)
    assert "'train.amp'" in str(caught.value) and "'bf16'" in str(caught.value)
    assert "crops must be 1, 3, 10 or random:K" in str(caught.value)
    assert load_recipe(path, ["train.amp=none", "eval.crops=random:25"]).eval.crops == "random:25"


def test_model_options_are_checked_against_the_constructor(tmp_path: Path) -> None:
    path = _write(tmp_path, "r.yaml", "model: {name: tsn_resnet18}\n")
    with pytest.raises(
        RecipeError, match="unknown model 'tsn_resnt18' \\(did you mean 'tsn_resnet18'"
    ):
        load_recipe(path, ["model.name=tsn_resnt18"])
    with pytest.raises(RecipeError, match="unknown key 'model.dropuot' for model 'tsn_resnet18'"):
        load_recipe(path, ["model.dropuot=0.3"])


def test_missing_model_section_is_named(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="missing 'model' \\(every recipe needs it\\)"):
        load_recipe(_write(tmp_path, "r.yaml", "optim: {lr: 0.1}\n"))


def test_invalid_yaml_and_non_mapping(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match=r"line \d+: not valid YAML"):
        load_recipe(_write(tmp_path, "a.yaml", "optim:\n  lr: [1, 2\n"))
    with pytest.raises(RecipeError, match="must be a mapping"):
        load_recipe(_write(tmp_path, "b.yaml", "- 1\n- 2\n"))
    with pytest.raises(RecipeError, match="recipe file not found"):
        load_recipe(tmp_path / "nope.yaml")


def test_dump_and_reload_give_an_equal_recipe(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "r.yaml",
        f"{MODEL}optim: {{lr: 0.02, lr_mults: {{fc: 5.0}}}}\neval: {{crops: 3}}\n",
    )
    recipe = load_recipe(path, ["train.epochs=7", "schedule.milestones=[2, 4]"])
    dumped = _write(tmp_path, "dumped.yaml", recipe.to_yaml())
    again = load_recipe(dumped)
    assert again == recipe
    assert recipe_from_dict(yaml.safe_load(recipe.to_yaml())) == recipe
    assert isinstance(again, Recipe)
