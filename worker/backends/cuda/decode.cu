// Fused kernels for one-token decode steps (appended to kernels.cu at compile time; uses its
// decoders, rounding helpers and warp reductions).
//
// A decode step of a 0.5B model is ~400 small products and element-wise operations; launched
// one by one they cost far more than the ~0.15 ms it takes to read the weights. These kernels
// do a decoder layer in five launches (norm+QKV, RoPE+cache write+attention, O+residual,
// norm+gate/up+SwiGLU, down+residual), and the CuPy backend captures a whole step in a CUDA
// graph. Arithmetic is the unfused kernels' own (same rounding of activations, same RMSNorm /
// RoPE / softmax code), except inside a product: a 32-element unit of most block formats is
// summed exactly in integers (kernels.cu's unit_dot_i8, as ggml's CUDA kernels do) and scaled
// once, and the float32 sums run per unit, then across the warp.

#if defined(__CUDACC__)

// FMV_ABLATE (bench/gpu_decode_ablation.py compiles variants; 0 in the worker): 1 skips the
// dot products' arithmetic, 2 the input's norm and rounding, 3 the L2 prefetches, 4 the
// weight loads. Timing each against 0 says where a product's time goes.
#ifndef FMV_ABLATE
#define FMV_ABLATE 0
#endif

#define FMV_THREADS 256
#define FMV_WARPS 8
// The rounded input row lives in shared memory with one pad word per 32 elements: a unit's
// elements are read by one lane, units by consecutive lanes, and a stride of 33 words puts
// the 32 lanes on 32 different banks (a stride of 32 put them all on one).
#define XI(c) ((c) + ((c) >> 5))

// Activation kinds: how the product's input is rounded (the weight type's vec_dot_type).
#define A_F32 0
#define A_F16 1
#define A_BF16 2
#define A_Q8_0 3
#define A_Q8_1 4
#define A_Q8_K 5

// Sum over the 32 elements of unit u (columns 32u .. 32u+31) of w * x, with the float
// decode: the formats without an integer path (int_dot below). Weight values are computed
// exactly as dq<T, MIN> computes them.
template <int T>
DEV float unit_dot(const u8* __restrict__ r, int u, const float* __restrict__ xs) {
    const float* x = xs + 33 * u;  // padded layout, see XI
    float a0 = 0.f, a1 = 0.f;
    if (T == T_MXFP4) {
        const u8* b = r + (i64)u * 17;
        const float d = e8m0_half(b[0]);
#pragma unroll
        for (int l = 0; l < 16; ++l) {
            const u32 byte = b[1 + l];
            a0 = fmaf(x[l], __fmul_rn(d, mxfp4_kvalue(byte & 15)), a0);
            a1 = fmaf(x[l + 16], __fmul_rn(d, mxfp4_kvalue(byte >> 4)), a1);
        }
        return a0 + a1;
    } else if (T == T_Q5_K) {
        const int j = u & 7;
        const u8* b = r + (i64)(u >> 3) * 176;
        float sc, m;
        scale_min_k4(b + 4, j, &sc, &m);
        const float dl = __fmul_rn(fp16_at(b), sc);
        const float ml = __fmul_rn(fp16_at(b + 2), m);
        const u8* qs = b + 48 + 32 * (j >> 1);
        const int shift = (j & 1) * 4;
#pragma unroll 8
        for (int l = 0; l < 32; ++l) {
            const u32 q = ((qs[l] >> shift) & 15) | (((b[16 + l] >> j) & 1) << 4);
            a0 = fmaf(x[l], __fsub_rn(__fmul_rn(dl, (float)q), ml), a0);
        }
        return a0;
    }
    return 0.f;
}

// The rest of the input's shared-memory layout after the padded row xs [U * 33] and the q8_1
// block sums ss [U] (U = K / 32 units): for q8_0 / q8_1 / q8_K inputs also the int8 values
// xq [32 U] (16-byte aligned), each unit's scale xd [U] and sum xsum [U], for the integer dot
// products (kernels.cu's unit_dot_i8). The host's fmv_smem(K) matches.
DEV float* act_xd(float* xs, int K) { return xs + ((K + 31) >> 5) * 34; }
DEV int* act_xsum(float* xs, int K) { return (int*)(xs + ((K + 31) >> 5) * 35); }
DEV i8* act_xq(float* xs, int K) { return (i8*)(xs + ((((K + 31) >> 5) * 36 + 3) & ~3)); }

// Formats whose units take the integer path (q8_0 / q8_1 / q8_K inputs; Q5_K and MXFP4 keep
// the float path).
template <int T>
DEV constexpr bool int_dot() {
    return T == T_Q4_0 || T == T_Q4_1 || T == T_Q5_0 || T == T_Q5_1 || T == T_Q8_0 || T == T_Q4_K || T == T_Q6_K;
}

// Bytes of a block (32 elements; K-quants: a 256-element super-block of 8 units).
template <int T>
DEV int block_bytes() {
    return T == T_Q4_0 ? 18 : T == T_Q4_1 ? 20 : T == T_Q5_0 ? 22 : T == T_Q5_1 ? 24 : T == T_Q8_0 ? 34
         : T == T_MXFP4 ? 17 : T == T_Q4_K ? 144 : T == T_Q5_K ? 176 : T == T_Q6_K ? 210 : 0;
}
template <int T>
DEV int units_per_block() { return (T == T_Q4_K || T == T_Q5_K || T == T_Q6_K) ? 8 : 1; }

// A warp's staging buffer: one pass = up to 32 units (32 blocks, or 4 super-blocks) of a row,
// at most 32 * 34 bytes (Q8_0), plus the word its start may sit in.
#define STAGE_WORDS 276

// Copy n bytes of weights to the warp's buffer with 4-byte loads from the aligned word that
// holds src on (rows of 2-aligned formats start mid-word); returns where src's first byte
// landed. Consecutive lanes read consecutive words, so a warp's load is one 128-byte line,
// where a block-per-lane decode reading global memory directly touches six lines per byte.
// All of a lane's loads are issued before the first store: a store waits for its load, so a
// load-store loop would pay the memory latency once per word instead of once per pass.
// Reading up to 3 bytes past a row: weight buffers are allocated with a 16-byte tail.
DEV const u8* stage_copy(u32* __restrict__ dst, const u8* __restrict__ src, int n, int lane) {
    const unsigned long long a = (unsigned long long)src;
    const u32* s = (const u32*)(a & ~3ull);
    const int off = (int)(a & 3);
    const int nw = (off + n + 3) >> 2;
    if (FMV_ABLATE == 4) return (const u8*)dst + off;
    u32 v[(STAGE_WORDS + 31) / 32];
#pragma unroll
    for (int k = 0; k < (STAGE_WORDS + 31) / 32; ++k) {
        const int i = lane + 32 * k;
        if (i < nw) v[k] = __ldg(s + i);
    }
#pragma unroll
    for (int k = 0; k < (STAGE_WORDS + 31) / 32; ++k) {
        const int i = lane + 32 * k;
        if (i < nw) dst[i] = v[k];
    }
    __syncwarp();
    return (const u8*)dst + off;
}

// This warp's share of one row's dot product: passes part, part + nparts, ... of up to 32
// units, each staged then decoded one unit per lane; returns the warp's sum (every lane).
template <int T>
DEV float row_part(const u8* __restrict__ r, int K, const float* __restrict__ xs, const float* __restrict__ ss,
                   u32* stage, int part, int nparts, int lane) {
    float acc = 0.f;
    if (T == T_F32 || T == T_F16 || T == T_BF16) {
        for (int c = part * 32 + lane; c < K; c += 32 * nparts) {
            float w;
            if (T == T_F32) w = ((const float*)r)[c];
            else if (T == T_F16) w = h2f(((const u16*)r)[c]);
            else w = I2F((u32)((const u16*)r)[c] << 16);
            acc = fmaf(xs[XI(c)], w, acc);
        }
        return warp_sum(acc);
    }
    const int nunits = K >> 5;
    const int upb = units_per_block<T>(), bb = block_bytes<T>();
    // passes of at most 32 units, whole blocks, spread evenly over the row's warps
    const int per = min(32, ((nunits + nparts - 1) / nparts + upb - 1) / upb * upb);
    for (int u0 = part * per; u0 < nunits; u0 += per * nparts) {
        const int nu = min(per, nunits - u0);
        const u8* st = stage_copy(stage, r + (i64)(u0 / upb) * bb, nu / upb * bb, lane);
        if (FMV_ABLATE == 1) {
            acc += (float)st[lane];  // the staged bytes used, not decoded
        } else if (lane < nu) {
            if constexpr (int_dot<T>()) {
                float* base = const_cast<float*>(xs);
                const int u = u0 + lane;
                const uint4* q = (const uint4*)(act_xq(base, K) + 32 * u);
                const uint4 q0 = q[0], q1 = q[1];
                const u32 xw[8] = {q0.x, q0.y, q0.z, q0.w, q1.x, q1.y, q1.z, q1.w};
                acc += unit_dot_i8<T>(st, lane, xw, act_xd(base, K)[u], act_xsum(base, K)[u], ss[u]);
            } else {
                acc += unit_dot<T>(st, lane, xs + 33 * u0);
            }
        }
        __syncwarp();  // the buffer is rewritten by the next pass
    }
    return warp_sum(acc);
}

// The weight formats whose products take activation kind A (a warp-uniform switch: Q, K and
// V of one layer may differ in type, e.g. Q5_0 and Q8_0 in Qwen2.5's Q4_K_M mix).
template <int A>
DEV float row_part_any(int t, const u8* __restrict__ r, int K, const float* __restrict__ xs,
                       const float* __restrict__ ss, u32* stage, int part, int nparts, int lane) {
#define RP(TT) return row_part<TT>(r, K, xs, ss, stage, part, nparts, lane)
    if (A == A_Q8_0) {
        if (t == T_Q4_0) RP(T_Q4_0);
        if (t == T_Q5_0) RP(T_Q5_0);
        if (t == T_Q8_0) RP(T_Q8_0);
        if (t == T_MXFP4) RP(T_MXFP4);
    } else if (A == A_Q8_1) {
        if (t == T_Q4_1) RP(T_Q4_1);
        if (t == T_Q5_1) RP(T_Q5_1);
    } else if (A == A_Q8_K) {
        if (t == T_Q4_K) RP(T_Q4_K);
        if (t == T_Q5_K) RP(T_Q5_K);
        if (t == T_Q6_K) RP(T_Q6_K);
    } else if (A == A_F16) {
        RP(T_F16);
    } else if (A == A_BF16) {
        RP(T_BF16);
    } else {
        RP(T_F32);
    }
#undef RP
    return __int_as_float(0x7fc00000);  // a type the host should not have sent here: NaN shows it
}

DEV double warp_sum_d(double v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// The product's input into shared memory: x (or RMSNorm(x) * nw: sum of squares in double,
// scale and products in float32 as the rms_norm kernel), then rounded through activation kind
// A exactly as act_q8_32 / act_q8_k / act_f16 / act_bf16 round it. ss: q8_1 block sums.
template <int A>
DEV void load_act(const float* __restrict__ x, const float* __restrict__ nw, float eps, int K, float* xs,
                  float* ss) {
    __shared__ double redd[FMV_WARPS];
    __shared__ float scale_s;
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    if (FMV_ABLATE == 2) {
        for (int c = tid; c < K; c += FMV_THREADS) xs[XI(c)] = x[c];
        __syncthreads();
        return;
    }
    if (nw != nullptr) {
        double acc = 0.0;
        for (int c = tid; c < K; c += FMV_THREADS) {
            double v = (double)x[c];
            acc += v * v;
        }
        acc = warp_sum_d(acc);
        if (lane == 0) redd[warp] = acc;
        __syncthreads();
        if (tid == 0) {
            double t = 0.0;
            for (int w = 0; w < FMV_WARPS; ++w) t += redd[w];
            const float mean = (float)(t / (double)K);
            scale_s = __fdiv_rn(1.f, __fsqrt_rn(__fadd_rn(mean, eps)));
        }
        __syncthreads();
        const float scale = scale_s;
        for (int c = tid; c < K; c += FMV_THREADS) xs[XI(c)] = __fmul_rn(__fmul_rn(x[c], scale), nw[c]);
    } else {
        for (int c = tid; c < K; c += FMV_THREADS) xs[XI(c)] = x[c];
    }
    __syncthreads();
    if (A == A_F16) {
        for (int c = tid; c < K; c += FMV_THREADS) xs[XI(c)] = round_f16(xs[XI(c)]);
    } else if (A == A_BF16) {
        for (int c = tid; c < K; c += FMV_THREADS) xs[XI(c)] = round_bf16(xs[XI(c)]);
    } else if (A == A_Q8_0 || A == A_Q8_1) {
        for (int blk = warp; blk < (K >> 5); blk += FMV_WARPS) {
            const float v = xs[blk * 33 + lane];
            const float amax = warp_max(fabsf(v));
            const float d = __fdiv_rn(amax, 127.f);
            const float inv = amax != 0.f ? __fdiv_rn(127.f, amax) : 0.f;
            const float q = rintf(__fmul_rn(v, inv)) + 0.f;
            xs[blk * 33 + lane] = __fmul_rn(round_f16(d), q);
            act_xq(xs, K)[blk * 32 + lane] = (i8)(int)q;
            const float qs = warp_sum(q);  // exact: at most 32 * 127
            if (lane == 0) {
                act_xd(xs, K)[blk] = round_f16(d);
                act_xsum(xs, K)[blk] = (int)qs;
                if (A == A_Q8_1) ss[blk] = round_f16(__fmul_rn(d, qs));
            }
        }
    } else if (A == A_Q8_K) {
        // one warp per 256-element super-block, 8 consecutive elements per lane: the scale
        // comes from the signed element of largest |x|, the first one on ties (ggml's scan)
        for (int sb = warp; sb < (K >> 8); sb += FMV_WARPS) {
            float* e = xs + XI(sb * 256 + lane * 8);  // 8 consecutive elements: one 32-unit
            float v[8];
            float best = -1.f;
            int bi = 0;
#pragma unroll
            for (int k = 0; k < 8; ++k) {
                v[k] = e[k];
                if (fabsf(v[k]) > best) {
                    best = fabsf(v[k]);
                    bi = lane * 8 + k;
                }
            }
            for (int o = 16; o > 0; o >>= 1) {
                const float ob = __shfl_xor_sync(0xffffffffu, best, o);
                const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
                if (ob > best || (ob == best && oi < bi)) {
                    best = ob;
                    bi = oi;
                }
            }
            const float vmax = __shfl_sync(0xffffffffu, v[bi & 7], bi >> 3);
            const float iscale = vmax != 0.f ? __fdiv_rn(-127.f, vmax) : 0.f;
            const float d = vmax != 0.f ? __fdiv_rn(1.f, iscale) : 0.f;
            i8* xq = act_xq(xs, K) + sb * 256 + lane * 8;
            int qsum = 0;
#pragma unroll
            for (int k = 0; k < 8; ++k) {
                const float q = fminf(rintf(__fmul_rn(v[k], iscale)), 127.f) + 0.f;
                e[k] = __fmul_rn(d, q);
                xq[k] = (i8)(int)q;
                qsum += (int)q;
            }
            // a 32-unit is 4 lanes' 8 elements: its int sum and the block's scale, per unit
            qsum += __shfl_xor_sync(0xffffffffu, qsum, 1);
            qsum += __shfl_xor_sync(0xffffffffu, qsum, 2);
            if ((lane & 3) == 0) {
                act_xsum(xs, K)[sb * 8 + (lane >> 2)] = qsum;
                act_xd(xs, K)[sb * 8 + (lane >> 2)] = d;
            }
        }
    }
    __syncthreads();
}

// Ask for bytes to be brought into L2 now, so that their DRAM latency passes while the block
// does other work (load_act; attention); the warps' own loads then hit L2. Addresses round
// out to 16-byte granules: the weight buffers' 16-byte tail covers the rounding up.
DEV void prefetch_bytes(const u8* p, i64 n) {
    // one thread: bulk prefetches of up to 1 MiB (cp.async.bulk.prefetch.L2, Hopper), or one
    // 128-byte line at a time on older chips
    if (FMV_ABLATE == 3) return;
    const unsigned long long lo = (unsigned long long)p & ~15ull;
    const unsigned long long hi = ((unsigned long long)(p + n) + 15) & ~15ull;
#if __CUDA_ARCH__ >= 900
    for (unsigned long long a = lo; a < hi; a += (1u << 20)) {
        const unsigned m = (unsigned)min(hi - a, (unsigned long long)(1u << 20));
        asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(__cvta_generic_to_global((const void*)a)),
                     "r"(m) : "memory");
    }
#else
    for (unsigned long long a = lo; a < hi; a += 128) asm volatile("prefetch.global.L2 [%0];" ::"l"(a));
#endif
}

DEV void prefetch_rows(const u8* W, i64 rb, int r0, int r1) {
    if (W == nullptr || r1 <= r0 || threadIdx.x != 0) return;
    prefetch_bytes(W + (i64)r0 * rb, (i64)(r1 - r0) * rb);
}

// Fused decode product, one activation row.
//   mode 0: up to three weights sharing the input (Q, K, V): y_i = W_i x + b_i
//   mode 1: y0 = resid + (W0 x + b0)                               (O and down projections)
//   mode 2: y0 = silu(W0 x) * (W1 x), n0 rows each                  (gate and up)
//   mode 3: mode 2 with wpr = 2, one warp taking the gate row and one the up row
// nw != null: the input is RMSNorm(x) * nw first. Types t_i: GGML type ids, all of kind A.
// wpr warps share a row (split-K for long rows: the down projection has 896 rows of 4864);
// a block does `iters` rounds of 8 / wpr rows. Partial sums are added in warp order.
template <int A>
DEV void fmv_impl(const float* __restrict__ x, const float* __restrict__ nw, float eps, int K, int mode, int iters,
                  int wpr, const u8* W0, i64 rb0, int t0, int n0, const float* b0, float* y0,
                  const u8* W1, i64 rb1, int t1, int n1, const float* b1, float* y1,
                  const u8* W2, i64 rb2, int t2, int n2, const float* b2, float* y2,
                  const float* __restrict__ resid) {
    extern __shared__ __align__(16) float fmv_smem[];
    __shared__ u32 stage_all[FMV_WARPS][STAGE_WORDS];
    __shared__ float red_g[FMV_WARPS], red_u[FMV_WARPS];
    float* xs = fmv_smem;
    float* ss = fmv_smem + ((K + 31) >> 5) * 33;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int rows_per_iter = FMV_WARPS / wpr, slot = warp / wpr, part = warp % wpr;
    const int total = mode == 0 ? n0 + n1 + n2 : n0;
    // The rows of round `it` into L2: the first two rounds while load_act runs, then each
    // round two ahead (a rolling window, so a head of 145 MB does not flush L2).
    auto prefetch_round = [&](int it) {
        if (it >= iters) return;
        const int lo = (blockIdx.x * iters + it) * rows_per_iter, hi = min(total, lo + rows_per_iter);
        if (mode >= 2) {
            prefetch_rows(W0, rb0, lo, hi);
            prefetch_rows(W1, rb1, lo, hi);
        } else {
            prefetch_rows(W0, rb0, max(lo, 0), min(hi, n0));
            prefetch_rows(W1, rb1, max(lo - n0, 0), min(hi - n0, n1));
            prefetch_rows(W2, rb2, max(lo - n0 - n1, 0), min(hi - n0 - n1, n2));
        }
    };
    prefetch_round(0);
    prefetch_round(1);
    load_act<A>(x, nw, eps, K, xs, ss);
    u32* stage = stage_all[warp];
    for (int it = 0; it < iters; ++it) {
        prefetch_round(it + 2);
        const int row = (blockIdx.x * iters + it) * rows_per_iter + slot;
        float g = 0.f, u = 0.f;
        const u8* W = W0;
        i64 rb = rb0;
        int t = t0, r = row;
        const float* b = b0;
        float* y = y0;
        if (row < total) {
            if (mode == 3) {
                // gate and up of a row on two warps: each stages one row, their loads overlap
                if (part == 0) g = row_part_any<A>(t0, W0 + (i64)row * rb0, K, xs, ss, stage, 0, 1, lane);
                else u = row_part_any<A>(t1, W1 + (i64)row * rb1, K, xs, ss, stage, 0, 1, lane);
            } else if (mode == 2) {
                g = row_part_any<A>(t0, W0 + (i64)row * rb0, K, xs, ss, stage, part, wpr, lane);
                u = row_part_any<A>(t1, W1 + (i64)row * rb1, K, xs, ss, stage, part, wpr, lane);
            } else {
                if (r >= n0) {
                    r -= n0;
                    if (r < n1) {
                        W = W1; rb = rb1; t = t1; b = b1; y = y1;
                    } else {
                        r -= n1;
                        W = W2; rb = rb2; t = t2; b = b2; y = y2;
                    }
                }
                g = row_part_any<A>(t, W + (i64)r * rb, K, xs, ss, stage, part, wpr, lane);
            }
        }
        if (wpr > 1) {
            if (lane == 0) {
                red_g[warp] = g;
                red_u[warp] = u;
            }
            __syncthreads();
            if (part == 0) {
                for (int k = 1; k < wpr; ++k) {
                    g += red_g[warp + k];
                    u += red_u[warp + k];
                }
            }
            __syncthreads();
        }
        if (row < total && part == 0 && lane == 0) {
            if (mode >= 2) {
                y0[row] = __fmul_rn(__fdiv_rn(g, __fadd_rn(1.f, expf(-g))), u);
            } else {
                float acc = g;
                if (b != nullptr) acc = __fadd_rn(acc, b[r]);
                if (mode == 1) acc = __fadd_rn(resid[r], acc);
                y[r] = acc;
            }
        }
    }
}

#define FMV_INSTANTIATE(A, NAME)                                                                       \
    extern "C" __global__ void __launch_bounds__(FMV_THREADS, 4) fmv_##NAME(                            \
        const float* x, const float* nw, float eps, int K, int mode, int iters, int wpr,               \
        const u8* W0, i64 rb0, int t0, int n0, const float* b0, float* y0,                             \
        const u8* W1, i64 rb1, int t1, int n1, const float* b1, float* y1,                             \
        const u8* W2, i64 rb2, int t2, int n2, const float* b2, float* y2, const float* resid) {       \
        fmv_impl<A>(x, nw, eps, K, mode, iters, wpr, W0, rb0, t0, n0, b0, y0, W1, rb1, t1, n1, b1, y1,  \
                    W2, rb2, t2, n2, b2, y2, resid);                                                   \
    }

FMV_INSTANTIATE(A_F32, f32)
FMV_INSTANTIATE(A_F16, f16)
FMV_INSTANTIATE(A_BF16, bf16)
FMV_INSTANTIATE(A_Q8_0, q8_0)
FMV_INSTANTIATE(A_Q8_1, q8_1)
FMV_INSTANTIATE(A_Q8_K, q8_k)

// RoPE angle of pair i at position p: ggml's float32 recurrence, cos/sin in double (as rope).
DEV void rope_cs(int p, int i, float theta_scale, float* c, float* s) {
    float theta = (float)p;
    for (int k = 0; k < i; ++k) theta = __fmul_rn(theta, theta_scale);
    *c = (float)cos((double)theta);
    *s = (float)sin((double)theta);
}

// One query token: RoPE on q (head h) and on the new k, the new K/V rows written to the
// float16 cache at position p (by the first query head of each KV group; the other heads of
// the group take the new row from their own shared memory, so no block reads a row another
// block is writing), then the attention kernel's arithmetic over positions t0 .. p.
// p = *pos (graph replay: the position lives in device memory) or `start` when pos is null.
// style: 0 no RoPE, 1 normal (adjacent pairs), 2 NeoX (halves).
extern "C" __global__ void __launch_bounds__(ATT_THREADS) attn_decode(
    const float* __restrict__ q, const float* __restrict__ k, const float* __restrict__ v, u16* kc, u16* vc,
    float* __restrict__ out, float* __restrict__ scores, int T_stride, const int* __restrict__ pos, int start,
    int n_head, int n_kv, int d, int n_rot, float theta_scale, int style, float q_scale, int has_q_scale,
    float scale, int window, const u8* pf0, i64 pn0, const u8* pf1, i64 pn1, const u8* pf2, i64 pn2,
    const u8* pf3, i64 pn3, const u8* pf4, i64 pn4, const u8* pf5, i64 pn5, const u8* pf6, i64 pn6,
    const u8* pf7, i64 pn7) {
    __shared__ float qs[256], kn[256], vn[256];
    if (blockIdx.x == 0 && threadIdx.x < 8) {
        // weights the layer reads next (the backend's prefetch hint): into L2 during attention
        const u8* pf[8] = {pf0, pf1, pf2, pf3, pf4, pf5, pf6, pf7};
        const i64 pn[8] = {pn0, pn1, pn2, pn3, pn4, pn5, pn6, pn7};
        if (pf[threadIdx.x] != nullptr) prefetch_bytes(pf[threadIdx.x], pn[threadIdx.x]);
    }
    __shared__ float redf[ATT_THREADS];
    __shared__ double redd[ATT_THREADS];
    const int h = blockIdx.x, tid = threadIdx.x;
    const int group = n_head / n_kv, kvh = h / group;
    const int p = pos != nullptr ? pos[0] : start;
    const int T = p + 1;
    const int t0 = (window > 0 && T > window) ? T - window : 0;
    const i64 kv_stride = (i64)n_kv * d;
    const float* qh = q + (i64)h * d;
    const float* kh = k + (i64)kvh * d;
    const float* vh = v + (i64)kvh * d;
    for (int c = tid; c < d; c += blockDim.x) {
        qs[c] = qh[c];
        kn[c] = kh[c];
        vn[c] = round_f16(vh[c]);
    }
    __syncthreads();
    if (style != 0) {
        const int half = n_rot / 2;
        for (int i = tid; i < half; i += blockDim.x) {
            float c, s;
            rope_cs(p, i, theta_scale, &c, &s);
            const int i0 = style == 2 ? i : 2 * i, i1 = style == 2 ? i + half : 2 * i + 1;
            float x0 = qh[i0], x1 = qh[i1];
            qs[i0] = __fsub_rn(__fmul_rn(x0, c), __fmul_rn(x1, s));
            qs[i1] = __fadd_rn(__fmul_rn(x0, s), __fmul_rn(x1, c));
            x0 = kh[i0];
            x1 = kh[i1];
            kn[i0] = __fsub_rn(__fmul_rn(x0, c), __fmul_rn(x1, s));
            kn[i1] = __fadd_rn(__fmul_rn(x0, s), __fmul_rn(x1, c));
        }
        __syncthreads();
    }
    const bool writer = (h % group) == 0;
    for (int c = tid; c < d; c += blockDim.x) {
        const float qv = has_q_scale ? __fmul_rn(qs[c], q_scale) : qs[c];
        qs[c] = round_f16(qv);
        const u16 k16 = f2h(kn[c]);
        kn[c] = h2f(k16);
        if (writer) {
            kc[(i64)p * kv_stride + (i64)kvh * d + c] = k16;
            vc[(i64)p * kv_stride + (i64)kvh * d + c] = f2h(vh[c]);
        }
    }
    __syncthreads();
    float* sc = scores + (i64)h * T_stride;
    float m = __int_as_float(0xff800000);  // -inf
    const bool vec = (d & 63) == 0;  // rows of 64, 128, ... halves: 16-byte loads, 8 in flight
    for (int t = t0 + tid; t < T; t += blockDim.x) {
        float acc = 0.f;
        if (t == p) {
            for (int c = 0; c < d; ++c) acc = fmaf(qs[c], kn[c], acc);
        } else if (vec) {
            const uint4* kr = (const uint4*)(kc + t * kv_stride + (i64)kvh * d);
            for (int c0 = 0; c0 < d; c0 += 64) {
                uint4 w[8];
#pragma unroll
                for (int j = 0; j < 8; ++j) w[j] = kr[(c0 >> 3) + j];
#pragma unroll
                for (int j = 0; j < 8; ++j) {
                    const u16* hv = (const u16*)&w[j];
#pragma unroll
                    for (int e = 0; e < 8; ++e) acc = fmaf(qs[c0 + 8 * j + e], h2f(hv[e]), acc);
                }
            }
        } else {
            const u16* kr = kc + t * kv_stride + (i64)kvh * d;
            for (int c = 0; c < d; ++c) acc = fmaf(qs[c], h2f(kr[c]), acc);
        }
        acc = __fmul_rn(acc, scale);
        sc[t] = acc;
        m = fmaxf(m, acc);
    }
    redf[tid] = m;
    __syncthreads();
    for (int o = blockDim.x >> 1; o > 0; o >>= 1) {
        if (tid < o) redf[tid] = fmaxf(redf[tid], redf[tid + o]);
        __syncthreads();
    }
    m = redf[0];
    double sum = 0.0;
    for (int t = t0 + tid; t < T; t += blockDim.x) {
        float e = expf(__fsub_rn(sc[t], m));
        sc[t] = e;
        sum += (double)e;
    }
    redd[tid] = sum;
    __syncthreads();
    for (int o = blockDim.x >> 1; o > 0; o >>= 1) {
        if (tid < o) redd[tid] += redd[tid + o];
        __syncthreads();
    }
    const float inv = (float)(1.0 / redd[0]);
    for (int t = t0 + tid; t < T; t += blockDim.x) sc[t] = round_f16(__fmul_rn(sc[t], inv));
    __syncthreads();
    float* o = out + (i64)h * d;
    if ((int)blockDim.x >= d) {
        const int nparts = blockDim.x / d, part = tid / d, c = tid % d;
        float acc = 0.f;
        if (part < nparts) {
            const u16* vr = vc + (i64)kvh * d + c;
            int t = t0 + part;
            // eight rows' loads in flight, then their products in the same order as one by one
            for (; t + 7 * nparts < T; t += 8 * nparts) {
                float vv[8];
#pragma unroll
                for (int j = 0; j < 8; ++j) {
                    const int tj = t + j * nparts;
                    vv[j] = tj == p ? vn[c] : h2f(vr[tj * kv_stride]);
                }
#pragma unroll
                for (int j = 0; j < 8; ++j) acc = fmaf(sc[t + j * nparts], vv[j], acc);
            }
            for (; t < T; t += nparts) acc = fmaf(sc[t], t == p ? vn[c] : h2f(vr[t * kv_stride]), acc);
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
            for (int t = t0; t < T; ++t) acc = fmaf(sc[t], t == p ? vn[c] : h2f(vr[t * kv_stride]), acc);
            o[c] = acc;
        }
    }
}

// argmax of logits[0..n) (the first index on ties and the first NaN if any, as np.argmax) in
// two passes: many blocks, then one.
DEV bool argmax_better(float v, int i, float best, int bi) {
    if (bi < 0) return true;
    const bool vn = v != v, bn = best != best;
    if (vn || bn) return vn && bn ? i < bi : vn;
    return v > best || (v == best && i < bi);
}

// Pass 1: block b reduces logits[b * chunk, (b + 1) * chunk) to one (value, index) pair.
extern "C" __global__ void __launch_bounds__(256) argmax_partial(const float* __restrict__ logits, int n, int chunk,
                                                                 float* __restrict__ pv, int* __restrict__ pi) {
    __shared__ float bv[256];
    __shared__ int bi[256];
    const int tid = threadIdx.x;
    const int lo = blockIdx.x * chunk, hi = min(n, lo + chunk);
    float best = 0.f;
    int idx = -1;
    for (int i = lo + tid; i < hi; i += blockDim.x) {
        const float v = logits[i];
        if (argmax_better(v, i, best, idx)) {
            best = v;
            idx = i;
        }
    }
    bv[tid] = best;
    bi[tid] = idx;
    __syncthreads();
    for (int o = blockDim.x >> 1; o > 0; o >>= 1) {
        if (tid < o && bi[tid + o] >= 0 && argmax_better(bv[tid + o], bi[tid + o], bv[tid], bi[tid])) {
            bv[tid] = bv[tid + o];
            bi[tid] = bi[tid + o];
        }
        __syncthreads();
    }
    if (tid == 0) {
        pv[blockIdx.x] = bv[0];
        pi[blockIdx.x] = bi[0];
    }
}

// Pass 2, one block: the best of the m partial pairs -> next[0]; for a replayed step also
// tok[0] (the next step's input) and pos[0] += 1.
extern "C" __global__ void __launch_bounds__(256) argmax_step(const float* __restrict__ pv, const int* __restrict__ pi,
                                                              int m, int* next, int* tok, int* pos) {
    __shared__ float bv[256];
    __shared__ int bi[256];
    const int tid = threadIdx.x;
    float best = 0.f;
    int idx = -1;
    for (int j = tid; j < m; j += blockDim.x) {
        if (pi[j] >= 0 && argmax_better(pv[j], pi[j], best, idx)) {
            best = pv[j];
            idx = pi[j];
        }
    }
    bv[tid] = best;
    bi[tid] = idx;
    __syncthreads();
    for (int o = blockDim.x >> 1; o > 0; o >>= 1) {
        if (tid < o && bi[tid + o] >= 0 && argmax_better(bv[tid + o], bi[tid + o], bv[tid], bi[tid])) {
            bv[tid] = bv[tid + o];
            bi[tid] = bi[tid + o];
        }
        __syncthreads();
    }
    if (tid == 0) {
        next[0] = bi[0];
        if (tok != nullptr) tok[0] = bi[0];
        if (pos != nullptr) pos[0] += 1;
    }
}

#endif  // __CUDACC__
