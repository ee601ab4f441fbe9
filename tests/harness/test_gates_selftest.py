"""The conformance gates catch real faults: gate 1 fails on each deliberately broken fake worker,
naming the scenario that shows the fault, and passes on a faithful fake (gates/selftest.py).
The run against the reference worker is `nox -s gates-selftest`'s (it starts a model)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_gate1_fails_on_every_broken_worker_and_passes_on_a_faithful_one(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "gates.selftest", "--no-reference", "--reports-dir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "NOT OK" not in out, out[-4000:]
    assert (tmp_path / "gates-selftest.md").exists()
