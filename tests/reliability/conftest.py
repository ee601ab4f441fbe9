"""Reliability tests reuse the service tests' real workers (tests/service/conftest.py)."""

from __future__ import annotations

from pathlib import Path

# The shared SmolLM2 worker (test faults on), a client on it, and per-test job ids.
from tests.service.conftest import client, job_id, worker  # noqa: F401  (pytest fixtures)


def rss_bytes(pid: int) -> int:
    """Resident set size of a process (Linux /proc; no extra dependency)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")
