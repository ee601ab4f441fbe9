"""Sessions a user asks for: tests, conformance (against llama.cpp), lint, serve, bench.

`nox` with no arguments runs what CI runs (`lint`, `tests`, `conformance`, `gates`, `fuzz`).
"""

from __future__ import annotations

import nox

nox.options.default_venv_backend = "uv|virtualenv"
nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["lint", "tests", "conformance", "gates", "fuzz"]

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
def fuzz(session: nox.Session) -> None:
    """Hostile requests: schemathesis sends >= 2,000 generated requests to a live worker through its
    served OpenAPI schema; no 5xx, no hang, every stream well formed, the worker healthy and serving
    afterwards (tests/reliability/fuzz_http.py; FUZZ_EXAMPLES and FUZZ_SEED change the run).

    The GGUF fuzzer, hostile hand-written requests, load and faults run in `tests`."""
    install(session, "dev", "fuzz")
    session.run("pytest", "tests/reliability/fuzz_http.py", "-s", *session.posargs)


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


# -- conformance gates (features/, steps/, gates/): a pytest run of their own, apart from tests/ --

GATE_ARGS = ["-c", "gates/pytest.ini", "--rootdir", ".", "features"]


def _gate(session: nox.Session, gate: str) -> None:
    install(session, "dev")
    session.run("python", "-m", "pytest", *GATE_ARGS, "--gate", gate, *session.posargs)


@nox.session(python=PYTHON)
def gate1(session: nox.Session) -> None:
    """Gate 1: the contract end to end (health, stream, validation, cancel, GGUF, many scripts).

    Every gate session starts the reference worker (`-- --worker-device cuda` for the GPU) or
    checks another worker given as `-- --worker-url URL`; reports go to reports/<gate>.md and .xml."""
    _gate(session, "gate1")


@nox.session(python=PYTHON)
def gate2(session: nox.Session) -> None:
    """Gate 2: the Qwen model serves: health, the haiku prompt, determinism under a seed, seeds differ."""
    _gate(session, "gate2")


@nox.session(python=PYTHON)
def gate3(session: nox.Session) -> None:
    """Gate 3: every architecture is detected and routed to its adapter, and models load one after another."""
    _gate(session, "gate3")


@nox.session(python=PYTHON)
def gate4(session: nox.Session) -> None:
    """Gate 4: the whole suite, plus UTF-8 streaming safety, out-of-memory recovery and MXFP4 numerics."""
    _gate(session, "gate4")


@nox.session(python=PYTHON)
def gates(session: nox.Session) -> None:
    """All four gates in one run (each scenario once); reports/gate1..gate4.md and .xml."""
    _gate(session, "all")


@nox.session(name="gates-selftest", python=PYTHON)
def gates_selftest(session: nox.Session) -> None:
    """The gates catch real faults: gate 1 fails on each deliberately broken worker, passes on the reference.

    The broken workers are gates/broken_workers.py (one fault each); every run must fail the scenario
    that shows its fault, and a faithful fake and the reference worker must pass."""
    install(session, "dev")
    session.run("python", "-m", "gates.selftest", *session.posargs)
