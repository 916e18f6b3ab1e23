"""Predict the actions of new videos with a trained checkpoint (`vidact predict`).

`predict(checkpoint, inputs)` rebuilds the model from the recipe inside the checkpoint
(`vidact.engine.evaluator.load_member`, as `evaluate` does), so the recipe fixes the input
size, the frames per clip, their sampling and the normalisation; the test views are those of
`evaluate` (`--clips`, `--crops`, vidact.data.views), every view cut from one decode.

Each video is scored as one window spanning it, or, with `window`/`stride` (seconds), as
sliding windows: each window is a short video of its own (its clips spread over the window),
and the video's scores are the mean of its windows'. Within a window, views are averaged as
softmax scores (or logits: the recipe's `eval.average`); classes are ranked by that score,
ties broken by the mean log-probability (saturated softmax scores tie at exactly 0 and 1).

Frames are decoded a chunk of windows at a time (`_CHUNK`), so a long video never sits in
memory whole. A video that fails to decode is reported and the others are predicted.
Outputs (vidact.engine.predict_outputs, vidact.engine.annotate) go under `out` only.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vidact import console
from vidact.data.manifest import read_label_map
from vidact.data.transforms import ClipTransform
from vidact.data.video import VideoInfo, probe, read_frames
from vidact.data.views import build_views, view_boxes
from vidact.engine import predict_outputs
from vidact.engine.annotate import captions, write_annotated
from vidact.engine.evaluator import Member
from vidact.engine.predict_inputs import find_videos
from vidact.engine.trained import load_trained
from vidact.errors import VidactError, VideoReadError

__all__ = ["PredictResult", "VideoPrediction", "Windows", "predict", "rank"]

_CHUNK = 16  # windows decoded and scored together


@dataclass
class Windows:
    """Per-window scores of one video (sliding windows, or one window spanning it)."""

    fps: float
    frames: list[tuple[int, int]]  # [start, end) frame range of each window
    scores: np.ndarray  # (windows, classes): softmax scores (or logits) averaged over views
    log_probs: np.ndarray  # (windows, classes): mean log-softmax over views (tie-breaker)

    def seconds(self) -> list[tuple[float, float]]:
        fps = self.fps or 1.0
        return [(start / fps, end / fps) for start, end in self.frames]


@dataclass
class VideoPrediction:
    video: str
    scores: np.ndarray  # (classes,): the mean of the windows' scores
    top: list[tuple[int, str, float]]  # (class id, class name, score), best first
    windows: Windows
    files: dict[str, Path] = field(default_factory=dict)  # timeline, windows JSON, annotated


@dataclass
class PredictResult:
    out_dir: Path
    checkpoint: Path
    class_names: list[str]
    views: str  # "1 clip x 3 crops"
    average: str
    videos: list[VideoPrediction] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (input, reason)
    files: dict[str, Path] = field(default_factory=dict)
    seconds: float = 0.0


def rank(scores: np.ndarray, log_probs: np.ndarray, k: int) -> list[int]:
    """The `k` best class ids: by score, ties by mean log-probability, then by id."""
    order = np.lexsort((np.arange(len(scores)), -log_probs, -scores))
    return [int(i) for i in order[:k]]


# ------------------------------------------------------------------------------- loading


def _load(
    checkpoint: Path, settings: dict[str, Any], use_ema: bool | None,
    overrides: tuple[str, ...], recipe: Path | None,
) -> Member:  # fmt: skip
    member = load_trained(checkpoint, settings, use_ema, overrides, recipe)
    if member.spec.modality != "rgb":
        raise VidactError(
            f"{checkpoint}: model '{member.recipe.model.name}' reads {member.spec.modality} "
            "input (precomputed TV-L1 flow); predict reads RGB videos and frame folders only"
        )
    return member


def _class_names(member: Member, classes: Path | None) -> list[str]:
    if classes is None:
        return member.labels
    names = read_label_map(classes)
    if len(names) != len(member.labels):
        raise VidactError(
            f"{classes}: {len(names)} class names, but the checkpoint's model has "
            f"{len(member.labels)} outputs; give the label map it was trained with (the "
            "dataset's labels.txt), or leave --classes out to use the names in the checkpoint"
        )
    return names


# ------------------------------------------------------------------------------- windows


def frame_windows(
    info: VideoInfo, path: Path, window: float | None, stride: float | None, fps: float
) -> list[tuple[int, int]]:
    """[start, end) frame ranges: one spanning the video, or `window` seconds every
    `stride` seconds (a video shorter than a window is one window)."""
    total = info.num_frames
    if window is None:
        return [(0, total)]
    if fps <= 0:
        raise VideoReadError(path, "no frame rate known (a frame folder?); give --fps")
    length = max(1, round(window * fps))
    step = max(1, round((stride or window) * fps))
    return [(s, min(s + length, total)) for s in range(0, max(total - length, 0) + 1, step)]


def _chunk_views(
    member: Member, path: Path, windows: list[tuple[int, int]], seed: int
) -> torch.Tensor:
    """Every view of every window of one chunk, (windows * views, C, T, S, S), from one
    read of the frames they use."""
    spec = member.spec
    clips = [[clip + start for clip in spec.clip_indices(end - start)] for start, end in windows]
    needed = sorted({int(i) for per_window in clips for clip in per_window for i in clip})
    frames = read_frames(path, needed, member.recipe.data.video_backend)
    position = {frame: row for row, frame in enumerate(needed)}
    height, width = frames.shape[1:3]
    transform = ClipTransform(train=False, modality="rgb", mean=spec.mean, std=spec.std)
    out = []
    for number, per_window in enumerate(clips):
        rows = [np.array([position[int(i)] for i in clip]) for clip in per_window]
        rng = np.random.default_rng([seed, windows[number][0]])  # random:K crops
        views = view_boxes(height, width, spec.short_side, spec.crop_size, spec.crops, rng)
        out.append(build_views(frames, rows, views, spec.crop_size, transform))
    return torch.cat(out)


@torch.inference_mode()
def _forward(member: Member, views: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Logits of `views` in batches of the recipe's eval.batch_size (float32, CPU)."""
    size = member.eval.batch_size
    parts = [
        member.model(views[i : i + size].to(device)).float().cpu()
        for i in range(0, len(views), size)
    ]
    return torch.cat(parts)


def score_windows(
    member: Member, path: Path, windows: list[tuple[int, int]], device: torch.device
) -> tuple[np.ndarray, np.ndarray]:
    """(scores, log_probs), each (windows, classes): the views of each window averaged."""
    per_view = member.spec.num_views
    scores, log_probs = [], []
    for first in range(0, len(windows), _CHUNK):
        chunk = windows[first : first + _CHUNK]
        views = _chunk_views(member, path, chunk, member.recipe.train.seed)
        logits = _forward(member, views, device).double().view(len(chunk), per_view, -1)
        averaged = logits.softmax(-1) if member.eval.average == "softmax" else logits
        scores.append(averaged.mean(1).numpy())
        log_probs.append(logits.log_softmax(-1).mean(1).numpy())
    return np.concatenate(scores), np.concatenate(log_probs)


# ------------------------------------------------------------------------------- predict


@dataclass(frozen=True)
class _Options:
    top_k: int
    window: float | None
    stride: float | None
    fps: float | None
    annotate: str | None  # "mp4", "gif" or None
    out_dir: Path


def _check_options(
    window: float | None, stride: float | None, top_k: int, annotate: str | None
) -> None:
    if window is not None and window <= 0:
        raise VidactError(f"--window: {window} s; give a window length above 0 seconds")
    if stride is not None and (stride <= 0 or window is None):
        raise VidactError("--stride: give a positive stride together with --window SECONDS")
    if top_k < 1:
        raise VidactError(f"--top-k: {top_k}; give 1 or more")
    if annotate not in (None, "mp4", "gif"):
        raise VidactError(f"--annotate: {annotate!r}; use mp4 or gif")


def _predict_video(
    member: Member, path: Path, names: list[str], options: _Options, stem: str,
    device: torch.device,
) -> VideoPrediction:  # fmt: skip
    """Score one video (its windows), rank its classes and write its own files."""
    backend = member.recipe.data.video_backend
    info = probe(path, backend)
    fps = options.fps or info.fps
    frames = frame_windows(info, path, options.window, options.stride, fps)
    scores, log_probs = score_windows(member, path, frames, device)
    windows = Windows(fps, frames, scores, log_probs)
    video_scores, video_log_probs = scores.mean(axis=0), log_probs.mean(axis=0)
    top = [
        (i, names[i], float(video_scores[i]))
        for i in rank(video_scores, video_log_probs, options.top_k)
    ]
    prediction = VideoPrediction(str(path), video_scores, top, windows)
    out = options.out_dir
    if options.window is not None:
        score_name = "softmax score" if member.eval.average == "softmax" else "logit"
        prediction.files["windows"] = predict_outputs.write_windows_json(
            out / "windows" / f"{stem}.windows.json", str(path), windows, names
        )
        prediction.files["timeline"] = predict_outputs.write_timeline(
            out / "windows" / f"{stem}.timeline.png", str(path), windows, names, score_name
        )
    if options.annotate is not None:
        best = [rank(s, lp, 1)[0] for s, lp in zip(scores, log_probs, strict=True)]
        texts = [f"{names[c]} {s[c]:.2f}" for c, s in zip(best, scores, strict=True)]
        centres = np.array([(start + end) / 2 for start, end in frames], dtype=np.float64)
        target = out / "annotated" / f"{stem}.{options.annotate}"
        prediction.files["annotated"] = write_annotated(
            path, target, captions(info.num_frames, centres, texts), fps, backend
        )
    return prediction


def _predict_all(
    result: PredictResult, member: Member, videos: list[tuple[Path, str]], options: _Options,
    device: torch.device,
) -> None:  # fmt: skip
    """Predict every (video, file stem) into `result`, a progress bar over the videos (a
    log line per video where no bar is drawn: a pipe, a batch job's log)."""
    names = result.class_names
    with console.progress_task("predicting", total=len(videos)) as advance:
        for number, (path, stem) in enumerate(videos, start=1):
            try:
                prediction = _predict_video(member, path, names, options, stem, device)
            except VideoReadError as exc:
                result.failed.append((str(path), exc.reason))
                console.warn(f"skipped {path}: {exc.reason}")
            else:
                result.videos.append(prediction)
                if not console.progress_drawn():
                    _, name, score = prediction.top[0]
                    console.info(f"[{number}/{len(videos)}] {path}: {name} ({score:.3f})")
            advance(status=f"{len(result.failed)} failed" if result.failed else "")


def predict(
    checkpoint: Path,
    inputs: list[Path],
    *,
    top_k: int = 5,
    clips: int | None = None,
    crops: str | None = None,
    window: float | None = None,
    stride: float | None = None,
    fps: float | None = None,
    annotate: str | None = None,
    classes: Path | None = None,
    out: Path | None = None,
    use_ema: bool | None = None,
    overrides: tuple[str, ...] = (),
    recipe: Path | None = None,
) -> PredictResult:
    """Top-`top_k` classes of every video in `inputs` (files, frame folders, folders of
    them); see the module docstring. `window`/`stride`: sliding windows (seconds), with a
    JSON of their scores and a timeline PNG per video; `fps`: the frame rate of frame
    folders; `annotate`: "mp4" or "gif", the video with its top class drawn; `classes`:
    a label map replacing the checkpoint's class names (the same count). Writes only
    under `out` (default ./predictions)."""
    start_time = time.perf_counter()
    _check_options(window, stride, top_k, annotate)
    settings = {k: v for k, v in {"clips": clips, "crops": crops}.items() if v is not None}
    member = _load(Path(checkpoint), settings, use_ema, tuple(overrides), recipe)
    names = _class_names(member, classes)
    out_dir = Path(out) if out is not None else Path("predictions")
    videos, failed = find_videos([Path(p) for p in inputs], skip=out_dir)
    if not videos and not failed:
        raise VidactError("give at least one video, frame folder or folder of videos")
    options = _Options(min(top_k, len(names)), window, stride, fps, annotate, out_dir)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    member.model.to(device)
    result = PredictResult(out_dir, Path(checkpoint), names, member.spec.describe(),
                           member.eval.average, failed=failed)  # fmt: skip
    stems = predict_outputs.unique_stems([str(v) for v in videos])
    try:
        _predict_all(result, member, list(zip(videos, stems, strict=True)), options, device)
    finally:  # also on Ctrl-C: what is predicted is written
        result.files = predict_outputs.write_predictions(
            out_dir, result.videos, result.failed, result.views
        )
    result.seconds = time.perf_counter() - start_time
    return result
