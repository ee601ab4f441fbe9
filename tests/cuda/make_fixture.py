"""The GPU checks' two models, made by fixtures/build.py, and helpers the CUDA tests share.

Real model files are too big to carry to the GPU machine, so the CUDA checks build these
there from a seed (same seed, same bytes), with fixtures/build.py's tensor plans:

- `smollm2-shape`: arch llama, SmolLM2-135M's shapes and Q4_1 mix (Q8_0 tied embedding).
- `qwen25-shape`: arch qwen2, Qwen2.5-0.5B's shapes and Q4_K_M mix (Q5_0, Q8_0 attn_v and
  output, Q6_K / Q4_K ffn_down by llama.cpp's "use_more_bits" rule, q/k/v biases).

Both without a vocabulary (fixtures/vocab.py takes it from the SmolLM2 registry model, which
a GPU machine without network cannot fetch; adapters and backends need none), and quantized
from real values at full shape too (fixtures/build.py's weight scales and boosted output head,
so greedy ids have clear margins), not the random blocks full-shape files get by default.

    python tests/cuda/make_fixture.py OUTDIR [--tiny] [--seed N]

Also: `quantize()` (float32 rows -> GGUF block bytes) and `RawTensors` (a duck-typed GGUFFile
over in-memory tensors, for loading single tensors into a backend).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as T

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from fixtures.build import build, encode  # noqa: E402
from worker.gguf_file import TensorInfo  # noqa: E402
from worker.quants import get_format  # noqa: E402

# name -> the fixtures/build.py architecture with that model's shapes and quant mix
FIXTURES = {"smollm2-shape": "llama", "qwen25-shape": "qwen2"}


def quantize(x: np.ndarray, type_id: int) -> np.ndarray:
    """float32 [rows, k] -> uint8 [rows, row_bytes] in GGML type `type_id`'s block format."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    return np.ascontiguousarray(encode(x, T(type_id))).view(np.uint8).reshape(x.shape[0], -1)


class RawTensors:
    """Enough of GGUFFile (path, tensors, raw) for Backend.matrix/vector/embedding."""

    def __init__(self) -> None:
        self.path = "<memory>"
        self.tensors: dict[str, TensorInfo] = {}
        self._raw: dict[str, np.ndarray] = {}

    def add(self, name: str, raw: np.ndarray, type_id: int, shape: tuple[int, ...]) -> None:
        """shape in NumPy order (rows, row length); raw = the tensor's bytes."""
        fmt = get_format(type_id)
        n = int(np.prod(shape))
        self.tensors[name] = TensorInfo(
            name=name,
            type_id=int(type_id),
            type_name=T(type_id).name,
            shape=tuple(int(d) for d in reversed(shape)),
            n_elements=n,
            n_bytes=n // fmt.block_size * fmt.type_size,
            offset=0,
        )
        self._raw[name] = np.ascontiguousarray(raw).view(np.uint8).reshape(-1)

    def add_float(self, name: str, x: np.ndarray, type_id: int) -> np.ndarray:
        raw = quantize(x.reshape(-1, x.shape[-1]), type_id)
        self.add(name, raw, type_id, x.shape)
        return raw

    def raw(self, name: str) -> np.ndarray:
        return self._raw[name]


def build_all(out_dir: str | Path, tiny: bool = False, seed: int = 0) -> dict[str, Path]:
    """Both models in out_dir (reused when already built with these settings): name -> path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    size = "tiny" if tiny else "full"
    paths = {}
    for name, arch in FIXTURES.items():
        p = out_dir / f"{name}-{size}-s{seed}.gguf"
        if not p.exists():
            t0 = time.perf_counter()
            tmp = build(arch, p.with_suffix(".part"), size=size, seed=seed, vocab=False, quantize=True)
            tmp.replace(p)  # atomic: a concurrent reader never sees a half-written file
            print(f"built {p} ({p.stat().st_size / 2**20:.1f} MiB) in {time.perf_counter() - t0:.1f} s", flush=True)
        paths[name] = p
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir")
    ap.add_argument("--tiny", action="store_true", help="small shapes (for unit tests)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    build_all(args.out_dir, args.tiny, args.seed)


if __name__ == "__main__":
    main()
