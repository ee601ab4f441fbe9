"""The models the scenarios name, and how to get each: a registry name or a built fixture."""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
