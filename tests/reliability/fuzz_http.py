"""Hostile requests, generated: schemathesis against the schema a live worker serves.

Run by `nox -s fuzz` (not collected by the plain `pytest` run: the file name does not start
with `test_`, and schemathesis is in the `fuzz` extra only). One worker (SmolLM2 on the CPU)
takes at least 2,000 generated requests, valid and invalid (schemathesis' coverage and
fuzzing phases, every built-in check plus tests/reliability/fuzz_checks.py): no 5xx, no hang
(each request has a deadline), every stream well formed, and afterwards the worker is alive,
healthy, idle, serves a job, and its RSS has not run away.

`--max-tokens-out 4` and `--ctx-size 64` keep each generated job short: larger `max_tokens`
and long prompts are refused with 400 (the schema cannot know a worker's limits, so
schemathesis' `positive_data_acceptance` check is left out), the rest runs for real.
Environment: FUZZ_EXAMPLES (per operation, default 1000), FUZZ_SEED (default 20261125).
"""

from __future__ import annotations

import collections
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.reliability.conftest import rss_bytes
from tests.service.conftest import start_worker, wait_idle
from tests.service.sse import execute

MIN_REQUESTS = 2000
REPORTS = Path(__file__).resolve().parents[2] / "reports"


def _interactions(ndjson: Path) -> list[tuple[str, str, int | None]]:
    """(method, path, status) of every request schemathesis made, from its NDJSON report."""
    out = []
    for line in ndjson.read_text().splitlines():
        event = json.loads(line)
        finished = event.get("ScenarioFinished")
        if not finished:
            continue
        for it in (finished.get("recorder") or {}).get("interactions", {}).values():
            response = it.get("response")
            path = "/" + it["request"]["uri"].split("/", 3)[-1].split("?")[0]
            out.append((it["request"]["method"], path, response and response["status_code"]))
    return out


def test_generated_requests_never_break_the_worker(tmp_path: Path) -> None:
    w = start_worker("--ctx-size", "64", "--max-tokens-out", "4")
    try:
        with w.client() as c:
            rss_before = rss_bytes(w.proc.pid)
            exe = shutil.which("schemathesis", path=str(Path(sys.executable).parent)) or "schemathesis"
            cmd = [
                exe, "run", f"{w.url}/schema/openapi.json",
                "--checks", "all", "--exclude-checks", "positive_data_acceptance",
                "--max-examples", os.environ.get("FUZZ_EXAMPLES", "1000"),
                "--seed", os.environ.get("FUZZ_SEED", "20261125"),
                "--workers", "1", "--request-timeout", "60", "--max-failures", "20",
                "--output-sanitize", "false", "--no-color",
                "--report", "ndjson,junit", "--report-dir", str(tmp_path),
            ]
            env = {**os.environ, "SCHEMATHESIS_HOOKS": "tests.reliability.fuzz_checks",
                   "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
            # In tmp_path: schemathesis keeps its own state in the working directory.
            run = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=1500)
            print(run.stdout[-6000:])
            seen = _interactions(next(tmp_path.glob("*.ndjson")))
            by_status = collections.Counter((m, p, s) for m, p, s in seen)
            summary = {
                "requests": len(seen),
                "streams": sum(n for (m, p, s), n in by_status.items() if p == "/execute" and s == 200),
                "by_status": {f"{m} {p} {s}": n for (m, p, s), n in sorted(by_status.items(), key=str)},
                "rss_before_mb": round(rss_before / 2**20, 1),
                "rss_after_mb": round(rss_bytes(w.proc.pid) / 2**20, 1),
            }
            REPORTS.mkdir(exist_ok=True)
            (REPORTS / "fuzz-http.json").write_text(json.dumps(summary, indent=2) + "\n")
            print(json.dumps(summary, indent=2))

            assert run.returncode == 0, f"schemathesis found failures:\n{run.stdout[-20000:]}\n{run.stderr[-3000:]}"
            assert len(seen) >= MIN_REQUESTS, summary
            assert not [s for _, _, s in seen if s is None or s >= 500], "5xx or no response"
            assert summary["streams"] >= 50, "too few jobs ran for real: the fuzz would prove little"
            # Afterwards: alive, healthy, idle, serving, and no memory ran away.
            assert w.proc.poll() is None
            h = wait_idle(c)
            assert h["status"] == "healthy"
            r, events = execute(c, {"job_id": "after-fuzz", "prompt": "Hello", "max_tokens": 4, "temperature": 0})
            assert r.status_code == 200 and events[-1].event == "end", events[-1].data
            assert rss_bytes(w.proc.pid) < rss_before + 256 * 2**20, summary
            fatal = [e for e in w.logs() if e.get("level") == "error" and "unhandled" in e.get("message", "")]
            assert not fatal, fatal[:3]
    finally:
        w.stop()
