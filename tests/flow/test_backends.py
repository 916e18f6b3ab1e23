from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from tests.flow._pairs import texture, translation_pair
from vidact.errors import VidactError
from vidact.flow import backends
from vidact.flow.backends import (
    available_backends,
    compute_flow,
    dequantize_flow,
    opencv_cuda_available,
    quantize_flow,
    resolve_backend,
    to_gray,
)


def _moving_clip(size: int = 48) -> tuple[np.ndarray, tuple[float, float]]:
    """Three RGB frames: a texture moving by (1.0, -0.5) px, then standing still."""
    f0, f1, _ = translation_pair(size, 1.0, -0.5, seed=11)
    gray = np.stack([f0, f1, f1])
    return np.repeat(gray[..., None], 3, axis=-1), (1.0, -0.5)


def _shifted(image: np.ndarray, dx: float, dy: float) -> np.ndarray:
    """`image` with its content moved by (dx, dy) pixels (bicubic, reflected border)."""
    h, w = image.shape
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    return cv2.remap(image, xs - dx, ys - dy, cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)


@pytest.mark.parametrize("bound", [20.0, 5.0])
def test_quantize_round_trip(bound: float) -> None:
    rng = np.random.default_rng(0)
    flow = rng.uniform(-bound, bound, size=(2, 16, 16, 2)).astype(np.float32)
    qx, qy = quantize_flow(flow, bound)
    assert qx.dtype == np.uint8 and qx.shape == (2, 16, 16) and qy.shape == (2, 16, 16)
    back = dequantize_flow(qx, qy, bound)
    assert back.shape == flow.shape and back.dtype == np.float32
    assert np.abs(back - flow).max() <= bound / 255.0 + 1e-5


def test_quantize_mapping_and_clipping() -> None:
    flow = np.array([[[-20.0, 20.0], [0.0, 100.0], [-35.0, 10.0]]], np.float32)
    qx, qy = quantize_flow(flow)
    np.testing.assert_array_equal(qx, [[0, 128, 0]])
    np.testing.assert_array_equal(qy, [[255, 255, 191]])  # 10 px -> 191.25 -> 191
    back = dequantize_flow(qx, qy)
    np.testing.assert_allclose(back[0, 1], [20.0 / 255, 20.0], atol=1e-5)
    with pytest.raises(ValueError):
        quantize_flow(flow, bound=0.0)
    with pytest.raises(ValueError):
        quantize_flow(np.zeros((4, 4, 3)))


def test_to_gray_matches_opencv_and_checks_input() -> None:
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, size=(2, 9, 11, 3), dtype=np.uint8)
    gray, was_uint8 = to_gray(rgb)
    assert was_uint8 and gray.dtype == np.float32 and gray.shape == (2, 9, 11)
    expected = np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in rgb]).astype(np.float32)
    assert np.abs(gray - expected).max() <= 1.0
    as_float, was_uint8 = to_gray(torch.from_numpy(rgb).float() / 255.0)
    assert not was_uint8
    assert np.abs(as_float - gray).max() <= 0.6
    with pytest.raises(VidactError, match="0-1 scale"):
        to_gray(rgb.astype(np.float32))
    with pytest.raises(VidactError, match="at least 2 frames"):
        to_gray(rgb[:1])
    with pytest.raises(VidactError, match=r"\(T, H, W, 3\)"):
        to_gray(np.zeros((2, 4, 4, 2), np.uint8))


def test_compute_flow_torch_and_opencv_agree_on_translation() -> None:
    clip, (dx, dy) = _moving_clip()
    flows = {}
    for name in ("torch", "opencv"):
        flow = compute_flow(clip, backend=name)
        assert flow.shape == (2, 48, 48, 2) and flow.dtype == np.float32
        inner = flow[0, 8:-8, 8:-8]
        assert np.median(inner[..., 0]) == pytest.approx(dx, abs=0.1), name
        assert np.median(inner[..., 1]) == pytest.approx(dy, abs=0.1), name
        assert np.abs(flow[1]).max() < 0.05, name  # identical frames: no motion
        flows[name] = flow
    assert np.abs(flows["torch"][0] - flows["opencv"][0])[8:-8, 8:-8].mean() < 0.1


def test_compute_flow_grayscale_float_and_batches() -> None:
    tex = texture(32, 40, seed=12)
    shifts = [(0.0, 0.0), (1.0, 0.5), (2.0, 0.0), (2.5, -1.0)]  # texture position per frame
    frames = np.stack([_shifted(tex, dx, dy) for dx, dy in shifts]) / 255.0
    one_by_one = compute_flow(frames, backend="torch", batch_size=1)
    batched = compute_flow(torch.from_numpy(frames), backend="torch", batch_size=3)
    threaded = compute_flow(frames, backend="torch", batch_size=1, workers=2)
    assert one_by_one.shape == (3, 32, 40, 2)
    inner = one_by_one[:, 6:-6, 6:-6]
    expected = np.diff(np.array(shifts), axis=0)
    np.testing.assert_allclose(np.median(inner, axis=(1, 2)), expected, atol=0.1)
    np.testing.assert_allclose(one_by_one, batched, atol=1e-4)
    np.testing.assert_array_equal(one_by_one, threaded)


def test_available_backends_and_auto() -> None:
    found = available_backends()
    assert "torch" in found and "opencv" in found
    assert resolve_backend("auto") == found[0]
    if not opencv_cuda_available():
        assert found[:2] == ["torch", "opencv"]  # torch is the faster one on a CPU too
    with pytest.raises(VidactError, match="unknown flow backend"):
        resolve_backend("farneback")


def test_auto_prefers_opencv_cuda_then_torch_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backends, "opencv_cuda_available", lambda: True)
    assert resolve_backend("auto") == "opencv-cuda"
    monkeypatch.setattr(backends, "opencv_cuda_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_backend("auto") == "torch"


def test_auto_picks_torch_over_opencv_on_a_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/flow.md (benchmarks/tvl1.py): on a CPU the torch backend takes about half
    OpenCV's time for the same EPE at 224 px and up, so auto picks it even where OpenCV is
    installed."""
    monkeypatch.setattr(backends, "opencv_cuda_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(backends, "_opencv_cpu_available", lambda: True)
    assert available_backends() == ["torch", "opencv"]
    assert resolve_backend("auto") == "torch"
    monkeypatch.setattr(backends, "_opencv_cpu_available", lambda: False)
    assert available_backends() == ["torch"]


def test_opencv_cuda_detection() -> None:
    cuda = getattr(cv2, "cuda", None)
    has_cuda_build = hasattr(cuda, "OpticalFlowDual_TVL1") or hasattr(
        cuda, "OpticalFlowDual_TVL1_create"
    )
    devices = cv2.cuda.getCudaEnabledDeviceCount() if hasattr(cv2, "cuda") else 0
    assert opencv_cuda_available() == (has_cuda_build and devices > 0)
    if opencv_cuda_available():
        clip, _ = _moving_clip()
        assert compute_flow(clip, backend="opencv-cuda").shape == (2, 48, 48, 2)
    else:
        with pytest.raises(VidactError, match=r"opencv-cuda.*WITH_CUDA=ON"):
            compute_flow(np.zeros((2, 8, 8), np.uint8), backend="opencv-cuda")


def test_opencv_backend_reads_float_frames_on_a_0_1_scale() -> None:
    first, second, _ = translation_pair(40, 1.0, -0.5, seed=3)
    frames = np.stack([first, second])
    as_uint8 = compute_flow(frames, backend="opencv")
    as_float = compute_flow(frames.astype(np.float32) / 255.0, backend="opencv")
    np.testing.assert_allclose(as_float, as_uint8, atol=1e-4)
    assert np.median(as_uint8[0, 6:-6, 6:-6, 0]) == pytest.approx(1.0, abs=0.1)
