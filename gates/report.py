"""Per-gate reports: a short Markdown summary and the JUnit XML, under reports/."""

from __future__ import annotations

import datetime as dt
import json
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from gates.selection import GATES


@dataclass
class Outcome:
    nodeid: str
    title: str  # "Feature: scenario [example]"
    gates: tuple[str, ...]
    outcome: str = "passed"  # passed | failed | skipped
    seconds: float = 0.0
    detail: str = ""  # skip reason or failure message


@dataclass
class RunInfo:
    gate_choice: str | None
    device: str
    worker_url: str | None
    started: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))
    workers: dict[str, dict[str, Any]] = field(default_factory=dict)  # url -> what it served
    items: dict[str, tuple[str, tuple[str, ...]]] = field(default_factory=dict)  # nodeid -> (title, gates)
    outcomes: dict[str, Outcome] = field(default_factory=dict)


RUN_INFO = pytest.StashKey[RunInfo]()


def record_worker(config: pytest.Config, url: str, health: dict[str, Any], started_with: str = "") -> None:
    info = config.stash.get(RUN_INFO, None)
    if info is None:
        return
    info.workers[url] = {
        "model": health.get("model"),
        "architecture": health.get("architecture"),
        "quant_kind": health.get("quant_kind"),
        "device": health.get("device"),
        "started_with": started_with or "(external)",
    }


def record_report(info: RunInfo, item_title: str, gates: tuple[str, ...], report: pytest.TestReport) -> None:
    out = info.outcomes.setdefault(report.nodeid, Outcome(report.nodeid, item_title, gates))
    out.seconds += report.duration
    if report.skipped and out.outcome == "passed":
        out.outcome = "skipped"
        lr = report.longrepr
        out.detail = str(lr[2]).removeprefix("Skipped: ") if isinstance(lr, tuple) else str(lr)
    elif report.failed and out.outcome != "failed":
        out.outcome = "failed"
        crash = getattr(report.longrepr, "reprcrash", None)
        msg = crash.message if crash is not None else str(report.longrepr)
        out.detail = (f"{report.when}: " if report.when != "call" else "") + msg.strip().splitlines()[0][:400]


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def write_markdown(info: RunInfo, gate: str, path: Path) -> None:
    rows = [o for o in info.outcomes.values() if gate in o.gates]
    counts = {k: sum(o.outcome == k for o in rows) for k in ("passed", "failed", "skipped")}
    verdict = "FAILED" if counts["failed"] else ("PASSED" if counts["passed"] else "NOTHING RAN")
    total_s = sum(o.seconds for o in rows)
    target = info.worker_url or f"reference worker started by the harness (--device {info.device})"
    lines = [
        f"# {GATES[gate].title}: {verdict}",
        "",
        f"- date: {info.started:%Y-%m-%d %H:%M} UTC",
        f"- worker under test: {target}",
        f"- scenarios: {counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped "
        f"in {total_s:.0f} s",
        "",
    ]
    if info.workers:
        lines += ["| worker | model | architecture | quant | device | started with |", "|---" * 6 + "|"]
        for url, w in info.workers.items():
            lines.append(
                f"| {url} | {w['model']} | {w['architecture']} | {w['quant_kind']} | {w['device']} "
                f"| `{w['started_with']}` |"
            )
        lines.append("")
    for kind, heading in (("failed", "Failed"), ("skipped", "Skipped"), ("passed", "Passed")):
        chosen = [o for o in rows if o.outcome == kind]
        if not chosen:
            continue
        lines += [f"## {heading}", ""]
        for o in chosen:
            extra = f": {_md_escape(o.detail)}" if o.detail else ""
            lines.append(f"- {_md_escape(o.title)} ({o.seconds:.1f} s){extra}")
        lines.append("")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))


def write_json(info: RunInfo, gate: str, path: Path) -> None:
    """The same outcomes for programs (gates/selftest.py reads them)."""
    rows = [o for o in info.outcomes.values() if gate in o.gates]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({
        "gate": gate,
        "date": info.started.isoformat(),
        "worker_url": info.worker_url,
        "device": info.device,
        "workers": info.workers,
        "scenarios": [{"title": o.title, "nodeid": o.nodeid, "outcome": o.outcome, "seconds": round(o.seconds, 2),
                       "detail": o.detail} for o in rows],
    }, indent=1, ensure_ascii=False))


def split_junit(source: Path, reports_dir: Path, gates: list[str]) -> None:
    """Cut one run's JUnit file into one per gate, by each test case's `gates` property."""
    tree = ET.parse(source)
    for gate in gates:
        root = ET.fromstring(ET.tostring(tree.getroot()))
        for suite in root.iter("testsuite"):
            for case in list(suite.findall("testcase")):
                props = {p.get("name"): p.get("value") for p in case.iter("property")}
                if gate not in (props.get("gates") or "").split():
                    suite.remove(case)
            cases = suite.findall("testcase")
            suite.set("name", gate)
            suite.set("tests", str(len(cases)))
            suite.set("failures", str(sum(c.find("failure") is not None for c in cases)))
            suite.set("errors", str(sum(c.find("error") is not None for c in cases)))
            suite.set("skipped", str(sum(c.find("skipped") is not None for c in cases)))
            suite.set("time", f"{sum(float(c.get('time', 0)) for c in cases):.3f}")
        ET.ElementTree(root).write(reports_dir / f"{gate}.xml", encoding="utf-8", xml_declaration=True)
