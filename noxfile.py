"""Developer sessions: `nox -s lint typecheck tests`, and `nox -s bench` for the benchmarks."""

from __future__ import annotations

from pathlib import Path

import nox

nox.options.sessions = ["lint", "typecheck", "tests"]
nox.options.reuse_existing_virtualenvs = True
nox.options.default_venv_backend = "venv"

PYTHON: str | None = None  # the interpreter nox runs under (3.11 here and on CI)


def _install(session: nox.Session) -> None:
    session.install("-e", ".[dev]")


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """Run the pytest suite (CPU only, a few minutes on 2 cores)."""
    _install(session)
    session.run("pytest", *(session.posargs or ["-q"]))


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check."""
    session.install("ruff>=0.5")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    """mypy over the vidact package."""
    _install(session)
    session.run("mypy")


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Run every script in benchmarks/ (each prints ratios against an in-process baseline)."""
    _install(session)
    scripts = sorted(Path("benchmarks").glob("*.py"))
    for script in scripts:
        if script.name.startswith("_"):
            continue
        session.run("python", str(script), *session.posargs)
