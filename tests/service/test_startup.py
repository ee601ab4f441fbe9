"""Start-up failures exit 1 with one clear line (no traceback) naming what went wrong."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from tests.service.conftest import WorkerProcess, spawn_worker


def fatal_line(w: WorkerProcess) -> dict:
    assert w.proc.wait(timeout=60) == 1
    lines = [ln for ln in w.log_path.read_text().splitlines() if ln.strip()]
    records = [json.loads(ln) for ln in lines]  # every line is JSON: no traceback
    errors = [r for r in records if r["level"] == "error"]
    assert len(errors) == 1, errors
    assert errors[0]["event"] == "error" and errors[0].get("fatal") is True
    return errors[0]


def test_missing_model_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.gguf"
    err = fatal_line(spawn_worker(model=str(missing)))
    assert str(missing) in err["message"]


def test_not_a_gguf_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"NOPE" + bytes(64))
    err = fatal_line(spawn_worker(model=str(bad)))
    assert str(bad) in err["message"] and "magic" in err["message"].lower()


def test_port_in_use() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        err = fatal_line(spawn_worker(port=port))
        assert f"127.0.0.1:{port}" in err["message"]


def test_weights_larger_than_vram_limit() -> None:
    err = fatal_line(spawn_worker("--vram-limit", "10000000"))
    msg = err["message"]
    assert "required" in msg and "available 10000000 bytes" in msg and "smollm2" in msg and "cpu" in msg


def test_cuda_requested_without_a_gpu() -> None:
    try:
        import cupy  # noqa: F401

        pytest.skip("CuPy present: this machine may have a GPU")
    except ImportError:
        pass
    err = fatal_line(spawn_worker("--device", "cuda"))
    assert "cuda" in err["message"].lower()
