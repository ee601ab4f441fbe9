"""Which prompt lengths a recorded prompt graph takes (worker/backends/prompt_graphs.py).

The graphs themselves need CUDA (tests/cuda/test_prepare.py); the bucket choice is plain
Python and decides how much padding a prompt gets."""

from __future__ import annotations

import itertools

import pytest

from worker.backends.prompt_graphs import PROMPT_BUCKETS, bucket_for


@pytest.mark.parametrize(
    ("n", "bucket"),
    [(0, None), (1, None), (2, 16), (16, 16), (17, 32), (100, 128), (257, 512), (512, 512), (513, None)],
)
def test_smallest_bucket_that_holds_the_prompt(n: int, bucket: int | None) -> None:
    # one token is a decode step, not a prompt graph; past the largest bucket: eager
    assert bucket_for(n) == bucket


def test_buckets_cut_by_the_context() -> None:
    short = tuple(b for b in PROMPT_BUCKETS if b <= 100)  # as PromptGraphs keeps them
    assert short == (16, 32, 64)
    assert bucket_for(64, short) == 64 and bucket_for(65, short) is None


def test_padding_stays_under_the_prompt_length() -> None:
    # powers of two: a prompt of more than one bucket's worth is never padded by as much again
    assert all(b2 == 2 * b1 for b1, b2 in itertools.pairwise(PROMPT_BUCKETS))
    for n in range(PROMPT_BUCKETS[0] + 1, PROMPT_BUCKETS[-1] + 1):
        assert bucket_for(n) - n < n
