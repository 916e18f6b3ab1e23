"""One `compute_flow` over the TV-L1 backends, and flow quantisation to uint8 images.

Backends:
- "torch": the batched PyTorch TV-L1 of `vidact.flow.tvl1` (CUDA if available, else CPU).
- "opencv-cuda": `cv2.cuda.OpticalFlowDual_TVL1`, only in an OpenCV built with CUDA
  (pip wheels are not); detected at run time.
- "opencv": `cv2.optflow.DualTVL1OpticalFlow` on the CPU (opencv-contrib).
- "auto": the fastest backend available: opencv-cuda when OpenCV reports a CUDA device,
  else torch (on a GPU when torch has one; on a CPU it takes about half OpenCV's time for
  the same EPE, docs/flow.md, benchmarks/tvl1.py). OpenCV on the CPU is never auto's pick.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

import numpy as np
import torch

from vidact import console
from vidact.constants import FLOW_BACKENDS, FLOW_BOUND
from vidact.errors import VidactError
from vidact.flow.tvl1 import TVL1Params, default_device, tvl1_flow

__all__ = [
    "BACKENDS",
    "Backend",
    "available_backends",
    "compute_flow",
    "dequantize_flow",
    "opencv_cuda_available",
    "quantize_flow",
    "resolve_backend",
    "to_gray",
]

Backend = Literal["auto", "torch", "opencv-cuda", "opencv"]
BACKENDS: tuple[str, ...] = FLOW_BACKENDS

# ITU-R BT.601 luma weights, the ones cv2.cvtColor(..., COLOR_RGB2GRAY) uses.
_LUMA = (0.299, 0.587, 0.114)


def opencv_cuda_available() -> bool:
    """True when this OpenCV was built with CUDA, sees a device and has the CUDA TV-L1."""
    try:
        import cv2
    except ImportError:  # pragma: no cover - opencv is a dependency
        return False
    cuda = getattr(cv2, "cuda", None)
    if cuda is None or _cuda_tvl1_factory(cuda) is None:
        return False
    try:
        return int(cuda.getCudaEnabledDeviceCount()) > 0
    except Exception:  # a CUDA build without a usable driver raises cv2.error
        return False


def _cuda_tvl1_factory(cuda: Any) -> Any:
    """cv2.cuda's TV-L1 constructor: `OpticalFlowDual_TVL1.create` in current bindings,
    `OpticalFlowDual_TVL1_create` in older ones; None when OpenCV has no CUDA optflow."""
    cls = getattr(cuda, "OpticalFlowDual_TVL1", None)
    if cls is not None and hasattr(cls, "create"):
        return cls.create
    return getattr(cuda, "OpticalFlowDual_TVL1_create", None)


def _opencv_cpu_available() -> bool:
    try:
        import cv2
    except ImportError:  # pragma: no cover
        return False
    return hasattr(getattr(cv2, "optflow", None), "DualTVL1OpticalFlow_create")


def available_backends() -> list[str]:
    """The concrete backends usable in this process, fastest first (`auto`'s order):
    opencv-cuda, torch (GPU or CPU: on a CPU about half OpenCV's time), opencv."""
    found = ["opencv-cuda"] if opencv_cuda_available() else []
    found.append("torch")
    if _opencv_cpu_available():
        found.append("opencv")
    return found


def resolve_backend(backend: str) -> str:
    """Map "auto" to a concrete backend and check that a named one is usable here."""
    if backend not in BACKENDS:
        raise VidactError(f"unknown flow backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "auto":
        return available_backends()[0]
    if backend == "opencv-cuda" and not opencv_cuda_available():
        raise VidactError(
            "flow backend 'opencv-cuda' is not available: this OpenCV has no CUDA support "
            "or sees no CUDA device (cv2.cuda.getCudaEnabledDeviceCount() is 0; pip wheels "
            "are built without CUDA). Build OpenCV with opencv_contrib and WITH_CUDA=ON "
            "(see docs/flow.md), or use --flow-backend torch."
        )
    if backend == "opencv" and not _opencv_cpu_available():
        raise VidactError(
            "flow backend 'opencv' needs cv2.optflow (opencv-contrib-python); "
            "install opencv-contrib-python-headless or use --flow-backend torch."
        )
    return backend


# ---------------------------------------------------------------------------------------
# Frames -> grayscale


def to_gray(frames: Any) -> tuple[np.ndarray, bool]:
    """(T, H, W, 3) RGB or (T, H, W[, 1]) gray frames -> ((T, H, W) float32 on 0-255, was_uint8).

    uint8 input is converted as cv2.cvtColor(RGB2GRAY) does (rounded to uint8 levels);
    float input must be on a 0-1 scale, as OpenCV expects of float images.
    """
    if isinstance(frames, torch.Tensor):
        frames = frames.detach().cpu().numpy()
    arr = np.asarray(frames)
    if arr.ndim == 4 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if (arr.ndim == 4 and arr.shape[-1] != 3) or arr.ndim not in (3, 4):
        raise VidactError(
            f"frames must be (T, H, W, 3) RGB or (T, H, W) grayscale, got shape {arr.shape}"
        )
    if arr.shape[0] < 2:
        raise VidactError(f"need at least 2 frames to compute flow, got {arr.shape[0]}")
    is_uint8 = arr.dtype == np.uint8
    if not is_uint8:
        if not np.issubdtype(arr.dtype, np.floating):
            raise VidactError(f"frames must be uint8 (0-255) or float (0-1), got {arr.dtype}")
        hi = float(np.nanmax(arr)) if arr.size else 0.0
        if hi > 1.0 + 1e-3:
            raise VidactError(
                f"float frames must be on a 0-1 scale (max here is {hi:.3g}); "
                "pass uint8 frames for 0-255 data"
            )
    if arr.ndim == 4:
        gray = arr.astype(np.float32) @ np.asarray(_LUMA, dtype=np.float32)
        if is_uint8:
            gray = np.clip(np.rint(gray), 0, 255)
    else:
        gray = arr.astype(np.float32)
    if not is_uint8:
        gray = gray * np.float32(255.0)
    return np.ascontiguousarray(gray, dtype=np.float32), is_uint8


# ---------------------------------------------------------------------------------------
# Backends


def _flow_torch(
    gray: np.ndarray,
    params: TVL1Params,
    batch_size: int | None,
    device: torch.device | str | None,
    workers: int,
    compile: bool,
    advance: Any,
) -> np.ndarray:
    dev = torch.device(device) if device is not None else default_device()
    on_cpu = dev.type == "cpu"
    # On a CPU, one pair per call keeps the working set in cache; on a GPU, large batches
    # fill the device.
    bs = batch_size or (1 if on_cpu else 64)
    frames = torch.from_numpy(gray)
    n = gray.shape[0] - 1
    out = np.empty((n, *gray.shape[1:], 2), dtype=np.float32)
    starts = list(range(0, n, bs))

    def one(start: int) -> int:
        stop = min(start + bs, n)
        flow = tvl1_flow(
            frames[start:stop],
            frames[start + 1 : stop + 1],
            params,
            device=dev,
            compile=compile,
            num_threads=None,  # set once below, not per call (calls may run in threads)
        )
        out[start:stop] = flow.permute(0, 2, 3, 1).cpu().numpy()
        return stop - start

    threads_before = torch.get_num_threads()
    if on_cpu:
        # One intra-op thread per worker (see tvl1_flow's num_threads); parallelism comes
        # from the workers, which run whole batches side by side (torch releases the GIL).
        torch.set_num_threads(1)
    try:
        if workers <= 1 or len(starts) == 1:
            for start in starts:
                advance(one(start))
        else:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                for done in pool.map(one, starts):
                    advance(done)
    finally:
        torch.set_num_threads(threads_before)
    return out


def _cv2() -> Any:
    import cv2

    return cv2


def _opencv_cpu_solver(params: TVL1Params) -> Any:
    cv2 = _cv2()

    if params.interpolation != "bicubic":
        console.warn("the opencv backend always warps with bicubic interpolation")
    return cv2.optflow.DualTVL1OpticalFlow_create(
        tau=params.tau,
        lambda_=params.lambda_,
        theta=params.theta,
        nscales=params.n_scales,
        warps=params.n_warps,
        epsilon=params.epsilon,
        innnerIterations=params.inner_iterations,  # sic: OpenCV's keyword name
        outerIterations=params.outer_iterations,
        scaleStep=params.scale_step,
        gamma=params.gamma,
        medianFiltering=params.median_filtering,
        useInitialFlow=False,
    )


def _opencv_input(gray: np.ndarray, is_uint8: bool) -> np.ndarray:
    # OpenCV takes uint8 as 0-255 and float32 as 0-1.
    if is_uint8:
        return gray.astype(np.uint8)
    return (gray / np.float32(255.0)).astype(np.float32)


def _flow_opencv(gray: np.ndarray, is_uint8: bool, params: TVL1Params, advance: Any) -> np.ndarray:
    solver = _opencv_cpu_solver(params)
    frames = _opencv_input(gray, is_uint8)
    out = np.empty((gray.shape[0] - 1, *gray.shape[1:], 2), dtype=np.float32)
    for i in range(out.shape[0]):
        out[i] = solver.calc(frames[i], frames[i + 1], None)
        advance(1)
    return out


def _flow_opencv_cuda(
    gray: np.ndarray, is_uint8: bool, params: TVL1Params, advance: Any
) -> np.ndarray:
    cv2 = _cv2()

    if params.median_filtering > 1:
        console.debug("opencv-cuda TV-L1 has no median filtering; median_filtering ignored")
    solver = _cuda_tvl1_factory(cv2.cuda)(
        params.tau,
        params.lambda_,
        params.theta,
        params.n_scales,
        params.n_warps,
        params.epsilon,
        params.inner_iterations * params.outer_iterations,
        params.scale_step,
        params.gamma,
        False,
    )
    frames = _opencv_input(gray, is_uint8)
    out = np.empty((gray.shape[0] - 1, *gray.shape[1:], 2), dtype=np.float32)
    prev = cv2.cuda_GpuMat()
    prev.upload(frames[0])
    for i in range(out.shape[0]):
        nxt = cv2.cuda_GpuMat()
        nxt.upload(frames[i + 1])
        flow = solver.calc(prev, nxt, None)
        out[i] = flow.download()
        prev = nxt
        advance(1)
    return out


def compute_flow(
    frames: Any,
    backend: str = "auto",
    params: TVL1Params | None = None,
    batch_size: int | None = None,
    *,
    device: torch.device | str | None = None,
    workers: int = 1,
    compile: bool = False,
    progress: bool = False,
) -> np.ndarray:
    """TV-L1 flow between consecutive frames.

    frames: (T, H, W, 3) RGB or (T, H, W) grayscale; uint8 (0-255) or float (0-1); numpy
        array or torch tensor.
    backend: "auto", "torch", "opencv-cuda" or "opencv" (see the module docstring).
    params: `TVL1Params`; default `TVL1Params.opencv_cpu()` (OpenCV's CPU defaults) for
        every backend, so all backends solve the same problem.
    batch_size: pairs per torch call (default 1 on CPU, 64 on GPU); ignored by OpenCV.
    device: torch backend only: where to compute (default CUDA if available, else CPU).
    workers: torch backend only: batches computed side by side in threads (each with one
        torch thread on CPU); 2 on a 2-core CPU gives ~1.3x the throughput of 1.
    compile: torch backend only: run the iterations through torch.compile (see
        `tvl1_flow`).
    progress: show a progress bar through `vidact.console`.
    Returns float32 (T-1, H, W, 2) flow in pixels, x (right) then y (down), frame t to t+1.
    """
    params = params or TVL1Params.opencv_cpu()
    name = resolve_backend(backend)
    gray, is_uint8 = to_gray(frames)
    n = gray.shape[0] - 1
    console.debug(f"TV-L1 flow: {n} pair(s) of {gray.shape[2]}x{gray.shape[1]} with {name}")

    def run(advance: Any) -> np.ndarray:
        if name == "torch":
            return _flow_torch(gray, params, batch_size, device, workers, compile, advance)
        if name == "opencv":
            return _flow_opencv(gray, is_uint8, params, advance)
        return _flow_opencv_cuda(gray, is_uint8, params, advance)

    if progress:
        with console.progress_task(f"TV-L1 ({name})", total=n) as advance:
            return run(advance)
    return run(lambda k=1: None)


# ---------------------------------------------------------------------------------------
# Quantisation


def quantize_flow(flow: Any, bound: float = FLOW_BOUND) -> tuple[np.ndarray, np.ndarray]:
    """Flow (..., 2) in pixels -> (x, y) uint8 images for JPEG storage.

    The usual two-stream mapping: clip each component to [-bound, bound] and map it
    linearly onto [0, 255], q = round((f + bound) * 255 / (2 * bound)); 0 px maps to
    127.5 (stored as 128). Values beyond +-bound saturate. Inside the bound, the round
    trip through `dequantize_flow` is off by at most bound / 255 px.
    """
    if bound <= 0:
        raise ValueError(f"bound must be positive, got {bound}")
    if isinstance(flow, torch.Tensor):
        flow = flow.detach().cpu().numpy()
    f = np.asarray(flow, dtype=np.float32)
    if f.shape[-1] != 2:
        raise ValueError(f"flow must have a last axis of size 2 (x, y), got {f.shape}")
    q = (np.clip(f, -bound, bound) + bound) * np.float32(255.0 / (2.0 * bound))
    q = np.clip(np.rint(q), 0, 255).astype(np.uint8)
    return q[..., 0], q[..., 1]


def dequantize_flow(x: Any, y: Any, bound: float = FLOW_BOUND) -> np.ndarray:
    """Inverse of `quantize_flow`: two uint8 images -> float32 flow (..., 2) in pixels."""
    if bound <= 0:
        raise ValueError(f"bound must be positive, got {bound}")
    qx = np.asarray(x, dtype=np.float32)
    qy = np.asarray(y, dtype=np.float32)
    if qx.shape != qy.shape:
        raise ValueError(f"x and y images differ in shape: {qx.shape} vs {qy.shape}")
    scale = np.float32(2.0 * bound / 255.0)
    return np.stack([qx * scale - bound, qy * scale - bound], axis=-1).astype(np.float32)
