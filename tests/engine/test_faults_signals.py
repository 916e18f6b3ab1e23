"""Signals as clusters send them: SIGTERM to the whole process group (SLURM, `timeout`),
with DataLoader workers, in one process and under torchrun; the mid-epoch resume must
end bit-identical to an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from tests.engine.gloo import free_port
from vidact.engine.checkpoint import load_checkpoint
from vidact.engine.signals import PREEMPTED_EXIT_CODE, StopSignal

REPO = Path(__file__).resolve().parents[2]


def write_recipe(path: Path, root: Path, **train: Any) -> Path:
    recipe = {
        "name": "faults",
        "model": {"name": "tiny_test_net", "dropout": 0.5},  # dropout: an RNG stream
        "data": {
            "root": str(root), "num_frames": 3, "short_side": 32, "input_size": 24,
            "num_workers": 2,
        },
        "optim": {"lr": 0.05},
        "train": {"epochs": 2, "batch_size": 4, "deterministic": True, "log_every": 1, **train},
        "output": {"dir": str(path.parent / "runs")},
    }  # fmt: skip
    path.write_text(yaml.safe_dump(recipe))
    return path


def _env(delay: float) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(REPO), VIDACT_TEST_ITEM_DELAY=str(delay))
    env["OMP_NUM_THREADS"] = "1"
    return env


def start(args: list[str], delay: float = 0.0, torchrun: int = 0) -> subprocess.Popen[str]:
    """`vidact ARGS` (or under torchrun with that many ranks) in its own process group."""
    if torchrun:
        launcher = [
            sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(torchrun),
            "--master_port", str(free_port()), "-m", "tests.engine.fault_run",
        ]  # fmt: skip
    else:
        launcher = [sys.executable, "-m", "tests.engine.fault_run"]
    return subprocess.Popen(
        [*launcher, *args], cwd=REPO, env=_env(delay), start_new_session=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def finish(proc: subprocess.Popen[str], timeout: float = 240) -> tuple[int, str]:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"the run did not end in {timeout} s:\n{out}")
    return proc.returncode, out


def wait_for_line(log: Path, text: str, proc: subprocess.Popen[str], timeout: float = 180) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if log.is_file() and text in log.read_text():
            return
        if proc.poll() is not None:
            pytest.fail(f"the run ended before {text!r}:\n{proc.communicate()[0]}")
        time.sleep(0.05)
    pytest.fail(f"no {text!r} in {log} after {timeout} s")


def group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


def assert_same_run(a: Path, b: Path) -> None:
    """Bit-identical weights, EMA, optimiser state and metrics (but the timings)."""
    one, two = (load_checkpoint(p / "checkpoints" / "last.pt") for p in (a, b))
    for key in ("model", "ema"):
        if one[key] is not None:
            assert one[key].keys() == two[key].keys()
            assert all(torch.equal(one[key][k], two[key][k]) for k in one[key]), key
    moments = [s["momentum_buffer"] for s in one["optimizer"]["state"].values()]
    again = [s["momentum_buffer"] for s in two["optimizer"]["state"].values()]
    assert all(torch.equal(x, y) for x, y in zip(moments, again, strict=True))
    metrics = [
        [{k: v for k, v in json.loads(line).items() if k != "epoch_seconds"} for line in lines]
        for lines in ((p / "metrics.jsonl").read_text().splitlines() for p in (a, b))
    ]
    assert metrics[0] == metrics[1] and len(metrics[0]) == 2


def test_sigterm_to_the_process_group_saves_exits_3_and_resumes_bit_identical(
    synthetic_root: Path, tmp_path: Path
) -> None:
    recipe = str(write_recipe(tmp_path / "r.yaml", synthetic_root))
    straight = start(["train", recipe, "--output", str(tmp_path / "straight")])
    assert finish(straight)[0] == 0
    run = tmp_path / "run"
    proc = start(["train", recipe, "--output", str(run)], delay=0.15)
    wait_for_line(run / "log.txt", "epoch 1/2, step 2/5", proc)
    os.killpg(proc.pid, signal.SIGTERM)  # as SLURM and `timeout` do: workers too
    code, out = finish(proc)
    assert code == PREEMPTED_EXIT_CODE, out
    assert "Traceback" not in out and "error:" not in out and "resume with --resume auto" in out
    assert group_gone(proc.pid)  # no worker outlives the run
    saved = load_checkpoint(run / "checkpoints" / "last.pt")
    assert saved["epoch"] == 0 and 2 <= saved["batch_in_epoch"] < 5, saved["batch_in_epoch"]
    resumed = start(["train", recipe, "--output", str(run), "--resume", "auto"])
    code, out = finish(resumed)
    assert code == 0, out
    assert_same_run(tmp_path / "straight", run)


@pytest.mark.slow
def test_sigterm_to_torchrun_stops_every_rank_consistently_and_resumes_bit_identical(
    synthetic_root: Path, tmp_path: Path
) -> None:
    # batch 3 over 2 ranks: 4 steps an epoch of 3 + 2 clips per rank, unequal batches, so
    # the ranks' dropout streams differ and each rank must resume its own.
    recipe = str(write_recipe(tmp_path / "r.yaml", synthetic_root, batch_size=3))
    straight = start(["train", recipe, "--output", str(tmp_path / "straight")], torchrun=2)
    assert finish(straight)[0] == 0
    run = tmp_path / "run"
    proc = start(["train", recipe, "--output", str(run)], delay=0.2, torchrun=2)
    wait_for_line(run / "log.txt", "epoch 1/2, step 1/4", proc)
    os.kill(proc.pid, signal.SIGTERM)  # the launcher alone; it forwards to its ranks
    code, out = finish(proc)
    # torchrun itself reports the signal with its own traceback; the ranks must not.
    assert "DataLoader worker" not in out and "exited unexpectedly" not in out, out
    assert out.count("resume with --resume auto") >= 1, out
    assert group_gone(proc.pid)
    saved = load_checkpoint(run / "checkpoints" / "last.pt")
    assert saved["epoch"] == 0 and 1 <= saved["batch_in_epoch"] < 4
    assert len(saved["rng_ranks"]) == 2
    resumed = start(["train", recipe, "--output", str(run), "--resume", "auto"], torchrun=2)
    code, out = finish(resumed)
    assert code == 0, out
    assert_same_run(tmp_path / "straight", run)


def test_a_repeated_sigterm_is_ignored_and_a_second_ctrl_c_stops_at_once() -> None:
    with StopSignal() as stop:
        signal.raise_signal(signal.SIGTERM)
        signal.raise_signal(signal.SIGTERM)  # torchrun forwarding what the group got
        assert stop.requested
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_worker_init_ignores_the_stop_signals() -> None:
    code = (
        "import os, signal; from vidact.engine.signals import ignore_stop_signals; "
        "ignore_stop_signals(0); os.kill(os.getpid(), signal.SIGTERM); "
        "os.kill(os.getpid(), signal.SIGINT); print('alive')"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=_env(0), capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "alive"


SHIELDED_LOADER = """
import sys, torch
from torch.utils.data import DataLoader
from vidact.engine.signals import shield_workers, stop_workers
loader = DataLoader(list(range(8)), batch_size=2, num_workers=2, persistent_workers=True)
shield_workers(loader)
cycle = [loader]
cycle.append(cycle)  # only the cyclic GC would free the loader: after the exit handlers
assert sum(len(b) for b in loader) == 8
if sys.argv[1] == "stop":
    stop_workers(loader)
    stop_workers(loader)  # twice is harmless
"""


def test_stopped_workers_let_the_process_exit_though_their_loader_lives_on() -> None:
    # Shielded workers ignore the SIGTERM of multiprocessing's exit handler, which then
    # joins them forever: the torchrun hang. stop_workers ends them first.
    proc = subprocess.run(
        [sys.executable, "-c", SHIELDED_LOADER, "stop"], env=_env(0), capture_output=True,
        text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
