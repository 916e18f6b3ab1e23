"""Representation flow layer: vidact's fast layer against the strongest plain implementation.

"plain" (``plain_flow`` below) is what a researcher would write: all channels and frames
batched through one ``F.conv2d`` per operator (Sobel, divergence, grad u), boolean masks
for the three cases of Eq. 3, autograd for the backward (whole graph kept). It computes
the same flow as the layer's default (forward-difference grad u; checked here before
timing, and in tests/models/test_rep_flow.py). "fast" is vidact's layer as the networks
use it (learned divergence, grad u taps, tau, lambda, theta) on a CPU: the fused loops of
``vidact/models/rep_flow_fused.py`` (numba; blocks of 16 maps run all their iterations
in cache, in SIMD lanes) with their exact backward, which keeps nothing from the forward
but its inputs (it recomputes each block's iterations); "fast-eager" the same
layer with torch's vectorised ops and the hand-written backward (``fused=False``, what
runs on a GPU); "fast-compiled" that through torch.compile (inductor; its first call,
which compiles, is reported separately); "fast-ckpt" /
"fast-nockpt" are its vectorised ops through autograd with / without
``torch.utils.checkpoint``; "reference" is the literal per-equation loop of
tests/models/reference_flow.py (slow; small shapes only).

Shapes (the flow layer's input, pairs x C' x H x W, and iterations), from the networks:
quickstart (batch 8 x 7 pairs, C' = 16, 16 x 16, 10 iterations); ResNet block 3 and block 4
at batch 2 x 8 pairs, C' = 32 (28 x 28, 14 x 14, 20 iterations); and (16, 128, 28, 28),
the issue's (2, 128, 9, 28, 28) clip block taken as the layer's input, 20 iterations.

Per variant and shape: forward time (grad enabled, as in training) and forward + backward
time, the minimum over --repeats rounds in which all variants take turns in one process
(the median of forward + backward too), and the peak memory of one forward + backward, in
a process of its own; then plain / fast.
Every peak is measured in its own child process so that it is not hidden by memory the
allocator kept from an earlier variant (CPU: peak RSS over the step, from
/proc/self/status VmHWM after resetting it; CUDA: max_memory_allocated).

    python benchmarks/flow_layer.py [--device cuda] [--shapes quickstart res3] [--repeats 5]
        [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import Tensor  # noqa: E402

from tests.models.reference_flow import reference_flow_of  # noqa: E402
from vidact.models.rep_flow import SOBEL_GAIN, RepresentationFlow, compile_error  # noqa: E402

# name: (pairs, C', H, W, iterations)
SHAPES = {
    "quickstart": (56, 16, 16, 16, 10),
    "res3": (16, 32, 28, 28, 20),
    "res4": (16, 32, 14, 14, 20),
    "issue": (16, 128, 28, 28, 20),
}
VARIANTS = ("plain", "fast", "fast-eager", "fast-compiled", "fast-ckpt", "fast-nockpt", "reference")


def plain_flow(layer: RepresentationFlow, f1: Tensor, f2: Tensor) -> Tensor:
    """The layer's default Algorithm 1 (forward-difference grad u), written plainly: one
    conv2d per operator over all B*C maps, masks for Eq. 3, autograd for the backward."""
    b, c, h, w = f1.shape
    x1, x2 = f1.reshape(b * c, 1, h, w), f2.reshape(b * c, 1, h, w)
    scale = 1.0 / SOBEL_GAIN if layer.normalize_sobel else 1.0
    # Eq. 8 as a true convolution: correlate with the flipped kernels, replicated border
    sobel = torch.stack([layer.sobel_x, layer.sobel_y]).flip(-1, -2)[:, None] * scale
    g = F.conv2d(F.pad(x2, (1, 1, 1, 1), mode="replicate"), sobel)  # (M, 2, H, W)
    sq = (g * g).sum(1, keepdim=True)
    safe_sq = torch.where(sq > 0, sq, torch.ones_like(sq))
    lt = layer.lam * layer.theta
    a = layer.tau / layer.theta
    zero = layer.div_x.new_zeros(())
    wx, wy, fx, fy = layer.div_x, layer.div_y, layer.grad_x, layer.grad_y
    # Eq. 9 on p (M, 4, H, W) = (p_x of u_x, p_y of u_x, p_x of u_y, p_y of u_y), padded
    # left and top: out[i, j] = wx0 p_x[i, j-1] + wx1 p_x[i, j] + wy0 p_y[i-1, j] + wy1 p_y
    k_px = torch.stack([torch.stack([zero, zero]), wx])
    k_py = torch.stack([torch.stack([zero, wy[0]]), torch.stack([zero, wy[1]])])
    div_w = torch.stack([k_px, k_py])[None].expand(2, 2, 2, 2)
    # grad u: forward differences on u padded right and bottom, masked to 0 (Neumann)
    k_x = torch.stack([fx, torch.stack([zero, zero])])
    k_y = torch.stack([torch.stack([fy[0], zero]), torch.stack([fy[1], zero])])
    grad_w = torch.stack([k_x, k_y])[:, None].repeat(2, 1, 1, 1)  # (4, 1, 2, 2)
    neumann = torch.ones(1, 4, h, w, dtype=f1.dtype, device=f1.device)
    neumann[:, 0::2, :, -1] = 0
    neumann[:, 1::2, -1, :] = 0
    rho_c = x2 - x1
    u = x1.new_zeros(b * c, 2, h, w)
    p = x1.new_zeros(b * c, 4, h, w)
    for _ in range(layer.iterations):
        rho = rho_c + (g * u).sum(1, keepdim=True)  # Eq. 2
        below, above = rho < -lt * sq, rho > lt * sq  # Eq. 3's three cases
        inside = ~(below | above) & (sq > 0)
        zeros = torch.zeros_like(g)
        step = torch.where(below, lt * g, torch.where(above, -lt * g, zeros))
        step = torch.where(inside, -rho / safe_sq * g, step)
        u = u + step + layer.theta * F.conv2d(F.pad(p, (1, 0, 1, 0)), div_w, groups=2)  # Eq. 4
        gu = F.conv2d(F.pad(u, (0, 1, 0, 1)), grad_w, groups=2) * neumann
        norm = torch.sqrt(gu[:, 0::2] ** 2 + gu[:, 1::2] ** 2 + 1e-12).repeat_interleave(2, 1)
        p = (p + a * gu) / (1 + a * norm)  # Eq. 5
    return u.reshape(b, 2 * c, h, w)


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _layer(variant: str, iterations: int, device: torch.device) -> RepresentationFlow:
    layer = RepresentationFlow(
        iterations=iterations,
        checkpoint=variant != "fast-nockpt",
        custom_backward=variant in ("fast", "fast-eager", "fast-compiled"),
        compiled=variant == "fast-compiled",
        fused=variant == "fast",
    )
    return layer.to(device)


def check_plain(device: torch.device) -> None:
    """plain_flow must compute the layer's flow and gradients before it is timed."""
    torch.manual_seed(0)
    f1 = (torch.rand(4, 3, 12, 12, device=device) * 255).requires_grad_()
    f2 = (f1.detach() + torch.randn_like(f1) * 10).requires_grad_()
    layer = _layer("fast", 5, device)
    out, ref = plain_flow(layer, f1, f2), layer(f1, f2)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    inputs = [f1, f2, *layer.parameters()]
    for a, b in zip(
        torch.autograd.grad(out.square().sum(), inputs),
        torch.autograd.grad(ref.square().sum(), inputs),
        strict=True,
    ):
        assert ((a - b).norm() / b.norm()).item() < 1e-4


class _Case:
    """One variant at one shape: its layer, inputs and a forward call."""

    def __init__(self, variant: str, shape_name: str, device: torch.device) -> None:
        pairs, channels, h, w, iterations = SHAPES[shape_name]
        torch.manual_seed(0)
        self.variant, self.device = variant, device
        self.f1 = (torch.rand(pairs, channels, h, w, device=device) * 255).requires_grad_()
        self.f2 = (self.f1.detach() + torch.randn_like(self.f1) * 10).requires_grad_()
        self.layer = _layer(variant, iterations, device)
        if variant == "fast":  # load (or compile) the fused loops outside the measurements
            tiny = torch.rand(1, 1, 4, 4, device=device, requires_grad=True)
            self.layer(tiny, tiny.detach() + 1).sum().backward()

    def forward(self) -> Tensor:
        if self.variant == "reference":
            return reference_flow_of(self.layer, self.f1, self.f2)
        if self.variant == "plain":
            return plain_flow(self.layer, self.f1, self.f2)
        return self.layer(self.f1, self.f2)

    def timed_step(self) -> tuple[float, float]:
        """(forward, forward + backward) seconds of one training step."""
        _sync(self.device)
        t0 = time.perf_counter()
        out = self.forward()
        _sync(self.device)
        t1 = time.perf_counter()
        out.sum().backward()
        _sync(self.device)
        return t1 - t0, time.perf_counter() - t0


def peak_memory(variant: str, shape_name: str, device_name: str) -> dict[str, float]:
    """Extra peak memory of one forward + backward, in this (fresh) process."""
    device = torch.device(device_name)
    case = _Case(variant, shape_name, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        case.forward().sum().backward()
        _sync(device)
        return {"peak_mib": (torch.cuda.max_memory_allocated() - base) / 2**20}
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    base = _status_kib("VmRSS")
    case.forward().sum().backward()
    return {"peak_mib": (_status_kib("VmHWM") - base) / 1024}


def times(variants: list[str], shape_name: str, device_name: str, repeats: int) -> dict:
    """Every variant's times, measured in this one process in turns (variant after
    variant, ``repeats`` rounds) and summarised by the minimum: on a shared machine the
    other load then falls on all variants alike, and the minimum is the least disturbed."""
    device = torch.device(device_name)
    cases = {v: _Case(v, shape_name, device) for v in variants}
    result: dict[str, dict[str, float]] = {}
    for variant, case in cases.items():  # the first call (compiles, for fast-compiled)
        t0 = time.perf_counter()
        case.timed_step()
        result[variant] = {"first_s": time.perf_counter() - t0}
        if variant == "fast-compiled" and compile_error() is not None:
            raise RuntimeError(f"torch.compile failed: {compile_error()}")
    samples: dict[str, list[tuple[float, float]]] = {v: [] for v in variants}
    for _ in range(repeats):
        for variant, case in cases.items():
            samples[variant].append(case.timed_step())
    for variant, runs in samples.items():
        result[variant]["forward_s"] = min(f for f, _ in runs)
        result[variant]["fwd_bwd_s"] = min(b for _, b in runs)
        result[variant]["fwd_bwd_median_s"] = statistics.median(b for _, b in runs)
    return result


def _child(args: list[str], env: dict[str, str]) -> dict:
    cmd = [sys.executable, __file__, "--child", *args]
    run = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    return json.loads(run.stdout.strip().splitlines()[-1])


def _measure(shape: str, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Times of all variants in one child process; each peak in a child of its own.
    Memory runs use a fixed mmap threshold: freed tensors go back to the OS, so RSS
    follows live memory (glibc's dynamic threshold would keep freed blocks and inflate
    later peaks). Timing runs use the normal allocator: with that threshold every large
    tensor is a fresh mmap with page faults, which would time the kernel, not the layer."""
    common = ["--device", args.device, "--repeats", str(args.repeats)]
    common += ["--threads", str(args.threads)]
    results = _child(["time", shape, ",".join(args.variants), *common], dict(os.environ))
    memory_env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    for variant in args.variants:
        results[variant].update(_child(["memory", shape, variant, *common], memory_env))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="example: python benchmarks/flow_layer.py --shapes res3 --variants plain fast",
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch threads (and the fused loops' threads) per process; 0: torch's default",
    )
    parser.add_argument(
        "--variants", nargs="+", default=["plain", "fast", "fast-eager"], choices=VARIANTS
    )
    parser.add_argument("--child", nargs=3, metavar=("WHAT", "SHAPE", "VARIANTS"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        what, shape, variants = args.child
        if what == "time":
            print(json.dumps(times(variants.split(","), shape, args.device, args.repeats)))
        else:
            print(json.dumps(peak_memory(variants, shape, args.device)))
        return
    check_plain(torch.device(args.device))
    print(
        f"representation flow layer, device={args.device}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )
    for shape in args.shapes:
        pairs, channels, h, w, iterations = SHAPES[shape]
        print(f"{shape}: ({pairs}, {channels}, {h}, {w}), {iterations} iterations")
        results = _measure(shape, args)
        for variant, r in results.items():
            print(
                f"  {variant:12s} forward {r['forward_s'] * 1e3:9.1f} ms   "
                f"fwd+bwd {r['fwd_bwd_s'] * 1e3:9.1f} ms (median "
                f"{r['fwd_bwd_median_s'] * 1e3:.1f})   peak {r['peak_mib']:8.1f} MiB   "
                f"first call {r['first_s']:6.1f} s"
            )
        for name in ("fast", "fast-eager", "fast-compiled"):
            if "plain" in results and name in results:
                ref, fast = results["plain"], results[name]
                print(
                    f"  plain/{name}: forward x{ref['forward_s'] / fast['forward_s']:.2f}   "
                    f"fwd+bwd x{ref['fwd_bwd_s'] / fast['fwd_bwd_s']:.2f}   "
                    f"peak memory x{ref['peak_mib'] / max(fast['peak_mib'], 1e-9):.2f}"
                )


if __name__ == "__main__":
    main()
