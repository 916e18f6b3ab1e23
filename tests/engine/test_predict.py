"""vidact predict: whole-video scores equal evaluate's, sliding windows equal a literal
per-window computation, timeline and annotated outputs, inputs, errors and exit codes."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import tests.engine.tiny  # noqa: F401  (registers tiny_test_net)
from tests.conftest import numbered_frames, write_video
from tests.engine.test_trainer import make_recipe
from vidact.cli import app
from vidact.data.manifest import read_label_map, read_manifest, write_label_map
from vidact.data.transforms import center_box, crop_resize
from vidact.data.video import read_all_frames
from vidact.engine import predict as predict_module
from vidact.engine.annotate import captions
from vidact.engine.checkpoint import save_checkpoint
from vidact.engine.evaluator import evaluate
from vidact.engine.predict import predict, rank
from vidact.engine.predict_inputs import find_videos
from vidact.engine.trained import load_trained
from vidact.engine.trainer import build_model_for
from vidact.errors import VidactError

runner = CliRunner()
FPS = 25.0


def save_tiny_checkpoint(path: Path, root: Path, **changes: object) -> Path:
    """A checkpoint as `vidact train` writes one, of tiny_test_net unless `changes` say
    (seeded random weights; BN running statistics moved off their defaults)."""
    recipe = make_recipe(root, path.parent / "runs", **changes)
    labels = read_label_map(root / "labels.txt")
    torch.manual_seed(0)
    model = build_model_for(recipe, len(labels))
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d | torch.nn.BatchNorm3d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 2.0)
    state = {"model": model.state_dict(), "recipe": recipe.model_dump(), "labels": labels}
    save_checkpoint(path, state)
    return path


@pytest.fixture(scope="module")
def checkpoint(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "best.pt", synthetic_root)


@pytest.fixture(scope="module")
def long_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 frames of 64x48 at 25 fps (1.6 s) whose frames carry their index."""
    return write_video(tmp_path_factory.mktemp("long") / "long.mp4", numbered_frames(40), FPS)


# ------------------------------------------------------------------- scores are right


def test_whole_video_scores_equal_evaluate(
    checkpoint: Path, synthetic_root: Path, tmp_path: Path
) -> None:
    """Every val video: predict's scores are evaluate's (another code path: its view
    dataset, batching across videos and score cache), for 2 clips x 3 crops."""
    ref = evaluate([checkpoint], split="val", clips=2, crops="3", out=tmp_path / "eval")
    val = [synthetic_root / s.path for s in read_manifest(synthetic_root / "val.jsonl")]
    result = predict(checkpoint, val, clips=2, crops="3", top_k=4, out=tmp_path / "pred")
    assert result.views == "2 clips x 3 crops" and not result.failed
    assert [p.video for p in result.videos] == [str(v) for v in val]
    got = np.stack([p.scores for p in result.videos])
    # evaluate keeps log(mean probability) (it does not tie); predict reports probabilities
    np.testing.assert_allclose(got, np.exp(ref.scores), rtol=0, atol=1e-6)
    names = read_label_map(synthetic_root / "labels.txt")
    for prediction in result.videos:  # top-k: every class, by name, best first
        assert [name for _, name, _ in prediction.top] == [
            names[i] for i in np.argsort(-prediction.scores, kind="stable")
        ]


def _literal_window_scores(
    model: torch.nn.Module, video: Path, starts: list[int], length: int, frames_per_clip: int
) -> np.ndarray:
    """One centre-cropped clip per window, by hand: the middle `frames_per_clip` frames of
    the window (consecutive sampling), the 24 px centre crop of the 32 px short side."""
    frames = read_all_frames(video)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1, 1) * 255
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1, 1) * 255
    height, width = frames.shape[1:3]
    box = center_box(height, width, 32, 24)
    rows = []
    for start in starts:
        end = min(start + length, len(frames))
        first = start + (end - start - frames_per_clip) // 2
        clip = crop_resize(frames[first : first + frames_per_clip], box, 24)  # uint8 TCHW
        clip = clip.permute(1, 0, 2, 3).float()
        with torch.no_grad():
            logits = model(((clip - mean) / std)[None]).double()
        rows.append(logits.softmax(-1)[0].numpy())
    return np.stack(rows)


def test_sliding_windows_equal_a_literal_computation(
    checkpoint: Path, long_video: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(predict_module, "_CHUNK", 3)  # windows cross decode chunks
    result = predict(checkpoint, [long_video], window=0.48, stride=0.32, out=tmp_path)
    windows = result.videos[0].windows
    # 0.48 s = 12 frames, every 0.32 s = 8 frames, inside 40 frames
    starts = [0, 8, 16, 24]
    assert windows.frames == [(s, s + 12) for s in starts]
    member = load_trained(checkpoint)
    expected = _literal_window_scores(member.model, long_video, starts, 12, 3)
    np.testing.assert_allclose(windows.scores, expected, rtol=0, atol=1e-6)
    np.testing.assert_allclose(result.videos[0].scores, expected.mean(axis=0), atol=1e-9)

    saved = json.loads((tmp_path / "windows" / "long.windows.json").read_text())
    assert [(w["start"], w["end"]) for w in saved["windows"]] == [
        (s / FPS, (s + 12) / FPS) for s in starts
    ]
    np.testing.assert_allclose([w["scores"] for w in saved["windows"]], expected, atol=1e-6)
    assert saved["classes"] == result.class_names
    with Image.open(tmp_path / "windows" / "long.timeline.png") as picture:
        assert picture.format == "PNG" and picture.size == (800, 320)
        pixels = np.asarray(picture.convert("RGB"))
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 20  # lines, text: not blank


def test_the_library_call_is_vidact_predict() -> None:
    import vidact

    assert vidact.predict is predict


def test_rank_breaks_softmax_ties_by_log_probability() -> None:
    scores = np.array([0.0, 1.0, 0.0, 0.0])  # saturated: three classes tie at 0
    log_probs = np.array([-40.0, 0.0, -25.0, -60.0])
    assert rank(scores, log_probs, 4) == [1, 2, 0, 3]
    assert rank(np.zeros(3), np.zeros(3), 3) == [0, 1, 2]  # full ties: by class id


# ------------------------------------------------------------------ annotated outputs


def test_captions_follow_the_nearest_window_centre() -> None:
    # windows [0, 4) and [2, 6) and [4, 8): centres 2, 4, 6 (frame t's centre is t + 0.5)
    texts = captions(8, np.array([2.0, 4.0, 6.0]), ["a", "b", "c"])
    assert texts == ["a", "a", "a", "b", "b", "c", "c", "c"]


def test_annotate_mp4_and_gif(checkpoint: Path, long_video: Path, tmp_path: Path) -> None:
    source = read_all_frames(long_video)
    mp4 = predict(checkpoint, [long_video], window=0.48, stride=0.32, annotate="mp4",
                  out=tmp_path / "mp4")  # fmt: skip
    path = mp4.videos[0].files["annotated"]
    assert path == tmp_path / "mp4" / "annotated" / "long.mp4"
    with av.open(str(path)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
        rate = container.streams.video[0].average_rate
    assert len(frames) == len(source) and frames[0].shape == source[0].shape
    assert rate == 25
    band = np.array([f[:8].astype(float) for f in frames])
    assert band.mean() < 90 and band.max() > 150  # a dark band with white text
    below = np.abs(np.array(frames)[:, 24:].astype(float) - source[:, 24:]).mean()
    assert below < 12  # the rest of each frame is the video (lossy coding aside)

    gif = predict(checkpoint, [long_video], annotate="gif", out=tmp_path / "gif")
    with Image.open(gif.videos[0].files["annotated"]) as image:
        assert image.n_frames == len(source) and image.size == (64, 48)


# -------------------------------------------------------------------- inputs, errors


def _frame_folder(folder: Path, frames: np.ndarray) -> Path:
    folder.mkdir(parents=True)
    for number, frame in enumerate(frames, start=1):
        cv2.imwrite(str(folder / f"img_{number:05d}.jpg"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    return folder


def test_find_videos_walks_folders(tmp_path: Path, long_video: Path) -> None:
    write_video(tmp_path / "a" / "b" / "x.avi", numbered_frames(4))
    (tmp_path / "a" / "notes.txt").write_text("not a video")
    folder = _frame_folder(tmp_path / "a" / "frames", numbered_frames(4))
    (tmp_path / "empty").mkdir()
    videos, failed = find_videos([tmp_path / "a", long_video, tmp_path / "empty", long_video])
    assert videos == [tmp_path / "a" / "b" / "x.avi", folder, long_video]
    assert failed[0][0] == str(tmp_path / "empty") and "no video files" in failed[0][1]
    assert find_videos([folder]) == ([folder], [])
    write_video(tmp_path / "a" / "out" / "annotated" / "y.mp4", numbered_frames(4))
    (tmp_path / "a" / ".x.tmp.mp4").write_bytes(b"")  # an atomic write's temporary file
    assert find_videos([tmp_path / "a"], skip=tmp_path / "a" / "out")[0] == videos[:2]


def test_frame_folders_need_fps_for_windows(checkpoint: Path, tmp_path: Path) -> None:
    folder = _frame_folder(tmp_path / "clip", numbered_frames(20))
    result = predict(checkpoint, [folder], window=0.4, out=tmp_path / "a")
    assert result.failed == [(str(folder), "no frame rate known (a frame folder?); give --fps")]
    result = predict(checkpoint, [folder], window=0.4, fps=10, out=tmp_path / "b")
    assert result.videos[0].windows.frames == [(0, 4), (4, 8), (8, 12), (12, 16), (16, 20)]


def test_one_bad_input_among_many(checkpoint: Path, long_video: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"this is not a video")
    missing = tmp_path / "missing.mp4"
    result = predict(checkpoint, [missing, long_video, bad], top_k=2, out=tmp_path / "out")
    assert [p.video for p in result.videos] == [str(long_video)]
    assert [video for video, _ in result.failed] == [str(missing), str(bad)]
    lines = [
        json.loads(x) for x in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()
    ]
    assert lines[0]["video"] == str(long_video) and len(lines[0]["top"]) == 2
    assert {x["video"] for x in lines[1:]} == {str(missing), str(bad)}
    assert all(x["error"] for x in lines[1:])
    with (tmp_path / "out" / "predictions.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["rank"], r["class"]) for r in rows] == [
        ("1", lines[0]["top"][0]["class"]), ("2", lines[0]["top"][1]["class"])
    ]  # fmt: skip


def test_class_names_file(
    checkpoint: Path, long_video: Path, tmp_path: Path, synthetic_root: Path
) -> None:
    names = [f"action {i}" for i in range(4)]
    write_label_map(tmp_path / "names.txt", names)
    result = predict(checkpoint, [long_video], classes=tmp_path / "names.txt", out=tmp_path)
    default = predict(checkpoint, [long_video], out=tmp_path / "default")
    assert [(i, names[i]) for i, _, _ in default.videos[0].top] == [
        (i, name) for i, name, _ in result.videos[0].top
    ]
    write_label_map(tmp_path / "three.txt", names[:3])
    with pytest.raises(VidactError, match="3 class names, but the checkpoint's model has 4"):
        predict(checkpoint, [long_video], classes=tmp_path / "three.txt", out=tmp_path)


def test_not_a_vidact_checkpoint(tmp_path: Path, long_video: Path) -> None:
    plain = tmp_path / "plain.pt"
    torch.save({"fc.weight": torch.zeros(2, 2)}, plain)
    with pytest.raises(VidactError, match="not a vidact checkpoint"):
        predict(plain, [long_video], out=tmp_path)
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(VidactError, match="not a readable checkpoint"):
        predict(tmp_path / "text.pt", [long_video], out=tmp_path)


# ------------------------------------------------------------------------------- CLI


def test_the_readme_commands_run(
    checkpoint: Path, synthetic_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """README's predict and export lines, on the tiny checkpoint and the test dataset."""
    readme = Path(__file__).parents[2] / "README.md"
    lines = [
        line.partition("#")[0].split()
        for line in readme.read_text().splitlines()
        if line.startswith(("vidact predict ", "vidact export "))
    ]
    assert len(lines) >= 3
    monkeypatch.chdir(tmp_path)
    for words in lines:
        args = [
            str(checkpoint) if w == "runs/quickstart/<run>/checkpoints/best.pt"
            else w.replace("data/quickstart", str(synthetic_root))
            for w in words[1:]
        ]  # fmt: skip
        result = runner.invoke(app, args)
        assert result.exit_code == 0, (words, result.output)


def test_cli_table_files_and_exit_codes(checkpoint: Path, long_video: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    ok = runner.invoke(app, ["predict", str(checkpoint), str(long_video), "-k", "2",
                             "--out", str(out), "--window", "0.5"])  # fmt: skip
    assert ok.exit_code == 0, ok.output
    top = json.loads((out / "predictions.jsonl").read_text())["top"]
    assert top[0]["class"] in ok.output and "1 predicted, 0 failed" in ok.output
    assert (out / "windows" / "long.timeline.png").is_file()
    missing = str(tmp_path / "nope.mp4")
    some = runner.invoke(
        app, ["predict", str(checkpoint), str(long_video), missing, "--out", str(tmp_path / "o2")]
    )
    assert some.exit_code == 1
    assert "1 predicted, 1 failed" in some.output and "nope.mp4: not found" in some.output
    bad = runner.invoke(app, ["predict", str(long_video), str(long_video), "--out", str(out)])
    assert bad.exit_code == 2 and "not a readable checkpoint" in bad.output
    assert "Traceback" not in bad.output
    stride = runner.invoke(app, ["predict", str(checkpoint), str(long_video), "--stride", "1"])
    assert stride.exit_code == 2 and "--stride" in stride.output
    shown = runner.invoke(app, ["predict", "--help"])
    assert shown.exit_code == 0 and "--window" in shown.output and "Examples" in shown.output
