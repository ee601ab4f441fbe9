"""The two points where the CUDA backend records its graphs and replays them
(worker/backends/prompt_graphs.py): load_model hands the loaded adapter to the backend's
prepare() with the longest context a job may have, and a Llama-family prompt goes through
the backend's prompt_forward(). On the NumPy backend both are the base defaults, which must
give what adapter.logits gives."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from worker.backends.numpy_backend import NumpyBackend
from worker.model import load_model


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from fixtures.build import build_fixture

    return build_fixture("qwen2", tmp_path_factory.mktemp("model"))  # vocabulary from SmolLM2 (registry)


class Recording(NumpyBackend):
    """The reference backend, noting what the adapter and load_model ask of the two hooks."""

    def __init__(self) -> None:
        super().__init__()
        self.prepared: list[tuple[Any, int]] = []
        self.prompts: list[tuple[int, int]] = []

    def prepare(self, adapter: Any, max_len: int) -> None:
        self.prepared.append((adapter, max_len))
        super().prepare(adapter, max_len)

    def prompt_forward(self, adapter: Any, tokens: np.ndarray, start: int, cache: Any) -> np.ndarray:
        self.prompts.append((len(tokens), start))
        return super().prompt_forward(adapter, tokens, start, cache)


@pytest.mark.realmodel
def test_load_model_prepares_with_the_jobs_longest_context(model_path: Path) -> None:
    be = Recording()
    m = load_model(model_path, be, ctx_size=96)
    assert be.prepared == [(m.adapter, 96)]
    big = Recording()  # more than the model has: its own context
    m2 = load_model(model_path, big, ctx_size=10**9)
    assert big.prepared == [(m2.adapter, m2.cfg.context_length)]


@pytest.mark.realmodel
def test_a_prompt_goes_through_prompt_forward(model_path: Path) -> None:
    be = Recording()
    m = load_model(model_path, be)
    ad = m.adapter
    ids = np.arange(7) % m.cfg.vocab_size
    got = ad.forward(ids, 0, ad.new_cache(8))
    assert be.prompts == [(7, 0)]
    want = be.to_host(ad.logits(ids, 0, ad.new_cache(8)))[0]
    assert got.shape == (m.cfg.vocab_size,) and np.array_equal(got, want)
    ad.forward(np.array([int(got.argmax())]), 7, ad.new_cache(9))  # a one-token step too
    assert be.prompts[-1] == (1, 7)


@pytest.mark.realmodel
def test_gpt_oss_steps_are_recordable_and_its_prompts_are_not(tmp_path: Path) -> None:
    """gpt-oss's one-token step reads nothing from the host (CUDA records it at load), but its
    prompt is not recorded (prompt graphs are the Llama family's): the flags prepare() reads.
    Its forward() goes through prompt_forward and gives what logits() gives; gpt2 (learned
    positions looked up from the host) is neither."""
    from fixtures.build import build_fixture

    be = Recording()
    m = load_model(build_fixture("gpt-oss", tmp_path), be)
    ad = m.adapter
    assert (ad.capturable, ad.prompt_capturable) == (True, False)
    assert be.prepared == [(ad, m.context_length)]
    ids = np.arange(5) % m.cfg.vocab_size
    got = ad.forward(ids, 0, ad.new_cache(6))
    assert be.prompts == [(5, 0)]
    assert np.array_equal(got, be.to_host(ad.logits(ids, 0, ad.new_cache(6)))[0])
    gpt2 = load_model(build_fixture("gpt2", tmp_path), NumpyBackend()).adapter
    assert (gpt2.capturable, gpt2.prompt_capturable) == (False, False)
