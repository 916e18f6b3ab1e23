"""Representation flow layer: fast layer vs the literal Algorithm 1 of the tests.

Setting: B*T = 16 frame pairs, C' = 32 channels, 28 x 28 (the rep-flow paper's "after block
3" size at 224 px), 10 and 20 iterations, default learnable parameters (divergence + tau,
lambda, theta). Prints, per variant: forward time (grad enabled, as in training),
forward + backward time, and the peak memory of one forward + backward, then the ratios
literal / fast. Every measurement runs in its own child process so that peaks are not
hidden by memory the allocator kept from an earlier variant (CPU: peak RSS over the
step, from /proc/self/status VmHWM after resetting it; CUDA: max_memory_allocated).

Variants: "reference" (tests/models/reference_flow.py: per channel, masked three-case
assignment, full autograd graph); "fast" (vidact's layer as the networks use it: vectorised,
hand-written exact backward that recomputes each iteration from the stored state);
"fast-ckpt" (the same vectorised ops through autograd with torch.utils.checkpoint per
iteration, the path taken when the Sobel kernels are learned); "fast-nockpt" (autograd,
whole graph kept) to show what the recomputation buys.

    python benchmarks/flow_layer.py [--device cuda] [--iterations 10 20] [--repeats 3]
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

from tests.models.reference_flow import reference_flow_of  # noqa: E402
from vidact.models.rep_flow import RepresentationFlow  # noqa: E402

SHAPE = (16, 32, 28, 28)  # B*T, C', H, W
VARIANTS = ("reference", "fast", "fast-ckpt", "fast-nockpt")


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def child(
    variant: str, iterations: int, device_name: str, repeats: int, what: str
) -> dict[str, float]:
    """Measure one variant in this (fresh) process: its peak memory or its times."""
    device = torch.device(device_name)
    torch.manual_seed(0)
    f1 = (torch.rand(SHAPE, device=device) * 255).requires_grad_()
    f2 = (f1.detach() + torch.randn(SHAPE, device=device) * 10).requires_grad_()
    layer = RepresentationFlow(
        iterations=iterations,
        checkpoint=variant != "fast-nockpt",
        custom_backward=variant == "fast",
    ).to(device)

    def forward() -> torch.Tensor:
        if variant == "reference":
            return reference_flow_of(layer, f1, f2)
        return layer(f1, f2)

    def step() -> None:
        forward().sum().backward()

    # peak memory of one forward + backward (also the warm-up)
    if what == "time":
        step()  # warm-up only
        peak_mib = 0.0
    elif device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step()
        _sync(device)
        peak_mib = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        base = _status_kib("VmRSS")
        step()
        peak_mib = (_status_kib("VmHWM") - base) / 1024
    n = repeats if what == "time" else 0  # the same number of runs for every variant
    fwd, both = [], []
    for _ in range(n):
        _sync(device)
        t0 = time.perf_counter()
        out = forward()
        _sync(device)
        t1 = time.perf_counter()
        out.sum().backward()
        _sync(device)
        t2 = time.perf_counter()
        fwd.append(t1 - t0)
        both.append(t2 - t0)
        del out
    if what == "memory":
        return {"peak_mib": peak_mib}
    return {"forward_s": statistics.median(fwd), "fwd_bwd_s": statistics.median(both)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--iterations", type=int, nargs="+", default=[10, 20])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--child", nargs=3, metavar=("VARIANT", "ITERATIONS", "WHAT"))
    args = parser.parse_args()
    if args.child:
        result = child(args.child[0], int(args.child[1]), args.device, args.repeats, args.child[2])
        print(json.dumps(result))
        return
    print(
        f"representation flow layer, B*T={SHAPE[0]}, C'={SHAPE[1]}, {SHAPE[2]}x{SHAPE[3]}, "
        f"device={args.device}, torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    # Memory runs use a fixed mmap threshold: freed tensors go back to the OS, so RSS
    # follows live memory (glibc's dynamic threshold would keep freed blocks and inflate
    # later peaks). Timing runs use the normal allocator: with that threshold every large
    # tensor is a fresh mmap with page faults, which would time the kernel, not the layer.
    envs = {
        "memory": {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"},
        "time": dict(os.environ),
    }
    for iterations in args.iterations:
        results: dict[str, dict[str, float]] = {}
        for variant in args.variants:
            r = results[variant] = {}
            for what, env in envs.items():
                cmd = [sys.executable, __file__, "--child", variant, str(iterations), what]
                cmd += ["--device", args.device, "--repeats", str(args.repeats)]
                run = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
                r.update(json.loads(run.stdout.strip().splitlines()[-1]))
            print(
                f"  {iterations:3d} it  {variant:12s} forward {r['forward_s'] * 1e3:9.1f} ms   "
                f"fwd+bwd {r['fwd_bwd_s'] * 1e3:9.1f} ms   peak {r['peak_mib']:8.1f} MiB"
            )
        if "reference" in results and "fast" in results:
            ref, fast = results["reference"], results["fast"]
            speed = ref["forward_s"] / fast["forward_s"]
            both = ref["fwd_bwd_s"] / fast["fwd_bwd_s"]
            memory = ref["peak_mib"] / max(fast["peak_mib"], 1e-9)
            print(
                f"  {iterations:3d} it  reference/fast: forward x{speed:.1f}   "
                f"fwd+bwd x{both:.1f}   peak memory x{memory:.1f}"
            )


if __name__ == "__main__":
    main()
