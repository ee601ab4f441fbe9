"""A prompt's prefill as a CUDA graph: one per length bucket, captured at load, replayed per job.

Why: the eager prefill launches ~25 kernels a layer from Python, so a short prompt is bound
by the host (a 128-token prompt of the Qwen2.5-0.5B shape took ~16 ms against ~4.4 ms of
device work). A replayed graph costs the device time and one launch.

How one graph serves every length of its bucket: the prompt is padded at the end to the
bucket's length with token 0. Causal attention keeps rows 0..n-1 independent of the padding,
and the last layer continues from row n - 1, which take_row reads from device memory, as the
embedding lookup reads the token ids. Positions start at 0 (a job's prompt), so nothing else
depends on n. K and V go to a scratch cache of the largest bucket; the job's cache gets the
first n positions from it after the replay (the padding's rows are never copied).

Memory: every graph's intermediate arrays come from one private pool. Replays run one at a
time on the caller's stream and are waited for (the logits are copied to the host), so the
graphs may share those blocks: the pool's size is the largest bucket's working set, not the
sum. It is reserved at load (so a job's memory returns to the level before it), counted in
the backend's memory_in_use, and never trimmed while any graph exists: CuPy sees the
intermediates as free blocks, and handing them back would leave the graphs pointing at
released memory.
"""

from __future__ import annotations

import ctypes
import logging
import os
from typing import TYPE_CHECKING, Any

import numpy as np

from worker.backends.base import KVCache

if TYPE_CHECKING:
    from worker.backends.cupy_backend import CupyBackend

try:
    import cupy as cp
except Exception:  # pragma: no cover - the module is only used with CuPy
    cp = None  # type: ignore[assignment]

log = logging.getLogger("worker.cuda")

# Prompt lengths 2..512 are padded up to the next of these. Powers of two keep the padding
# (device work spent on token 0) under half of the prompt; 512 is llama.cpp's default batch.
PROMPT_BUCKETS = (16, 32, 64, 128, 256, 512)


def bucket_for(n: int, buckets: tuple[int, ...] = PROMPT_BUCKETS) -> int | None:
    """The smallest bucket that holds n tokens; None when n is 1 (a decode step) or too long."""
    if n < 2:
        return None
    return next((b for b in buckets if b >= n), None)


# cuBLAS's recommended workspace on Hopper; with one set, a GEMM allocates nothing in a capture.
BLAS_WORKSPACE = 32 << 20


def _libcublas() -> ctypes.CDLL:
    """The libcublas CuPy has loaded (its handle and ours then share one library)."""
    cp.cuda.device.get_cublas_handle()  # loads it
    with open("/proc/self/maps") as f:
        paths = {line.split()[-1] for line in f if "/libcublas.so" in line}
    if not paths:
        raise OSError("libcublas is not loaded in this process")
    return ctypes.CDLL(sorted(paths)[0])


class CaptureBlas:
    """A cuBLAS handle of the prompt graphs' own, called through ctypes: CuPy refuses every
    cuBLAS call while a stream captures (its setStream checks), though cuBLAS supports
    capture. The handle has its own workspace, so a recorded GEMM allocates nothing."""

    def __init__(self, workspace: Any) -> None:
        self.lib = _libcublas()
        self.workspace = workspace
        h = ctypes.c_void_p()
        self._check(self.lib.cublasCreate_v2(ctypes.byref(h)), "cublasCreate")
        self.handle = h
        ws = ctypes.c_void_p(workspace.data.ptr)
        self._check(self.lib.cublasSetWorkspace_v2(h, ws, ctypes.c_size_t(workspace.nbytes)), "cublasSetWorkspace")
        g = self.lib.cublasGemmEx
        g.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                      ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_int,
                      ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                      ctypes.c_int]  # fmt: skip
        g.restype = ctypes.c_int

    @staticmethod
    def _check(status: int, what: str) -> None:
        if status != 0:
            raise RuntimeError(f"{what}: cuBLAS status {status}")

    def gemm_ex(self, transa: int, transb: int, m: int, n: int, k: int, alpha: float, a: int, a_type: int,
                lda: int, b: int, b_type: int, ldb: int, beta: float, c: int, c_type: int, ldc: int,
                compute: int, algo: int) -> None:  # fmt: skip
        """cublasGemmEx on the current stream (host scalars: read now, baked into a capture)."""
        self._check(self.lib.cublasSetStream_v2(self.handle, ctypes.c_void_p(cp.cuda.get_current_stream().ptr)),
                    "cublasSetStream")  # fmt: skip
        al, be = ctypes.c_float(alpha), ctypes.c_float(beta)
        self._check(
            self.lib.cublasGemmEx(self.handle, transa, transb, m, n, k, ctypes.byref(al), a, a_type, lda, b, b_type,
                                  ldb, ctypes.byref(be), c, c_type, ldc, compute, algo),
            "cublasGemmEx",
        )  # fmt: skip

    def close(self) -> None:
        if self.handle is not None:
            self.lib.cublasDestroy_v2(self.handle)
            self.handle = None


class PromptInput:
    """What the kernels read while a prompt graph records: ids [bucket] and n [1], int32; and
    the cuBLAS handle its GEMMs go through."""

    def __init__(self, ids: Any, n: Any, bucket: int, blas: CaptureBlas) -> None:
        self.ids, self.n, self.bucket, self.blas = ids, n, bucket, blas


class PromptGraphs:
    def __init__(self, backend: CupyBackend, adapter: Any, max_len: int) -> None:
        self.be, self.adapter = backend, adapter
        self.buckets = tuple(b for b in PROMPT_BUCKETS if b <= max_len)
        self.graphs: dict[int, tuple[Any, Any]] = {}  # bucket -> (graph, its logits [1, vocab])
        self.pool = cp.cuda.MemoryPool()
        self.stream = cp.cuda.Stream(non_blocking=True)
        self.inp: Any = None  # int32 [1 + largest bucket]: n, then the padded ids
        self.kv: KVCache | None = None
        self.blas: CaptureBlas | None = None
        self.replays = 0

    def nbytes(self) -> int:
        return int(self.pool.total_bytes()) if self.pool is not None else 0

    def capture(self) -> None:
        """Record every bucket's prefill (each after one eager run on the same buffers, which
        loads the kernels and lets cuBLAS pick its algorithms outside the capture)."""
        be, cfg = self.be, self.adapter.cfg
        if not self.buckets:
            return
        if be.memory_limit is not None:
            self.pool.set_limit(size=max(1, be.memory_limit - be.memory_in_use()))
        top = self.buckets[-1]
        with be._device, cp.cuda.using_allocator(self.pool.malloc), self.stream:
            self.inp = cp.zeros(1 + top, dtype=cp.int32)
            shape = (cfg.n_layer, top, cfg.n_kv_heads, cfg.head_dim)
            self.kv = KVCache(k=cp.zeros(shape, dtype=cp.float16), v=cp.zeros(shape, dtype=cp.float16),
                              capacity=top, nbytes=0)  # fmt: skip
            self.blas = CaptureBlas(cp.empty(BLAS_WORKSPACE, dtype=cp.uint8))
            zeros = np.zeros(top, dtype=np.int64)
            for b in self.buckets:
                self.inp[0:1].fill(b)
                be._prompt = PromptInput(self.inp[1 : 1 + b], self.inp[0:1], b, self.blas)
                try:
                    self.adapter.logits(zeros[:b], 0, self.kv)  # eager, then recorded
                    be._memo = None
                    self.stream.begin_capture()
                    graph = logits = None
                    try:
                        logits = self.adapter.logits(zeros[:b], 0, self.kv)
                    finally:
                        graph = self.stream.end_capture()
                finally:
                    be._prompt = None
                    be._memo = None  # it holds this pool's arrays
                self.graphs[b] = (graph, logits)
            self.stream.synchronize()

    def forward(self, tokens: np.ndarray, cache: KVCache) -> np.ndarray | None:
        """The last position's logits (host) for tokens at positions 0.., K and V in cache;
        None when no graph takes this length."""
        n = len(tokens)
        b = bucket_for(n, self.buckets)
        if b is None or b not in self.graphs:
            return None
        if n > cache.capacity:
            raise ValueError(f"KV cache overflow: position {n} > capacity {cache.capacity}")
        ids = np.asarray(tokens, dtype=np.int64).reshape(-1)
        rows = self.adapter.tok_embd.rows
        if ids.min() < 0 or ids.max() >= rows:  # the graph would read outside the table
            raise IndexError(f"token id out of range 0..{rows - 1}")
        host = np.zeros(1 + b, dtype=np.int32)
        host[0], host[1 : 1 + n] = n, ids
        graph, logits = self.graphs[b]
        assert self.kv is not None
        with self.be._device:
            stream = cp.cuda.get_current_stream()
            self.inp[: 1 + b].set(host, stream=stream)
            graph.launch(stream)
            self.replays += 1
            cache.k[:, :n] = self.kv.k[:, :n]
            cache.v[:, :n] = self.kv.v[:, :n]
            return cp.asnumpy(logits[0], stream=stream)

    def close(self) -> None:
        if self.pool is None:
            return
        with self.be._device:
            self.stream.synchronize()
            self.graphs.clear()
            if self.blas is not None:
                self.blas.close()
            self.inp = self.kv = self.blas = None
            self.pool.free_all_blocks()
        self.pool = None


def enabled() -> bool:
    """WORKER_CUDA_PROMPT_GRAPHS=0 turns them off (an A/B switch for the benchmarks)."""
    return os.environ.get("WORKER_CUDA_PROMPT_GRAPHS", "1") != "0"
