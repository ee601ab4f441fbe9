"""Token sampling with an explicit, seeded RNG state (same seed, same ids)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# Repetition penalty looks back this many tokens (llama.cpp's penalty_last_n default).
PENALTY_LAST_N = 64


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1.0 = off
    min_p: float = 0.0  # 0.0 = off
    repetition_penalty: float = 1.0  # 1.0 = off; 0.0 = off too (a zero divisor has no meaning)
    seed: int = 0


class Sampler:
    """Chain: repetition penalty -> (greedy | top-k -> top-p -> min-p -> temperature -> draw).

    The RNG is numpy's PCG64 seeded from the job's seed; 64-bit seeds are used whole.
    """

    def __init__(self, params: SamplingParams) -> None:
        self.params = params
        self.rng = np.random.Generator(np.random.PCG64(params.seed))

    @property
    def greedy(self) -> bool:
        """True when sample() is a plain argmax of the logits (no penalty, temperature 0)."""
        p = self.params
        return p.temperature <= 0.0 and p.repetition_penalty in (0.0, 1.0)

    def sample(self, logits: np.ndarray, history: Sequence[int]) -> int:
        p = self.params
        logits = np.asarray(logits, dtype=np.float32)
        if p.repetition_penalty not in (0.0, 1.0) and history:
            logits = logits.copy()
            recent = np.unique(np.asarray(history[-PENALTY_LAST_N:], dtype=np.int64))
            vals = logits[recent]
            # CTRL-style penalty as llama.cpp applies it: shrink positive, grow negative logits.
            logits[recent] = np.where(vals > 0, vals / p.repetition_penalty, vals * p.repetition_penalty)
        if p.temperature <= 0.0:
            return int(np.argmax(logits))
        # Candidates sorted by logit, descending; stable so ties keep id order.
        order = np.argsort(-logits, kind="stable")
        if p.top_k > 0:
            order = order[: p.top_k]
        cand = logits[order].astype(np.float64)
        probs = np.exp(cand - cand[0])
        probs /= probs.sum()
        if p.top_p < 1.0:
            cum = np.cumsum(probs)
            keep = int(np.searchsorted(cum, p.top_p) + 1)
            order, cand, probs = order[:keep], cand[:keep], probs[:keep]
        if p.min_p > 0.0:
            keep_mask = probs >= p.min_p * probs[0]
            order, cand = order[keep_mask], cand[keep_mask]
        scaled = (cand - cand[0]) / p.temperature
        final = np.exp(scaled)
        final /= final.sum()
        return int(order[self.rng.choice(len(order), p=final)])
