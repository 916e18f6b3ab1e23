"""The released rep-flow layer: vidact's ReleasedFlowLayer against the literal reference of
the authors' FlowLayer (tests/models/released_repflow_reference.py: their structure, eight
conv2d calls and three masked assignments per iteration, autograd through everything).

Both compute the same function (checked here before timing, and in
tests/models/test_released_repflow.py). Shape: the layer's input at the released model's
res3, (N, 512, T, 28, 28) for 224 px clips of 32 frames (T = 7 after the VALID stem and
the pool), 10 iterations, float32. Times are medians of --repeats calls after one warm-up,
forward alone (grad enabled, as in training) and forward + backward; the peak is the
extra RSS of one forward + backward in a fresh process (CPU) or max_memory_allocated.

    python benchmarks/released_flow.py [--batch 1] [--frames 7] [--size 28] [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _build(variant: str, device: str):  # type: ignore[no-untyped-def]
    import torch

    from tests.models.released_repflow_reference import FlowLayer, randomize
    from vidact.models.released import flow_layer_state
    from vidact.models.released_repflow import ReleasedFlowLayer

    torch.manual_seed(0)
    ref = FlowLayer(512)
    randomize(ref, seed=0)
    if variant == "reference":
        return ref.to(device)
    fast = ReleasedFlowLayer(512, checkpoint=variant == "fast")
    fast.load_state_dict(flow_layer_state(ref.state_dict(), fast))
    return fast.to(device)


def _peak_rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def _child(args: argparse.Namespace) -> None:
    """One variant in this process: times, or the peak of one forward + backward."""
    import torch

    layer = _build(args.child, args.device)
    x = torch.randn(args.batch, 512, args.frames, args.size, args.size, device=args.device)
    x.requires_grad_()

    def sync() -> None:
        if args.device == "cuda":
            torch.cuda.synchronize()

    if args.peak:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM
        before = _peak_rss_kib()
        if args.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        layer(x).sum().backward()
        sync()
        peak = (
            torch.cuda.max_memory_allocated() / 2**20
            if args.device == "cuda"
            else (_peak_rss_kib() - before) / 1024
        )
        print(json.dumps({"peak_mib": peak}))
        return
    fwd, both = [], []
    for i in range(args.repeats + 1):
        sync()
        start = time.perf_counter()
        out = layer(x)
        sync()
        mid = time.perf_counter()
        out.sum().backward()
        sync()
        end = time.perf_counter()
        if i:  # the first call warms up
            fwd.append(mid - start)
            both.append(end - start)
    print(json.dumps({"forward_s": statistics.median(fwd), "both_s": statistics.median(both)}))


def _check(device: str) -> float:
    """Largest relative difference of outputs and input gradients, float64, small input."""
    import torch

    ref, fast = (_build(v, device).double() for v in ("reference", "fast"))
    x = torch.randn(1, 512, 3, 10, 10, dtype=torch.float64, device=device)
    xr, xf = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_r, out_f = ref(xr), fast(xf)
    out_r.square().sum().backward()
    out_f.square().sum().backward()
    pairs = ((out_f, out_r), (xf.grad, xr.grad))
    rel = [(a - b).abs().max() / b.abs().max() for a, b in pairs if b is not None]
    return max(float(r.detach()) for r in rel)


def _run(args: argparse.Namespace, variant: str, peak: bool) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--child", variant, "--device", args.device]
    cmd += ["--batch", str(args.batch), "--frames", str(args.frames), "--size", str(args.size)]
    cmd += ["--repeats", str(args.repeats)] + (["--peak"] if peak else [])
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--frames", type=int, default=7)
    parser.add_argument("--size", type=int, default=28)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--peak", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args)
        return
    print(f"check (float64): max relative difference {_check(args.device):.2e}")
    shape = (args.batch, 512, args.frames, args.size, args.size)
    rows = {}
    for variant in ("reference", "fast", "fast-nockpt"):
        rows[variant] = {**_run(args, variant, False), **_run(args, variant, True)}
        r = rows[variant]
        print(
            f"{variant:12s} {shape} forward {r['forward_s'] * 1e3:8.0f} ms  forward+backward "
            f"{r['both_s'] * 1e3:8.0f} ms  peak {r['peak_mib']:7.0f} MiB",
            flush=True,
        )
    ref, fast = rows["reference"], rows["fast"]
    ratios = {k: ref[k] / fast[k] for k in ("forward_s", "both_s", "peak_mib")}
    print(
        f"reference / fast: forward x{ratios['forward_s']:.2f}, forward + backward "
        f"x{ratios['both_s']:.2f}, peak x{ratios['peak_mib']:.2f}"
    )


if __name__ == "__main__":
    main()
