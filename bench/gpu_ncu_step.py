#!/usr/bin/env python3
"""One eager decode step of a model, for Nsight Compute to profile its kernels.

    ncu -k regex:fmv --launch-count 5 --section SpeedOfLight --section WarpStateStats \\
        python bench/gpu_ncu_step.py --model FILE.gguf

Prefills a 16-token prompt (kernels for several rows: act_split, GEMMs, attention tiles),
then runs one single-token forward() eagerly: its kernels come in layer order (norm + QKV,
attention, O, gate/up, down per layer; then the head and, for greedy decoding, the argmax),
so --launch-skip / --launch-count pick a layer's kernels or the head's. Prints nothing
useful itself; ncu's report is the output.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import cupy as cp  # noqa: E402

from worker.backends import cupy_backend as cb  # noqa: E402
from worker.model import load_model  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    args = ap.parse_args()
    be = cb.CupyBackend(0)
    model = load_model(Path(args.model), be)
    ad, cfg = model.adapter, model.cfg
    prompt = np.random.default_rng(1).integers(0, cfg.vocab_size, 16)
    cache = ad.new_cache(32)
    logits = ad.forward(prompt, 0, cache)
    cp.cuda.runtime.deviceSynchronize()
    logits = ad.forward(np.array([int(np.argmax(logits))]), 16, cache)
    cp.cuda.runtime.deviceSynchronize()
    print("next token", int(np.argmax(logits)))
    be.free_kv_cache(cache)
    be.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
