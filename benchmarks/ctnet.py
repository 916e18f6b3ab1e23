"""Time per clip of CT-Net-R50 against TSN-R50 at 8 x 224 x 224, forward and
forward+backward, and their ratios, in one run.

    python benchmarks/ctnet.py                      # CPU, channels_last, batch 1
    python benchmarks/ctnet.py --layout contiguous  # NCHW everywhere
    python benchmarks/ctnet.py --malloc-tuning      # glibc keeps freed memory (see below)
    python benchmarks/ctnet.py --device cuda --amp  # GPU with float16 autocast

The two models' calls are interleaved (CT, TSN, CT, TSN, ...) so that load from other
processes on a shared machine hits both alike. Each call is timed by the wall clock and by
this process's CPU time (`time.process_time`): with --threads 1 the CPU time is what the
call costs even while other processes take turns on the cores. The paper's FLOP ratio is
37.3 / 43.0 = 0.87 (Table 2g); this script prints the measured MAC ratio beside the times.

--malloc-tuning raises glibc's mmap and trim thresholds (what jemalloc/tcmalloc or
MALLOC_MMAP_THRESHOLD_ do): without it every large activation is a fresh mmap whose pages
fault in on first touch, which taxes models with many intermediate tensors.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import statistics
import time

import torch
from torch import nn

from vidact.engine.profile import count_params_and_macs
from vidact.models import build_model

MODELS = {"CT-Net-R50": "ctnet_resnet50", "TSN-R50": "tsn_resnet50"}


def tune_malloc() -> bool:
    """Keep freed memory in the glibc heap instead of unmapping it (Linux/glibc only)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(libc.mallopt(m_mmap_threshold, 1 << 30) and libc.mallopt(m_trim_threshold, 1 << 31))


def timed_call(
    model: nn.Module, x: torch.Tensor, backward: bool, autocast: torch.dtype | None
) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one forward (+ backward) pass."""
    cuda = x.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter(), time.process_time()
    with torch.set_grad_enabled(backward):
        with torch.autocast(x.device.type, dtype=autocast, enabled=autocast is not None):
            out = model(x)
        if backward:
            out.float().sum().backward()
    if cuda:
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    if backward:
        model.zero_grad(set_to_none=True)
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=1, help="clips per call")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument(
        "--layout", choices=("channels_last", "contiguous"), default="channels_last"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", action="store_true", help="autocast: fp16 on GPU, bf16 on CPU")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--malloc-tuning", action="store_true", help="see the module doc")
    parser.add_argument("--forward-only", action="store_true")
    args = parser.parse_args()

    tuned = tune_malloc() if args.malloc_tuning else False
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    channels_last = args.layout == "channels_last"
    autocast = None
    if args.amp:
        autocast = torch.float16 if device.type == "cuda" else torch.bfloat16
    shape = (args.batch, 3, args.frames, args.size, args.size)

    print(
        f"device {device} ({torch.get_num_threads()} threads, load average "
        f"{os.getloadavg()[0]:.2f}), torch {torch.__version__}, layout {args.layout}, "
        f"amp {autocast}, malloc tuning {tuned}, clip {args.frames}x{args.size}x{args.size}, "
        f"batch {args.batch}"
    )
    models: dict[str, nn.Module] = {}
    macs: dict[str, int] = {}
    for label, name in MODELS.items():
        kwargs = {"channels_last": channels_last} if name.startswith("ctnet") else {}
        with torch.device("meta"):
            meta = build_model(name, num_classes=400, num_frames=args.frames, **kwargs)
        params, macs[label] = count_params_and_macs(meta, (1, *shape[1:]))
        print(f"  {label:11s} {params / 1e6:6.2f}M params, {macs[label] / 1e9:6.2f} GMACs/clip")
        model = build_model(name, num_classes=400, num_frames=args.frames, **kwargs).to(device)
        if channels_last and not name.startswith("ctnet"):
            # TSN is a plain 2D CNN: channels_last weights make its activations channels_last.
            model = model.to(memory_format=torch.channels_last)
        models[label] = model
    ct, tsn = MODELS
    print(f"  MAC ratio CT/TSN {macs[ct] / macs[tsn]:.3f} (paper 37.3 / 43.0 = 0.867)")

    x = torch.randn(shape, device=device)
    passes = [("forward", False)] + ([] if args.forward_only else [("fwd+bwd", True)])
    for label, backward in passes:
        wall: dict[str, list[float]] = {name: [] for name in models}
        cpu: dict[str, list[float]] = {name: [] for name in models}
        for model in models.values():
            model.train(backward)
            for _ in range(args.warmup):
                timed_call(model, x, backward, autocast)
        for _ in range(args.repeats):
            for name, model in models.items():
                w, c = timed_call(model, x, backward, autocast)
                wall[name].append(w / args.batch)
                cpu[name].append(c / args.batch)
        med = {n: statistics.median(t) for n, t in wall.items()}
        best = {n: min(t) for n, t in wall.items()}
        cpu_med = {n: statistics.median(t) for n, t in cpu.items()}
        for name in models:
            print(
                f"  {label:8s} {name:11s} wall median {med[name] * 1e3:8.1f} ms/clip, "
                f"best {best[name] * 1e3:8.1f}; CPU time median {cpu_med[name] * 1e3:8.1f}"
            )
        print(
            f"  {label:8s} ratio CT/TSN: wall median {med[ct] / med[tsn]:.3f}, "
            f"wall best {best[ct] / best[tsn]:.3f}, CPU time {cpu_med[ct] / cpu_med[tsn]:.3f}"
        )


if __name__ == "__main__":
    main()
