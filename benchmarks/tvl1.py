"""TV-L1 speed and accuracy per backend, as ratios against OpenCV CPU in one run.

For each frame size (224x224 and short side 256, i.e. 256x340) the script builds pairs
with a known smooth flow field (a random texture, frame 0 sampled from frame 1 at
x + flow(x)), runs every backend available here on the same pairs with the same
parameters (OpenCV's CPU defaults), and prints ms per pair, pairs/s, the time ratio
against OpenCV CPU and the end-point error against the known field, so that "equal
accuracy" is visible next to the speed.

    python benchmarks/tvl1.py                 # 6 pairs per size
    python benchmarks/tvl1.py --pairs 16 --sizes 224x224
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import cv2
import numpy as np
import torch

from vidact.flow.backends import available_backends, compute_flow
from vidact.flow.metrics import border_mask, endpoint_error
from vidact.flow.tvl1 import TVL1Params, tvl1_flow


def texture(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    img = np.zeros((h, w), np.float32)
    for step, amp in [(2, 0.2), (4, 0.3), (8, 0.5), (16, 0.6), (32, 0.4)]:
        noise = rng.standard_normal((h // step + 2, w // step + 2)).astype(np.float32)
        img += amp * cv2.resize(noise, (w, h), interpolation=cv2.INTER_CUBIC)
    return (img - img.min()) / (img.max() - img.min()) * 255.0


def make_pairs(n: int, h: int, w: int, magnitude: float, seed: int = 0) -> tuple[np.ndarray, ...]:
    """n pairs (frame0, frame1) uint8 and their (n, h, w, 2) ground-truth flow."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    f0, f1, gt = [], [], []
    for _ in range(n):
        second = texture(h, w, rng)
        coarse = rng.standard_normal((4, 4, 2)).astype(np.float32)
        flow = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
        flow *= magnitude / np.abs(flow).max()
        first = cv2.remap(
            second, xs + flow[..., 0], ys + flow[..., 1], cv2.INTER_CUBIC,
            borderMode=cv2.BORDER_REFLECT,
        )  # fmt: skip
        f0.append(np.clip(np.rint(first), 0, 255).astype(np.uint8))
        f1.append(np.clip(np.rint(second), 0, 255).astype(np.uint8))
        gt.append(flow)
    return np.stack(f0), np.stack(f1), np.stack(gt)


def run_opencv(f0: np.ndarray, f1: np.ndarray, threads: int | None = None) -> np.ndarray:
    before = cv2.getNumThreads()
    if threads is not None:
        cv2.setNumThreads(threads)
    try:
        solver = cv2.optflow.DualTVL1OpticalFlow_create()  # type: ignore[attr-defined]
        return np.stack([solver.calc(a, b, None) for a, b in zip(f0, f1, strict=True)])
    finally:
        cv2.setNumThreads(before)


def run_opencv_cuda(f0: np.ndarray, f1: np.ndarray) -> np.ndarray:
    # compute_flow takes a clip; interleave the pairs as separate 2-frame clips.
    return np.concatenate(
        [compute_flow(np.stack([a, b]), backend="opencv-cuda") for a, b in zip(f0, f1, strict=True)]
    )


def run_torch(
    f0: np.ndarray, f1: np.ndarray, device: str, batch: int, workers: int = 1
) -> np.ndarray:
    """Pairs in batches of `batch`; on CPU with one torch thread per worker thread."""
    i0, i1 = torch.from_numpy(f0).float(), torch.from_numpy(f1).float()
    out = np.empty((*f0.shape, 2), np.float32)
    starts = list(range(0, len(f0), batch))

    def one(s: int) -> None:
        flow = tvl1_flow(i0[s : s + batch], i1[s : s + batch], device=device, num_threads=None)
        out[s : s + batch] = flow.permute(0, 2, 3, 1).cpu().numpy()

    before = torch.get_num_threads()
    if device == "cpu":
        torch.set_num_threads(1)
    try:
        if workers == 1:
            for s in starts:
                one(s)
        else:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(workers) as pool:
                list(pool.map(one, starts))
    finally:
        torch.set_num_threads(before)
    if device == "cuda":
        torch.cuda.synchronize()
    return out


def timed(fn: Callable[[], np.ndarray], repeats: int) -> tuple[float, np.ndarray]:
    """Best wall time of `repeats` runs (the CPU is shared; the best is the least disturbed)."""
    best, result = float("inf"), np.empty(0)
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=6, help="pairs per size")
    ap.add_argument("--sizes", default="224x224,256x340", help="HxW list")
    ap.add_argument("--magnitude", type=float, default=4.0, help="largest flow component, px")
    ap.add_argument("--repeats", type=int, default=2, help="runs per backend (best kept)")
    ap.add_argument("--gpu-batch", type=int, default=64)
    args = ap.parse_args()

    assert TVL1Params.opencv_cpu() == TVL1Params()  # every backend: OpenCV's CPU defaults
    cv_threads = cv2.getNumThreads()
    print(
        f"torch {torch.__version__}, OpenCV {cv2.__version__} ({cv_threads} threads), "
        f"available backends: {', '.join(available_backends())}"
    )
    for size in args.sizes.split(","):
        h, w = (int(v) for v in size.lower().split("x"))
        bench_size(h, w, args)


def bench_size(h: int, w: int, args: argparse.Namespace) -> None:
    n = args.pairs
    f0, f1, gt = make_pairs(n, h, w, args.magnitude)
    mask = border_mask(h, w, 8)
    runs: list[tuple[str, Callable[[], np.ndarray]]] = [
        (f"opencv CPU, {cv2.getNumThreads()} threads", lambda: run_opencv(f0, f1)),
        ("opencv CPU, 1 thread", lambda: run_opencv(f0, f1, threads=1)),
        ("torch CPU, 1 thread", lambda: run_torch(f0, f1, "cpu", 1)),
        ("torch CPU, 2 workers", lambda: run_torch(f0, f1, "cpu", 1, workers=2)),
    ]
    if torch.cuda.is_available():
        gb = args.gpu_batch
        run_torch(f0[:2], f1[:2], "cuda", gb)  # warm-up (CUDA context) outside the timing
        runs.append((f"torch CUDA, batch {gb}", lambda: run_torch(f0, f1, "cuda", gb)))
    if "opencv-cuda" in available_backends():
        run_opencv_cuda(f0[:1], f1[:1])
        runs.append(("opencv-cuda", lambda: run_opencv_cuda(f0, f1)))

    print(f"\n{h}x{w}, {n} pairs, smooth field up to {args.magnitude:g} px")
    print(f"{'backend':26s} {'ms/pair':>9s} {'pairs/s':>9s} {'x OpenCV':>9s} {'EPE px':>8s}")
    base = None
    for name, fn in runs:
        seconds, flow = timed(fn, args.repeats)
        ms = seconds / n * 1000
        base = base or ms
        epe = np.mean([endpoint_error(flow[k], gt[k], mask) for k in range(n)])
        print(f"{name:26s} {ms:9.1f} {1000 / ms:9.2f} {ms / base:9.2f} {epe:8.4f}")


if __name__ == "__main__":
    main()
