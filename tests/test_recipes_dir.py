"""Every recipe shipped in recipes/ loads, and its model builds (on the meta device)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vidact.engine.trainer import build_model_for
from vidact.recipe import load_recipe

RECIPES = sorted((Path(__file__).parent.parent / "recipes").glob("*.yaml"))


def test_the_papers_recipes_are_all_there() -> None:
    names = {p.stem for p in RECIPES}
    assert {
        "quickstart",
        "quickstart_rgb",
        "repflow_r34_tinykinetics",
        "repflow_fcf_r2p1d18_kinetics",
        "repflow_r50_kinetics",
        "repflow_hmdb51_ft",
        "ctnet_r50",
        "ctnet_r50_sthv1",
    } <= names


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_recipe_loads_and_its_model_builds(path: Path) -> None:
    recipe = load_recipe(path, ["model.weights=null"])  # no ImageNet download in tests
    with torch.device("meta"):
        model = build_model_for(recipe, num_classes=10)
    assert sum(p.numel() for p in model.parameters()) > 0
