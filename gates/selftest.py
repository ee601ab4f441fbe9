"""The gates catch real faults: gate 1 against each broken worker must fail, and name the
scenario that shows the fault; against a faithful fake and the reference worker it must pass.

    python -m gates.selftest                 # every fault, the faithful fake, the reference worker
    python -m gates.selftest --no-reference  # fakes only (fast: what tests/harness runs)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from gates.broken_workers import FAULTS, FakeWorker

ROOT = Path(__file__).resolve().parent.parent

# fault -> a scenario (title substring) that must fail because of it
EXPECTED_FAILURE: dict[str, str] = {
    "two_terminal_events": "A job streams started, then tokens, then exactly one terminal event",
    "split_utf8": "Every streamed text piece is whole UTF-8",
    "accepts_high_temperature": "A request with temperature set to 3.0 is rejected",
    "missing_health_field": "The health report has every field of the contract",
    "ignores_cancel": "A running job cancelled through /cancel ends with CANCELLED",
    "cancel_unknown_404": "Cancelling is idempotent",
    "extra_token": "One token goes through HTTP",
    "unnamed_field": "A request with job_id set to 42 is rejected",
}
assert set(EXPECTED_FAILURE) == set(FAULTS), "every fault needs the scenario that must catch it"


@dataclass
class Check:
    target: str  # "fault <name>", "faithful fake", "reference worker"
    expect_failure: str | None  # scenario that must fail; None: the gate must pass
    passed: int = 0
    failed_titles: list[str] = field(default_factory=list)
    skipped: int = 0
    error: str = ""

    @property
    def ok(self) -> bool:
        if self.error:
            return False
        if self.expect_failure is None:
            return not self.failed_titles and self.passed > 0
        return any(self.expect_failure in t for t in self.failed_titles)

    def summary(self) -> str:
        verdict = "ok" if self.ok else "NOT OK"
        seen = f"{self.passed} passed, {len(self.failed_titles)} failed, {self.skipped} skipped"
        want = f"must fail: {self.expect_failure!r}" if self.expect_failure else "must pass"
        return f"{verdict:6} {self.target:40} {seen:40} ({want}){' ' + self.error if self.error else ''}"


def run_gate(check: Check, args: list[str], reports_dir: Path, timeout_s: float) -> Check:
    cmd = [sys.executable, "-m", "pytest", "-c", str(ROOT / "gates" / "pytest.ini"), "--rootdir", str(ROOT),
           str(ROOT / "features"), "--gate", "gate1", "--reports-dir", str(reports_dir), "-q",
           "-p", "no:cacheprovider", *args]
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        check.error = f"gate 1 did not finish in {timeout_s:.0f} s"
        return check
    result = reports_dir / "gate1.json"
    if not result.exists():
        check.error = f"no report (exit {proc.returncode}): {(proc.stdout + proc.stderr)[-1500:]}"
        return check
    rows = json.loads(result.read_text())["scenarios"]
    check.passed = sum(r["outcome"] == "passed" for r in rows)
    check.skipped = sum(r["outcome"] == "skipped" for r in rows)
    check.failed_titles = [r["title"] for r in rows if r["outcome"] == "failed"]
    return check


def check_fault(fault: str | None, workdir: Path) -> Check:
    fake = FakeWorker(fault).start()
    try:
        check = Check(f"fault {fault}" if fault else "faithful fake (no fault)",
                      EXPECTED_FAILURE[fault] if fault else None)
        return run_gate(check, ["--worker-url", fake.url], workdir / (fault or "no-fault"), timeout_s=300)
    finally:
        fake.stop()


def run_selftest(reference: bool, device: str = "cpu", workdir: Path | None = None,
                 parallel: int = 3) -> list[Check]:
    with tempfile.TemporaryDirectory(prefix="gates-selftest-") as tmp:
        work = workdir or Path(tmp)
        with ThreadPoolExecutor(parallel) as pool:
            checks = list(pool.map(lambda f: check_fault(f, work), [None, *FAULTS]))
        if reference:
            ref = Check(f"reference worker (--device {device})", None)
            checks.append(run_gate(ref, ["--worker-device", device], work / "reference", timeout_s=1800))
    return checks


def write_markdown(checks: list[Check], path: Path) -> None:
    lines = ["# Gates self-test: gate 1 against broken workers", "",
             "| worker | expectation | passed | failed | skipped | verdict |", "|---" * 6 + "|"]
    for c in checks:
        want = f"fails `{c.expect_failure}`" if c.expect_failure else "passes"
        lines.append(f"| {c.target} | {want} | {c.passed} | {len(c.failed_titles)} | {c.skipped} "
                     f"| {'ok' if c.ok else 'NOT OK ' + c.error} |")
    lines += ["", "Faults:", ""] + [f"- `{name}`: {what}" for name, what in FAULTS.items()]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no-reference", action="store_true", help="skip the run against the reference worker")
    ap.add_argument("--worker-device", default="cpu", choices=["cpu", "cuda", "auto"])
    ap.add_argument("--reports-dir", default="reports")
    args = ap.parse_args()
    checks = run_selftest(not args.no_reference, args.worker_device)
    for c in checks:
        print(c.summary())
        if c.expect_failure and c.failed_titles:
            print("       failed:", "; ".join(c.failed_titles[:4]) + (" ..." if len(c.failed_titles) > 4 else ""))
    write_markdown(checks, Path(args.reports_dir) / "gates-selftest.md")
    bad = [c for c in checks if not c.ok]
    print(f"gates self-test: {len(checks) - len(bad)} of {len(checks)} as expected")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
