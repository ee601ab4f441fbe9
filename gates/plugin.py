"""pytest plugin for the gate runs (loaded by gates/pytest.ini with `-p gates.plugin`).

- options: `--gate`, `--worker-url` (or $WORKER_URL), `--worker-device`, `--reports-dir`;
- selection: `--gate gateN` selects the gate's tags (gates/selection.py);
- skips that need no worker: @reference against an external worker, @cuda on a CPU run;
- order: scenarios grouped by the model they need, so each worker starts once;
- reports: reports/<gate>.xml (JUnit) and reports/<gate>.md for each gate of the run.
"""

from __future__ import annotations

import os
import re
from collections.abc import Generator
from pathlib import Path

import pytest

from gates import report as gate_report
from gates.selection import GATES, OTHER_TAGS, gate_names, marker_expression

CPU_RESIDENT_REASON = "needs a CUDA worker: resident is false on the CPU backend"
CPU_CUDA_REASON = "needs CUDA: this run uses --worker-device cpu"


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("gates", "conformance gates")
    g.addoption("--gate", choices=[*GATES, "all"], default=None,
                help="run one gate (or all) and write reports/<gate>.md and .xml")
    g.addoption("--worker-url", default=None,
                help="check this running worker instead of starting the reference one (env WORKER_URL)")
    g.addoption("--worker-device", choices=["cpu", "cuda", "auto"], default="cpu",
                help="--device for the reference workers the harness starts (default cpu)")
    g.addoption("--reports-dir", default="reports", help="where gate reports go (default reports/)")


def _url(config: pytest.Config) -> str | None:
    return config.getoption("worker_url") or os.environ.get("WORKER_URL") or None


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    for name, gate in GATES.items():
        config.addinivalue_line("markers", f"{name}: {gate.title}")
    for tag, what in OTHER_TAGS.items():
        config.addinivalue_line("markers", f"{tag}: {what}")
    choice = config.getoption("gate")
    reports_dir = Path(config.getoption("reports_dir"))
    if choice:
        if not config.option.markexpr:
            config.option.markexpr = marker_expression(choice)
        if not config.option.xmlpath:  # read by the junitxml plugin's own pytest_configure
            config.option.xmlpath = str(reports_dir / ("gates.xml" if choice == "all" else f"{choice}.xml"))
    config.stash[gate_report.RUN_INFO] = gate_report.RunInfo(
        gate_choice=choice, device=config.getoption("worker_device"), worker_url=_url(config)
    )


def _scenario_text(item: pytest.Item) -> tuple[str, str]:
    """(title, all step text) of a pytest-bdd scenario item."""
    # pytest-bdd keeps no public link from a test function to its scenario; this registry is it.
    from pytest_bdd.scenario import scenario_wrapper_template_registry

    fn = getattr(item, "function", None)
    tmpl = scenario_wrapper_template_registry.get(fn) if fn is not None else None
    if tmpl is None:
        return item.name, ""
    callspec = getattr(item, "callspec", None)
    example = callspec.params.get("_pytest_bdd_example", {}) if callspec else {}
    sc = tmpl.render(example)
    title = f"{tmpl.feature.name}: {sc.name}"
    if callspec is not None and sc.name == tmpl.name:  # an outline whose name shows no example
        title += f" [{callspec.id}]"
    return title, " ".join(s.name for s in sc.steps)


def _model_group(steps: str) -> tuple[int, int]:
    """Sort key: scenarios without a worker first, then by the first model they name (the
    default model for "a running worker"); scenarios naming several models last in their group."""
    from steps.models import DEFAULT_LABEL, MODELS

    if not re.search(r"a running worker|a worker serving", steps):
        return (0, 0)
    order = [DEFAULT_LABEL, *(m for m in MODELS if m != DEFAULT_LABEL)]
    named = re.findall(r"serving the (.+?) model", steps)
    labels = [n for n in named if n in MODELS] or [DEFAULT_LABEL]
    return (1 + order.index(labels[0]), int(len(set(labels)) > 1))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    url = _url(config)
    device = config.getoption("worker_device")
    keys: dict[str, tuple[int, int]] = {}
    info = config.stash[gate_report.RUN_INFO]
    for item in items:
        tags = {m.name for m in item.iter_markers()}
        gates = tuple(g for g, gate in GATES.items() if gate.selects(tags))
        item.user_properties.append(("gates", " ".join(gates)))
        title, steps = _scenario_text(item)
        info.items[item.nodeid] = (title, gates)
        keys[item.nodeid] = _model_group(steps)
        if url and "reference" in tags:
            item.add_marker(pytest.mark.skip(
                reason=f"checks the reference implementation itself; the worker under test is {url}"))
        if not url and device == "cpu" and "cuda" in tags:
            why = CPU_RESIDENT_REASON if "resident" in steps else CPU_CUDA_REASON
            item.add_marker(pytest.mark.skip(reason=why))
    items.sort(key=lambda it: keys[it.nodeid])  # stable: feature order within a group


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    rep = yield
    info = item.config.stash.get(gate_report.RUN_INFO, None)
    if info is not None:
        title, gates = info.items.get(item.nodeid, (item.nodeid, ()))
        gate_report.record_report(info, title, gates, rep)
    return rep


def pytest_sessionfinish(session: pytest.Session) -> None:
    config = session.config
    info = config.stash.get(gate_report.RUN_INFO, None)
    if info is None or not info.gate_choice:
        return
    reports_dir = Path(config.getoption("reports_dir"))
    for gate in gate_names(info.gate_choice):
        gate_report.write_markdown(info, gate, reports_dir / f"{gate}.md")
        gate_report.write_json(info, gate, reports_dir / f"{gate}.json")


def pytest_unconfigure(config: pytest.Config) -> None:
    # The junitxml plugin has written its file by now; a run of all gates is cut into one per gate.
    info = config.stash.get(gate_report.RUN_INFO, None)
    xml = Path(config.option.xmlpath) if getattr(config.option, "xmlpath", None) else None
    if info is None or info.gate_choice != "all" or xml is None or not xml.exists():
        return
    gate_report.split_junit(xml, xml.parent, gate_names("all"))


def pytest_report_header(config: pytest.Config) -> str:
    url = _url(config)
    target = url or f"reference worker started by the harness, --device {config.getoption('worker_device')}"
    return f"gates: {config.getoption('gate') or '(no gate chosen)'}; worker under test: {target}"
