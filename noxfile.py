"""Sessions a user asks for: tests, conformance (against llama.cpp), lint, serve, bench.

`nox` with no arguments runs what CI runs (`lint`, `tests`, `conformance`).
"""

from __future__ import annotations

import nox

nox.options.default_venv_backend = "uv|virtualenv"
nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["lint", "tests", "conformance"]

PYTHON = "3.11"
LLAMA_CPP = "llama-cpp-python==0.3.36"


def install(session: nox.Session, *extras: str) -> None:
    """The project with its extras, editable, so tests import the working tree."""
    spec = f".[{','.join(extras)}]" if extras else "."
    session.install("-e", spec)


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff finds no problem in the project's code."""
    session.install("ruff>=0.6")
    session.run("ruff", "check", ".")


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """Unit and service tests on the CPU backend: everything that needs neither llama.cpp nor a GPU."""
    install(session, "dev")
    session.run("pytest", "-m", "not conformance and not cuda", *session.posargs)


@nox.session(python=PYTHON)
def conformance(session: nox.Session) -> None:
    """Tokenization, logits and greedy ids agree with llama.cpp on the same GGUF files.

    llama-cpp-python builds from source on first use (about 7 minutes on 2 cores); the
    package cache keeps the wheel for later runs."""
    install(session, "dev")
    session.install(LLAMA_CPP)
    session.run(
        "pytest", "-m", "conformance", *session.posargs, env={"WORKER_REQUIRE_LLAMA_CPP": "1"}
    )


@nox.session(python=PYTHON)
def serve(session: nox.Session) -> None:
    """Start the worker on the default model (fetched on first use); extra args go to `worker serve`."""
    install(session)
    session.run("worker", "serve", *session.posargs)


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """CPU benchmarks: decode speed and memory beside llama.cpp."""
    install(session, "dev")
    session.install(LLAMA_CPP)
    session.run("python", "bench/cpu_generate.py", *session.posargs)
