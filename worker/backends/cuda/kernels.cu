// CUDA kernels of the CuPy backend (worker/backends/cupy_backend.py).
//
// Compiled at run time by NVRTC through cupy.RawModule for the device's own architecture
// (CuPy caches the binary per source and arch). Correctness first: every kernel reproduces
// the NumPy reference backend's arithmetic (worker/backends/numpy_backend.py) step by step:
//   - weights are read in their GGUF block layout and dequantized element by element with
//     exactly the float32 operations worker/quants uses (no fused multiply-add there:
//     __fmul_rn / __fadd_rn keep the compiler from contracting), so a dequantized weight
//     is bit-identical to NumPy's;
//   - the input of every matrix product is first rounded the way ggml converts it to the
//     weight's vec_dot_type (q8_0 / q8_1 / q8_k / f16 / bf16), bit-identical to
//     worker.quants.activations; llama.cpp's CPU and CUDA paths quantize activations the
//     same way (CUDA: quantize_q8_1 before mmvq/mmq), so without this step the CUDA logits
//     would sit ~1e-2 away from both llama.cpp and the reference;
//   - reductions run in a fixed order (sequential per thread, then a fixed tree across
//     threads): no atomics, so the same inputs give the same bits run after run.
// Accumulations are float32 (RMSNorm's sum of squares and softmax's sum in double, as ggml
// and the reference do).
//
// The element decoders (section 1) also compile as plain C++ (see the host shim below), so
// the bit-level layout code can be checked against NumPy on a machine without a GPU.

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef signed char i8;
typedef long long i64;

#if defined(__CUDACC__)
#define DEV __device__ __forceinline__
__device__ __forceinline__ float h2f(u16 h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}
__device__ __forceinline__ u16 f2h(float f) {
    u16 h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}
#define I2F(u) __int_as_float((int)(u))
#define F2I(f) ((u32)__float_as_int(f))
#define DP4A(a, b, c) __dp4a((int)(a), (int)(b), (c))
// Programmatic dependent launch (worker/backends/pdl.py launches decode.cu's kernels with it on
// sm_90): pdl_trigger lets the next kernel's blocks start while this one runs; a kernel does
// only work that reads no earlier kernel's output (weight prefetches) before pdl_wait, which
// returns once the previous kernel has completed and its writes are visible. Launched
// without the attribute, both are no-ops.
DEV void pdl_trigger() {
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
DEV void pdl_wait() {
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
#else
// ---- host shim: compile with g++ -ffp-contract=off (tests only) ----
#include <math.h>
#include <string.h>
#define DEV static inline
static inline float h2f(u16 h) { _Float16 v; memcpy(&v, &h, 2); return (float)v; }
static inline u16 f2h(float f) { _Float16 v = (_Float16)f; u16 h; memcpy(&h, &v, 2); return h; }
static inline float I2F(u32 u) { float f; memcpy(&f, &u, 4); return f; }
static inline u32 F2I(float f) { u32 u; memcpy(&u, &f, 4); return u; }
static inline float __fmul_rn(float a, float b) { return a * b; }
static inline float __fadd_rn(float a, float b) { return a + b; }
static inline float __fsub_rn(float a, float b) { return a - b; }
static inline float __fdiv_rn(float a, float b) { return a / b; }
// signed bytes of a times signed bytes of b, summed, plus c (the GPU's dp4a)
static inline int DP4A(u32 a, u32 b, int c) {
    for (int k = 0; k < 4; ++k) c += (int)(signed char)(a >> (8 * k)) * (int)(signed char)(b >> (8 * k));
    return c;
}
// byte k of the result: byte (s >> 4k) & 7 of the 8 bytes y:x (the GPU's __byte_perm)
static inline u32 __byte_perm(u32 x, u32 y, u32 s) {
    const unsigned long long v = ((unsigned long long)y << 32) | x;
    u32 r = 0;
    for (int k = 0; k < 4; ++k) r |= (u32)((v >> (8 * ((s >> (4 * k)) & 7))) & 0xffu) << (8 * k);
    return r;
}
#endif

// GGML type ids (gguf.GGMLQuantizationType).
#define T_F32 0
#define T_F16 1
#define T_Q4_0 2
#define T_Q4_1 3
#define T_Q5_0 6
#define T_Q5_1 7
#define T_Q8_0 8
#define T_Q4_K 12
#define T_Q5_K 13
#define T_Q6_K 14
#define T_BF16 30
#define T_MXFP4 39

// ------------------------------------------------------------------ 1. element decoders
// Bytes are read one at a time: block sizes of 17, 22 or 210 bytes leave multi-byte fields
// unaligned.

DEV u32 ld16(const u8* p) { return (u32)p[0] | ((u32)p[1] << 8); }
DEV u32 ld32(const u8* p) { return (u32)p[0] | ((u32)p[1] << 8) | ((u32)p[2] << 16) | ((u32)p[3] << 24); }
DEV float fp16_at(const u8* p) { return h2f((u16)ld16(p)); }

// Q4_K/Q5_K: 6-bit scale and min of sub-block j from the 12 packed bytes (get_scale_min_k4).
DEV void scale_min_k4(const u8* s, int j, float* sc, float* m) {
    u32 a, b;
    if (j < 4) {
        a = s[j] & 63;
        b = s[j + 4] & 63;
    } else {
        a = (s[j + 4] & 15) | ((s[j - 4] >> 6) << 4);
        b = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
    }
    *sc = (float)a;
    *m = (float)b;
}

// 2^(e-128), ggml's GGML_E8M0_TO_FP32_HALF; e = 0, 1 are float32 subnormals.
DEV float e8m0_half(u32 e) {
    if (e >= 2) return I2F((e - 1) << 23);
    return I2F(0x00200000u << e);
}

DEV float mxfp4_kvalue(u32 q) {
    // kvalues_mxfp4: E2M1 values doubled, as integers: {0, 1, 2, 3, 4, 6, 8, 12}, negated for
    // q >= 8. Unpacked from nibbles of one constant: a table indexed at run time would live in
    // local memory.
    const int m = (int)((0xC8643210u >> (4 * (q & 7))) & 15u);
    return (float)((q & 8) ? -m : m);
}

// ---- integer dot products of one 32-element unit with q8_0 / q8_1 / q8_K activations
// x = dx * qx (qx: the unit's 32 int8 values as 8 little-endian words, xsum = sum of qx).
// The weights' integer levels times qx are summed exactly (dp4a), then scaled once:
// dw * dx * sum(qw * qx) (+ m * s for Q4_1 / Q5_1, ggml's q8_1 form), where the float path
// rounds each of the 32 products; ggml's own CUDA kernels (vec_dot_*_q8_1) work this way.
// Blocks start at even byte offsets (sizes 18, 20, 22, 24, 34), so 4-byte fields are read
// as two 16-bit halves.
DEV u32 ld32_a2(const u8* p) { return (u32)((const u16*)p)[0] | ((u32)((const u16*)p)[1] << 16); }
// bit k (k < 4) of v into bit 4 of byte k: the fifth bit of four Q5 levels
DEV u32 bit4_of_bytes(u32 v) { return (((v & 15u) * 0x00204081u) & 0x01010101u) << 4; }

// MXFP4 levels of four nibbles (the low 4 bits of each byte of q) times four int8 inputs:
// kvalues_mxfp4 (E2M1 values doubled: {0, 1, 2, 3, 4, 6, 8, 12}, negated when bit 3 is set),
// their magnitudes looked up with one byte permutation, the negative ones subtracted.
DEV int mxfp4_dot4(u32 q, u32 x, int s) {
    const u32 sel = (q & 7u) | ((q >> 4) & 0x70u) | ((q >> 8) & 0x700u) | ((q >> 12) & 0x7000u);
    const u32 mag = __byte_perm(0x03020100u, 0x0C080604u, sel);
    const u32 neg = ((q >> 3) & 0x01010101u) * 0xffu;
    return DP4A(mag & neg, x, 0) * -1 + DP4A(mag & ~neg, x, s);
}

template <int T>
DEV float unit_dot_i8(const u8* __restrict__ r, int u, const u32* __restrict__ xw, float dx, int xsum, float s8) {
    int s = 0;
    float d, m = 0.f;
    if (T == T_Q8_0) {
        const u8* b = r + (i64)u * 34;
        d = fp16_at(b);
        for (int k = 0; k < 8; ++k) s = DP4A(ld32_a2(b + 2 + 4 * k), xw[k], s);
    } else if (T == T_Q4_0 || T == T_Q4_1) {
        const int size = T == T_Q4_0 ? 18 : 20, q0 = T == T_Q4_0 ? 2 : 4;
        const u8* b = r + (i64)u * size;
        d = fp16_at(b);
        if (T == T_Q4_1) m = fp16_at(b + 2);
        for (int k = 0; k < 4; ++k) {
            const u32 w = ld32_a2(b + q0 + 4 * k);
            s = DP4A(w & 0x0F0F0F0Fu, xw[k], s);
            s = DP4A((w >> 4) & 0x0F0F0F0Fu, xw[k + 4], s);
        }
        if (T == T_Q4_0) s -= 8 * xsum;
    } else if (T == T_Q5_0 || T == T_Q5_1) {
        const int size = T == T_Q5_0 ? 22 : 24, q0 = T == T_Q5_0 ? 6 : 8;
        const u8* b = r + (i64)u * size;
        d = fp16_at(b);
        if (T == T_Q5_1) m = fp16_at(b + 2);
        const u32 qh = ld32(b + q0 - 4);
        for (int k = 0; k < 4; ++k) {
            const u32 w = ld32_a2(b + q0 + 4 * k);
            s = DP4A((w & 0x0F0F0F0Fu) | bit4_of_bytes(qh >> (4 * k)), xw[k], s);
            s = DP4A(((w >> 4) & 0x0F0F0F0Fu) | bit4_of_bytes(qh >> (16 + 4 * k)), xw[k + 4], s);
        }
        if (T == T_Q5_0) s -= 16 * xsum;
    } else if (T == T_MXFP4) {
        // the block's scale e8m0_half halves the doubled levels; element l is byte l's low
        // nibble, element l + 16 its high one
        const u8* b = r + (i64)u * 17;
        d = e8m0_half(b[0]);
        for (int k = 0; k < 4; ++k) {
            const u32 w = ld32(b + 1 + 4 * k);
            s = mxfp4_dot4(w & 0x0F0F0F0Fu, xw[k], s);
            s = mxfp4_dot4((w >> 4) & 0x0F0F0F0Fu, xw[k + 4], s);
        }
    } else if (T == T_Q4_K) {
        // q8_K input: dx is the 256-block's scale; w = (d sc) q - (dmin m) per 32-unit j
        const int j = u & 7;
        const u8* b = r + (i64)(u >> 3) * 144;
        float sc, mn;
        scale_min_k4(b + 4, j, &sc, &mn);
        const u8* qs = b + 16 + 32 * (j >> 1);
        const int shift = (j & 1) * 4;
        for (int k = 0; k < 8; ++k) s = DP4A((ld32_a2(qs + 4 * k) >> shift) & 0x0F0F0F0Fu, xw[k], s);
        const float dl = __fmul_rn(fp16_at(b), sc), ml = __fmul_rn(fp16_at(b + 2), mn);
        return __fmul_rn(dx, __fsub_rn(__fmul_rn(dl, (float)s), __fmul_rn(ml, (float)xsum)));
    } else if (T == T_Q6_K) {
        // two 16-element halves with their own int8 scales; levels q - 32, q 6-bit
        const int g8 = u & 7, h = g8 >> 2, g = g8 & 3;
        const u8* b = r + (i64)(u >> 3) * 210;
        const u8* lo = b + 64 * h + 32 * (g & 1);
        const u8* hi = b + 128 + 32 * h;
        const int lshift = g < 2 ? 0 : 4;
        int sh[2] = {0, 0}, xs[2] = {0, 0};
        for (int k = 0; k < 8; ++k) {
            const u32 q = ((ld32_a2(lo + 4 * k) >> lshift) & 0x0F0F0F0Fu) |
                          (((ld32_a2(hi + 4 * k) >> (2 * g)) & 0x03030303u) << 4);
            sh[k >> 2] = DP4A(q, xw[k], sh[k >> 2]);
            xs[k >> 2] = DP4A(0x01010101u, xw[k], xs[k >> 2]);
        }
        const float dd = fp16_at(b + 208);
        const float s0 = __fmul_rn(dd, (float)(i8)b[192 + 2 * g8]);
        const float s1 = __fmul_rn(dd, (float)(i8)b[193 + 2 * g8]);
        const float v0 = __fmul_rn(s0, (float)(sh[0] - 32 * xs[0]));
        return __fmul_rn(dx, __fadd_rn(v0, __fmul_rn(s1, (float)(sh[1] - 32 * xs[1]))));
    } else {
        return 0.f;
    }
    const float v = __fmul_rn(__fmul_rn(d, dx), (float)s);
    return (T == T_Q4_1 || T == T_Q5_1) ? fmaf(m, s8, v) : v;
}

// Element `col` of a row stored as type T. MIN=false drops Q4_1/Q5_1's block minimum
// (the matrix product adds m * s once per block, as ggml's q8_1 dot product does).
template <int T, bool MIN>
DEV float dq(const u8* row, int col) {
    if (T == T_F32) {
        return I2F(ld32(row + 4 * (i64)col));
    } else if (T == T_F16) {
        return fp16_at(row + 2 * (i64)col);
    } else if (T == T_BF16) {
        return I2F(ld16(row + 2 * (i64)col) << 16);
    } else if (T == T_Q4_0) {
        const u8* b = row + (col >> 5) * 18;
        int j = col & 31;
        u32 byte = b[2 + (j & 15)];
        int q = (int)(j < 16 ? (byte & 15) : (byte >> 4)) - 8;
        return __fmul_rn(fp16_at(b), (float)q);
    } else if (T == T_Q4_1) {
        const u8* b = row + (col >> 5) * 20;
        int j = col & 31;
        u32 byte = b[4 + (j & 15)];
        u32 q = j < 16 ? (byte & 15) : (byte >> 4);
        float v = __fmul_rn(fp16_at(b), (float)q);
        return MIN ? __fadd_rn(v, fp16_at(b + 2)) : v;
    } else if (T == T_Q5_0) {
        const u8* b = row + (col >> 5) * 22;
        int j = col & 31;
        u32 byte = b[6 + (j & 15)];
        u32 lo = j < 16 ? (byte & 15) : (byte >> 4);
        u32 hi = ((ld32(b + 2) >> j) & 1) << 4;
        return __fmul_rn(fp16_at(b), (float)((int)(lo | hi) - 16));
    } else if (T == T_Q5_1) {
        const u8* b = row + (col >> 5) * 24;
        int j = col & 31;
        u32 byte = b[8 + (j & 15)];
        u32 lo = j < 16 ? (byte & 15) : (byte >> 4);
        u32 hi = ((ld32(b + 4) >> j) & 1) << 4;
        float v = __fmul_rn(fp16_at(b), (float)(lo | hi));
        return MIN ? __fadd_rn(v, fp16_at(b + 2)) : v;
    } else if (T == T_Q8_0) {
        const u8* b = row + (col >> 5) * 34;
        return __fmul_rn(fp16_at(b), (float)(i8)b[2 + (col & 31)]);
    } else if (T == T_MXFP4) {
        const u8* b = row + (col >> 5) * 17;
        int j = col & 31;
        u32 byte = b[1 + (j & 15)];
        u32 q = j < 16 ? (byte & 15) : (byte >> 4);
        return __fmul_rn(e8m0_half(b[0]), mxfp4_kvalue(q));
    } else if (T == T_Q4_K || T == T_Q5_K) {
        const int size = T == T_Q4_K ? 144 : 176;
        const u8* b = row + (col >> 8) * size;
        int e = col & 255, j = e >> 5, l = e & 31;
        const u8* qs = b + (T == T_Q4_K ? 16 : 48);
        u32 byte = qs[32 * (j >> 1) + l];
        u32 q = (j & 1) ? (byte >> 4) : (byte & 15);
        if (T == T_Q5_K) q |= ((b[16 + l] >> j) & 1) << 4;
        float sc, m;
        scale_min_k4(b + 4, j, &sc, &m);
        float dl = __fmul_rn(fp16_at(b), sc);
        float ml = __fmul_rn(fp16_at(b + 2), m);
        return __fsub_rn(__fmul_rn(dl, (float)q), ml);
    } else if (T == T_Q6_K) {
        const u8* b = row + (col >> 8) * 210;
        int e = col & 255, h = e >> 7, g = (e >> 5) & 3, l = e & 31;
        u32 lowbyte = b[64 * h + l + 32 * (g & 1)];
        u32 lo = g < 2 ? (lowbyte & 15) : (lowbyte >> 4);
        u32 hi = (b[128 + 32 * h + l] >> (2 * g)) & 3;
        int q = (int)(lo | (hi << 4)) - 32;
        float sc = (float)(i8)b[192 + (e >> 4)];
        return __fmul_rn(__fmul_rn(fp16_at(b + 208), sc), (float)q);
    }
    return 0.f;
}

// Block minimum m of Q4_1/Q5_1 block `blk` (the fp16 after d).
template <int T>
DEV float block_min(const u8* row, int blk) {
    return fp16_at(row + blk * (T == T_Q4_1 ? 20 : 24) + 2);
}

// ------------------------------------------------------------------ 2. activation rounding
// Per-element helpers shared by the kernels and the host check.

DEV float round_f16(float x) { return h2f(f2h(x)); }

DEV float round_bf16(float x) {
    u32 u = F2I(x);
    u32 r;
    if ((u & 0x7FFFFFFFu) > 0x7F800000u) r = (u >> 16) | 64;  // NaN: quiet it
    else r = (u + (0x7FFFu + ((u >> 16) & 1))) >> 16;
    return I2F(r << 16);
}

#if defined(__CUDACC__)

DEV float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
DEV float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// q8_0 / q8_1 round trip: one warp per 32-element block (rows are whole blocks).
// xq = fp16(d) * rint(x * 127/amax); with_sum: s = fp16(d * sum(q)) per block (q8_1).
extern "C" __global__ void act_q8_32(const float* __restrict__ x, float* __restrict__ xq,
                                     float* __restrict__ s, i64 nblocks, int with_sum) {
    i64 blk = ((i64)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    int lane = threadIdx.x & 31;
    if (blk >= nblocks) return;  // whole warps leave together
    float v = x[blk * 32 + lane];
    float amax = warp_max(fabsf(v));
    float d = __fdiv_rn(amax, 127.f);
    float inv = amax != 0.f ? __fdiv_rn(127.f, amax) : 0.f;
    float q = rintf(__fmul_rn(v, inv)) + 0.f;  // + 0 turns -0 into the +0 of an int8 zero
    xq[blk * 32 + lane] = __fmul_rn(round_f16(d), q);
    if (with_sum) {
        float qs = warp_sum(q);  // small integers: exact in any order
        if (lane == 0) s[blk] = round_f16(__fmul_rn(d, qs));
    }
}

// q8_K round trip: one 256-thread block per 256-element block. The scale comes from the
// signed element of largest |x|, the first one on ties (ggml's strict `>` scan).
extern "C" __global__ void act_q8_k(const float* __restrict__ x, float* __restrict__ xq) {
    __shared__ float sv[256];
    __shared__ int si[256];
    i64 base = (i64)blockIdx.x * 256;
    int t = threadIdx.x;
    float v = x[base + t];
    sv[t] = fabsf(v);
    si[t] = t;
    __syncthreads();
    for (int o = 128; o > 0; o >>= 1) {
        if (t < o) {
            float a = sv[t], b = sv[t + o];
            int ia = si[t], ib = si[t + o];
            if (b > a || (b == a && ib < ia)) {
                sv[t] = b;
                si[t] = ib;
            }
        }
        __syncthreads();
    }
    float vmax = x[base + si[0]];
    float iscale = vmax != 0.f ? __fdiv_rn(-127.f, vmax) : 0.f;
    float d = vmax != 0.f ? __fdiv_rn(1.f, iscale) : 0.f;
    float q = fminf(rintf(__fmul_rn(v, iscale)), 127.f) + 0.f;
    xq[base + t] = __fmul_rn(d, q);
}

extern "C" __global__ void act_f16(const float* __restrict__ x, float* __restrict__ xq, i64 n) {
    i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) xq[i] = round_f16(x[i]);
}

extern "C" __global__ void act_bf16(const float* __restrict__ x, float* __restrict__ xq, i64 n) {
    i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) xq[i] = round_bf16(x[i]);
}

// ------------------------------------------------------------------ 3. weight kernels

// Decode product y = W x for one activation row: one warp per output row; lane l takes
// columns l, l+32, ... (consecutive lanes read consecutive bytes of a block), f32 fma
// accumulation, then a fixed xor-tree across the warp. Q4_1/Q5_1 (q8_1 activations):
// sum(xq * d*q) per element plus m * s per block, ggml's form of the same dot product.
template <int T>
DEV void matvec_impl(const u8* __restrict__ W, i64 row_bytes, const float* __restrict__ x,
                     const float* __restrict__ s, float* __restrict__ y, int n_out, int n_in) {
    int row = (int)(((i64)blockIdx.x * blockDim.x + threadIdx.x) >> 5);
    int lane = threadIdx.x & 31;
    if (row >= n_out) return;
    const u8* r = W + (i64)row * row_bytes;
    const bool q81 = (T == T_Q4_1 || T == T_Q5_1);
    float acc = 0.f;
    for (int c = lane; c < n_in; c += 32) acc = fmaf(x[c], dq<T, !q81>(r, c), acc);
    if (q81) {
        float accm = 0.f;
        for (int u = lane; u < (n_in >> 5); u += 32) accm = fmaf(block_min<T>(r, u), s[u], accm);
        acc += accm;
    }
    acc = warp_sum(acc);
    if (lane == 0) y[row] = acc;
}

// Whole-matrix (or row-chunk) dequantization to float32, for the n > 1 (prefill) path,
// which then runs cuBLAS SGEMM (float32 accumulation). MIN as in dq().
template <int T, bool MIN>
DEV void dequant_impl(const u8* __restrict__ W, i64 row_bytes, float* __restrict__ out, int rows, int n_in) {
    i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (i64)rows * n_in) return;
    int r = (int)(i / n_in), c = (int)(i % n_in);
    out[i] = dq<T, MIN>(W + (i64)r * row_bytes, c);
}

// Embedding lookup: one block per token, rows dequantized on the fly. A decode step's first
// kernel: the next (norm + QKV, launched with programmatic dependent launch) may start staging
// its weights while this runs (it reads `out` only after its griddepcontrol.wait).
template <int T>
DEV void embed_impl(const u8* __restrict__ table, i64 row_bytes, const int* __restrict__ ids,
                    float* __restrict__ out, int n_embd) {
    pdl_trigger();
    const u8* r = table + (i64)ids[blockIdx.x] * row_bytes;
    for (int c = threadIdx.x; c < n_embd; c += blockDim.x) out[(i64)blockIdx.x * n_embd + c] = dq<T, true>(r, c);
}

// Row n_d[0] - 1 of x [*, d]: the last prompt row of a padded prefill (prompt graphs), whose
// length is read from device memory so that one graph serves every length of its bucket.
extern "C" __global__ void take_row(const float* __restrict__ x, const int* __restrict__ n_d,
                                    float* __restrict__ out, int d) {
    const float* src = x + (i64)(n_d[0] - 1) * d;
    for (int c = threadIdx.x; c < d; c += blockDim.x) out[c] = src[c];
}

#define INSTANTIATE(T, NAME)                                                                          \
    extern "C" __global__ void matvec_##NAME(const u8* W, i64 rb, const float* x, const float* s,     \
                                             float* y, int n_out, int n_in) {                         \
        matvec_impl<T>(W, rb, x, s, y, n_out, n_in);                                                  \
    }                                                                                                 \
    extern "C" __global__ void dequant_##NAME(const u8* W, i64 rb, float* out, int rows, int n_in,    \
                                              int with_min) {                                         \
        if (with_min) dequant_impl<T, true>(W, rb, out, rows, n_in);                                  \
        else dequant_impl<T, false>(W, rb, out, rows, n_in);                                          \
    }                                                                                                 \
    extern "C" __global__ void embed_##NAME(const u8* tab, i64 rb, const int* ids, float* out, int n) { \
        embed_impl<T>(tab, rb, ids, out, n);                                                          \
    }

INSTANTIATE(T_F32, f32)
INSTANTIATE(T_F16, f16)
INSTANTIATE(T_BF16, bf16)
INSTANTIATE(T_Q4_0, q4_0)
INSTANTIATE(T_Q4_1, q4_1)
INSTANTIATE(T_Q5_0, q5_0)
INSTANTIATE(T_Q5_1, q5_1)
INSTANTIATE(T_Q8_0, q8_0)
INSTANTIATE(T_Q4_K, q4_k)
INSTANTIATE(T_Q5_K, q5_k)
INSTANTIATE(T_Q6_K, q6_k)
INSTANTIATE(T_MXFP4, mxfp4)

// Q4_1/Q5_1 block minimums as float32 [rows, n_in/32] (prefill path: y += s @ M.T).
extern "C" __global__ void block_mins(const u8* __restrict__ W, i64 row_bytes, int type_size,
                                      float* __restrict__ out, int rows, int nb) {
    i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (i64)rows * nb) return;
    int r = (int)(i / nb), u = (int)(i % nb);
    out[i] = fp16_at(W + (i64)r * row_bytes + (i64)u * type_size + 2);
}

// ------------------------------------------------------------------ 4. the rest of a layer

// RMSNorm, one block (256 threads) per row: sum of squares in double (as ggml), fixed tree.
extern "C" __global__ void rms_norm(const float* __restrict__ x, const float* __restrict__ w,
                                    float* __restrict__ out, int ncols, float eps) {
    __shared__ double red[256];
    const float* xr = x + (i64)blockIdx.x * ncols;
    float* o = out + (i64)blockIdx.x * ncols;
    double acc = 0.0;
    for (int c = threadIdx.x; c < ncols; c += blockDim.x) {
        double v = (double)xr[c];
        acc += v * v;
    }
    red[threadIdx.x] = acc;
    __syncthreads();
    for (int k = blockDim.x >> 1; k > 0; k >>= 1) {
        if (threadIdx.x < k) red[threadIdx.x] += red[threadIdx.x + k];
        __syncthreads();
    }
    float mean = (float)(red[0] / (double)ncols);
    float scale = __fdiv_rn(1.f, __fsqrt_rn(__fadd_rn(mean, eps)));
    for (int c = threadIdx.x; c < ncols; c += blockDim.x) o[c] = __fmul_rn(__fmul_rn(xr[c], scale), w[c]);
}

// RoPE over x [n, heads, d]; one block per (token, head). Angles follow ggml's float32
// recurrence theta_{i+1} = theta_i * theta_scale from theta_0 = position; cos/sin are
// computed in double and rounded (the reference uses NumPy's float32 cos/sin: <= 1 ulp apart).
// pos == positions (use_pos) or start + token.
extern "C" __global__ void rope(const float* __restrict__ x, float* __restrict__ out,
                                const int* __restrict__ pos, int use_pos, int start, int n_head,
                                int d, int n_rot, float theta_scale, int neox) {
    int tok = blockIdx.x / n_head;
    const float* xr = x + (i64)blockIdx.x * d;
    float* o = out + (i64)blockIdx.x * d;
    int p = use_pos ? pos[tok] : start + tok;
    int half = n_rot / 2;
    for (int i = threadIdx.x; i < half; i += blockDim.x) {
        float theta = (float)p;
        for (int k = 0; k < i; ++k) theta = __fmul_rn(theta, theta_scale);
        float c = (float)cos((double)theta), s = (float)sin((double)theta);
        int i0 = neox ? i : 2 * i, i1 = neox ? i + half : 2 * i + 1;
        float x0 = xr[i0], x1 = xr[i1];
        o[i0] = __fsub_rn(__fmul_rn(x0, c), __fmul_rn(x1, s));
        o[i1] = __fadd_rn(__fmul_rn(x0, s), __fmul_rn(x1, c));
    }
    for (int j = n_rot + threadIdx.x; j < d; j += blockDim.x) o[j] = xr[j];
}

// RoPE from precomputed tables cos/sin [n, n_rot/2] (YaRN: the reference's own tables).
extern "C" __global__ void rope_table(const float* __restrict__ x, float* __restrict__ out,
                                      const float* __restrict__ cos_t, const float* __restrict__ sin_t,
                                      int n_head, int d, int n_rot, int neox) {
    int tok = blockIdx.x / n_head;
    const float* xr = x + (i64)blockIdx.x * d;
    float* o = out + (i64)blockIdx.x * d;
    int half = n_rot / 2;
    for (int i = threadIdx.x; i < half; i += blockDim.x) {
        float c = cos_t[(i64)tok * half + i], s = sin_t[(i64)tok * half + i];
        int i0 = neox ? i : 2 * i, i1 = neox ? i + half : 2 * i + 1;
        float x0 = xr[i0], x1 = xr[i1];
        o[i0] = __fsub_rn(__fmul_rn(x0, c), __fmul_rn(x1, s));
        o[i1] = __fadd_rn(__fmul_rn(x0, s), __fmul_rn(x1, c));
    }
    for (int j = n_rot + threadIdx.x; j < d; j += blockDim.x) o[j] = xr[j];
}

// Causal GQA attention over the float16 cache, for queries q0 .. q0 + gridDim.y of this call.
// One block (ATT_THREADS threads) per (head, query). Like the reference: Q rounded to f16,
// scores = q.k * scale in f32, softmax with the sum in double, probabilities rounded to f16,
// then P.V in f32. Scores live in a per-call scratch [gridDim.y, n_head, T_stride].
#define ATT_THREADS 128
// Options (attention_ext): `scale` multiplies Q.K; window > 0 hides keys at positions
// <= pos - window; has_sinks adds a per-head sink logit to the max and the denominator
// (ggml_soft_max_add_sinks), not to the output.
extern "C" __global__ void attention(const float* __restrict__ q, const u16* __restrict__ kc,
                                     const u16* __restrict__ vc, float* __restrict__ out,
                                     float* __restrict__ scores, int n_head, int n_kv, int d,
                                     int start, int q0, int T_stride, float scale, int window,
                                     const float* __restrict__ sinks, int has_sinks) {
    __shared__ float qs[256];
    __shared__ float redf[ATT_THREADS];
    __shared__ double redd[ATT_THREADS];
    const int h = blockIdx.x, qi = q0 + blockIdx.y, tid = threadIdx.x;
    const int T = start + qi + 1;  // keys t0 .. start + qi
    const int t0 = (window > 0 && T > window) ? T - window : 0;
    const int kvh = h / (n_head / n_kv);
    const i64 kv_stride = (i64)n_kv * d;
    float* sc = scores + ((i64)blockIdx.y * n_head + h) * T_stride;
    for (int c = tid; c < d; c += blockDim.x) qs[c] = round_f16(q[((i64)qi * n_head + h) * d + c]);
    __syncthreads();
    // scores and their max
    float m = __int_as_float(0xff800000);  // -inf
    for (int t = t0 + tid; t < T; t += blockDim.x) {
        const u16* kr = kc + t * kv_stride + (i64)kvh * d;
        float acc = 0.f;
        for (int c = 0; c < d; ++c) acc = fmaf(qs[c], h2f(kr[c]), acc);
        acc = __fmul_rn(acc, scale);
        sc[t] = acc;
        m = fmaxf(m, acc);
    }
    redf[tid] = m;
    __syncthreads();
    for (int k = blockDim.x >> 1; k > 0; k >>= 1) {
        if (tid < k) redf[tid] = fmaxf(redf[tid], redf[tid + k]);
        __syncthreads();
    }
    m = redf[0];
    const float sink = has_sinks ? sinks[h] : 0.f;
    if (has_sinks) m = fmaxf(m, sink);
    // exp and the sum in double
    double sum = 0.0;
    for (int t = t0 + tid; t < T; t += blockDim.x) {
        float e = expf(__fsub_rn(sc[t], m));
        sc[t] = e;
        sum += (double)e;
    }
    redd[tid] = sum;
    __syncthreads();
    for (int k = blockDim.x >> 1; k > 0; k >>= 1) {
        if (tid < k) redd[tid] += redd[tid + k];
        __syncthreads();
    }
    double total = redd[0];
    if (has_sinks) total += (double)expf(__fsub_rn(sink, m));
    const float inv = (float)(1.0 / total);
    for (int t = t0 + tid; t < T; t += blockDim.x) sc[t] = round_f16(__fmul_rn(sc[t], inv));
    __syncthreads();
    // P.V: thread (part, c) sums t = part, part + nparts, ...; parts added in order.
    float* o = out + ((i64)qi * n_head + h) * d;
    if ((int)blockDim.x >= d) {
        const int nparts = blockDim.x / d, part = tid / d, c = tid % d;
        float acc = 0.f;
        if (part < nparts) {
            const u16* vr = vc + (i64)kvh * d + c;
            for (int t = t0 + part; t < T; t += nparts) acc = fmaf(sc[t], h2f(vr[t * kv_stride]), acc);
        }
        __syncthreads();
        redf[tid] = acc;
        __syncthreads();
        if (tid < d) {
            float r = redf[tid];
            for (int pp = 1; pp < nparts; ++pp) r += redf[pp * d + tid];
            o[tid] = r;
        }
    } else {
        for (int c = tid; c < d; c += blockDim.x) {
            const u16* vr = vc + (i64)kvh * d + c;
            float acc = 0.f;
            for (int t = t0; t < T; ++t) acc = fmaf(sc[t], h2f(vr[t * kv_stride]), acc);
            o[c] = acc;
        }
    }
}

// gate / (1 + exp(-gate)) * up, as the reference writes it.
extern "C" __global__ void swiglu(const float* __restrict__ g, const float* __restrict__ u,
                                  float* __restrict__ out, i64 n) {
    i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        float gv = g[i];
        out[i] = __fmul_rn(__fdiv_rn(gv, __fadd_rn(1.f, expf(-gv))), u[i]);
    }
}

// LayerNorm (ggml_norm), one block (256 threads) per row: the mean and the variance summed
// in double, centred values and the scale in float32, then * w + b.
extern "C" __global__ void layer_norm(const float* __restrict__ x, const float* __restrict__ w,
                                      const float* __restrict__ b, float* __restrict__ out, int ncols,
                                      float eps) {
    __shared__ double red[256];
    const float* xr = x + (i64)blockIdx.x * ncols;
    float* o = out + (i64)blockIdx.x * ncols;
    double acc = 0.0;
    for (int c = threadIdx.x; c < ncols; c += blockDim.x) acc += (double)xr[c];
    red[threadIdx.x] = acc;
    __syncthreads();
    for (int k = blockDim.x >> 1; k > 0; k >>= 1) {
        if ((int)threadIdx.x < k) red[threadIdx.x] += red[threadIdx.x + k];
        __syncthreads();
    }
    const float mean = (float)(red[0] / (double)ncols);
    __syncthreads();
    acc = 0.0;
    for (int c = threadIdx.x; c < ncols; c += blockDim.x) {
        float y = __fsub_rn(xr[c], mean);
        acc += (double)__fmul_rn(y, y);
    }
    red[threadIdx.x] = acc;
    __syncthreads();
    for (int k = blockDim.x >> 1; k > 0; k >>= 1) {
        if ((int)threadIdx.x < k) red[threadIdx.x] += red[threadIdx.x + k];
        __syncthreads();
    }
    const float var = (float)(red[0] / (double)ncols);
    const float scale = __fdiv_rn(1.f, __fsqrt_rn(__fadd_rn(var, eps)));
    for (int c = threadIdx.x; c < ncols; c += blockDim.x) {
        float y = __fsub_rn(xr[c], mean);
        o[c] = __fadd_rn(__fmul_rn(__fmul_rn(y, scale), w[c]), b[c]);
    }
}

// GELU as ggml's CPU computes it: table[fp16(x)] (the table holds fp16(gelu_tanh(h)) for every
// fp16 h, built on the host), 0 for x <= -10, x for x >= 10.
extern "C" __global__ void gelu_table(const float* __restrict__ x, const float* __restrict__ table,
                                      float* __restrict__ out, i64 n) {
    i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        float v = x[i];
        float y = table[f2h(v)];
        out[i] = v <= -10.f ? 0.f : (v >= 10.f ? v : y);
    }
}

// gpt-oss's clamped SwiGLU: g = min(gate, limit), u = clamp(up, -limit, limit),
// g / (1 + exp(alpha * -g)) * (u + 1).
extern "C" __global__ void swiglu_oai(const float* __restrict__ g, const float* __restrict__ u,
                                      float* __restrict__ out, i64 n, float alpha, float limit) {
    i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        float gv = fminf(g[i], limit);
        float uv = fminf(fmaxf(u[i], -limit), limit);
        float sg = __fdiv_rn(gv, __fadd_rn(1.f, expf(__fmul_rn(alpha, -gv))));
        out[i] = __fmul_rn(sg, __fadd_rn(uv, 1.f));
    }
}

extern "C" __global__ void add_f32(const float* __restrict__ a, const float* __restrict__ b,
                                   float* __restrict__ out, i64 n) {
    i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = __fadd_rn(a[i], b[i]);
}

#endif  // __CUDACC__
