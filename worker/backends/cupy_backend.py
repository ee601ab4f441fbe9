"""The CUDA backend (CuPy + kernels in worker/backends/cuda/kernels.cu).

Correctness first; speed is a later step. What it does:
- Weights are uploaded once, still in their GGUF block format (raw bytes in device arrays;
  CuPy's pool hands out 512-byte aligned blocks), and are never expanded to float32 in
  device memory at rest. Embedding rows are dequantized on lookup; a tied output head shares
  the embedding's device buffer.
- Decode products (one activation row) run decode.cu's fused kernels: the input's norm and
  rounding in registers, weight rows staged in shared memory with cp.async, integer dot
  products, several rows per warp where they fit (fmv_plan), launched with programmatic
  dependent launch (pdl.py) and recorded in a CUDA graph (GraphDecoder): once per model at
  load (prepare(), lent to one job at a time), or per job when that one is busy. Products
  with n > 1 rows (prefill) dequantize the weight to a float16 hi/lo scratch and run one
  cuBLAS GEMM per group (prefill.cu); F32 and BF16 weights use SGEMM on a float32 scratch
  (no TF32: CuPy uses TF32 only when CUPY_TF32=1 is set). A job's prompt of 2..512 tokens
  replays the prefill graph of its length bucket, recorded at load (prompt_graphs.py).
- The input of every product is first rounded the way ggml converts it to the weight's
  vec_dot_type (q8_0 / q8_1 / q8_k / f16 / bf16), as the NumPy reference does: llama.cpp
  does it too (its CUDA path quantizes activations to q8_1 before its quantized products),
  and without it logits sit ~1e-2 away from both llama.cpp and the reference. Attention
  rounds Q and the softmax probabilities to f16 like the reference (llama.cpp without flash
  attention), over a float16 KV cache.
- Deterministic: fixed reduction orders, no atomics; cuBLAS GEMM is deterministic for a
  fixed shape on one device.
- Memory: everything lives in CuPy's default pool; `memory_limit` (--vram-limit) is the
  pool's limit. Running out during a job raises worker.backends.base.OutOfDeviceMemory
  (the engine maps it to VRAM_OOM); free_kv_cache returns the pool's free blocks so device
  memory in use goes back to its level before the job.
- verify_residency() checks every weight and KV buffer with cudaPointerGetAttributes.
- Beyond llama/qwen2 it also runs the optional operations of base.Backend that gpt2, phi3
  and gpt-oss use (layer_norm, gelu, swiglu_oai, scale, attention_ext with kq scale, sinks
  and window, YaRN RoPE, experts/linear_expert, concat_rows), each checked against the
  reference; tests/cuda runs the phi3, gpt2 and gpt-oss tiny fixtures end to end.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import logging
import math
import os
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from worker.adapters.base import Decoder
from worker.backends.base import Backend, KVCache, MoE, OutOfDeviceMemory
from worker.backends.numpy_backend import _gelu_f16_table, _yarn_tables
from worker.backends.pdl import PdlLauncher
from worker.backends.prompt_graphs import PromptGraphs, PromptInput
from worker.backends.prompt_graphs import enabled as prompt_graphs_enabled
from worker.gguf_file import GGUFError, GGUFFile
from worker.model_config import ModelConfig
from worker.quants import UnsupportedQuantType, dequantize, get_format

try:  # CuPy is optional: the module imports without it, and cuda_available() says False.
    import cupy as cp
    from cupy.cuda import cublas
except Exception:  # pragma: no cover - depends on the machine
    cp = None  # type: ignore[assignment]

KERNELS_PATH = Path(__file__).parent / "cuda" / "kernels.cu"
DECODE_KERNELS_PATH = Path(__file__).parent / "cuda" / "decode.cu"
PREFILL_KERNELS_PATH = Path(__file__).parent / "cuda" / "prefill.cu"
# attn_prefill_<d> (prefill.cu): the head sizes it is built for; 64 queries per block of 128
ATTN_PREFILL_D = (64, 96, 128)
# cuBLAS / CUDA enum values for cublasGemmEx (cublas_api.h, library_types.h)
CUBLAS_OP_N, CUBLAS_OP_T = 0, 1
CUDA_R_32F, CUDA_R_16F = 0, 2
CUBLAS_COMPUTE_32F = 68
CUBLAS_GEMM_DEFAULT = -1

# GGML type id -> kernel name suffix in kernels.cu (matvec_*, dequant_*, embed_*).
KERNEL_SUFFIX = {
    0: "f32",
    1: "f16",
    30: "bf16",
    2: "q4_0",
    3: "q4_1",
    6: "q5_0",
    7: "q5_1",
    8: "q8_0",
    12: "q4_k",
    13: "q5_k",
    14: "q6_k",
    39: "mxfp4",
}
Q8_1_TYPES = frozenset({3, 7})  # Q4_1, Q5_1: offset formats whose products use q8_1 block sums
FLOAT_TYPES = frozenset({0, 1, 30})  # F32, F16, BF16
K_QUANT_TYPES = frozenset({12, 13, 14})  # Q4_K, Q5_K, Q6_K: 256-element super-blocks
# formats whose decode products sum in integers (decode.cu's int_dot)
INT_DOT_TYPES = frozenset({2, 3, 6, 7, 8, 12, 14, 39})

# Scratch bound (float32 elements) for the prefill dequantized-weight chunks and the
# attention score buffer: 64 MiB each.
SCRATCH_ELEMS = 16 << 20
ATT_THREADS = 128  # must match kernels.cu
# Decode contexts of up to this many positions take attention and the output projection in
# one launch (CupyBackend.attention_output: attn_out_*, clusters of a block a head); longer
# ones attn_decode and the product apart. 0: never.
ATT_O_MAX = 1024
# output projections attn_out_* takes: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 (32-element input blocks)
ATT_O_CLUSTER_TYPES = frozenset({2, 3, 6, 7, 8})
# attn_out_*'s clusters (chunks of O's rows): each repeats the attention, so fewer cost less
# attention and more rows a block. 4 measured best or near it on the H100 (whole step, µs:
# Qwen-shape 733 against 731 for 9 and 749 for 2; SmolLM2-shape 603 against 638 for 14 and
# 598 for 2; docs/PERFORMANCE.md).
ATT_O_CHUNKS = 4
FMV_THREADS, FMV_WARPS = 256, 8  # must match decode.cu
# Dynamic shared memory of a fused product (the input row, padded, and its int8 copy): the
# kernels opt in to this much (cudaFuncAttributeMaxDynamicSharedMemorySize); without the
# opt-in a block gets 48 KiB, less decode.cu's ~9 KiB of static buffers (weight staging).
FMV_SMEM_BYTES = 160 * 1024
FMV_SMEM_DEFAULT = 46 * 1024
# fmv_*'s weight staging (decode.cu): at most this many ring slots per warp, and at most this
# many rounds per block when warps split a row (its table of partial sums)
FMV_NST_MAX, FMV_RED_ROUNDS = 8, 16
# Blocks of a product kernel per multiprocessor (the grid is sized for one wave of them): 4,
# the most that fit at 64 registers a thread (bench/gpu_decode_ablation.py measured 2 and 1
# slower: fewer warps to hide the input rounding and the rows' latency).
FMV_BLOCKS_PER_SM = 4
NULL = np.uint64(0)  # a null pointer kernel argument
# The widest product output rounded once for the next product (decode.cu's round_output:
# one counter per 256-row super-block, at most 64)
ROUND_MAX = 64 * 256
# Tokens norm_moe routes in one go: bounds its scratch (2 x 4 x 2,880 floats a token for
# gpt-oss-20b) and keeps a launch's grid rows (tokens x experts) under CUDA's 65,535
MOE_CHUNK = 512


def fmv_smem(k: int) -> int:
    """Dynamic shared memory of act_split_* and the input part of fmv_*'s: the input row padded
    to 33 words per 32 (decode.cu's XI), a q8_1 block sum, a scale and an int sum per 32, then
    (16-byte aligned) the row's int8 values (decode.cu's act_xq, act_smem_bytes)."""
    units = -(-k // 32)
    return ((units * 36 + 3) & ~3) * 4 + units * 32


@dataclass(frozen=True)
class FmvPlan:
    """How fmv_* splits a product (decode.cu's fmv_impl): mode (2 becomes 3 when gate and up
    rows go to two warps), wpr warps per row, rpw rows per warp and round, per units per
    warp, iters rounds of 8 / wpr * rpw rows per block, grid blocks, nst ring slots per warp
    of npass * pass_bytes, smem in all."""

    mode: int
    wpr: int
    rpw: int
    per: int
    iters: int
    grid: int
    nst: int
    pass_bytes: int
    smem: int


@functools.lru_cache(maxsize=1024)
def fmv_plan(
    k: int,
    mode: int,
    total: int,
    type_ids: tuple[int, ...],
    sm_count: int,
    smem_max: int,
    blocks_per_sm: int = FMV_BLOCKS_PER_SM,
    smem_per_sm: int = 0,
    seg_rows: tuple[int, ...] = (),
    wpr_max: int = 4,
    rpw_max: int = 4,
) -> FmvPlan | None:
    """The split of one fused product, or None when one ring slot per warp does not fit.
    smem_per_sm (when known): fewer ring slots, so that blocks_per_sm blocks fit on one
    multiprocessor (each also takes ~1 KiB of static and 1 KiB of reserved shared memory).
    seg_rows: each weight's row count, given when the rows are contiguous whole blocks; then
    warps that take whole rows of integer-dot formats take 4 or 2 at a time (rpw), as long
    as every weight's row count divides by it and the grid still covers every multiprocessor.
    wpr_max, rpw_max: caps on both (bench/gpu_decode_ablation.py's variants)."""
    units = k // 32
    # split long rows over several warps of a block (the down projection: 896 rows of 4864)
    # (4 and not 8 warps for 128 units or more: bench/gpu_decode_ablation.py's "wpr<=4" took
    # the 4864-wide down projection from 9.1 to 8.1 µs on the H100). Rows of up to 128 units
    # with rows for at least half a wave of warps stay whole: on the H200
    # (bench/gpu_moe_probe.py) gpt-oss-20b's 201,088-row head took 200 µs against 426, its
    # experts' 4 x 2,880-row down products 17 µs against 34, and its 2,880-row output
    # projection 9.6 µs against 11.6.
    wpr = min(wpr_max, 4 if units >= 64 else 2 if units >= 40 else 1)
    if units <= 128 and 2 * total >= sm_count * blocks_per_sm * FMV_WARPS:
        wpr = 1
    if mode == 2 and wpr == 1:
        mode, wpr = 3, 2  # gate and up rows on two warps
    upb = 8 if any(t in K_QUANT_TYPES for t in type_ids) else 1
    per = units if mode == 3 else -(-math.ceil(units / wpr) // upb) * upb
    rows_base = FMV_WARPS // wpr
    rpw = 1
    if seg_rows and (mode == 3 or (wpr == 1 and mode in (0, 1))) and all(t in INT_DOT_TYPES for t in type_ids):
        for r in (4, 2):
            if r <= rpw_max and all(n % r == 0 for n in seg_rows) and total // (rows_base * r) >= sm_count:
                rpw = r
                break
    seg_bytes = 0
    for t in type_ids:
        fmt = get_format(t)
        if t not in FLOAT_TYPES:  # float rows are read from global memory, not staged
            seg_bytes = max(seg_bytes, rpw * per * 32 // fmt.block_size * fmt.type_size)
    # 16-byte copies from the granule holding the first byte: up to 15 bytes more
    pass_bytes = (seg_bytes + 15 + 15) // 16 * 16
    npass = 2 if mode == 2 else 1
    rows_per_iter = rows_base * rpw
    iters = max(1, -(-total // (sm_count * blocks_per_sm * rows_per_iter)))
    if wpr > 1:
        iters = min(iters, FMV_RED_ROUNDS // rpw)
    grid = -(-total // (rows_per_iter * iters))
    ring = FMV_WARPS * npass * pass_bytes
    nst = min(iters, FMV_NST_MAX, (smem_max - fmv_smem(k)) // ring)
    if nst < 1:
        return None
    if smem_per_sm:
        nst = max(1, min(nst, (smem_per_sm // blocks_per_sm - 2048 - fmv_smem(k)) // ring))
    return FmvPlan(mode, wpr, rpw, per, iters, grid, nst, pass_bytes, fmv_smem(k) + nst * ring)


CUDA_MEMORY_TYPE_DEVICE = 2  # cudaMemoryTypeDevice

F = TypeVar("F", bound=Callable[..., Any])
log = logging.getLogger("worker.cuda")


def _gemm_f16(c: Any, a: Any, b: Any, k: int, alpha: float, beta: float, blas: Any = None) -> None:
    """c [n, m] float32 = alpha * a[:, :k] @ b[:, :k].T + beta * c, for float16 a [n, *] and
    b [m, *] with unit column stride (row strides may exceed k): cublasGemmEx, float32
    accumulation (CUBLAS_COMPUTE_32F), on the current stream; through `blas` (a prompt
    graph's CaptureBlas) when given, else CuPy's handle."""
    n, m = c.shape
    # column-major view: C^T [m, n] = B [m, k] . A^T [k, n]; the two handles take the same
    # arguments but for alpha and beta (CaptureBlas: values; CuPy: host pointers)
    ops = (CUBLAS_OP_T, CUBLAS_OP_N, m, n, k)
    ab = (b.data.ptr, CUDA_R_16F, b.strides[0] // 2, a.data.ptr, CUDA_R_16F, a.strides[0] // 2)
    out = (c.data.ptr, CUDA_R_32F, m, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT)
    if blas is not None:
        blas.gemm_ex(*ops, alpha, *ab, beta, *out)
        return
    handle = cp.cuda.device.get_cublas_handle()
    cublas.setStream(handle, cp.cuda.get_current_stream().ptr)
    al, be = np.array(alpha, dtype=np.float32), np.array(beta, dtype=np.float32)
    cublas.gemmEx(handle, *ops, al.ctypes.data, *ab, be.ctypes.data, *out)


def _takes_q8k(w: Any) -> bool:
    """A weight whose decode product reads a q8_K input through integer dot products only
    (Q4_K, Q6_K): it can take an input rounded by the kernel that wrote it (load_pre)."""
    return isinstance(w, DeviceMatrix) and w.act_type == "q8_k" and w.type_id in INT_DOT_TYPES


def cuda_available() -> bool:
    """True when CuPy imports and sees at least one CUDA device."""
    if cp is None:
        return False
    try:
        return cp.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


def _is_oom(exc: BaseException) -> bool:
    if isinstance(exc, cp.cuda.memory.OutOfMemoryError):
        return True
    status = getattr(exc, "status", None)
    if isinstance(exc, cp.cuda.runtime.CUDARuntimeError):
        return status == 2  # cudaErrorMemoryAllocation
    return "CUBLAS" in type(exc).__name__.upper() and status == 3  # CUBLAS_STATUS_ALLOC_FAILED


def _device_op(fn: F) -> F:
    """Run on the backend's device; map CuPy/CUDA out-of-memory to OutOfDeviceMemory.

    The new exception is raised outside the `except` block so it carries no reference to
    the CuPy exception's traceback (whose frames hold the job's device arrays)."""

    @functools.wraps(fn)
    def wrapper(self: CupyBackend, *args: Any, **kwargs: Any) -> Any:
        try:
            with self._device:
                return fn(self, *args, **kwargs)
        except Exception as exc:
            if cp is None or isinstance(exc, OutOfDeviceMemory) or not _is_oom(exc):
                raise
            requested = int(getattr(exc, "_size", 0) or 0)
        self._on_oom()
        raise OutOfDeviceMemory(requested, self.memory_in_use(), self.memory_limit or -1)

    return wrapper  # type: ignore[return-value]


@dataclass
class DeviceMatrix:
    """A weight [n_out, n_in] kept in its GGUF block format on the device."""

    name: str
    raw: Any  # cupy uint8 [n_out * row_bytes]
    type_id: int
    n_out: int
    n_in: int
    row_bytes: int
    act_type: str

    @property
    def suffix(self) -> str:
        return KERNEL_SUFFIX[self.type_id]

    @property
    def nbytes(self) -> int:
        return int(self.raw.nbytes)


@dataclass(frozen=True)
class ExpertSlots:
    """A fused product over the experts a router chose (decode.cu's fmv_impl, eids): slot s of
    `slots` takes expert e = ids[s] (device memory): its weights w_stride bytes and its biases
    b_stride floats past the first expert's; its input row s // x_div, x_stride floats apart;
    its output y_stride floats past slot 0's."""

    ids: Any
    slots: int
    w_stride: int
    b_stride: int
    x_stride: int
    y_stride: int
    x_div: int = 1


@dataclass
class DeviceEmbedding:
    name: str
    raw: Any  # cupy uint8 [rows * row_bytes]
    type_id: int
    n_embd: int
    rows: int
    row_bytes: int

    @property
    def nbytes(self) -> int:
        return int(self.raw.nbytes)


class CupyBackend(Backend):
    def __init__(self, device_id: int = 0, memory_limit: int | None = None) -> None:
        if cp is None:
            raise RuntimeError("the CUDA backend needs CuPy (pip install 'worker-orcd[cuda]')")
        self.device_id = int(device_id)
        self.name = f"cuda:{self.device_id}"
        self.memory_limit = int(memory_limit) if memory_limit else None
        n_dev = cp.cuda.runtime.getDeviceCount()
        if not 0 <= self.device_id < n_dev:
            raise RuntimeError(f"--gpu-device {self.device_id}: expected 0..{n_dev - 1}, found {n_dev} device(s)")
        self._device = cp.cuda.Device(self.device_id)
        self._weights: dict[str, Any] = {}  # unique key -> device array (raw blocks or f32 vectors)
        self._weights_bytes = 0
        # (id(file), tensor name) -> (weakref to the file, device array): a tensor used twice
        # (a tied output head is the embedding table) is uploaded once.
        self._uploaded: dict[tuple[int, str], tuple[Any, Any]] = {}
        self._oom_seen = False
        self._caches: dict[int, weakref.ref[KVCache]] = {}
        self._functions: dict[str, Any] = {}
        self._memo: tuple[Any, str, Any, Any] | None = None  # last activation round trip
        # the last gate/up output rounded to q8_K by its kernel: (y, values, scales, sums), and
        # how many down products took such an input (tests/cuda checks the path runs)
        self._rounded: tuple[Any, Any, Any, Any] | None = None
        self.rounded_taken = 0
        self.moe_on_device = 0  # norm_moe calls routed on the device (tests/cuda checks the path runs)
        self.att_o_fused = 0  # attention_output calls that took attn_out_* (likewise)
        # Contexts of up to this many positions take attention and O in one launch (attn_out_*);
        # 0: never (ATT_O_MAX; an A/B switch for bench/gpu_decode_ablation.py); its clusters
        # (0: ATT_O_CHUNKS); False once a launch was refused
        self._att_o_max = int(os.environ.get("WORKER_CUDA_ATT_O_MAX", str(ATT_O_MAX)))
        self._att_o_chunks = 0
        self._att_o_ok = True
        self._round_once = os.environ.get("WORKER_CUDA_ROUND_ONCE", "1") != "0"  # an A/B switch
        # Set while a GraphDecoder records or replays a step: kernels then read the token and
        # its position from the decoder's device buffers instead of taking host values.
        self._step: GraphDecoder | None = None
        # Set while a prompt graph records: the ids and the prompt's length come from its buffers.
        self._prompt: PromptInput | None = None
        self._prompt_graphs: dict[int, PromptGraphs] = {}  # id(adapter) -> its graphs
        self._shared_decoders: dict[int, GraphDecoder] = {}  # id(adapter) -> its recorded step
        # id(cfg) -> (cfg, positions, cos, sin): a model's RoPE table on the device (_yarn_table,
        # _rope_table); decode steps read plain RoPE's unless switched off
        # (bench/gpu_decode_ablation.py's "no rope table")
        self._rope_tabs: dict[int, tuple[ModelConfig, int, Any, Any]] = {}
        self._rope_tables = True
        self._decoders: weakref.WeakSet[GraphDecoder] = weakref.WeakSet()
        self.resident = False
        with self._device:
            self._pool = cp.get_default_memory_pool()
            if self.memory_limit is not None:
                self._pool.set_limit(size=self.memory_limit)
            self._module = cp.RawModule(
                code=KERNELS_PATH.read_text() + DECODE_KERNELS_PATH.read_text() + PREFILL_KERNELS_PATH.read_text()
            )
            props = cp.cuda.runtime.getDeviceProperties(self.device_id)
            self._sm_count = int(props.get("multiProcessorCount", 132))
            self._smem_per_sm = int(props.get("sharedMemPerMultiprocessor", 0))
            self._dummy = cp.zeros(1, dtype=cp.float32)
            self._fmv_smem_max = FMV_SMEM_DEFAULT
            try:  # the fused kernels' opt-in to more shared memory (long input rows)
                self._module.get_function("fmv_q8_0").max_dynamic_shared_size_bytes = FMV_SMEM_BYTES
                self._fmv_smem_max = FMV_SMEM_BYTES
            except Exception as exc:  # an older CuPy or driver: rows that fit the default only
                log.warning("fused kernels keep the default shared memory limit: %s", exc)
            self._dummy_i = cp.zeros(1, dtype=cp.int32)
            # round_output's counters for products launched outside a recorded step (each
            # launch leaves them at zero again; a GraphDecoder has its own)
            self._round_cnt = cp.zeros(ROUND_MAX // 256, dtype=cp.uint32)
            self._fmv_blocks_per_sm = FMV_BLOCKS_PER_SM
            # (mode, columns, rows) -> blocks per multiprocessor for that one product
            # (bench/gpu_decode_ablation.py's per-product variants)
            self._fmv_bps_for: dict[tuple[int, int, int], int] = {}
            self._fmv_caps = (4, 4)  # fmv_plan's wpr_max, rpw_max
            # decode kernels launched with programmatic dependent launch (sm_90; pdl.py), unless
            # WORKER_CUDA_PDL=0 (an A/B switch for bench/gpu_decode_ablation.py)
            self._pdl: PdlLauncher | None = None
            # cluster launches (attention_output's attn_out_*), with or without the attribute
            self._ex: PdlLauncher | None = None
            if int(props.get("major", 0)) >= 9:
                try:
                    self._ex = PdlLauncher(programmatic=False)
                    if os.environ.get("WORKER_CUDA_PDL", "1") != "0":
                        self._pdl = PdlLauncher()
                except (OSError, AttributeError) as exc:  # no libcuda symbol: plain launches
                    log.warning("programmatic dependent launch unavailable: %s", exc)
            self._gelu_table = cp.asarray(_gelu_f16_table())  # 256 KiB, for gelu()

    # -- helpers ---------------------------------------------------------------------------
    def _fn(self, name: str) -> Any:
        f = self._functions.get(name)
        if f is None:
            f = self._module.get_function(name)
            if name.startswith(("fmv_", "act_split_", "attn_out_")) and self._fmv_smem_max > FMV_SMEM_DEFAULT:
                f.max_dynamic_shared_size_bytes = self._fmv_smem_max
            self._functions[name] = f
        return f

    def _launch_dep(
        self, name: str, grid: int, block: int, args: tuple[Any, ...], shared_mem: int = 0, grid_y: int = 1
    ) -> None:
        """A decode.cu kernel that calls pdl_wait before reading earlier kernels' outputs:
        launched with programmatic dependent launch where available, else as usual."""
        f = self._fn(name)
        if self._pdl is None:
            f((grid, grid_y), (block,), args, shared_mem=shared_mem)
        else:
            self._pdl(getattr(f, "kernel", f).ptr, grid, block, args, shared_mem, cp.cuda.get_current_stream().ptr,
                      grid_y)  # fmt: skip

    def _on_oom(self) -> None:
        self._memo = self._rounded = None
        self._oom_seen = True
        try:
            with self._device:
                self._pool.free_all_blocks()
        except Exception:  # pragma: no cover - best effort
            pass

    @staticmethod
    def _f32(x: Any) -> Any:
        """x as a C-contiguous float32 device array; a host (NumPy) array is uploaded."""
        return cp.ascontiguousarray(cp.asarray(x), dtype=cp.float32)

    def device_info(self) -> dict[str, Any]:
        with self._device:
            props = cp.cuda.runtime.getDeviceProperties(self.device_id)
            rt = cp.cuda.runtime.runtimeGetVersion()
        name = props.get("name", b"")
        return {
            "device": self.name,
            "name": name.decode() if isinstance(name, bytes) else str(name),
            "sm": f"{props.get('major')}.{props.get('minor')}",
            "cuda_runtime_version": f"{rt // 1000}.{(rt % 1000) // 10}",
            "total_memory": int(props.get("totalGlobalMem", 0)),
        }

    # -- memory ----------------------------------------------------------------------------
    def memory_in_use(self) -> int:
        """Bytes of device memory the backend's arrays hold now (the pool's used bytes)."""
        with self._device:
            return (
                int(self._pool.used_bytes())
                + sum(d.pool_used() for d in list(self._decoders))
                + self._reserved_bytes()
            )

    def pool_bytes(self) -> int:
        """Bytes the pool holds from the driver (used + cached free blocks)."""
        with self._device:
            return int(self._pool.total_bytes())

    @_device_op
    def new_kv_cache(self, cfg: ModelConfig, capacity: int) -> KVCache:
        shape = (cfg.n_layer, capacity, cfg.n_kv_heads, cfg.head_dim)
        nbytes = 2 * math.prod(shape) * 2
        in_use = self.memory_in_use()
        if self.memory_limit is not None and in_use + nbytes > self.memory_limit:
            raise OutOfDeviceMemory(nbytes, in_use, self.memory_limit)
        k = cp.zeros(shape, dtype=cp.float16)
        v = cp.zeros(shape, dtype=cp.float16)
        cache = KVCache(k=k, v=v, capacity=capacity, nbytes=nbytes)
        self._caches[id(cache)] = weakref.ref(cache)
        return cache

    def free_kv_cache(self, cache: KVCache) -> None:
        self._caches.pop(id(cache), None)
        cache.k = cache.v = None
        cache.nbytes = 0
        self._memo = self._rounded = None
        if self._oom_seen:
            # An out-of-memory exception's traceback held the failed job's arrays; collect any
            # cycle through it so its blocks can go back too.
            self._oom_seen = False
            gc.collect()
        with self._device:
            self._pool.free_all_blocks()

    def close(self) -> None:
        """Drop weights and caches, return the pool's blocks, lift the limit we set."""
        self._weights.clear()
        self._uploaded.clear()
        self._rope_tabs.clear()
        self._weights_bytes = 0
        for ref in list(self._caches.values()):
            cache = ref()
            if cache is not None:
                cache.k = cache.v = None
                cache.nbytes = 0
        self._caches.clear()
        self._memo = None
        self.resident = False
        for g in self._prompt_graphs.values():
            g.close()
        self._prompt_graphs.clear()
        for d in self._shared_decoders.values():
            d.shared = False
            d.close()
        self._shared_decoders.clear()
        with self._device:
            self._pool.free_all_blocks()
            if self.memory_limit is not None:
                self._pool.set_limit(size=0)

    def verify_residency(self) -> dict[str, Any]:
        """cudaPointerGetAttributes on every weight and live KV buffer: device memory of this
        device (type == cudaMemoryTypeDevice) with no host pointer."""
        buffers: list[tuple[str, Any]] = list(self._weights.items())
        for ref in list(self._caches.values()):
            cache = ref()
            if cache is not None and cache.k is not None:
                buffers += [("kv.k", cache.k), ("kv.v", cache.v)]
        failures: list[str] = []
        nbytes = 0
        with self._device:
            for name, arr in buffers:
                nbytes += int(arr.nbytes)
                try:
                    attrs = cp.cuda.runtime.pointerGetAttributes(arr.data.ptr)
                    mtype = getattr(attrs, "type", getattr(attrs, "memoryType", None))
                    host = getattr(attrs, "hostPointer", 0) or 0
                    dev = getattr(attrs, "device", self.device_id)
                    if mtype != CUDA_MEMORY_TYPE_DEVICE or host != 0 or dev != self.device_id:
                        failures.append(f"{name}: type={mtype} host_ptr={host:#x} device={dev}")
                except Exception as exc:  # pragma: no cover - depends on the driver
                    failures.append(f"{name}: {exc}")
        self.resident = bool(buffers) and not failures
        return {
            "resident": self.resident,
            "device": self.name,
            "buffers": len(buffers),
            "weight_buffers": len(self._weights),
            "kv_buffers": len(buffers) - len(self._weights),
            "bytes": nbytes,
            "failures": failures[:16],
        }

    # -- loading ---------------------------------------------------------------------------
    def _info(self, f: GGUFFile, name: str) -> Any:
        info = f.tensors.get(name)
        if info is None:
            raise GGUFError(f.path, f"missing tensor {name!r}")
        return info

    def _register_weight(self, name: str, arr: Any) -> None:
        key = name if name not in self._weights else f"{name}#{len(self._weights)}"
        self._weights[key] = arr
        self._weights_bytes += int(arr.nbytes)

    @_device_op
    def _upload_raw(self, f: GGUFFile, name: str) -> Any:
        hit = self._uploaded.get((id(f), name))
        if hit is not None and hit[0]() is f:
            return hit[1]
        host = np.ascontiguousarray(f.raw(name)).reshape(-1).view(np.uint8)
        # a 16-byte tail: decode.cu's staging reads whole words, up to 3 bytes past a row
        base = cp.zeros(host.size + 16, dtype=cp.uint8)
        base[: host.size].set(host)
        arr = base[: host.size]
        self._register_weight(name, arr)
        with contextlib.suppress(TypeError):  # a file object without weakref support
            self._uploaded[(id(f), name)] = (weakref.ref(f), arr)
        return arr

    def matrix(self, f: GGUFFile, name: str) -> DeviceMatrix:
        info = self._info(f, name)
        if len(info.shape) != 2:
            raise GGUFError(f.path, f"tensor {name!r}: expected 2 dimensions, found shape {list(info.shape)}")
        fmt = get_format(info.type_id)
        if info.type_id not in KERNEL_SUFFIX:
            raise UnsupportedQuantType(f"{fmt.name}: no CUDA kernel for this type")
        n_in, n_out = (int(d) for d in info.shape)
        raw = self._upload_raw(f, name)
        return DeviceMatrix(
            name=name,
            raw=raw,
            type_id=int(info.type_id),
            n_out=n_out,
            n_in=n_in,
            row_bytes=n_in // fmt.block_size * fmt.type_size,
            act_type=fmt.act_type,
        )

    @_device_op
    def vector(self, f: GGUFFile, name: str) -> Any:
        info = self._info(f, name)
        arr = cp.asarray(dequantize(f.raw(name), info.type_id, (info.n_elements,)))
        self._register_weight(name, arr)
        return arr

    def embedding(self, f: GGUFFile, name: str) -> DeviceEmbedding:
        info = self._info(f, name)
        fmt = get_format(info.type_id)
        if info.type_id not in KERNEL_SUFFIX:
            raise UnsupportedQuantType(f"{fmt.name}: no CUDA kernel for this type")
        n_embd, rows = (int(d) for d in info.shape)
        raw = self._upload_raw(f, name)
        return DeviceEmbedding(
            name=name,
            raw=raw,
            type_id=int(info.type_id),
            n_embd=n_embd,
            rows=rows,
            row_bytes=n_embd // fmt.block_size * fmt.type_size,
        )

    # -- compute ---------------------------------------------------------------------------
    @_device_op
    def embed(self, table: DeviceEmbedding, ids: np.ndarray) -> Any:
        if self._step is not None:  # the token is in device memory (graph replay)
            out = cp.empty((1, table.n_embd), dtype=cp.float32)
            self._fn("embed_" + KERNEL_SUFFIX[table.type_id])(
                (1,), (256,), (table.raw, np.int64(table.row_bytes), self._step.tok_d, out, np.int32(table.n_embd))
            )
            return out
        if self._prompt is not None:  # a prompt graph: ids (padded to its bucket) on the device
            p = self._prompt
            out = cp.empty((p.bucket, table.n_embd), dtype=cp.float32)
            self._fn("embed_" + KERNEL_SUFFIX[table.type_id])(
                (p.bucket,), (256,), (table.raw, np.int64(table.row_bytes), p.ids, out, np.int32(table.n_embd))
            )
            return out
        ids_h = np.asarray(ids, dtype=np.int64).reshape(-1)
        if ids_h.size and (ids_h.min() < 0 or ids_h.max() >= table.rows):
            raise IndexError(f"token id out of range 0..{table.rows - 1}")
        n = int(ids_h.size)
        out = cp.empty((n, table.n_embd), dtype=cp.float32)
        if n:
            ids_d = cp.asarray(ids_h.astype(np.int32))
            self._fn("embed_" + KERNEL_SUFFIX[table.type_id])(
                (n,), (256,), (table.raw, np.int64(table.row_bytes), ids_d, out, np.int32(table.n_embd))
            )
        return out

    def _round_activations(self, x: Any, act_type: str) -> tuple[Any, Any]:
        """(xq, s): x rounded through act_type (float32, x's shape); s = q8_1 block sums
        [n, k/32] or None. The last result is memoized (q, k, v share one input)."""
        if act_type == "f32":
            return x, None
        memo = self._memo
        if memo is not None and memo[0] is x and memo[1] == act_type:
            return memo[2], memo[3]
        n, k = x.shape
        total = n * k
        xq = cp.empty_like(x)
        s = None
        if act_type in ("q8_0", "q8_1"):
            if k % 32:
                raise ValueError(f"activation row length {k} is not a multiple of the {act_type} block size 32")
            nblocks = total // 32
            s = cp.empty((n, k // 32), dtype=cp.float32) if act_type == "q8_1" else None
            self._fn("act_q8_32")(
                ((total + 255) // 256,),
                (256,),
                (x, xq, s if s is not None else self._dummy, np.int64(nblocks), np.int32(s is not None)),
            )
        elif act_type == "q8_k":
            if k % 256:
                raise ValueError(f"activation row length {k} is not a multiple of the q8_k block size 256")
            self._fn("act_q8_k")((total // 256,), (256,), (x, xq))
        elif act_type in ("f16", "bf16"):
            self._fn("act_" + act_type)(((total + 255) // 256,), (256,), (x, xq, np.int64(total)))
        else:
            raise ValueError(f"unknown activation type {act_type!r}")
        self._memo = (x, act_type, xq, s)
        return xq, s

    @_device_op
    def linear(self, x: Any, w: DeviceMatrix, bias: Any | None = None) -> Any:
        x = self._f32(x)
        if x.ndim != 2 or x.shape[1] != w.n_in:
            raise ValueError(f"linear {w.name}: input shape {tuple(x.shape)} does not match [n, {w.n_in}]")
        n = x.shape[0]
        xq, s = self._round_activations(x, w.act_type)
        if n == 1:
            y = cp.empty((1, w.n_out), dtype=cp.float32)
            self._fn("matvec_" + w.suffix)(
                ((w.n_out * 32 + 255) // 256,),
                (256,),
                (
                    w.raw,
                    np.int64(w.row_bytes),
                    xq,
                    s if s is not None else self._dummy,
                    y,
                    np.int32(w.n_out),
                    np.int32(w.n_in),
                ),
            )
        else:
            y = self._gemm(xq, s, w)
        if bias is not None:
            y += bias
        return y

    def _gemm(self, xq: Any, s: Any, w: DeviceMatrix) -> Any:
        """xq [n, k] @ W.T by row chunks: dequantize a chunk, then a GEMM. Block formats and F16:
        split float16 GEMMs on tensor cores (prefill.cu); F32 / BF16 weights (whose values may
        lie beyond float16's range): float32 SGEMM. Q4_1/Q5_1: W without its block minimums,
        plus s @ M.T (ggml's q8_1 form)."""
        n, k = xq.shape
        q81 = w.type_id in Q8_1_TYPES
        fmt = get_format(w.type_id)
        split = w.suffix not in ("f32", "bf16")
        chunk = max(1, min(w.n_out, SCRATCH_ELEMS // max(1, w.n_in)))
        y = None if chunk >= w.n_out else cp.empty((n, w.n_out), dtype=cp.float32)
        dequant = self._fn(("dequant_split_" if split else "dequant_") + w.suffix)
        if split:
            xs = cp.empty((n, 2 * k), dtype=cp.float16)
            rs = cp.empty(n, dtype=cp.float32)
            self._fn("split_rows_f16")((n,), (256,), (xq, xs, rs, np.int32(k)))
        for r0 in range(0, w.n_out, chunk):
            rows = min(chunk, w.n_out - r0)
            src = w.raw[r0 * w.row_bytes :]
            wd = cp.empty((rows, 3 * w.n_in if split else w.n_in), dtype=cp.float16 if split else cp.float32)
            total = rows * w.n_in
            dequant(
                ((total + 255) // 256,),
                (256,),
                (src, np.int64(w.row_bytes), wd, np.int32(rows), np.int32(w.n_in), np.int32(not q81)),
            )
            if split:
                part = cp.empty((n, rows), dtype=cp.float32)
                # wd = [Whi | Wlo | Whi]: Xhi Whi^T, then += ([Xhi | Xlo] [Wlo | Whi]^T) / 2048
                _gemm_f16(part, xs, wd, k, 1.0, 0.0)
                _gemm_f16(part, xs, wd[:, k:], 2 * k, 1.0 / 2048, 1.0)
                self._fn("scale_rows")(
                    ((n * rows + 255) // 256,), (256,), (part, rs, np.int64(rows), np.int64(n * rows))
                )
            else:
                part = cp.matmul(xq, wd.T)
            del wd
            if q81:
                nb = w.n_in // 32
                mins = cp.empty((rows, nb), dtype=cp.float32)
                self._fn("block_mins")(
                    ((rows * nb + 255) // 256,),
                    (256,),
                    (src, np.int64(w.row_bytes), np.int32(fmt.type_size), mins, np.int32(rows), np.int32(nb)),
                )
                part += cp.matmul(s, mins.T)
            if y is None:
                return part
            y[:, r0 : r0 + rows] = part
        return y

    @_device_op
    def rms_norm(self, x: Any, weight: Any, eps: float) -> Any:
        x = self._f32(x)
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        out = cp.empty_like(x2)
        self._fn("rms_norm")((x2.shape[0],), (256,), (x2, weight, out, np.int32(shape[-1]), np.float32(eps)))
        return out.reshape(shape)

    @_device_op
    def rope(self, x: Any, positions: np.ndarray, cfg: ModelConfig) -> Any:
        x = self._f32(x)
        n, n_head, d = x.shape
        pos = np.asarray(positions, dtype=np.int64).reshape(-1)
        if len(pos) != n:
            raise ValueError(f"rope: {len(pos)} positions for {n} rows")
        if cfg.rope_style == "none":
            return x
        out = cp.empty_like(x)
        if n == 0:
            return out
        if cfg.rope_yarn:
            # YaRN: the reference's own float32 tables: rows of the model's device table
            # (_yarn_table) for consecutive positions it holds, else made and uploaded
            tab = self._rope_tabs.get(id(cfg))
            start = int(pos[0])
            if (tab is not None and tab[0] is cfg and start >= 0 and start + n <= tab[1]
                    and np.array_equal(pos, np.arange(start, start + n))):  # fmt: skip
                cos_d, sin_d = tab[2][start : start + n], tab[3][start : start + n]
            else:
                cos, sin = _yarn_tables(pos, cfg)
                cos_d = cp.asarray(np.ascontiguousarray(cos.reshape(n, -1)))
                sin_d = cp.asarray(np.ascontiguousarray(sin.reshape(n, -1)))
            self._fn("rope_table")(
                (n * n_head,),
                (64,),
                (
                    x,
                    out,
                    cos_d,
                    sin_d,
                    np.int32(n_head),
                    np.int32(d),
                    np.int32(cfg.rope_dim),
                    np.int32(cfg.rope_style == "neox"),
                ),
            )
            return out
        start = int(pos[0])
        contiguous = bool(np.array_equal(pos, np.arange(start, start + n)))
        pos_d = self._dummy_i if contiguous else cp.asarray(pos.astype(np.int32))
        theta_scale = np.float32(cfg.rope_base) ** np.float32(-2.0 / cfg.rope_dim)
        self._fn("rope")(
            (n * n_head,),
            (64,),
            (
                x,
                out,
                pos_d,
                np.int32(not contiguous),
                np.int32(start),
                np.int32(n_head),
                np.int32(d),
                np.int32(cfg.rope_dim),
                np.float32(theta_scale),
                np.int32(cfg.rope_style == "neox"),
            ),
        )
        return out

    def attention(self, q: Any, k: Any, v: Any, cache: KVCache, layer: int, start: int) -> Any:
        return self.attention_ext(q, k, v, cache, layer, start)

    @_device_op
    def attention_ext(
        self,
        q: Any,
        k: Any,
        v: Any,
        cache: KVCache,
        layer: int,
        start: int,
        *,
        kq_scale: float | None = None,
        sinks: Any | None = None,
        window: int = 0,
    ) -> Any:
        q = self._f32(q)
        n, n_head, d = q.shape
        n_kv = k.shape[1]
        end = start + n
        if end > cache.capacity:
            raise ValueError(f"KV cache overflow: position {end} > capacity {cache.capacity}")
        if d > 256 or n_head % n_kv:
            raise ValueError(f"attention: head_dim {d} > 256 or {n_head} heads not a multiple of {n_kv}")
        cache.k[layer, start:end] = k.astype(cp.float16)
        cache.v[layer, start:end] = v.astype(cp.float16)
        out = cp.empty((n, n_head * d), dtype=cp.float32)
        kl, vl = cache.k[layer], cache.v[layer]
        scale = np.float32(1.0 / np.sqrt(d) if kq_scale is None else kq_scale)
        sinks_d = self._dummy if sinks is None else self._f32(cp.asarray(sinks).reshape(-1))
        if sinks is not None and sinks_d.size != n_head:
            raise ValueError(f"attention: {sinks_d.size} sinks for {n_head} heads")
        if n > 1 and d in ATTN_PREFILL_D:
            # many queries: key/value tiles shared by a block of queries (prefill.cu)
            self._fn(f"attn_prefill_{d}")(
                (n_head, (n + 63) // 64),
                (128,),
                (q, kl, vl, out, np.int32(n), np.int32(n_head), np.int32(n_kv), np.int32(start), scale,
                 np.int32(window), sinks_d, np.int32(sinks is not None)),
            )  # fmt: skip
            return out
        chunk = max(1, min(n, SCRATCH_ELEMS // (n_head * end)))
        scores = cp.empty(chunk * n_head * end, dtype=cp.float32)
        fn = self._fn("attention")
        for q0 in range(0, n, chunk):
            nq = min(chunk, n - q0)
            fn(
                (n_head, nq),
                (ATT_THREADS,),
                (
                    q,
                    kl,
                    vl,
                    out,
                    scores,
                    np.int32(n_head),
                    np.int32(n_kv),
                    np.int32(d),
                    np.int32(start),
                    np.int32(q0),
                    np.int32(end),
                    scale,
                    np.int32(window),
                    sinks_d,
                    np.int32(sinks is not None),
                ),
            )
        return out

    @_device_op
    def swiglu(self, gate: Any, up: Any) -> Any:
        gate, up = self._f32(gate), self._f32(up)
        out = cp.empty_like(gate)
        total = int(gate.size)
        self._fn("swiglu")(((total + 255) // 256,), (256,), (gate, up, out, np.int64(total)))
        return out

    @_device_op
    def add(self, a: Any, b: Any) -> Any:
        a, b = self._f32(a), self._f32(b)
        if a.shape != b.shape:
            return a + b
        out = cp.empty_like(a)
        total = int(a.size)
        self._fn("add_f32")(((total + 255) // 256,), (256,), (a, b, out, np.int64(total)))
        return out

    @_device_op
    def scale(self, x: Any, s: float) -> Any:
        return self._f32(x) * np.float32(s)

    @_device_op
    def concat_rows(self, rows: list[Any]) -> Any:
        """Stack [1, d] rows (per-token MoE outputs) into [n, d], float32 on the device."""
        if not rows:
            raise ValueError("concat_rows: no rows")
        return cp.concatenate([self._f32(r).reshape(-1, r.shape[-1]) for r in rows], axis=0)

    @_device_op
    def layer_norm(self, x: Any, weight: Any, bias: Any, eps: float) -> Any:
        x = self._f32(x)
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        out = cp.empty_like(x2)
        self._fn("layer_norm")((x2.shape[0],), (256,), (x2, weight, bias, out, np.int32(shape[-1]), np.float32(eps)))
        return out.reshape(shape)

    @_device_op
    def gelu(self, x: Any) -> Any:
        x = self._f32(x)
        out = cp.empty_like(x)
        total = int(x.size)
        self._fn("gelu_table")(((total + 255) // 256,), (256,), (x, self._gelu_table, out, np.int64(total)))
        return out

    @_device_op
    def swiglu_oai(self, gate: Any, up: Any, alpha: float, limit: float) -> Any:
        gate, up = self._f32(gate), self._f32(up)
        out = cp.empty_like(gate)
        total = int(gate.size)
        self._fn("swiglu_oai")(
            ((total + 255) // 256,),
            (256,),
            (gate, up, out, np.int64(total), np.float32(alpha), np.float32(limit)),
        )
        return out

    # -- fused one-row steps (decode.cu) -----------------------------------------------------
    def _shared_input(self, x: Any, ws: list[Any]) -> bool:
        """Device weights of one input size and activation kind, x a matrix of rows of that size
        whose rounding blocks divide it and which fits the fused kernels' shared memory
        (load_act's layout): what the one-row (decode.cu) and many-row (prefill.cu) steps share."""
        return x.ndim == 2 and bool(ws) and x.shape[1] == getattr(ws[0], "n_in", -1) and self._fmv_fits(x.shape[1], ws)

    def _fmv_fits(self, k: int, ws: list[Any]) -> bool:
        """_shared_input for an input row of k floats."""
        if not ws or not all(isinstance(w, DeviceMatrix) for w in ws):
            return False
        act = ws[0].act_type
        if any(w.n_in != k or w.act_type != act for w in ws):
            return False
        if (act in ("q8_0", "q8_1") and k % 32) or (act == "q8_k" and k % 256):
            return False
        # the input's part, and (one-row steps) a ring slot per warp of the widest of gate +
        # up passes (mode 2: two per slot)
        types = tuple(w.type_id for w in ws)
        return fmv_plan(k, 2, 1, types, self._sm_count, self._fmv_smem_max) is not None

    def _fusable(self, x: Any, ws: list[Any]) -> bool:
        """One row; anything else takes the composed path (the base class's defaults)."""
        return self._shared_input(x, ws) and x.shape[0] == 1

    # -- fused many-row steps (prefill.cu) -----------------------------------------------------
    def _prefill_ok(self, x: Any, ws: list[Any]) -> bool:
        """Several rows, weights that the split float16 GEMMs take (not F32 / BF16: values may
        lie beyond float16's range; not an f32 or bf16 input), a scratch of bounded size: 3
        halves per weight, at most 1.5 x the float32 path's chunk."""
        return (
            self._shared_input(x, ws)
            and x.shape[0] >= 2
            and ws[0].act_type in ("q8_0", "q8_1", "q8_k", "f16")
            and not any(w.suffix in ("f32", "bf16") for w in ws)
            and sum(w.n_out for w in ws) * ws[0].n_in <= SCRATCH_ELEMS
        )

    def _prefill_products(self, x: Any, norm: Any | None, eps: float, ws: list[DeviceMatrix]) -> tuple[Any, Any]:
        """(y, rs): y [n, sum of n_out] = act(rms_norm(x)) @ [W0; W1; ..].T / rs, the row scale
        rs [n] still to apply (prefill_epilogue / prefill_swiglu do). act_split, one
        dequant_split per weight into one scratch, and one GEMM ([2048 hi | hi | lo] against
        [Whi | Wlo | Whi], prefill.cu); Q4_1 / Q5_1 add their block minimums' term
        (s / rs) @ M.T, float16 values both, in a second GEMM into the same result."""
        n, k = x.shape
        act = ws[0].act_type
        q81 = act == "q8_1"
        nb = k // 32
        xs = cp.empty((n, 3 * k), dtype=cp.float16)
        rs = cp.empty(n, dtype=cp.float32)
        sums = cp.empty((n, nb), dtype=cp.float16) if q81 else None
        self._fn("act_split_" + act)(
            (n,), (FMV_THREADS,),
            (x, NULL if norm is None else norm, np.float32(eps), np.int32(k), xs, rs, NULL if sums is None else sums),
            shared_mem=fmv_smem(k),
        )  # fmt: skip
        m = sum(w.n_out for w in ws)
        wd = cp.empty((m, 3 * k), dtype=cp.float16)
        mins = cp.empty((m, nb), dtype=cp.float16) if q81 else None
        r0 = 0
        for w in ws:
            total = w.n_out * k
            self._fn("dequant_split_" + w.suffix)(
                ((total + 255) // 256,), (256,),
                (w.raw, np.int64(w.row_bytes), wd[r0:], np.int32(w.n_out), np.int32(k), np.int32(not q81)),
            )  # fmt: skip
            if q81:
                self._fn("block_mins_h")(
                    ((w.n_out * nb + 255) // 256,), (256,),
                    (w.raw, np.int64(w.row_bytes), np.int32(get_format(w.type_id).type_size), mins[r0:],
                     np.int32(w.n_out), np.int32(nb)),
                )  # fmt: skip
            r0 += w.n_out
        y = cp.empty((n, m), dtype=cp.float32)
        blas = self._prompt.blas if self._prompt is not None else None
        _gemm_f16(y, xs, wd, 3 * k, 1.0 / 2048, 0.0, blas)
        if q81:
            _gemm_f16(y, sums, mins, nb, 1.0, 1.0, blas)
        return y, rs

    def _prefill_epilogue(
        self, y: Any, rs: Any, biases: list[Any | None], splits: list[int], resid: Any = None
    ) -> None:
        b = [self._bias(x) for x in biases] + [None] * (3 - len(biases))
        ns = splits + [0] * (2 - len(splits))
        total = int(y.size)
        self._fn("prefill_epilogue")(
            ((total + 255) // 256,), (256,),
            (y, np.int64(y.shape[1]), np.int64(total), rs, b[0] if b[0] is not None else NULL, np.int32(ns[0]),
             b[1] if b[1] is not None else NULL, np.int32(ns[1]), b[2] if b[2] is not None else NULL,
             NULL if resid is None else resid),
        )  # fmt: skip

    @_device_op
    def norm_linears(self, x: Any, norm: Any, eps: float, ws: list[Any], biases: list[Any | None]) -> list[Any]:
        x = self._f32(x)
        if len(ws) <= 3 and self._prefill_ok(x, ws):
            y, rs = self._prefill_products(x, norm, eps, ws)
            self._prefill_epilogue(y, rs, biases, [w.n_out for w in ws[:2]])
            outs, c = [], 0
            for w in ws:
                outs.append(y[:, c : c + w.n_out])
                c += w.n_out
            return outs
        if not self._fusable(x, ws) or len(ws) > 3:
            return super().norm_linears(x, norm, eps, ws, biases)
        outs = [cp.empty((1, w.n_out), dtype=cp.float32) for w in ws]
        segs = [(w.raw, w.row_bytes, w.type_id, w.n_out) for w in ws]
        self._fmv_launch(x, norm, eps, 0, segs, [self._bias(b) for b in biases], outs, ws[0].act_type)
        return outs

    @_device_op
    def linear_add(self, x: Any, w: Any, residual: Any, bias: Any | None = None) -> Any:
        x = self._f32(x)
        residual = self._f32(residual)
        if bias is None and self._prefill_ok(x, [w]) and residual.shape == (x.shape[0], w.n_out):
            y, rs = self._prefill_products(x, None, 0.0, [w])
            self._prefill_epilogue(y, rs, [], [], cp.ascontiguousarray(residual))
            return y
        if not self._fusable(x, [w]) or residual.shape != (1, w.n_out):
            return super().linear_add(x, w, residual, bias)
        y = cp.empty((1, w.n_out), dtype=cp.float32)
        pre, self._rounded = self._rounded, None
        # (x is that output itself, or a view of all of it: _f32 may return either)
        if pre is not None and (pre[0].data.ptr != x.data.ptr or pre[0].shape != x.shape or not _takes_q8k(w)):
            pre = None
        self.rounded_taken += pre is not None
        self._fmv_launch(x, None, 0.0, 1, [(w.raw, w.row_bytes, w.type_id, w.n_out)], [self._bias(bias)], [y],
                         w.act_type, residual, pre=None if pre is None else pre[1:])  # fmt: skip
        return y

    @_device_op
    def norm_swiglu(
        self, x: Any, norm: Any, eps: float, w_gate: Any | None, w_up: Any, round_for: Any | None = None
    ) -> Any:
        x = self._f32(x)
        self._rounded = None
        ws = [w_up] if w_gate is None else [w_gate, w_up]
        if self._prefill_ok(x, ws) and (w_up.n_out % 2 == 0 if w_gate is None else w_gate.n_out == w_up.n_out):
            gu, rs = self._prefill_products(x, norm, eps, ws)
            ff = gu.shape[1] // 2
            out = cp.empty((x.shape[0], ff), dtype=cp.float32)
            total = int(out.size)
            self._fn("prefill_swiglu")(
                ((total + 255) // 256,), (256,),
                (gu, rs, out, np.int32(ff), np.int64(total)),
            )  # fmt: skip
            return out
        if not self._fusable(x, ws) or (w_gate is None and w_up.n_out % 2):
            return super().norm_swiglu(x, norm, eps, w_gate, w_up)
        if w_gate is None:  # phi3: gate rows then up rows of one matrix
            half = w_up.n_out // 2
            segs = [(w_up.raw, w_up.row_bytes, w_up.type_id, half),
                    (w_up.raw[half * w_up.row_bytes :], w_up.row_bytes, w_up.type_id, half)]  # fmt: skip
        else:
            if w_gate.n_out != w_up.n_out:
                return super().norm_swiglu(x, norm, eps, w_gate, w_up)
            half = w_up.n_out
            segs = [(w.raw, w.row_bytes, w.type_id, half) for w in (w_gate, w_up)]
        y = cp.empty((1, half), dtype=cp.float32)
        rnd = None
        # (not in a prompt graph: one row of a prompt, and its small buffers would split the
        # graphs' large pool blocks)
        if (round_for is not None and self._round_once and self._prompt is None and _takes_q8k(round_for)
                and round_for.n_in == half and half % 256 == 0 and half <= ROUND_MAX):  # fmt: skip
            # y rounded once here for the down projection (decode.cu's round_output / load_pre)
            nsb = half // 256
            step = self._step
            cnt = step.round_cnt if step is not None else self._round_cnt
            rnd = (cp.empty(half, dtype=cp.int8), cp.empty(8 * nsb, dtype=cp.float32),
                   cp.empty(8 * nsb, dtype=cp.int32), cnt)  # fmt: skip
        self._fmv_launch(x, norm, eps, 2, segs, [None, None], [y], w_up.act_type, rnd=rnd)
        self._rounded = None if rnd is None else (y, *rnd[:3])
        return y

    def _bias(self, b: Any | None) -> Any | None:
        return None if b is None else self._f32(b)

    def _plan(
        self, k: int, mode: int, segs: list[tuple[Any, int, int, int]], total: int, slots: int = 1
    ) -> FmvPlan | None:
        """fmv_plan for a product of k columns over these weights (raw, row bytes, type, rows)."""
        # rows of each weight back to back, whole blocks: several rows per warp may be staged
        # as one run of bytes (fmv_plan's seg_rows)
        whole = all(rb * get_format(t).block_size == k * get_format(t).type_size for _, rb, t, _ in segs)
        # (sized for the rows of up to 4 slots, which share the multiprocessors: more slots
        # than that fill a wave by themselves)
        return fmv_plan(k, mode, total * min(slots, 4), tuple(sg[2] for sg in segs), self._sm_count, self._fmv_smem_max,
                        self._fmv_bps_for.get((mode, k, total), self._fmv_blocks_per_sm), self._smem_per_sm,
                        tuple(sg[3] for sg in segs) if whole else (), *self._fmv_caps)  # fmt: skip

    def _fmv_launch(
        self, x: Any, norm: Any | None, eps: float, mode: int, segs: list[tuple[Any, int, int, int]],
        biases: list[Any | None], outs: list[Any], act: str, resid: Any | None = None,
        rnd: tuple[Any, ...] | None = None, pre: tuple[Any, ...] | None = None,
        experts: ExpertSlots | None = None, oai: tuple[float, float] | None = None,
    ) -> None:
        """rnd (modes 2 / 3): (int8 values, scales, sums, counters) to round the output into, as
        q8_K; pre: (int8 values, scales, sums) of the input rounded so by the kernel before.
        experts: one grid row of blocks per slot, each taking its expert's weights and biases
        (ids in device memory); oai (modes 2 / 3): gpt-oss's clamped SwiGLU (alpha, limit) on
        gate + bias and up + bias, in place of SiLU(gate) * up."""
        k = int(x.shape[1])
        total = segs[0][3] if mode else sum(sg[3] for sg in segs)
        slots = experts.slots if experts is not None else 1
        plan = self._plan(k, mode, segs, total, slots)
        if plan is None:  # _shared_input checked the input's part; a ring slot did not fit
            raise RuntimeError(f"fused product of {k} columns does not fit shared memory")
        grid = plan.grid if slots == 1 else -(-total // (FMV_WARPS // plan.wpr * plan.rpw * plan.iters))
        nw = NULL if norm is None else norm
        args: list[Any] = [
            x, nw, np.float32(eps), np.int32(k), np.int32(plan.mode), np.int32(plan.iters), np.int32(plan.wpr),
            np.int32(plan.rpw), np.int32(plan.per), np.int32(plan.nst), np.int32(plan.pass_bytes),
        ]  # fmt: skip
        for i in range(3):
            if i < len(segs):
                raw, rb, t, n = segs[i]
                b = biases[i] if i < len(biases) and biases[i] is not None else NULL
                y = outs[i] if i < len(outs) else NULL
                args += [raw, np.int64(rb), np.int32(t), np.int32(n), b, y]
            else:
                args += [NULL, np.int64(0), np.int32(-1), np.int32(0), NULL, NULL]
        args.append(NULL if resid is None else resid)
        args += list(rnd) if rnd is not None else [NULL] * 4
        args += list(pre) if pre is not None else [NULL] * 3
        if experts is None:
            args += [NULL, np.int64(0), np.int64(0), np.int32(0), np.int32(1), np.int32(0)]
        else:
            args += [experts.ids, np.int64(experts.w_stride), np.int64(experts.b_stride), np.int32(experts.x_stride),
                     np.int32(experts.x_div), np.int32(experts.y_stride)]  # fmt: skip
        args += [np.float32(oai[0] if oai else 0.0), np.float32(oai[1] if oai else 0.0)]
        self._launch_dep("fmv_" + act, grid, FMV_THREADS, tuple(args), plan.smem, grid_y=slots)

    def _yarn_table(self, cfg: ModelConfig, need: int) -> tuple[Any, Any] | None:
        """YaRN RoPE's cos and sin [position, rope_dim / 2] on the device, the reference's own
        float32 values (numpy_backend._yarn_tables), for the model's whole context: attn_decode
        reads a row by the position in device memory. Made once per model (first use; 256 bytes
        a position at rope_dim 64) and kept, like a weight: recorded steps hold its address.
        None when `need` positions are past it and no new one may be made here (a capture)."""
        tab = self._kept_rope_table(cfg, need)
        if tab is not None or (self._step is not None and self._step.capturing):
            return tab
        n = max(need, cfg.context_length)
        cos, sin = _yarn_tables(np.arange(n), cfg)
        # from the default pool, not a decoder's (whose blocks go when it closes); complete
        # before any stream reads it
        with cp.cuda.using_allocator(self._pool.malloc):
            cos_d = cp.asarray(np.ascontiguousarray(cos.reshape(n, -1), dtype=np.float32))
            sin_d = cp.asarray(np.ascontiguousarray(sin.reshape(n, -1), dtype=np.float32))
        cp.cuda.get_current_stream().synchronize()
        return self._keep_rope_table(cfg, cos_d, sin_d, "rope_yarn")

    def _keep_rope_table(self, cfg: ModelConfig, cos_d: Any, sin_d: Any, name: str) -> tuple[Any, Any]:
        """Keep a model's cos / sin table [position, rope_dim / 2] like a weight (recorded steps
        hold its address; a replaced table stays too, since graphs may use it)."""
        for part, arr in (("cos", cos_d), ("sin", sin_d)):
            self._register_weight(f"{name}.{part}", arr)
        self._rope_tabs[id(cfg)] = (cfg, int(cos_d.shape[0]), cos_d, sin_d)
        return cos_d, sin_d

    def _kept_rope_table(self, cfg: ModelConfig, need: int = 0) -> tuple[Any, Any] | None:
        """The model's kept table, if it holds `need` positions."""
        tab = self._rope_tabs.get(id(cfg))
        return (tab[2], tab[3]) if tab is not None and tab[0] is cfg and tab[1] >= need else None

    def _rope_table(self, cfg: ModelConfig, make: int) -> tuple[Any, Any]:
        """Plain RoPE's cos and sin [position, rope_dim / 2] on the device, computed by the
        function attn_decode would otherwise run at every step (rope_cs_table: the same bits), so
        a step reads a row instead of taking cos and sin in double precision of an angle made
        by up to rope_dim / 2 multiplications. Made (prepare) for `make` positions unless a kept
        one holds them, and kept (4 * rope_dim bytes a position: 8 MiB for Qwen2.5-0.5B's
        32,768)."""
        tab = self._kept_rope_table(cfg, make)
        if tab is None:
            half = cfg.rope_dim // 2
            with cp.cuda.using_allocator(self._pool.malloc):
                cos_d = cp.empty((make, half), dtype=cp.float32)
                sin_d = cp.empty((make, half), dtype=cp.float32)
            theta_scale = np.float32(cfg.rope_base) ** np.float32(-2.0 / cfg.rope_dim)
            total = make * half
            self._fn("rope_cs_table")(
                (-(-total // 256),), (256,), (cos_d, sin_d, np.int32(make), np.int32(half), np.float32(theta_scale))
            )
            cp.cuda.get_current_stream().synchronize()
            tab = self._keep_rope_table(cfg, cos_d, sin_d, "rope")
        return tab

    def _att_setup(
        self, q: Any, k: Any, v: Any, cache: KVCache, layer: int, start: int, cfg: ModelConfig,
        q_scale: float | None, kq_scale: float | None, sinks: Any | None, window: int,
    ) -> tuple[tuple[Any, ...], tuple[Any, ...]] | None:
        """The attention arguments of attn_decode and attn_out_* for one query row at position start
        (in a recorded step: the step's position): ((q, k, v, K cache, V cache), (position, start,
        n_head, ... sinks)). None for a shape no device-position kernel takes."""
        n, n_head, d = q.shape
        n_kv = k.shape[1]
        yarn = cfg.rope_yarn
        step = self._step
        table = None
        need = max(start + 1, step.max_positions if step is not None else 0)
        if yarn and n == 1 and cfg.rope_style != "none":
            table = self._yarn_table(cfg, need)
        elif n == 1 and cfg.rope_style != "none" and self._rope_tables:
            # (none, or positions past it: the kernels compute cos and sin themselves)
            table = self._kept_rope_table(cfg, need)
        # (attn_decode: rows of up to 256, a RoPE pair a thread)
        if not (n == 1 and (table is not None or not yarn) and d <= 256 and n_head % n_kv == 0
                and (cfg.rope_style == "none" or cfg.rope_dim <= 2 * ATT_THREADS)
                and not (sinks is not None and q_scale is not None)):  # fmt: skip
            return None
        if start + 1 > cache.capacity:
            raise ValueError(f"KV cache overflow: position {start + 1} > capacity {cache.capacity}")
        sinks_d = NULL if sinks is None else self._f32(cp.asarray(sinks).reshape(-1))
        if sinks is not None and sinks_d.size != n_head:
            raise ValueError(f"attention: {sinks_d.size} sinks for {n_head} heads")
        if step is not None:  # the cache's place comes from step.kv_d at replay
            pos, kv, kc, vc = step.pos_d, step.kv_d, NULL, NULL
        else:
            pos, kv, kc, vc = NULL, NULL, cache.k[layer], cache.v[layer]
        style = {"none": 0, "normal": 1, "neox": 2}[cfg.rope_style]
        theta_scale = np.float32(cfg.rope_base) ** np.float32(-2.0 / cfg.rope_dim)
        # phi3 (q_scale): Q is scaled after RoPE and Q.K not again
        scale = 1.0 if q_scale is not None else 1.0 / np.sqrt(d) if kq_scale is None else kq_scale
        rcos, rsin = table if table is not None else (NULL, NULL)
        return (self._f32(q), self._f32(k), self._f32(v), kc, vc), (
            pos, np.int32(start), np.int32(n_head), np.int32(n_kv), np.int32(d), np.int32(cfg.rope_dim),
            np.float32(theta_scale), np.int32(style), np.float32(q_scale or 0.0), np.int32(q_scale is not None),
            np.float32(scale), np.int32(window), kv, np.int32(layer), rcos, rsin, sinks_d,
        )  # fmt: skip

    @_device_op
    def rope_attention(
        self, q: Any, k: Any, v: Any, cache: KVCache, layer: int, start: int, cfg: ModelConfig,
        *, q_scale: float | None = None, kq_scale: float | None = None, sinks: Any | None = None,
        window: int = 0,
    ) -> Any:
        step = self._step
        setup = self._att_setup(q, k, v, cache, layer, start, cfg, q_scale, kq_scale, sinks, window)
        if setup is None:
            if step is not None and step.capturing:
                # the composed path takes the position from the host: a graph would freeze it
                raise RuntimeError("rope_attention: this shape has no device-position kernel")
            return super().rope_attention(q, k, v, cache, layer, start, cfg, q_scale=q_scale, kq_scale=kq_scale,
                                          sinks=sinks, window=window)  # fmt: skip
        qkv, rest = setup
        n_head, d = q.shape[1], q.shape[2]
        if step is not None:
            stride, scores = step.max_positions, step.scores
        else:
            stride = start + 1
            scores = cp.empty(n_head * stride, dtype=cp.float32)
        out = cp.empty((1, n_head * d), dtype=cp.float32)
        self._launch_dep("attn_decode", n_head, ATT_THREADS, (*qkv, out, scores, np.int32(stride), *rest))
        return out

    @_device_op
    def attention_output(
        self, q: Any, k: Any, v: Any, cache: KVCache, layer: int, start: int, cfg: ModelConfig, wo: Any,
        residual: Any, *, q_scale: float | None = None, bias: Any | None = None,
    ) -> Any:
        """One launch while the context is short (attn_out_*, decode.cu: a cluster of n_head
        blocks per chunk of O's rows, a block a head): at most att_o_max positions (a recorded
        step: the variant the decoder replays up to there, step.fuse_att). Otherwise, or for a
        shape it does not take (no sm_90 launcher, more than 16 heads, a head size not a
        multiple of 32 or over 256, an output projection without 32-element input blocks),
        attn_decode and fmv_*: the same values within float32 rounding of a row's sums."""
        step = self._step
        n, n_head, d = q.shape
        residual = self._f32(residual)
        if (n == 1 and (step.fuse_att if step is not None else start + 1 <= self._att_o_max) and self._att_o_ok
                and self._ex is not None and n_head <= 16 and d % 32 == 0 and d <= 256
                and n_head % k.shape[1] == 0 and getattr(wo, "type_id", -1) in ATT_O_CLUSTER_TYPES
                and wo.n_in == n_head * d and residual.shape == (1, wo.n_out)):  # fmt: skip
            y = self._attention_output_cluster(q, k, v, cache, layer, start, cfg, wo, residual, q_scale, bias)
            if y is not None:
                return y
        attn = self.rope_attention(q, k, v, cache, layer, start, cfg, q_scale=q_scale)
        return self.linear_add(attn, wo, residual, bias)

    def _attention_output_cluster(
        self, q: Any, k: Any, v: Any, cache: KVCache, layer: int, start: int, cfg: ModelConfig, wo: Any,
        residual: Any, q_scale: float | None, bias: Any | None,
    ) -> Any | None:
        """attention_output's launch of attn_out_*, or None (for attn_decode and fmv_*) where
        the attention has no device-position kernel or the scratch does not fit."""
        n_head, d = q.shape[1], q.shape[2]
        # (the programmatic attribute as every decode launch has it, unless switched off)
        launcher = self._pdl if self._pdl is not None else self._ex
        setup = self._att_setup(q, k, v, cache, layer, start, cfg, q_scale, None, None, 0)
        if setup is None or launcher is None:
            return None
        chunks = self._att_o_chunks or ATT_O_CHUNKS
        rpc = -(-wo.n_out // chunks)
        chunks = -(-wo.n_out // rpc)
        # scores for att_o_max positions (not this step's: an eager step and the recorded one
        # then launch alike), the partial sums a block receives, the chunk's rows' units staged
        # in odd 16-byte granule counts (decode.cu's stride)
        smax = -(-self._att_o_max // 4) * 4
        unit = get_format(wo.type_id).type_size
        stride = 16 * (((d // 32 * unit + 30) // 16) | 1)
        inbox = n_head * -(-rpc // n_head)  # decode.cu's C * per partial sums
        smem = 4 * smax + 4 * (-(-inbox // 4) * 4) + rpc * stride
        if smem > self._fmv_smem_max:
            return None
        qkv, rest = setup
        y = cp.empty((1, wo.n_out), dtype=cp.float32)
        b = NULL if bias is None else self._bias(bias)
        args = (*qkv, *rest, wo.raw, np.int64(wo.row_bytes), np.int32(wo.type_id), np.int32(wo.n_out),
                np.int32(rpc), b, y, residual, np.int32(smax))  # fmt: skip
        f = self._fn("attn_out_" + wo.act_type)
        try:
            launcher(getattr(f, "kernel", f).ptr, n_head, ATT_THREADS, args, smem, cp.cuda.get_current_stream().ptr,
                     chunks, cluster=n_head)  # fmt: skip
        except RuntimeError as exc:  # a driver that refuses the cluster: the other paths from now on
            log.warning("attention and O by clusters unavailable, taking them apart: %s", exc)
            self._att_o_ok = False
            return None
        self._rounded = None
        self.att_o_fused += 1
        return y

    @_device_op
    def norm_moe(self, x: Any, norm: Any, eps: float, moe: MoE) -> Any:
        """No copy to the host, five launches for up to MOE_CHUNK tokens: the router's product
        (with the norm), moe_route (a warp a token: top-k and their softmax weights, into
        device memory), gate and up of every chosen expert with the clamped SwiGLU (one fmv
        launch, a row of blocks per token and expert), their down products (likewise), and
        moe_combine (the weighted sum in the reference's order, plus x). Anything else: the
        base class's host routing."""
        x = self._f32(x)
        if not self._moe_fusable(x, moe):
            if self._step is not None and self._step.capturing:
                raise RuntimeError("norm_moe: this shape has no device-routing kernel")
            return super().norm_moe(x, norm, eps, moe)
        self.moe_on_device += 1
        n = x.shape[0]
        if n > MOE_CHUNK:
            return cp.concatenate([self.norm_moe(x[t : t + MOE_CHUNK], norm, eps, moe) for t in range(0, n, MOE_CHUNK)])
        g0, u0, d0 = moe.gate[0], moe.up[0], moe.down[0]
        kk, n_exp, ff, e = moe.n_used, len(moe.gate), g0.n_out, d0.n_out
        slots = n * kk
        (logits,) = self.norm_linears(x, norm, eps, [moe.router], [moe.router_b])
        logits = cp.ascontiguousarray(logits)
        ids = cp.empty(slots, dtype=cp.int32)
        wts = cp.empty(slots, dtype=cp.float32)
        self._launch_dep("moe_route", n, 32, (logits, np.int32(n_exp), np.int32(kk), ids, wts))
        act = cp.empty((slots, ff), dtype=cp.float32)
        gu = ExpertSlots(ids, slots, g0.n_out * g0.row_bytes, ff, e, ff, x_div=kk)
        segs = [(g0.raw, g0.row_bytes, g0.type_id, ff), (u0.raw, u0.row_bytes, u0.type_id, ff)]
        self._fmv_launch(x, norm, eps, 2, segs, [self._bias(moe.gate_b), self._bias(moe.up_b)], [act], g0.act_type,
                         experts=gu, oai=(moe.alpha, moe.limit))  # fmt: skip
        y = cp.empty((slots, e), dtype=cp.float32)
        dn = ExpertSlots(ids, slots, d0.n_out * d0.row_bytes, e, ff, e)
        self._fmv_launch(act, None, 0.0, 0, [(d0.raw, d0.row_bytes, d0.type_id, e)], [self._bias(moe.down_b)], [y],
                         d0.act_type, experts=dn)  # fmt: skip
        out = cp.empty((n, e), dtype=cp.float32)
        self._launch_dep("moe_combine", -(-e // 256), 256, (y, wts, x, out, np.int32(e), np.int32(kk)), grid_y=n)
        return out

    def _moe_fusable(self, x: Any, moe: MoE) -> bool:
        """Rows of x; the experts' weights back to back in one buffer per tensor (experts()), of
        kinds the fused products take; biases of every expert; at most 256 experts, 8 of them
        a token (moe_route)."""
        if x.ndim != 2 or x.shape[0] < 1 or not 1 <= moe.n_used <= min(8, len(moe.gate)) or len(moe.gate) > 256:
            return False
        mats = (moe.gate, moe.up, moe.down)
        if not all(isinstance(m, list) and len(m) == len(moe.gate) and all(isinstance(w, DeviceMatrix) for w in m)
                   for m in mats):  # fmt: skip
            return False
        for m in mats:
            size = m[0].n_out * m[0].row_bytes
            if any(w.raw.data.ptr != m[0].raw.data.ptr + i * size for i, w in enumerate(m)):
                return False
        g0, u0, d0 = moe.gate[0], moe.up[0], moe.down[0]
        ff = g0.n_out
        if u0.n_out != ff or u0.n_in != g0.n_in or d0.n_in != ff or d0.n_out != x.shape[1]:
            return False
        for b, n_out in ((moe.gate_b, ff), (moe.up_b, ff), (moe.down_b, d0.n_out)):
            if b is None or int(b.size) != len(moe.gate) * n_out:
                return False
        return (self._shared_input(x, [moe.router]) and self._shared_input(x, [g0, u0])
                and self._fmv_fits(ff, [d0]))  # fmt: skip

    def argmax_into(self, logits: Any, next_d: Any, tok_d: Any | None = None, pos_d: Any | None = None) -> None:
        """next_d[0] = argmax(logits) on the device (np.argmax's ties and NaN); a replayed step
        also sets tok_d (its next input) and advances pos_d."""
        n = int(logits.size)
        blocks = max(1, min(2 * self._sm_count, -(-n // 1024)))
        chunk = -(-n // blocks)
        pv = cp.empty(blocks, dtype=cp.float32)
        pi = cp.empty(blocks, dtype=cp.int32)
        self._launch_dep("argmax_partial", blocks, 256, (logits, np.int32(n), np.int32(chunk), pv, pi))
        self._launch_dep(
            "argmax_step", 1, 256,
            (pv, pi, np.int32(blocks), next_d, NULL if tok_d is None else tok_d, NULL if pos_d is None else pos_d),
        )  # fmt: skip

    def decoder(self, adapter: Any, cache: KVCache) -> Any:
        if getattr(adapter, "capturable", False) and os.environ.get("WORKER_CUDA_GRAPHS", "1") != "0":
            shared = self._shared_decoders.get(id(adapter))
            if shared is not None and not shared.busy and cache.capacity <= shared.max_positions:
                shared.busy = True
                shared.bind(cache)
                return shared
            dec = GraphDecoder(self, adapter, cache)
            self._decoders.add(dec)
            return dec
        return super().decoder(adapter, cache)

    def experts(self, f: GGUFFile, name: str) -> list[DeviceMatrix]:
        """[n_expert, out, in] uploaded once; one DeviceMatrix view per expert."""
        info = self._info(f, name)
        if len(info.shape) != 3:
            raise GGUFError(f.path, f"tensor {name!r}: expected 3 dimensions, found shape {list(info.shape)}")
        fmt = get_format(info.type_id)
        if info.type_id not in KERNEL_SUFFIX:
            raise UnsupportedQuantType(f"{fmt.name}: no CUDA kernel for this type")
        n_in, n_out, n_exp = (int(d) for d in info.shape)
        raw = self._upload_raw(f, name)
        row_bytes = n_in // fmt.block_size * fmt.type_size
        size = n_out * row_bytes
        return [
            DeviceMatrix(
                name=f"{name}[{e}]",
                raw=raw[e * size : (e + 1) * size],
                type_id=int(info.type_id),
                n_out=n_out,
                n_in=n_in,
                row_bytes=row_bytes,
                act_type=fmt.act_type,
            )
            for e in range(n_exp)
        ]

    def linear_expert(self, x: Any, w: list[DeviceMatrix], expert: int, bias: Any | None = None) -> Any:
        return self.linear(x, w[expert], None if bias is None else bias.reshape(len(w), -1)[expert])

    def last_row(self, x: Any) -> Any:
        if self._prompt is None:
            return x[-1:]
        out = cp.empty((1, x.shape[1]), dtype=cp.float32)  # the prompt's last row, not the padding's
        self._fn("take_row")((1,), (256,), (self._f32(x), self._prompt.n, out, np.int32(x.shape[1])))
        return out

    # -- prompt graphs (prompt_graphs.py) ----------------------------------------------------------
    def prepare(self, adapter: Any, max_len: int) -> None:
        """Make the model's RoPE table (_yarn_table, _rope_table). Record, and reserve the memory
        of, the adapter's decode step (one GraphDecoder lent to one job at a time) and its prompt
        graphs (lengths 2..min(max_len, 512)). Without
        them (capture failed, too little memory, a non-capturable adapter,
        WORKER_CUDA_GRAPHS=0 / WORKER_CUDA_PROMPT_GRAPHS=0) a job records its own decode step
        and runs its prompt eagerly, with the same kernels."""
        cfg = getattr(adapter, "cfg", None)
        if isinstance(cfg, ModelConfig) and cfg.rope_style != "none":
            with self._device:  # at load, not at a job's first token: its memory is the model's
                if cfg.rope_yarn:
                    self._yarn_table(cfg, max_len)
                else:
                    self._rope_table(cfg, make=max_len)
        if not getattr(adapter, "capturable", False):
            return
        if os.environ.get("WORKER_CUDA_GRAPHS", "1") != "0":
            self._prepare_decoder(adapter, max_len)
        if prompt_graphs_enabled() and getattr(adapter, "prompt_capturable", False):
            self._prepare_prompts(adapter, max_len)
        if self.memory_limit is not None:  # the default pool's share of the limit shrinks by them
            with self._device:
                self._pool.set_limit(size=max(1, self.memory_limit - self._reserved_bytes()))
                self._pool.free_all_blocks()

    def _prepare_decoder(self, adapter: Any, max_len: int) -> None:
        old = self._shared_decoders.pop(id(adapter), None)
        if old is not None:
            old.shared = False
            old.close()
        cfg = adapter.cfg
        with self._device:
            shape = (cfg.n_layer, 1, cfg.n_kv_heads, cfg.head_dim)  # one position: step 0's
            scratch = KVCache(k=cp.zeros(shape, dtype=cp.float16), v=cp.zeros(shape, dtype=cp.float16),
                              capacity=1, nbytes=0)  # fmt: skip
        dec = None
        try:
            dec = GraphDecoder(self, adapter, scratch, max_positions=max_len)
            dec.logits(0, 0)  # eager: loads the kernels, fills the decoder's pool
            dec.logits(0, 0)  # recorded, then replayed
            if dec.graph is None:
                raise RuntimeError("the decode step was not captured")
        except Exception as exc:
            self._memo = None
            if dec is not None:
                dec.close()
            log.warning("decode step not recorded at load (%s: %s); each job records its own",
                        type(exc).__name__, exc)  # fmt: skip
            return
        dec.shared = True
        self._shared_decoders[id(adapter)] = dec  # it holds the adapter: the id stays its
        dec.close()  # waits for the replay, hands the decoder back (the scratch cache goes)

    def _prepare_prompts(self, adapter: Any, max_len: int) -> None:
        old = self._prompt_graphs.pop(id(adapter), None)
        if old is not None:
            old.close()
        graphs = PromptGraphs(self, adapter, max_len)
        try:
            graphs.capture()
        except Exception as exc:  # (capture() has reset _prompt and _memo)
            graphs.close()
            log.warning("prompt graphs not captured (%s: %s); prompts run eagerly", type(exc).__name__, exc)
            return
        self._prompt_graphs[id(adapter)] = graphs  # it holds the adapter: the id stays its

    def _reserved_bytes(self) -> int:
        """Memory prepare() reserved: prompt graphs and shared decoders' pools."""
        return sum(g.nbytes() for g in self._prompt_graphs.values()) + sum(
            d.nbytes() for d in self._shared_decoders.values()
        )

    def prompt_buckets(self, adapter: Any) -> tuple[int, ...]:
        """The prompt lengths' buckets the adapter has graphs for (empty: none)."""
        g = self._prompt_graphs.get(id(adapter))
        return tuple(g.graphs) if g is not None else ()

    @_device_op
    def prompt_forward(self, adapter: Any, tokens: np.ndarray, start: int, cache: KVCache) -> np.ndarray:
        g = self._prompt_graphs.get(id(adapter)) if start == 0 else None
        if g is not None and g.adapter is adapter:
            out = g.forward(tokens, cache)
            if out is not None:
                return out
        return super().prompt_forward(adapter, tokens, start, cache)

    @_device_op
    def to_host(self, x: Any) -> np.ndarray:
        return cp.asnumpy(x)


class GraphDecoder(Decoder):
    """A job's decode steps as one CUDA graph, replayed per token.

    The first step runs eagerly (it loads the kernels and fills the decoder's own memory
    pool); the second is captured and every later one replays the graph. Inside the step the
    token and its position come from device memory (tok_d, pos_d), and its last kernel writes
    the argmax into next_d and tok_d and advances pos_d, so a greedy decode exchanges 4 bytes
    with the host per token. Intermediate arrays come from a pool that only this decoder uses,
    so the addresses baked into the graph stay valid until close(). If capture fails, the
    decoder keeps running the step eagerly (same kernels, same results) and logs why.

    Greedy steps run one ahead: once step pos is queued, greedy() queues a copy of its argmax
    to pinned host memory and then step pos + 1 (whose input, that argmax, is already on the
    device) before it waits for the copy. The GPU computes the next token while the caller
    turns this one into text. If the caller asks for anything else next (another token or
    position, logits), that step is queued again with the caller's input, overwriting what
    the speculative one wrote; at most one unused step runs at the end of a job.

    Where the backend's att_o_max allows (not as shipped: ATT_O_MAX), contexts of up to
    fuse_max positions replay a second recording of the step (graph_short), whose layers take
    attention and the output projection in one launch (CupyBackend.attention_output). The
    two agree within float32 rounding of the attention's sums (tests/cuda), and an eager step
    under the same att_o_max takes the same kernel at the same positions, so a job's tokens do
    not depend on whether its steps replay or run eagerly.

    The attention kernels find the job's KV cache through kv_d (its K and V base addresses
    and capacity, in device memory), so a recorded step serves any cache of up to
    max_positions positions that bind() puts there. The backend keeps one such decoder per
    model, recorded at load (prepare) and lent to one job at a time (shared): jobs then
    replay from their first step, with no eager step and no capture of their own.
    """

    def __init__(self, backend: CupyBackend, adapter: Any, cache: KVCache, max_positions: int | None = None) -> None:
        super().__init__(adapter, cache)
        self.be = backend
        cfg = adapter.cfg
        self.max_positions = max_positions or cache.capacity
        self.shared = False  # the backend's decoder for this model: close() hands it back
        self.busy = True
        with backend._device:
            self.stream = cp.cuda.Stream(non_blocking=True)
            self.pool = cp.cuda.MemoryPool()
            if backend.memory_limit is not None:
                self.pool.set_limit(size=max(1, backend.memory_limit - backend.memory_in_use()))
            self.state = cp.zeros(3, dtype=cp.int32)  # token, position, argmax
            self.scores = cp.empty(cfg.n_head * self.max_positions, dtype=cp.float32)
            self.kv_d = cp.zeros(3, dtype=cp.uint64)  # the bound cache: K base, V base, capacity
            self.round_cnt = cp.zeros(ROUND_MAX // 256, dtype=cp.uint32)  # round_output's counters
        self.tok_d, self.pos_d, self.next_d = self.state[0:1], self.state[1:2], self.state[2:3]
        self.graph: Any = None  # the step for any position
        self.graph_short: Any = None  # ... for positions below fuse_max (None: none recorded)
        self.fuse_max = min(backend._att_o_max, self.max_positions)
        self.fuse_att = False  # read by attention_output while a variant records
        self._logits_for: dict[bool, Any] = {}  # each recording's logits (graph_short's: True)
        self.logits_d: Any = None
        self.steps = 0
        self.eager = False  # set when capture failed
        self.capturing = False
        self._dev: tuple[int | None, int | None] = (None, None)  # (token, position) the device holds
        # the step queued ahead by greedy(): (its position, its input token)
        self._ahead: tuple[int, int] | None = None
        with backend._device:
            self._host_next = cp.cuda.alloc_pinned_memory(8)  # argmax of steps pos (even, odd)
            self._copied = [cp.cuda.Event(disable_timing=True) for _ in range(2)]
        self._host_view = np.frombuffer(self._host_next, dtype=np.int32, count=2)
        self.bind(cache)

    def bind(self, cache: KVCache) -> None:
        """Decode into this cache from now on (a job's, or the shared decoder's next job)."""
        if cache.capacity > self.max_positions:
            raise ValueError(f"decoder: a cache of {cache.capacity} positions, more than its {self.max_positions}")
        self.cache = cache
        self._dev, self._ahead = (None, None), None
        with self.be._device:
            desc = np.array([cache.k.data.ptr, cache.v.data.ptr, cache.capacity], dtype=np.uint64)
            self.kv_d.set(desc, stream=self.stream)  # ordered before this stream's next step

    def pool_used(self) -> int:
        return int(self.pool.used_bytes()) if self.pool is not None else 0

    def nbytes(self) -> int:
        """A shared decoder's reserved memory: its pool, blocks the graph uses included (CuPy
        counts those as free once the capture has dropped its arrays)."""
        return int(self.pool.total_bytes()) if self.pool is not None else 0

    def _short(self, pos: int) -> bool:
        """Whether the step at pos replays graph_short (or, eager, records that variant)."""
        return pos + 1 <= self.fuse_max

    def _record(self, fuse: bool = False) -> Any:
        """The step's kernels on self.stream, allocating from self.pool; fuse: the variant of
        graph_short."""
        be = self.be
        be._step = self
        self.fuse_att = fuse
        try:
            with cp.cuda.using_allocator(self.pool.malloc):
                logits = self.adapter.logits(np.zeros(1, dtype=np.int64), self._dev[1] or 0, self.cache)
                be.argmax_into(logits, self.next_d, self.tok_d, self.pos_d)
            return logits
        finally:
            be._step = None
            self.fuse_att = False

    def _replay(self, pos: int) -> None:
        short = self.graph_short is not None and self._short(pos)
        (self.graph_short if short else self.graph).launch(self.stream)
        self.logits_d = self._logits_for[short]

    def replay(self, n: int = 1) -> None:
        """Queue n steps back to back from the position the device holds, each step's argmax the
        next one's input, each the recording for its position: a greedy decode without the host
        between tokens (bench/ times it)."""
        pos = self._dev[1]
        if self.graph is None or pos is None or pos + n > self.cache.capacity:
            raise ValueError("replay: no recorded step, or past the cache")
        with self.be._device, self.stream:
            for i in range(n):
                self._replay(pos + i)
        self.steps += n
        self._dev, self._ahead = (None, pos + n), None

    def _launch(self, token: int, pos: int) -> None:
        if pos + 1 > self.cache.capacity:
            raise ValueError(f"KV cache overflow: position {pos + 1} > capacity {self.cache.capacity}")
        be = self.be
        with be._device, self.stream:
            if self._dev != (token, pos):
                self.state[0:2].set(np.array([token, pos], dtype=np.int32), stream=self.stream)
                self._dev = (token, pos)
            try:
                if self.graph is not None:
                    self._replay(pos)
                elif self.steps == 0 or self.eager:
                    self.logits_d = None
                    # (the first step: the general variant, which allocates what both use)
                    self.logits_d = self._record(self.eager and self._short(pos))
                else:
                    self._capture(pos)
            except Exception as exc:
                if cp is not None and _is_oom(exc):
                    requested = int(getattr(exc, "_size", 0) or 0)
                else:
                    raise
            else:
                requested = -1
        if requested >= 0:
            be._on_oom()
            raise OutOfDeviceMemory(requested, be.memory_in_use(), be.memory_limit or -1)
        self.steps += 1
        self._dev = (None, pos + 1)

    def _capture(self, pos: int) -> None:
        """Record the step (graph), and its short-context variant (graph_short) where some
        layer fuses, then replay the one for pos."""
        self.logits_d = None  # its blocks go back to the pool for the capture to reuse
        graphs: dict[bool, Any] = {}
        error: BaseException | None = None
        for fuse in (False, True) if self.fuse_max > 0 else (False,):
            fused_before = self.be.att_o_fused
            self.capturing = True
            self.stream.begin_capture()
            logits = graph = None
            try:
                logits = self._record(fuse)
            except Exception as exc:
                error = exc
            finally:
                self.capturing = False
                try:
                    graph = self.stream.end_capture()
                except Exception as exc:  # the capture was invalidated
                    error = error or exc
            if error is not None:
                break
            if fuse and self.be.att_o_fused == fused_before:
                break  # no layer fused: the general graph serves every position
            graphs[fuse] = graph
            self._logits_for[fuse] = logits
        if error is not None:
            self._logits_for.clear()
            if _is_oom(error):
                raise error
            log.warning("CUDA graph capture failed (%s: %s); decoding without a graph", type(error).__name__, error)
            self.eager = True
            self.logits_d = self._record(self._short(pos))
            return
        self.graph, self.graph_short = graphs[False], graphs.get(True)
        self._replay(pos)

    def greedy(self, token: int, pos: int) -> int:
        if self._ahead != (pos, token):  # not queued ahead (or with another input): queue it
            self._ahead = None
            self._launch(token, pos)
        slot = pos & 1
        with self.be._device:
            cp.cuda.runtime.memcpyAsync(
                self._host_next.ptr + 4 * slot, self.next_d.data.ptr, 4, cp.cuda.runtime.memcpyDeviceToHost,
                self.stream.ptr,
            )
            self._copied[slot].record(self.stream)
            ahead = self.graph is not None and pos + 2 <= self.cache.capacity
            if ahead:  # step pos + 1, its input the argmax the device holds
                self._replay(pos + 1)
                self.steps += 1
            self._copied[slot].synchronize()
        nxt = int(self._host_view[slot])
        if ahead:
            self._ahead, self._dev = (pos + 1, nxt), (None, pos + 2)
        else:
            self._dev = (nxt, pos + 1)
        return nxt

    def logits(self, token: int, pos: int) -> np.ndarray:
        self._ahead = None
        self._launch(token, pos)
        with self.be._device:
            out = cp.asnumpy(self.logits_d[0], stream=self.stream)
            nxt = int(self.next_d.get(stream=self.stream)[0])
        self._dev = (nxt, pos + 1)
        return out

    def close(self) -> None:
        if self.pool is None:
            return
        if self.shared and self.be._shared_decoders.get(id(self.adapter)) is self:
            with self.be._device:
                self.stream.synchronize()  # a step queued ahead may still write the job's cache
            self.cache, self.busy, self._ahead = None, False, None  # type: ignore[assignment]
            return
        with self.be._device:
            self.stream.synchronize()
            self.graph = self.graph_short = self.logits_d = None
            self._logits_for.clear()
            self.state = self.scores = self.tok_d = self.pos_d = self.next_d = self.kv_d = self.round_cnt = None
            self._ahead = None
            self.pool.free_all_blocks()
        self.pool = None
        self.be._decoders.discard(self)
