// Kernels for many-token (prefill) steps, appended to kernels.cu and decode.cu at compile time.

#if defined(__CUDACC__)

// ------------------------------------------------------------------ tensor-core helpers
// mma.sync m16n8k16, f16 inputs, f32 accumulation. Fragments (PTX ISA, "Matrix fragments
// for mma.m16n8k16"): g = lane / 4, k2 = 2 * (lane % 4);
//   A (16 x 16, row-major): a[0] = A[g][k2..k2+1], a[1] = A[g+8][k2..], a[2] = A[g][k2+8..],
//                           a[3] = A[g+8][k2+8..]   (two halves per register, low first)
//   B (16 x 8, "col"):      b[0] = B[k2..k2+1][g],  b[1] = B[k2+8..k2+9][g]
//   C (16 x 8):             c[0..1] = C[g][k2..k2+1], c[2..3] = C[g+8][k2..k2+1]
DEV void mma16816(float (&c)[4], const u32 (&a)[4], u32 b0, u32 b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
DEV u32 pack_h2(u16 lo, u16 hi) { return (u32)lo | ((u32)hi << 16); }

// ------------------------------------------------------------------ attention
// Causal GQA attention for QT = 64 queries of one head over the float16 cache; 4 warps, 16
// queries each. The one-block-per-query kernel (`attention`) reads every key row once per
// query with 2-byte loads: a 2048-token prompt spent 213 of its 260 ms there.
//
// Inputs are the reference's values exactly: Q rounded to f16, K and V from the f16 cache,
// probabilities rounded to f16 before P.V, so both products run on tensor cores (f16 x f16
// products are exact in float32). The softmax is the reference's: the row max, expf(s - max)
// summed in double, p = f16(e / total), which needs the total before any p; scores are
// therefore recomputed (three passes over the keys: max, sum, P.V) rather than rescaled
// online. What differs from the reference is only the order of float32 sums inside Q.K and
// P.V (the tensor cores' order instead of BLAS's).
#define AP_QT 64
#define AP_KT 64
template <int D>
DEV void attn_prefill_impl(const float* __restrict__ q, const u16* __restrict__ kc, const u16* __restrict__ vc,
                           float* __restrict__ out, int n, int n_head, int n_kv, int start, float scale, int window,
                           const float* __restrict__ sinks, int has_sinks) {
    constexpr int DP = D + 8;  // row stride in halves: 16-byte rows, fragment loads on 32 banks
    __shared__ __align__(16) u16 Ks[AP_KT * DP];
    __shared__ __align__(16) u16 Vs[AP_KT * DP];
    const int h = blockIdx.x, q0 = blockIdx.y * AP_QT;
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, k2 = 2 * (lane & 3);
    const int kvh = h / (n_head / n_kv);
    const i64 kv_stride = (i64)n_kv * D;
    const float NEG = __int_as_float(0xff800000);  // -inf
    // this warp's queries: rows g and g + 8 of its 16; -1: no query (every key masked)
    const int r0 = q0 + warp * 16 + g, r1 = r0 + 8;
    const int pos[2] = {r0 < n ? start + r0 : -1, r1 < n ? start + r1 : -1};
    int lo[2];
    for (int i = 0; i < 2; ++i) lo[i] = (window > 0 && pos[i] + 1 > window) ? pos[i] + 1 - window : 0;
    // Q as A fragments, rounded to f16
    u32 qa[D / 16][4];
    for (int kk = 0; kk < D / 16; ++kk) {
        for (int part = 0; part < 4; ++part) {
            const int r = (part & 1) ? r1 : r0, c = 16 * kk + k2 + ((part & 2) ? 8 : 0);
            u16 x0 = 0, x1 = 0;
            if (r < n) {
                const float* qr = q + ((i64)r * n_head + h) * D + c;
                x0 = f2h(qr[0]);
                x1 = f2h(qr[1]);
            }
            qa[kk][part] = pack_h2(x0, x1);
        }
    }
    const int nq = min(AP_QT, n - q0);
    const int first = start + q0, t_end = start + q0 + nq;  // keys of the block: < t_end
    const int t_begin = (window > 0 && first + 1 > window) ? (first + 1 - window) / AP_KT * AP_KT : 0;

    auto stage = [&](u16* dst, const u16* src, int t0) {
        // AP_KT rows of D halves, 8 halves (16 bytes) per load
        for (int e = tid; e < AP_KT * D / 8; e += 128) {
            const int tt = e / (D / 8), c8 = e % (D / 8), t = t0 + tt;
            uint4 v = make_uint4(0, 0, 0, 0);
            if (t < t_end) v = *(const uint4*)(src + (i64)t * kv_stride + (i64)kvh * D + 8 * c8);
            *(uint4*)(dst + tt * DP + 8 * c8) = v;
        }
    };
    // scores of key tile t0: s[j][0..3] for keys t0 + 8 j + k2 + {0, 1}, rows g / g + 8; -inf
    // where masked
    float s[AP_KT / 8][4];
    auto scores = [&](int t0) {
        __syncthreads();  // Ks free
        stage(Ks, kc, t0);
        __syncthreads();
#pragma unroll
        for (int j = 0; j < AP_KT / 8; ++j) {
            s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.f;
            const u16* kr = Ks + (8 * j + g) * DP + k2;
#pragma unroll
            for (int kk = 0; kk < D / 16; ++kk)
                mma16816(s[j], qa[kk], *(const u32*)(kr + 16 * kk), *(const u32*)(kr + 16 * kk + 8));
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int t = t0 + 8 * j + k2 + (e & 1), i = e >> 1;
                s[j][e] = (t <= pos[i] && t >= lo[i]) ? __fmul_rn(s[j][e], scale) : NEG;
            }
        }
    };
    // pass 1: row max (a row's values sit in the 4 lanes of its group)
    float m[2] = {NEG, NEG};
    for (int t0 = t_begin; t0 < t_end; t0 += AP_KT) {
        scores(t0);
#pragma unroll
        for (int j = 0; j < AP_KT / 8; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) m[e >> 1] = fmaxf(m[e >> 1], s[j][e]);
    }
    const float sink = has_sinks ? sinks[h] : 0.f;
    for (int i = 0; i < 2; ++i) {
        m[i] = fmaxf(m[i], __shfl_xor_sync(0xffffffffu, m[i], 1));
        m[i] = fmaxf(m[i], __shfl_xor_sync(0xffffffffu, m[i], 2));
        if (has_sinks) m[i] = fmaxf(m[i], sink);
    }
    // pass 2: sum of expf(s - max) in double
    double tot[2] = {0.0, 0.0};
    for (int t0 = t_begin; t0 < t_end; t0 += AP_KT) {
        scores(t0);
#pragma unroll
        for (int j = 0; j < AP_KT / 8; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e)
                if (s[j][e] != NEG) tot[e >> 1] += (double)expf(__fsub_rn(s[j][e], m[e >> 1]));
    }
    float inv[2];
    for (int i = 0; i < 2; ++i) {
        double v = tot[i];
        v += __shfl_xor_sync(0xffffffffu, v, 1);
        v += __shfl_xor_sync(0xffffffffu, v, 2);
        if (has_sinks) v += (double)expf(__fsub_rn(sink, m[i]));
        inv[i] = (float)(1.0 / v);
    }
    // pass 3: p = f16(e * inv) as A fragments, times the value tile
    float o[D / 8][4];
#pragma unroll
    for (int j = 0; j < D / 8; ++j) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.f;
    for (int t0 = t_begin; t0 < t_end; t0 += AP_KT) {
        stage(Vs, vc, t0);  // Vs is only read after the barriers inside scores()
        scores(t0);
        u16 p[AP_KT / 8][4];
#pragma unroll
        for (int j = 0; j < AP_KT / 8; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e)
                p[j][e] = s[j][e] == NEG ? (u16)0 : f2h(__fmul_rn(expf(__fsub_rn(s[j][e], m[e >> 1])), inv[e >> 1]));
#pragma unroll
        for (int kk = 0; kk < AP_KT / 16; ++kk) {
            const u32 a[4] = {pack_h2(p[2 * kk][0], p[2 * kk][1]), pack_h2(p[2 * kk][2], p[2 * kk][3]),
                              pack_h2(p[2 * kk + 1][0], p[2 * kk + 1][1]), pack_h2(p[2 * kk + 1][2], p[2 * kk + 1][3])};
            const u16* v0 = Vs + (16 * kk + k2) * DP + g;
#pragma unroll
            for (int j = 0; j < D / 8; ++j) {
                const u16* vj = v0 + 8 * j;
                mma16816(o[j], a, pack_h2(vj[0], vj[DP]), pack_h2(vj[8 * DP], vj[9 * DP]));
            }
        }
        __syncthreads();  // Vs consumed before the next tile is staged
    }
#pragma unroll
    for (int j = 0; j < D / 8; ++j) {
        const int c = 8 * j + k2;
        if (r0 < n) {
            float* orow = out + ((i64)r0 * n_head + h) * D + c;
            orow[0] = o[j][0];
            orow[1] = o[j][1];
        }
        if (r1 < n) {
            float* orow = out + ((i64)r1 * n_head + h) * D + c;
            orow[0] = o[j][2];
            orow[1] = o[j][3];
        }
    }
}

#define ATTN_PREFILL(D)                                                                                      \
    extern "C" __global__ void __launch_bounds__(128) attn_prefill_##D(                                      \
        const float* q, const u16* kc, const u16* vc, float* out, int n, int n_head, int n_kv, int start,      \
        float scale, int window, const float* sinks, int has_sinks) {                                        \
        attn_prefill_impl<D>(q, kc, vc, out, n, n_head, n_kv, start, scale, window, sinks, has_sinks);       \
    }

ATTN_PREFILL(64)
ATTN_PREFILL(96)
ATTN_PREFILL(128)

#endif  // __CUDACC__

#if defined(__CUDACC__)
// ------------------------------------------------------------------ split float16 products
// Prefill products on tensor cores without losing float32's accuracy: a float32 value v is
// hi + lo / 2048 with hi = f16(v) and lo = f16((v - hi) * 2048), 22 significant bits, which
// holds a q8-rounded activation (at most 19) and a dequantized weight (up to 24 for K-quants)
// exactly or nearly so. Then X W^T = Xhi Whi^T + (Xhi Wlo^T + Xlo Whi^T) / 2048, two float16
// GEMMs with float32 accumulation in cuBLAS; the Xlo Wlo^T term left out is 2^-22 of a product.

// x [n, k] -> xs [n, 2k] = [hi | lo] of x / r, r a power of two per row (1 unless the row's
// largest |x| reaches 2^15: hi must stay finite) -> rs[row]; one block of 256 per row. With
// dequant_split's [Whi | Wlo | Whi]: Xhi Whi^T, then += ([Xhi | Xlo] [Wlo | Whi]^T) / 2048.
extern "C" __global__ void __launch_bounds__(256) split_rows_f16(const float* __restrict__ x, u16* __restrict__ xs,
                                                                 float* __restrict__ rs, int k) {
    __shared__ float red[8];
    const float* xr = x + (i64)blockIdx.x * k;
    u16* o = xs + (i64)blockIdx.x * 2 * k;
    float amax = 0.f;
    for (int c = threadIdx.x; c < k; c += 256) amax = fmaxf(amax, fabsf(xr[c]));
    amax = warp_max(amax);
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = amax;
    __syncthreads();
    amax = red[0];
    for (int w = 1; w < 8; ++w) amax = fmaxf(amax, red[w]);
    const float r = amax >= 32768.f ? exp2f(ceilf(log2f(amax / 16384.f))) : 1.f;
    for (int c = threadIdx.x; c < k; c += 256) {
        const float v = __fdiv_rn(xr[c], r);
        const u16 h = f2h(v);
        o[c] = h;
        o[k + c] = f2h(__fmul_rn(__fsub_rn(v, h2f(h)), 2048.f));
    }
    if (threadIdx.x == 0) rs[blockIdx.x] = r;
}

// y[i, :] *= rs[i] where rs[i] != 1 (rows that split_rows_f16 scaled down).
extern "C" __global__ void scale_rows(float* __restrict__ y, const float* __restrict__ rs, i64 m, i64 total) {
    const i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < total) {
        const float r = rs[i / m];
        if (r != 1.f) y[i] = __fmul_rn(y[i], r);
    }
}

// Weights [rows, n_in] -> [rows, 3 n_in] = [hi | lo | hi] (act_split's layout; the generic
// path's two GEMMs take [hi] and [lo | hi] of it).
template <int T, bool MIN>
DEV void dequant_split_impl(const u8* __restrict__ W, i64 row_bytes, u16* __restrict__ out, int rows, int n_in) {
    const i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (i64)rows * n_in) return;
    const int r = (int)(i / n_in), c = (int)(i % n_in);
    const float w = dq<T, MIN>(W + (i64)r * row_bytes, c);
    const u16 h = f2h(w);
    u16* o = out + (i64)r * 3 * n_in;
    o[c] = h;
    o[n_in + c] = f2h(__fmul_rn(__fsub_rn(w, h2f(h)), 2048.f));
    o[2 * n_in + c] = h;
}

// Q4_1/Q5_1 block minimums as float16 (they are float16 in the block) [rows, n_in/32].
extern "C" __global__ void block_mins_h(const u8* __restrict__ W, i64 row_bytes, int type_size, u16* __restrict__ out,
                                       int rows, int nb) {
    const i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (i64)rows * nb) return;
    const int r = (int)(i / nb), u = (int)(i % nb);
    out[i] = (u16)ld16(W + (i64)r * row_bytes + (i64)u * type_size + 2);
}

#define DEQUANT_SPLIT(T, NAME)                                                                          \
    extern "C" __global__ void dequant_split_##NAME(const u8* W, i64 rb, u16* out, int rows, int n_in,  \
                                                    int with_min) {                                     \
        if (with_min) dequant_split_impl<T, true>(W, rb, out, rows, n_in);                              \
        else dequant_split_impl<T, false>(W, rb, out, rows, n_in);                                      \
    }
DEQUANT_SPLIT(T_F16, f16)
DEQUANT_SPLIT(T_Q4_0, q4_0)
DEQUANT_SPLIT(T_Q4_1, q4_1)
DEQUANT_SPLIT(T_Q5_0, q5_0)
DEQUANT_SPLIT(T_Q5_1, q5_1)
DEQUANT_SPLIT(T_Q8_0, q8_0)
DEQUANT_SPLIT(T_Q4_K, q4_k)
DEQUANT_SPLIT(T_Q5_K, q5_k)
DEQUANT_SPLIT(T_Q6_K, q6_k)
DEQUANT_SPLIT(T_MXFP4, mxfp4)
#endif  // __CUDACC__

#if defined(__CUDACC__)
// ------------------------------------------------------------------ fused prefill steps
// One launch before a group of products that share an input: (RMSNorm, then) the rounding
// to the weights' activation kind (decode.cu's load_act, the same arithmetic as act_q8_32 /
// act_q8_k / act_f16), then the float16 split, laid out for ONE GEMM (each cuBLAS call costs
// ~50 us of host time; a prefill makes ~170 groups): xs [n, 3K] = [2048 hi | hi | lo] against
// weights [Whi | Wlo | Whi] with alpha 1/2048 gives hi Whi + (hi Wlo + lo Whi) / 2048. The row
// is divided by r, a power of two with |x / r| < 16, so that 2048 hi stays finite. One block
// per row; dynamic shared memory: fmv_smem(K).
template <int A>
DEV void act_split_impl(const float* __restrict__ x, const float* __restrict__ nw, float eps, int K,
                        u16* __restrict__ xs, float* __restrict__ rs, u16* __restrict__ sums) {
    extern __shared__ __align__(16) float fmv_smem[];
    __shared__ float red[FMV_WARPS];
    float* xr = fmv_smem;
    float* ss = fmv_smem + ((K + 31) >> 5) * 33;
    load_act<A>(x + (i64)blockIdx.x * K, nw, eps, K, xr, ss);
    float amax = 0.f;
    for (int c = threadIdx.x; c < K; c += FMV_THREADS) amax = fmaxf(amax, fabsf(xr[XI(c)]));
    amax = warp_max(amax);
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = amax;
    __syncthreads();
    amax = red[0];
    for (int w = 1; w < FMV_WARPS; ++w) amax = fmaxf(amax, red[w]);
    const float r = amax >= 16.f ? exp2f(ceilf(log2f(amax / 8.f))) : 1.f;
    u16* o = xs + (i64)blockIdx.x * 3 * K;
    for (int c = threadIdx.x; c < K; c += FMV_THREADS) {
        const float v = __fdiv_rn(xr[XI(c)], r);
        const u16 h = f2h(v);
        o[c] = f2h(__fmul_rn(h2f(h), 2048.f));
        o[K + c] = h;
        o[2 * K + c] = f2h(__fmul_rn(__fsub_rn(v, h2f(h)), 2048.f));
    }
    if (threadIdx.x == 0) rs[blockIdx.x] = r;
    if (A == A_Q8_1)  // q8_1's block sums / r (float16 values already), for the minimums' GEMM
        for (int u = threadIdx.x; u < (K >> 5); u += FMV_THREADS)
            sums[(i64)blockIdx.x * (K >> 5) + u] = f2h(__fdiv_rn(ss[u], r));
}

#define ACT_SPLIT(A, NAME)                                                                              \
    extern "C" __global__ void __launch_bounds__(FMV_THREADS) act_split_##NAME(                           \
        const float* x, const float* nw, float eps, int K, u16* xs, float* rs, u16* sums) {              \
        act_split_impl<A>(x, nw, eps, K, xs, rs, sums);                                                  \
    }
ACT_SPLIT(A_F16, f16)
ACT_SPLIT(A_Q8_0, q8_0)
ACT_SPLIT(A_Q8_1, q8_1)
ACT_SPLIT(A_Q8_K, q8_k)

// After the GEMM of a group [n, m]: the row scale, biases (b0 for columns < n0, b1 for the
// next n1, b2 for the rest; null: none), then the residual: y = resid + (y * r + b), the
// reference's order (linear adds its bias, then add(residual, y)).
extern "C" __global__ void prefill_epilogue(float* __restrict__ y, i64 m, i64 total, const float* __restrict__ rs,
                                            const float* b0, int n0, const float* b1, int n1, const float* b2,
                                            const float* __restrict__ resid) {
    const i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= total) return;
    const int col = (int)(i % m);
    float v = y[i];
    const float r = rs[i / m];
    if (r != 1.f) v = __fmul_rn(v, r);
    const float* b = col < n0 ? b0 : col < n0 + n1 ? b1 : b2;
    const int bc = col < n0 ? col : col < n0 + n1 ? col - n0 : col - n0 - n1;
    if (b != nullptr) v = __fadd_rn(v, b[bc]);
    if (resid != nullptr) v = __fadd_rn(resid[i], v);
    y[i] = v;
}

// gu [n, 2 ff] (gate columns, then up) after the GEMM -> out [n, ff] = swiglu(gate, up) with
// the row scale applied first; the swiglu kernel's arithmetic.
extern "C" __global__ void prefill_swiglu(const float* __restrict__ gu, const float* __restrict__ rs,
                                          float* __restrict__ out, int ff, i64 total) {
    const i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= total) return;
    const i64 row = i / ff;
    const int c = (int)(i % ff);
    const float r = rs[row];
    float g = gu[row * 2 * ff + c], u = gu[row * 2 * ff + ff + c];
    if (r != 1.f) {
        g = __fmul_rn(g, r);
        u = __fmul_rn(u, r);
    }
    out[i] = __fmul_rn(__fdiv_rn(g, __fadd_rn(1.f, expf(-g))), u);
}
#endif  // __CUDACC__
