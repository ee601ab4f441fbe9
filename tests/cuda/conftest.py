"""Fixtures the tests/cuda modules share."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ARCH_FIXTURES = ["phi3", "gpt2", "gpt-oss"]


@pytest.fixture(scope="module")
def gpu():
    """A CUDA backend of the module's own (the memory-baseline tests count its pool)."""
    from worker.backends.cupy_backend import CupyBackend

    be = CupyBackend(0)
    yield be
    be.close()


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny smollm2-shape / qwen25-shape files (make_fixture.py), built once a session."""
    from make_fixture import build_all

    return build_all(tmp_path_factory.mktemp("fixtures"), tiny=True)


@pytest.fixture(scope="session")
def arch_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny phi3 / gpt2 / gpt-oss fixtures (fixtures/build.py, seed 0). fixtures/vocab.py
    takes their vocabulary from the SmolLM2 registry model: on a machine without it (a GPU
    machine with no network), $WORKER_ARCH_FIXTURES holds them prebuilt (bench/gpu.sh
    --prebuild-fixtures), the same bytes."""
    from fixtures.build import build_fixture

    pre = os.environ.get("WORKER_ARCH_FIXTURES")
    if pre and all((Path(pre) / f"{a}-tiny-s0.gguf").exists() for a in ARCH_FIXTURES):
        return {a: Path(pre) / f"{a}-tiny-s0.gguf" for a in ARCH_FIXTURES}
    d = tmp_path_factory.mktemp("arch-fixtures")
    return {a: build_fixture(a, d, seed=0) for a in ARCH_FIXTURES}
