"""Table 3 in miniature: accuracy against flow iterations, learned vs fixed flow parameters.

The representation-flow paper's Table 3 (Tiny-Kinetics, flow after block 3) has accuracy
rise with the number of TV-L1 iterations (1, 5, 10, 20, ...) and learned parameters
(divergence + tau, lambda, theta) beat fixed ones. This script trains the same grid on the
synthetic speed task (vidact.data.synthetic_speed, what `vidact prepare synthetic --task
speed` writes): 3 classes by the speed (0.5, 1, 2 px/frame, random direction) of one 6x6 px
textured square over a still texture of the same statistics, sensor noise, 32 x 32 px,
4 frames. One frame says nothing about the class; the flow layer must measure speed.

The network is vidact's own flow block (vidact.models.rep_flow.FlowBlock: 1x1 reduction,
[0, 255] normalisation, RepresentationFlow, 3x3 conv, BN, residual, ReLU) between a 3x3
conv stem at full resolution and a small per-frame 2D head whose frame scores are averaged
over time (Fig. 3); the RGB-only row is the same network without the flow block. Adam,
constant lr; the flow layer's learnable parameters get lr x --flow-lr-scale (appendix A:
0.01). Seed s draws its own data (the dataset seed) and its own initialisation and batches.
The clips are rendered in memory by the dataset's own code (SyntheticSpec.render), so no
MPEG-4 coding enters.

    flock /tmp/vidact-bench.lock python benchmarks/table3.py            # default grid
    python benchmarks/table3.py --seeds 5 --iterations 1 5 10 20 50 --steps 300   # bigger
    python benchmarks/table3.py --distractors 1 --json runs/table3.json

Runs go to --workers processes (default 2, one per core here), each with --threads torch
threads (default 1: on this shared 2-core machine two threads per process ran a flow step
about 10x slower than one, from oversubscription). Results do not depend on --workers.
"""

from __future__ import annotations

import argparse
import functools
import json
import multiprocessing
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import Tensor, nn  # noqa: E402

from vidact.atomic import atomic_write_text  # noqa: E402
from vidact.constants import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from vidact.data.sources.synthetic import SyntheticSpec, clip_rng  # noqa: E402
from vidact.models import rep_flow  # noqa: E402

STEM_WIDTH = 8  # channels of the stem, the flow block's input
FLOW_CHANNELS = 4  # C' of the flow block's 1x1 reduction
HEAD_WIDTHS = (16, 32)  # two stride-2 3x3 conv stages after the flow block


def _conv(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class TinyFlowNet(nn.Module):
    """Stem -> FlowBlock (or nothing, `iterations=0`) -> per-frame head -> mean over time."""

    def __init__(self, num_classes: int, iterations: int, learn: str | tuple[str, ...]) -> None:
        super().__init__()
        self.stem = _conv(3, STEM_WIDTH, 1)
        self.flow = (
            # zero_init=False: the block's last BN starts at gamma 1. gamma 0 (the default,
            # so that a pretrained trunk is unchanged at step 0) is for fine-tuning; trained
            # from scratch here, it left every flow network at chance after 150 steps.
            rep_flow.FlowBlock(
                STEM_WIDTH, FLOW_CHANNELS, zero_init=False, iterations=iterations, learn=learn
            )
            if iterations
            else None
        )
        widths = (STEM_WIDTH, *HEAD_WIDTHS)
        self.head = nn.Sequential(*(_conv(widths[i], widths[i + 1], 2) for i in range(2)))
        self.fc = nn.Linear(widths[-1], num_classes)

    def forward(self, x: Tensor) -> Tensor:
        n, c, t, h, w = x.shape
        y = self.stem(x.transpose(1, 2).reshape(n * t, c, h, w))
        if self.flow is not None:
            video = self.flow(y.reshape(n, t, -1, h, w).transpose(1, 2))  # (N, C, T-1, H, W)
            t = video.shape[2]
            y = video.transpose(1, 2).reshape(n * t, -1, h, w)
        logits = self.fc(self.head(y).mean((2, 3)))
        return logits.reshape(n, t, -1).mean(1)


@dataclass(frozen=True)
class Config:
    """One cell of the grid."""

    iterations: int  # 0: the RGB-only network
    learned: bool


def clips(spec: SyntheticSpec, per_class: int, first_index: int) -> tuple[Tensor, Tensor]:
    """`per_class` clips of every class, normalised (N, 3, T, H, W) float, and labels."""
    videos, labels = [], []
    for label in range(spec.classes):
        for index in range(first_index, first_index + per_class):
            clip = spec.render(label, clip_rng(spec.seed, label, index), [])
            videos.append(clip.frames)
            labels.append(label)
    x = torch.from_numpy(np.stack(videos)).float().div_(255.0)  # (N, T, H, W, 3)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 1, 1, 1, 3)
    std = torch.tensor(IMAGENET_STD).view(1, 1, 1, 1, 3)
    return ((x - mean) / std).permute(0, 4, 1, 2, 3).contiguous(), torch.tensor(labels)


def optimizer(model: nn.Module, lr: float, flow_lr_scale: float) -> torch.optim.Optimizer:
    """Adam; the flow layers' parameters at lr x flow_lr_scale (appendix A)."""
    flow = list(rep_flow.flow_parameters(model))
    ids = {id(p) for p in flow}
    rest = [p for p in model.parameters() if id(p) not in ids]
    groups = [{"params": rest, "lr": lr}]
    if flow:
        groups.append({"params": flow, "lr": lr * flow_lr_scale})
    return torch.optim.Adam(groups)


def train_and_evaluate(
    config: Config,
    seed: int,
    data: tuple[Tensor, Tensor, Tensor, Tensor],
    args: argparse.Namespace,
) -> float:
    """Train one network from scratch; val top-1 in percent."""
    x_train, y_train, x_val, y_val = data
    torch.manual_seed(seed)
    learn = rep_flow.LEARN_DEFAULT if config.learned else "none"
    model = TinyFlowNet(int(y_train.max()) + 1, config.iterations, learn)
    opt = optimizer(model, args.lr, args.flow_lr_scale)
    batches = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(args.steps):
        index = torch.randint(0, len(y_train), (args.batch,), generator=batches)
        loss = F.cross_entropy(model(x_train[index]), y_train[index])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(y_val), 64):
            scores = model(x_val[start : start + 64])
            correct += int((scores.argmax(1) == y_val[start : start + 64]).sum())
    return 100.0 * correct / len(y_val)


def grid(iterations: list[int]) -> list[Config]:
    return [Config(0, False)] + [
        Config(n, learned) for n in iterations for learned in (False, True)
    ]


def spread(values: list[float]) -> str:
    """mean +- sample standard deviation (the seeds' spread)."""
    if len(values) < 2:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def print_table(results: dict[Config, list[float]], iterations: list[int], chance: float) -> None:
    rgb = results[Config(0, False)]
    print(f"\nval top-1 (%), mean ± std over {len(rgb)} seeds; chance {chance:.1f}%\n")
    print("| network | not learned | learned |")
    print("|---|---|---|")
    print(f"| RGB only (no flow block) | {spread(rgb)} | |")
    for n in iterations:
        fixed, learned = results[Config(n, False)], results[Config(n, True)]
        name = f"{n} iteration{'s' if n > 1 else ''}"
        print(f"| {name} | {spread(fixed)} | {spread(learned)} |")
    print("\nper seed:")
    for config, values in results.items():
        label = "RGB only" if not config.iterations else f"{config.iterations} it"
        kind = "" if not config.iterations else (" learned" if config.learned else " fixed")
        print(f"  {label + kind:<16} " + "  ".join(f"{v:5.1f}" for v in values))


def write_json(
    path: Path, args: argparse.Namespace, results: dict[Config, dict[int, float]]
) -> None:
    runs = [
        {
            "iterations": c.iterations,
            "learned": c.learned,
            "seed": seed,
            "val_top1": acc,
        }
        for c, values in results.items()
        for seed, acc in sorted(values.items())
    ]
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    atomic_write_text(path, json.dumps({"settings": settings, "runs": runs}, indent=2) + "\n")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Example: flock /tmp/vidact-bench.lock python benchmarks/table3.py --seeds 3",
    )
    parser.add_argument("--seeds", type=int, default=3, help="seeds per cell (default 3)")
    parser.add_argument("--iterations", type=int, nargs="+", default=[1, 5, 10, 20])
    parser.add_argument("--steps", type=int, default=150, help="Adam steps per run")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--flow-lr-scale", type=float, default=rep_flow.FLOW_LR_SCALE)
    parser.add_argument("--train-per-class", type=int, default=200)
    parser.add_argument("--val-per-class", type=int, default=100)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--speeds", type=float, nargs="+", default=[0.5, 1.0, 2.0])
    parser.add_argument("--object-size", type=int, default=6)
    parser.add_argument("--contrast", type=float, default=0.15)
    parser.add_argument("--noise", type=float, default=0.03)
    parser.add_argument("--distractors", type=int, default=0)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: see docs/models.md)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=2,
        help="processes training runs side by side (cores)",
    )
    parser.add_argument("--json", type=Path, help="also write every run's accuracy here")
    return parser.parse_args()


def speed_spec(args: argparse.Namespace, seed: int) -> SyntheticSpec:
    spec = SyntheticSpec(
        task="speed",
        classes=len(args.speeds),
        frames=args.frames,
        size=args.size,
        seed=seed,
        speeds=tuple(args.speeds),
        object_size=args.object_size,
        contrast=args.contrast,
        noise=args.noise,
        distractors=args.distractors,
    )
    spec.validate()
    return spec


@functools.cache
def _seed_data(args_json: str, seed: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    args = argparse.Namespace(**json.loads(args_json))
    spec = speed_spec(args, seed)
    return (
        *clips(spec, args.train_per_class, 0),
        *clips(spec, args.val_per_class, args.train_per_class),
    )


def run_one(args_json: str, config: Config, seed: int) -> tuple[Config, int, float, float]:
    """One cell and seed, in a worker process: (config, seed, val top-1, seconds)."""
    args = argparse.Namespace(**json.loads(args_json))
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    acc = train_and_evaluate(config, seed, _seed_data(args_json, seed), args)
    return config, seed, acc, time.perf_counter() - start


def main() -> None:
    args = parse_args()
    chance = 100.0 / speed_spec(args, 0).classes  # validates the settings first
    configs = grid(args.iterations)
    results: dict[Config, dict[int, float]] = {c: {} for c in configs}
    args_json = json.dumps({k: v for k, v in vars(args).items() if k != "json"})
    start = time.perf_counter()
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(args.workers, mp_context=context) as pool:
        jobs = [
            pool.submit(run_one, args_json, config, seed)
            for seed in range(args.seeds)
            for config in configs
        ]
        for job in as_completed(jobs):
            config, seed, acc, seconds = job.result()
            results[config][seed] = acc
            print(
                f"seed {seed} iterations {config.iterations:>2} learned {config.learned!s:<5} "
                f"val {acc:5.1f}%  ({seconds:.0f} s)",
                flush=True,
            )
            if args.json:  # after every run, so that a stopped grid keeps what it measured
                write_json(args.json, args, results)
    print(f"\ngrid of {len(jobs)} runs: {time.perf_counter() - start:.0f} s")
    ordered = {c: [v[s] for s in sorted(v)] for c, v in results.items()}
    print_table(ordered, args.iterations, chance)


if __name__ == "__main__":
    main()
