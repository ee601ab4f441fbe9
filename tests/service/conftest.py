"""Real workers as subprocesses (`python -m worker.cli serve ...`) on free local ports."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

SMOLLM = "smollm2-135m-instruct"
# SmolLM2-135M KV cache, f16: 2 (K, V) * 30 layers * 3 KV heads * 64 dims * 2 bytes per position.
SMOLLM_KV_BYTES_PER_TOKEN = 2 * 30 * 3 * 64 * 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class WorkerProcess:
    proc: subprocess.Popen[bytes]
    url: str
    log_path: Path
    args: list[str] = field(default_factory=list)

    def logs(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_path.read_text(encoding="utf-8", errors="replace").splitlines():
            line = line.strip()
            if line.startswith("{"):
                out.append(json.loads(line))
        return out

    def client(self, **kw: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=kw.pop("timeout", 120), **kw)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def spawn_worker(*args: str, env: dict[str, str] | None = None, model: str | None = SMOLLM,
                 port: int | None = None) -> WorkerProcess:
    port = port or free_port()
    cmd = [sys.executable, "-m", "worker.cli", "serve", "--device", "cpu", "--port", str(port)]
    if model is not None:
        cmd += ["--model", model]
    cmd += list(args)
    log = Path(tempfile.mkstemp(prefix="worker-", suffix=".log")[1])
    # The worker's own switches come from `env` only, never from the shell running the tests.
    full_env = {k: v for k, v in os.environ.items() if k not in ("WORKER_API_KEY", "WORKER_TEST_FAULTS")}
    full_env.update(env or {})
    with log.open("wb") as sink:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=sink, env=full_env)
    return WorkerProcess(proc, f"http://127.0.0.1:{port}", log, cmd)


def wait_healthy(w: WorkerProcess, timeout: float = 120) -> WorkerProcess:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if w.proc.poll() is not None:
            raise RuntimeError(f"worker exited with {w.proc.returncode}:\n{w.log_path.read_text()[-3000:]}")
        try:
            if httpx.get(w.url + "/health", timeout=2).status_code == 200:
                return w
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    w.stop(signal.SIGKILL)
    raise RuntimeError(f"worker not healthy after {timeout} s:\n{w.log_path.read_text()[-3000:]}")


def start_worker(*args: str, env: dict[str, str] | None = None, model: str | None = SMOLLM) -> WorkerProcess:
    return wait_healthy(spawn_worker(*args, env=env, model=model))


@pytest.fixture(scope="session")
def worker() -> Iterator[WorkerProcess]:
    """The shared worker: SmolLM2 on the CPU, 2048-token context, test faults enabled."""
    w = start_worker("--ctx-size", "2048", env={"WORKER_TEST_FAULTS": "1"})
    yield w
    w.stop()


@pytest.fixture
def client(worker: WorkerProcess) -> Iterator[httpx.Client]:
    with worker.client() as c:
        yield c


@pytest.fixture
def job_id(request: pytest.FixtureRequest) -> str:
    """A job id unique to the test (readable in the worker's logs)."""
    return f"{request.node.name}-{time.monotonic_ns()}"


def wait_idle(client: httpx.Client, timeout: float = 30) -> dict[str, Any]:
    end = time.monotonic() + timeout
    while True:
        h = client.get("/health").json()
        if not h["busy"] and h["queued"] == 0:
            return h
        if time.monotonic() > end:
            raise AssertionError(f"worker still busy: {h}")
        time.sleep(0.05)


def metric(client: httpx.Client, name: str) -> float:
    """The value of one sample line of /metrics (name with its labels, as printed)."""
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise KeyError(name)
