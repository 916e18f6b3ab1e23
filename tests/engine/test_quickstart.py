"""The quickstart in miniature: motion-only classes are learnt with a flow block, and
stay near chance without one (the rep-flow paper's central claim)."""

from __future__ import annotations

from pathlib import Path

import pytest

from vidact.engine.trainer import train
from vidact.recipe import load_recipe

RECIPES = Path(__file__).parent.parent.parent / "recipes"
SMALL = [
    "data.synthetic={classes: 4, videos_per_class: 16, frames: 10, size: 48, seed: 1}",
    "data.short_side=48",
    "data.input_size=48",
    "data.num_frames=6",
    "data.num_workers=0",
    "train.epochs=3",
]


@pytest.mark.slow
def test_flow_network_learns_motion_and_rgb_twin_does_not(tmp_path: Path) -> None:
    common = [*SMALL, f"data.root={tmp_path / 'data'}", f"output.dir={tmp_path / 'runs'}"]
    flow = train(load_recipe(RECIPES / "quickstart.yaml", common))
    rgb = train(load_recipe(RECIPES / "quickstart_rgb.yaml", common))
    assert flow.last_metrics["val_count"] == 12  # 4 classes x 3 val videos
    assert flow.last_metrics["val_top1"] >= 75.0
    assert rgb.last_metrics["val_top1"] <= 50.0  # chance is 25%
