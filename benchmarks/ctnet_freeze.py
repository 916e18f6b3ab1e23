"""What `model.freeze: released` saves per training step: CT-Net-R50, all parameters
training (the paper) vs the authors' released freezing, forward + backward + SGD step on
the CPU. The two settings alternate, repeat by repeat, in one run; prints the ratio.

    flock /tmp/vidact-bench.lock python benchmarks/ctnet_freeze.py --frames 8 --size 112
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from vidact.engine.optim import build_optimizer
from vidact.models import build_model
from vidact.recipe import OptimConfig


def step_seconds(freeze: str, clips: torch.Tensor, labels: torch.Tensor, steps: int) -> float:
    torch.manual_seed(0)
    model = build_model("ctnet_resnet50", 174, freeze=freeze).train()
    optimizer = build_optimizer(model, OptimConfig(lr=0.01, policy="tsn"))
    times = []
    for i in range(steps + 1):
        start = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(clips), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if i:  # the first step warms up
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    clips = torch.randn(args.batch, 3, args.frames, args.size, args.size)
    labels = torch.randint(0, 174, (args.batch,))
    results: dict[str, list[float]] = {"none": [], "released": []}
    for repeat in range(args.repeats):
        order = ("none", "released") if repeat % 2 == 0 else ("released", "none")
        for freeze in order:
            results[freeze].append(step_seconds(freeze, clips, labels, args.steps))
    none, released = (statistics.median(results[k]) for k in ("none", "released"))
    shape = f"{args.batch}x{args.frames}x{args.size}^2"
    print(f"clips {shape}, {torch.get_num_threads()} threads, median step seconds")
    print(f"freeze none      {none:.3f} s")
    print(f"freeze released  {released:.3f} s  ({released / none:.3f} x none)")


if __name__ == "__main__":
    main()
