"""Every command of README.md's tour runs, so that a README command cannot break unnoticed.

The convention: in the "## A tour" section, every line of a fenced ```bash block that
starts with `vidact ` is a command (a trailing `# comment` is not part of it). Each is run
in a scratch folder against the quickstart's model and data, made small:

- a command of `HANDLERS` runs as the README writes it, with the `SHRINK` options added
  for its command (smaller videos, one short epoch, fewer views timed) and `<run>`
  replaced by the run folder that the module's fixture trained; it must exit 0;
- a line of `NEEDS_DATA` needs a dataset or file the tests cannot have (Kinetics, the
  authors' released checkpoint): it runs as written and must stop with exit 2 and one
  `error: ... not found` line, which shows that its flags parse and its recipe loads;
- `vidact prepare a|b|c ...` names several datasets: each `prepare <name> --help` runs.

A command this file does not know fails the test with a line that says what to add here:
a command added to the README (predict, export, report, ...) is never skipped silently.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vidact.cli import app

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
runner = CliRunner()

# The quickstart at a size that trains in seconds: 3 classes x 5 videos of 32 px.
QUICKSTART_SMALL = [
    "data.synthetic={classes: 3, videos_per_class: 5, frames: 8, size: 32, seed: 0}",
    "data.short_side=32",
    "data.input_size=32",
    "data.num_frames=6",
    "data.num_workers=0",
    "train.epochs=1",
    "train.batch_size=4",
]
SHRINK: dict[str, list[str]] = {
    "prepare synthetic": ["--videos-per-class", "5", "--frames", "8", "--size", "32"],
    "train": [arg for item in QUICKSTART_SMALL for arg in ("--set", item)],
    "finetune": [arg for item in QUICKSTART_SMALL for arg in ("--set", item)],
    "evaluate": [],
    "compare-tvl1": ["--videos", "2", "--frames", "6", "--timing-shape", "4x32x32"],
}

# Tour lines that need what no test has; each must fail with one "not found" line.
NEEDS_DATA = {
    "vidact prepare kinetics --videos k400/ --annotations k400/annotations "
    "--out data/kinetics400 --mode frames": "the Kinetics-400 videos",
    "vidact train recipes/ctnet_r50.yaml --set train.batch_size=8": "prepared Kinetics-400",
    "vidact finetune recipes/repflow_hmdb51_ft.yaml "
    "--from runs/repflow_r50_kinetics/<run>/checkpoints/best.pt": "prepared HMDB51",
    "vidact evaluate ct_net_8f_r50.pth.tar --recipe recipes/ctnet_r50_sthv1.yaml": (
        "the authors' CT-Net file and prepared Something-Something V1"
    ),
}


@dataclass
class Tour:
    """The scratch folder the tour runs in, and the quickstart run trained there."""

    folder: Path
    run: str  # the run folder's name under runs/quickstart/


def tour_commands(readme: str) -> list[str]:
    """The `vidact ...` lines of the tour's fenced bash blocks, without their comments."""
    match = re.search(r"^## A tour\n(.*?)(?=^## )", readme, flags=re.MULTILINE | re.DOTALL)
    assert match, "README.md has no '## A tour' section"
    commands = []
    for block in re.findall(r"^```bash\n(.*?)^```", match.group(1), re.MULTILINE | re.DOTALL):
        for line in block.splitlines():
            if line.startswith("vidact "):
                commands.append(" ".join(shlex.split(line, comments=True)))
    return commands


def _invoke(args: list[str]) -> tuple[int, str]:
    result = runner.invoke(app, args, env={"COLUMNS": "200"})
    return result.exit_code, result.output


def _run_small(args: list[str], tour: Tour) -> None:
    key = "prepare synthetic" if args[:2] == ["prepare", "synthetic"] else args[0]
    code, output = _invoke([*args, *SHRINK.get(key, [])])
    assert code == 0, f"`vidact {shlex.join(args)}` exited {code}:\n{output[-3000:]}"


def _run_help_of_each(args: list[str], tour: Tour) -> None:
    """`vidact prepare a|b|c ...`: each of the datasets it names is a command."""
    for name in args[1].split("|"):
        code, output = _invoke([args[0], name, "--help"])
        assert code == 0, f"`vidact {args[0]} {name}` is not a command:\n{output[-2000:]}"


def _run_prepare(args: list[str], tour: Tour) -> None:
    if "|" in args[1]:
        _run_help_of_each(args, tour)
    elif args[1] == "synthetic":
        _run_small(args, tour)
    else:
        pytest.fail(f"`vidact {shlex.join(args)}`: add it to NEEDS_DATA or run it here")


def _run_report(args: list[str], tour: Tour) -> None:
    """`vidact report` of the quickstart and its RGB twin: the twin is trained here at the
    same small size, and the `<run>` of its folder names that run."""
    rgb = tour.folder / "runs" / "quickstart_rgb"
    if not rgb.exists():
        _run_small(["train", "recipes/quickstart_rgb.yaml"], tour)
    (run,) = rgb.iterdir()
    twin = f"runs/quickstart_rgb/{tour.run}"
    _run_small([f"runs/quickstart_rgb/{run.name}" if a == twin else a for a in args], tour)


# How each command of the tour runs here. A new command: add its name and how to run it
# against the quickstart (tour.run names the trained run), or its line to NEEDS_DATA.
HANDLERS: dict[str, Callable[[list[str], Tour], None]] = {
    "--help": _run_small,
    "models": _run_small,
    "prepare": _run_prepare,
    "train": _run_small,
    "finetune": _run_small,
    "evaluate": _run_small,
    "compare-tvl1": _run_small,
    "predict": _run_small,
    "export": _run_small,
    "report": _run_report,
}


def run_tour_line(line: str, tour: Tour) -> None:
    """Run one tour command as the module docstring describes; fail with what to do."""
    args = shlex.split(line.replace("<run>", tour.run))[1:]
    if line in NEEDS_DATA:
        code, output = _invoke(args)
        lines = [text for text in output.splitlines() if text.strip()]
        assert code == 2 and len(lines) == 1, f"`{line}` exited {code}:\n{output[-3000:]}"
        assert lines[0].startswith("error: ") and "not found" in lines[0], lines[0]
        return
    handler = HANDLERS.get(args[0] if args else "")
    if handler is None:
        pytest.fail(
            f"README.md's tour runs `{line}`, and tests/test_readme_tour.py does not know "
            f"how to run `vidact {args[0] if args else ''}` on a CPU: add it to HANDLERS "
            "there (or the line to NEEDS_DATA)",
            pytrace=False,
        )
    handler(args, tour)


@pytest.fixture(scope="module")
def tour(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tour]:
    """A scratch folder with recipes/ and the quickstart trained once (small)."""
    folder = tmp_path_factory.mktemp("tour")
    (folder / "recipes").symlink_to(REPO / "recipes", target_is_directory=True)
    before = Path.cwd()
    os.chdir(folder)
    try:
        _run_small(["train", "recipes/quickstart.yaml"], Tour(folder, ""))
        (run,) = (folder / "runs" / "quickstart").iterdir()
        assert (run / "checkpoints" / "best.pt").is_file()
        yield Tour(folder, run.name)
    finally:
        os.chdir(before)


def test_the_tour_is_found_and_covers_the_commands() -> None:
    commands = tour_commands(README.read_text(encoding="utf-8"))
    names = {shlex.split(c)[1] for c in commands}
    assert {"prepare", "train", "finetune", "evaluate", "compare-tvl1", "models"} <= names
    assert {"predict", "export", "report"} <= names
    assert any("--profile" in c for c in commands)
    assert any(c.startswith("vidact evaluate runs/") and "--profile" not in c for c in commands)
    assert all("#" not in c for c in commands)
    stale = set(NEEDS_DATA) - set(commands)
    assert not stale, f"NEEDS_DATA lists lines the tour no longer has: {sorted(stale)}"


def test_a_command_the_tour_test_does_not_know_fails_loudly(tour: Tour) -> None:
    with pytest.raises(pytest.fail.Exception, match="add it to HANDLERS"):
        run_tour_line("vidact frobnicate runs/quickstart/<run>/checkpoints/best.pt", tour)


def test_every_tour_command_runs(tour: Tour, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tour.folder)
    failures = []
    for line in tour_commands(README.read_text(encoding="utf-8")):
        try:
            run_tour_line(line, tour)
        except (AssertionError, pytest.fail.Exception) as exc:
            failures.append(f"{line}\n    {str(exc).strip()[:3000]}")
    assert not failures, "README tour commands that fail:\n" + "\n".join(failures)
