"""compare-tvl1: both flows on known motion, EPE against ground truth, checkpoint
parameters, the written report and pictures, and the command line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from typer.testing import CliRunner

from tests.conftest import write_video
from tests.flow._pairs import texture, translation_pair
from vidact.cli import app
from vidact.compare_tvl1 import (
    checkpoint_layer,
    compare_tvl1,
    flow_of_flow,
    paper_layer,
    parse_shape,
    pipeline,
    representation_flow,
    resolve_input,
    time_table9,
)
from vidact.compare_tvl1.pictures import panel_figure
from vidact.engine.checkpoint import save_checkpoint
from vidact.errors import VidactError
from vidact.flow import compute_flow
from vidact.flow.metrics import border_mask, endpoint_error
from vidact.models.rep_flow import FlowBlock, RepresentationFlow

runner = CliRunner()
DX, DY = 1.5, -1.0  # right and up


def _strict_json(path: Path) -> dict:
    def no_constant(name: str) -> None:
        raise ValueError(f"{path} holds {name}, which is not JSON")

    return json.loads(path.read_text(), parse_constant=no_constant)


@pytest.mark.parametrize("printed_sobel", [False, True])
def test_both_flows_point_the_right_way_on_a_known_translation(printed_sobel: bool) -> None:
    first, second, _ = translation_pair(48, DX, DY)
    mask = border_mask(48, 48, 4)
    tvl1 = compute_flow(np.stack([first, second]), backend="torch")[0]
    assert tvl1[mask].mean(0) == pytest.approx([DX, DY], abs=0.05)

    spec = paper_layer(20, printed_sobel=printed_sobel)
    gray = np.stack([first, second]).astype(np.float32)
    rep = representation_flow(gray, spec.build(), spec.gain)[0]
    mean = rep[mask].mean(0).astype(np.float64)
    truth = np.array([DX, DY])
    cos = mean @ truth / (np.linalg.norm(mean) * np.linalg.norm(truth))
    assert cos > 0.98  # right and up, as TV-L1
    assert 0.6 < np.linalg.norm(mean) / np.linalg.norm(truth) < 1.2  # in pixels, not 1/8 px
    # the reverse pair gives the opposite flow
    back = representation_flow(gray[::-1].copy(), spec.build(), spec.gain)[0][mask].mean(0)
    assert np.sign(back).tolist() == [-1.0, 1.0]


def test_network_sobel_times_gain_is_the_pixel_layer_with_scaled_parameters() -> None:
    first, second, _ = translation_pair(32, 0.8, 0.4, seed=1)
    gray = np.stack([first, second]).astype(np.float32)
    printed = paper_layer(10, printed_sobel=True)
    assert printed.gain == 8.0
    eq = printed.pixel_equivalent()
    assert eq == pytest.approx({"tau": 0.25, "lam": 1.2, "theta": 2.4})
    pixel = RepresentationFlow(
        iterations=10, learn="none", normalize_sobel=True, checkpoint=False,
        tau=eq["tau"], lam=eq["lam"], theta=eq["theta"],
    )  # fmt: skip
    a = representation_flow(gray, printed.build(), printed.gain)
    b = representation_flow(gray, pixel)
    np.testing.assert_allclose(a, b, atol=1e-3)


def test_flow_of_flow_is_zero_for_steady_motion_and_follows_a_moving_pattern() -> None:
    steady = np.zeros((3, 32, 32, 2), np.float32)
    steady[..., 0] = 1.5
    layer = paper_layer(20).build()
    assert np.abs(flow_of_flow(steady, layer)).max() == 0.0

    mag = texture(40, 40, seed=2)[4:36]  # a magnitude pattern moving right by 1 px
    fields = np.zeros((2, 32, 32, 2), np.float32)
    fields[0, ..., 0] = mag[:, 2:34] / 64.0
    fields[1, ..., 0] = mag[:, 1:33] / 64.0
    fof = flow_of_flow(fields, layer)
    assert fof.shape == (1, 32, 32, 2)
    inner = fof[0][border_mask(32, 32, 4)].mean(0)
    assert inner[0] > 0.5 and abs(inner[1]) < 0.25


def test_epe_against_ground_truth_on_synthetic_pairs(synthetic_root: Path, tmp_path: Path) -> None:
    result = compare_tvl1(
        synthetic_root, out=tmp_path / "o", num_videos=2, timing_shape=None, backend="torch"
    )
    assert result.kind == "dataset" and len(result.videos) == 2 and not result.failed
    for video in result.videos:
        assert video.gt_pairs, "val videos of the synthetic set carry ground truth"
        assert video.gt_magnitude is not None and video.gt_magnitude > 0.4
        assert video.tvl1_epe_gt is not None and video.tvl1_epe_gt < 0.2 * video.gt_magnitude
        assert video.repflow_epe_gt is not None and np.isfinite(video.repflow_epe_gt)
    # the reported figures are the border-masked EPE on the stored pairs
    video = result.videos[0]
    stem = Path(video.path).stem
    with np.load(synthetic_root / "gt_flow" / f"{stem}.npz") as data:
        pairs, exact = list(data["pairs"]), data["flow"]
    assert video.gt_pairs == pairs
    from vidact.data.video import read_all_frames

    frames = read_all_frames(video.path)
    tvl1 = compute_flow(frames, backend="torch")
    mask = border_mask(video.height, video.width, video.border)
    assert video.tvl1_epe_gt == pytest.approx(endpoint_error(tvl1[pairs], exact, mask), rel=1e-3)
    assert result.summary["videos_with_gt"] == 2


def test_checkpoint_parameters_come_from_the_first_flow_layer(tmp_path: Path) -> None:
    model = nn.Sequential(FlowBlock(4, flow_channels=2), FlowBlock(4, flow_channels=2))
    with torch.no_grad():
        first = model[0].flows[0]
        first.tau.fill_(0.2)
        first.lam.fill_(0.5)
        first.div_x.copy_(torch.tensor([-0.9, 1.1]))
        first.grad_x.copy_(torch.tensor([-1.2, 0.8]))
        model[1].flows[0].tau.fill_(0.01)
    recipe = {
        "model": {"name": "repflow_resnet18", "iterations": 7, "learn": "all"},
    }
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, {"model": model.state_dict(), "recipe": recipe})
    spec = checkpoint_layer(path)
    assert spec.values["tau"] == pytest.approx(0.2) and spec.values["lam"] == pytest.approx(0.5)
    assert spec.values["div_x"] == pytest.approx([-0.9, 1.1])
    assert spec.values["grad_x"] == pytest.approx([-1.2, 0.8])
    # the network's own units: repflow_resnet18 runs in pixels (normalize_sobel=True)
    assert spec.iterations == 7 and spec.learn == "all" and spec.normalize_sobel
    assert set(spec.changed) == {"tau", "lam", "div_x", "grad_x"}
    assert spec.pixel_equivalent() == pytest.approx({"tau": 0.2, "lam": 0.5, "theta": 0.3})
    assert checkpoint_layer(path, iterations=3).iterations == 3
    built = spec.build()
    assert float(built.tau) == pytest.approx(0.2) and built.iterations == 7
    assert built.grad_u == "forward"
    assert built.grad_x.tolist() == pytest.approx([-1.2, 0.8])

    recipe["model"]["normalize_sobel"] = False  # a network in the printed Sobel's units, x8
    save_checkpoint(path, {"model": model.state_dict(), "recipe": recipe})
    spec = checkpoint_layer(path)
    assert not spec.normalize_sobel
    assert spec.pixel_equivalent() == pytest.approx({"tau": 0.2, "lam": 4.0, "theta": 2.4})

    video = _moving_video(tmp_path / "v.mp4", frames=3)
    run = compare_tvl1(video, checkpoint=path, out=tmp_path / "o", timing_shape=None)
    layer = _strict_json(run.report_path)["repflow"]
    assert str(path) in layer["source"] and layer["iterations"] == 7
    assert layer["pixel_equivalent"]["lam"] == pytest.approx(4.0)
    assert np.isfinite(run.videos[0].epe_vs_tvl1)

    plain = tmp_path / "plain.pt"
    torch.save(nn.Linear(2, 2).state_dict(), plain)
    with pytest.raises(VidactError, match="no representation-flow layer"):
        checkpoint_layer(plain)


def test_inputs_are_recognised(synthetic_root: Path, tmp_path: Path) -> None:
    kind, items = resolve_input(synthetic_root, num_videos=3)
    assert kind == "dataset" and len(items) == 3 and all(i.gt_flow for i in items)
    assert len({i.path.parent.name for i in items}) == 3  # spread over the classes
    kind, items = resolve_input(items[0].path)
    assert kind == "video" and items[0].gt_flow is not None  # found through the manifest
    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(3):
        image = Image.fromarray(np.full((32, 32, 3), 40 * i, np.uint8))
        image.save(frames / f"img_{i + 1:05d}.jpg")
    assert resolve_input(frames)[0] == "frames"
    with pytest.raises(VidactError, match="frames"):
        resolve_input(tmp_path / "frames" / "..")  # a folder with neither
    with pytest.raises(VidactError, match="not found"):
        resolve_input(tmp_path / "missing.mp4")
    assert parse_shape("8x112x96") == (8, 112, 96)
    with pytest.raises(VidactError):
        parse_shape("8x112")


def _moving_video(path: Path, frames: int = 6, size: int = 64, step: int = 1) -> Path:
    base = texture(size, size + frames * step, seed=4).astype(np.uint8)
    clip = np.stack(
        [np.repeat(base[:, (frames - i) * step : (frames - i) * step + size, None], 3, -1)
         for i in range(frames)]
    )  # fmt: skip  # content moves right by `step` px per frame
    return write_video(path, clip)


def _tile_pixels(png: np.ndarray, figure: Any, index: int) -> np.ndarray:
    """The pixels of the PNG under the figure's axes `index` (its inner half)."""
    x0, y0, x1, y1 = figure.axes[index].get_window_extent().extents
    top, bottom = png.shape[0] - y1, png.shape[0] - y0  # display y runs upwards
    h, w = bottom - top, x1 - x0
    return png[int(top + h / 4) : int(bottom - h / 4), int(x0 + w / 4) : int(x1 - w / 4)]


def test_pictures_and_report_of_a_video(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[Any] = []  # the Computed video that the pictures were drawn from
    original = pipeline.write_pictures
    monkeypatch.setattr(pipeline, "write_pictures", lambda c, *a: seen.append(c) or original(c, *a))
    video = _moving_video(tmp_path / "right.mp4")
    result = compare_tvl1(video, out=tmp_path / "o", timing_shape=None, pair=2)
    assert result.kind == "video" and result.videos[0].gt_pairs == []
    panel = Image.open(result.panel_path)
    panel.load()
    assert panel.format == "PNG" and panel.mode in ("RGB", "RGBA")
    assert panel.size[0] >= 1000 and panel.size[1] >= 700  # 2 x 3 tiles of 400 px
    report = _strict_json(result.report_path)
    assert report["pictures"]["pair"] == 2 and report["videos"][0]["pairs"] == 5

    figure, shown = panel_figure(seen[0], 2, 20)
    assert shown["pair"] == 2
    titles = [ax.get_title() for ax in figure.axes]
    assert titles[:5] == [
        "RGB, pair 2", "TV-L1", "rep-flow (20 it.)", "RGB, next frame", "flow-of-flow",
    ]  # fmt: skip
    key = figure.axes[5]
    scale = report["pictures"]["panel_max_flow_px"]
    assert f"full at {scale:.2f} px" in titles[5] and "px" in key.get_xlabel()
    assert key.get_images()[0].get_extent() == pytest.approx([-scale, scale, scale, -scale])
    png = np.asarray(panel.convert("RGB"))
    r, g, b = _tile_pixels(png, figure, 1).reshape(-1, 3).mean(0)
    assert r > 200 and r > g + 40 and r > b + 40  # TV-L1 tile: motion to the right is red
    gif = Image.open(result.gif_path)
    assert gif.format == "GIF" and gif.n_frames == 5 and gif.size[0] >= 500
    assert report["repflow"]["source"] == "paper initial values"
    assert report["videos"][0]["tvl1_epe_gt"] is None and report["timing"] is None


def test_table9_timing_on_a_tiny_clip() -> None:
    frames = np.random.default_rng(0).integers(0, 255, (3, 40, 40, 3), np.uint8)
    timing = time_table9(frames, (4, 32, 32), backend="torch", iterations=2)
    flow, rep = timing["flow_cnn"], timing["repflow_cnn"]
    assert flow["total_ms"] >= flow["tvl1_ms"] > 0 and flow["cnn_ms"] > 0
    assert rep["total_ms"] > 0
    assert timing["ratio"] == pytest.approx(flow["total_ms"] / rep["total_ms"])
    assert timing["shape"] == [4, 32, 32]


def test_command_writes_valid_outputs(synthetic_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "cli"
    result = runner.invoke(
        app,
        ["compare-tvl1", str(synthetic_root), "--out", str(out), "--videos", "2",
         "--iters", "5", "--timing-shape", "4x32x32", "--backend", "torch"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    for text in ("vs ground truth", "Table-9-style", "repflow_resnet34", "compare-tvl1"):
        assert text in result.stdout
    report = _strict_json(out / "report.json")
    assert report["kind"] == "dataset" and len(report["videos"]) == 2
    assert report["repflow"]["iterations"] == 5
    assert report["summary"]["tvl1_epe_gt"] < report["summary"]["gt_magnitude"]
    assert report["timing"]["shape"] == [4, 32, 32] and report["timing"]["ratio"] > 0
    panel = Image.open(out / "panel.png")
    panel.verify()
    assert report["pictures"]["panel_tiles"][-1] == "ground truth"
    assert Image.open(out / "clip.gif").n_frames == report["videos"][0]["pairs"]


def test_command_help_and_user_errors(tmp_path: Path) -> None:
    help_text = runner.invoke(app, ["compare-tvl1", "--help"])
    assert help_text.exit_code == 0
    for text in ("Examples", "vidact compare-tvl1", "--checkpoint", "--no-timing"):
        assert text in help_text.stdout
    missing = runner.invoke(app, ["compare-tvl1", str(tmp_path / "nope.mp4"), "--no-timing"])
    assert missing.exit_code == 2 and "not found" in missing.output
    video = _moving_video(tmp_path / "v.mp4", frames=3)
    bad = runner.invoke(app, ["compare-tvl1", str(video), "--timing-shape", "4x10"])
    assert bad.exit_code == 2 and "--timing-shape" in bad.output
