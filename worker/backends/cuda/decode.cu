// Fused kernels for one-token decode steps (appended to kernels.cu at compile time; uses its
// decoders, rounding helpers and warp reductions).
//
// A decode step of a 0.5B model is ~400 small products and element-wise operations; launched
// one by one they cost far more than the ~0.15 ms it takes to read the weights. These kernels
// do a decoder layer in four launches while the context is short (norm+QKV; RoPE, cache
// write, attention, O and residual by clusters, attn_out_*; norm+gate/up+SwiGLU;
// down+residual), five past it (attn_decode, then O apart), and the CuPy backend captures a
// whole step in a CUDA graph. Arithmetic is the unfused kernels' own (same rounding of
// activations, same RMSNorm / RoPE / softmax code), except inside a product: a 32-element
// unit of most block formats is summed exactly in integers (kernels.cu's unit_dot_i8, as
// ggml's CUDA kernels do) and scaled once, and the float32 sums run per unit, then across the
// warp.

#if defined(__CUDACC__)

// FMV_ABLATE (bench/gpu_decode_ablation.py compiles variants; 0 in the worker): 1 skips the dot
// products' arithmetic, 2 the input's norm and rounding, 4 the weight loads (3 skipped the L2
// prefetches, gone since). Timing each against 0 says where a product's time goes. 5 stages the
// norm weights with plain loads before pdl_wait instead of cp.async (fmv_impl), 6 drops
// attention's loads ahead of pdl_wait of the cached K / V rows and its RoPE cos / sin
// (attn_decode), 8 has the down projection stage its rows after pdl_wait; these compute the
// same values. 14 has attn_out_* let the next kernel start at its own start, as the
// other kernels do, rather than after its attention.
#ifndef FMV_ABLATE
#define FMV_ABLATE 0
#endif

// FMV_TIMELINE (bench/gpu_timeline.py compiles it; 0 in the worker): each decode kernel
// stamps %globaltimer when its first block starts, when its first and last blocks pass
// pdl_wait, and when its last block ends, into tl_t[k] for the k-th kernel of the step (k
// counted on the device: the last block of each kernel advances tl_seq, which the next one
// reads after its pdl_wait). What a recorded step spends inside kernels and between them.
#ifndef FMV_TIMELINE
#define FMV_TIMELINE 0
#endif
#if FMV_TIMELINE
#define TL_MAX 2048
__device__ unsigned long long tl_t[TL_MAX][4];
__device__ unsigned long long tl_ph[TL_MAX][4];
__device__ unsigned tl_meta[TL_MAX];
__device__ unsigned tl_late[TL_MAX];  // blocks that found the wait already released
__device__ unsigned long long tl_lastup[TL_MAX];  // the latest block's start
__device__ unsigned tl_seq;
__device__ unsigned tl_done[TL_MAX];
DEV unsigned long long tl_now() {
    unsigned long long t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return t;
}
#define TL_BEGIN const unsigned long long tl_t0 = tl_now();
#define TL_WAITED(META)                                                      \
    const unsigned long long tl_tw = tl_now();                               \
    const unsigned tl_k = min(*(volatile unsigned*)&tl_seq, TL_MAX - 1u);    \
    if (threadIdx.x == 0) {                                                  \
        atomicMin(&tl_t[tl_k][0], tl_t0);                                    \
        atomicMin(&tl_t[tl_k][1], tl_tw);                                    \
        atomicMax(&tl_t[tl_k][2], tl_tw);                                    \
        atomicMax(&tl_lastup[tl_k], tl_t0);                                  \
        if (tl_tw - tl_t0 < 1500ull) atomicAdd(&tl_late[tl_k], 1u);          \
        if (blockIdx.x == 0 && blockIdx.y == 0) tl_meta[tl_k] = (META);      \
    }
// phase j of kernel tl_k reached by this block (thread 0): the latest over blocks
#define TL_MARK(J)                                                           \
    if (threadIdx.x == 0) atomicMax(&tl_ph[tl_k][J], tl_now());
#define TL_KIDX tl_k  // this kernel's index, for TL_MARK in a callee
#define TL_END                                                               \
    __syncthreads();                                                         \
    if (threadIdx.x == 0) {                                                  \
        __threadfence();                                                     \
        atomicMax(&tl_t[tl_k][3], tl_now());                                 \
        if (atomicAdd(&tl_done[tl_k], 1u) + 1u == gridDim.x * gridDim.y) {   \
            __threadfence();                                                 \
            atomicExch(&tl_seq, tl_k + 1u);                                  \
        }                                                                    \
    }
#else
#define TL_BEGIN
#define TL_WAITED(META)
#define TL_MARK(J)
#define TL_KIDX 0u
#define TL_END
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
    float a0 = 0.f;
    if (T == T_Q5_K) {
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

// Formats whose units take the integer path (q8_0 / q8_1 / q8_K inputs; Q5_K keeps the float
// path).
template <int T>
DEV constexpr bool int_dot() {
    return T == T_Q4_0 || T == T_Q4_1 || T == T_Q5_0 || T == T_Q5_1 || T == T_Q8_0 || T == T_Q4_K || T == T_Q6_K ||
           T == T_MXFP4;
}

// Weight rows reach a warp through shared memory: 16-byte asynchronous copies (cp.async) of
// the aligned granules that hold a row segment, into the warp's ring of slots. A block's
// copies for several rounds of rows are in flight at once, and the first rounds are issued
// before pdl_wait, while the previous kernel still runs (they read only weights). Copies
// start at the granule holding the segment's first byte and may end up to 15 bytes past its
// last: weight buffers are allocated with a 16-byte tail. Before sm_80: plain 16-byte loads.
#define FMV_NST_MAX 8     // ring slots per warp (cp_async_wait's immediates go to 7)
#define FMV_RED_ROUNDS 16 // rounds of split-K partial sums a block keeps (host: iters <= this)

DEV void cp_async16(u8* dst, const u8* src) {
#if __CUDA_ARCH__ >= 800
    const unsigned s = (unsigned)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(s), "l"(src) : "memory");
#else
    *(uint4*)dst = __ldg((const uint4*)src);
#endif
}
DEV void cp_async_commit() {
#if __CUDA_ARCH__ >= 800
    asm volatile("cp.async.commit_group;" ::: "memory");
#endif
}
// Returns once at most n (0 .. FMV_NST_MAX - 1) of this thread's committed groups are pending.
DEV void cp_async_wait(int n) {
#if __CUDA_ARCH__ >= 800
    switch (n) {
        case 0: asm volatile("cp.async.wait_group 0;" ::: "memory"); break;
        case 1: asm volatile("cp.async.wait_group 1;" ::: "memory"); break;
        case 2: asm volatile("cp.async.wait_group 2;" ::: "memory"); break;
        case 3: asm volatile("cp.async.wait_group 3;" ::: "memory"); break;
        case 4: asm volatile("cp.async.wait_group 4;" ::: "memory"); break;
        case 5: asm volatile("cp.async.wait_group 5;" ::: "memory"); break;
        case 6: asm volatile("cp.async.wait_group 6;" ::: "memory"); break;
        default: asm volatile("cp.async.wait_group 7;" ::: "memory"); break;
    }
#endif
}

// Bytes and 32-units of a block of weight type t (K-quants: a 256-element super-block of 8
// units); 0 bytes for the float types, which are read from global memory directly.
DEV int block_bytes_of(int t) {
    return t == T_Q4_0 ? 18 : t == T_Q4_1 ? 20 : t == T_Q5_0 ? 22 : t == T_Q5_1 ? 24 : t == T_Q8_0 ? 34
         : t == T_MXFP4 ? 17 : t == T_Q4_K ? 144 : t == T_Q5_K ? 176 : t == T_Q6_K ? 210 : 0;
}
DEV int units_per_block_of(int t) { return (t == T_Q4_K || t == T_Q5_K || t == T_Q6_K) ? 8 : 1; }

// Byte offset of unit u in a row of weight type t (0 for the float types: not staged).
DEV int unit_offset(int t, int u) { return u / units_per_block_of(t) * block_bytes_of(t); }

// Issue the copies of the n bytes at src into slot (16-byte aligned): the granules from the
// one holding src; src's first byte lands at slot + (src & 15).
DEV void stage_async(u8* slot, const u8* src, int n, int lane) {
    if (FMV_ABLATE == 4) return;
    const unsigned long long a = (unsigned long long)src;
    const u8* s = (const u8*)(a & ~15ull);
    const int nc = ((int)(a & 15) + n + 15) >> 4;
    for (int i = lane; i < nc; i += 32) cp_async16(slot + 16 * i, s + 16 * i);
}

// This warp's share of one row's dot product: units u0 .. u0 + nu - 1, staged at st, one unit
// per lane (lane, lane + 32, ...); returns the warp's sum (every lane). Float types read their
// columns part * 32 + lane, ... (stride 32 * nparts) from the row in global memory.
template <int T>
DEV float row_part(const u8* __restrict__ row, const u8* __restrict__ st, int u0, int nu, int K,
                   const float* __restrict__ xs, const float* __restrict__ ss, int part, int nparts, int lane) {
    float acc = 0.f;
    if constexpr (T == T_F32 || T == T_F16 || T == T_BF16) {
        if ((K & 7) == 0 && ((unsigned long long)row & 15) == 0) {
            // 8 consecutive columns a lane: 16-byte loads (two for F32), 4 rounds in flight. A
            // lane's 8 inputs lie in one 32-unit of xs, and the 32 lanes' on 32 banks.
#pragma unroll 4
            for (int c = (part * 32 + lane) * 8; c < K; c += 256 * nparts) {
                float w[8];
                if (T == T_F32) {
                    const float4 a = ((const float4*)row)[c >> 2], b = ((const float4*)row)[(c >> 2) + 1];
                    w[0] = a.x; w[1] = a.y; w[2] = a.z; w[3] = a.w;
                    w[4] = b.x; w[5] = b.y; w[6] = b.z; w[7] = b.w;
                } else {
                    const uint4 q = ((const uint4*)row)[c >> 3];
                    const u16* h = (const u16*)&q;
#pragma unroll
                    for (int e = 0; e < 8; ++e) w[e] = T == T_F16 ? h2f(h[e]) : I2F((u32)h[e] << 16);
                }
#pragma unroll
                for (int e = 0; e < 8; ++e) acc = fmaf(xs[XI(c + e)], w[e], acc);
            }
            return warp_sum(acc);
        }
        for (int c = part * 32 + lane; c < K; c += 32 * nparts) {
            float w;
            if (T == T_F32) w = ((const float*)row)[c];
            else if (T == T_F16) w = h2f(((const u16*)row)[c]);
            else w = I2F((u32)((const u16*)row)[c] << 16);
            acc = fmaf(xs[XI(c)], w, acc);
        }
        return warp_sum(acc);
    } else {
        for (int j = lane; j < nu; j += 32) {
            if (FMV_ABLATE == 1) {
                acc += (float)st[j];  // the staged bytes used, not decoded
            } else if constexpr (int_dot<T>()) {
                float* base = const_cast<float*>(xs);
                const int u = u0 + j;
                const uint4* q = (const uint4*)(act_xq(base, K) + 32 * u);
                const uint4 q0 = q[0], q1 = q[1];
                const u32 xw[8] = {q0.x, q0.y, q0.z, q0.w, q1.x, q1.y, q1.z, q1.w};
                acc += unit_dot_i8<T>(st, j, xw, act_xd(base, K)[u], act_xsum(base, K)[u], ss[u]);
            } else {
                acc += unit_dot<T>(st, j, xs + 33 * u0);
            }
        }
        return warp_sum(acc);
    }
}

// The weight formats whose products take activation kind A (a warp-uniform switch: Q, K and
// V of one layer may differ in type, e.g. Q5_0 and Q8_0 in Qwen2.5's Q4_K_M mix).
template <int A>
DEV float row_part_any(int t, const u8* __restrict__ row, const u8* __restrict__ st, int u0, int nu, int K,
                       const float* __restrict__ xs, const float* __restrict__ ss, int part, int nparts, int lane) {
#define RP(TT) return row_part<TT>(row, st, u0, nu, K, xs, ss, part, nparts, lane)
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

// rpw (2 or 4) consecutive rows of one integer-dot format, staged back to back at st, taken
// as one row of rpw * nu units: unit g = q * nu + j is unit j of row q (a row is whole blocks,
// so the next row's units follow without a gap). Lane l takes units l, l + 32, ... and keeps
// a sum per row; then lanes swap half their rows across the warp's halves (and quarters, for
// 4 rows) before the usual xor tree. Returns this lane's sum: the total of row
// rows_dot_row(lane, rpw) on the lanes where rows_dot_holds(lane, rpw).
DEV int rows_dot_row(int lane, int rpw) { return rpw == 4 ? (lane >> 4) * 2 + ((lane >> 3) & 1) : lane >> 4; }
DEV bool rows_dot_holds(int lane, int rpw) { return (lane & (rpw == 4 ? 7 : 15)) == 0; }

template <int T>
DEV float rows_dot(const u8* __restrict__ st, int rpw, int nu, int K, const float* __restrict__ xs,
                   const float* __restrict__ ss, int lane) {
    float a0 = 0.f, a1 = 0.f, a2 = 0.f, a3 = 0.f;
    if constexpr (int_dot<T>()) {
        float* base = const_cast<float*>(xs);
        const i8* xq = act_xq(base, K);
        const float* xd = act_xd(base, K);
        const int* xsum = act_xsum(base, K);
        int q = lane / nu, j = lane - q * nu;
        for (int g = lane; g < rpw * nu; g += 32) {
            const uint4* qp = (const uint4*)(xq + 32 * j);
            const uint4 q0 = qp[0], q1 = qp[1];
            const u32 xw[8] = {q0.x, q0.y, q0.z, q0.w, q1.x, q1.y, q1.z, q1.w};
            const float d = FMV_ABLATE == 1 ? (float)st[g] : unit_dot_i8<T>(st, g, xw, xd[j], xsum[j], ss[j]);
            a0 += q == 0 ? d : 0.f;
            a1 += q == 1 ? d : 0.f;
            a2 += q == 2 ? d : 0.f;
            a3 += q == 3 ? d : 0.f;
            j += 32;
            while (j >= nu) {
                j -= nu;
                ++q;
            }
        }
    }
    const bool hi = lane & 16;
    float v;
    if (rpw == 4) {
        // rows 0, 1 to lanes 0-15 and rows 2, 3 to lanes 16-31; then row 0 / 2 to lanes with
        // bit 3 clear, row 1 / 3 to the others
        const float s0 = __shfl_xor_sync(0xffffffffu, hi ? a0 : a2, 16);
        const float s1 = __shfl_xor_sync(0xffffffffu, hi ? a1 : a3, 16);
        const float v0 = (hi ? a2 : a0) + s0, v1 = (hi ? a3 : a1) + s1;
        const bool h8 = lane & 8;
        v = (h8 ? v1 : v0) + __shfl_xor_sync(0xffffffffu, h8 ? v0 : v1, 8);
        for (int o = 4; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    } else {
        v = (hi ? a1 : a0) + __shfl_xor_sync(0xffffffffu, hi ? a0 : a1, 16);
        for (int o = 8; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    }
    return v;
}

template <int A>
DEV float rows_dot_any(int t, const u8* __restrict__ st, int rpw, int nu, int K, const float* __restrict__ xs,
                       const float* __restrict__ ss, int lane) {
#define RD(TT) return rows_dot<TT>(st, rpw, nu, K, xs, ss, lane)
    if (A == A_Q8_0) {
        if (t == T_Q4_0) RD(T_Q4_0);
        if (t == T_Q5_0) RD(T_Q5_0);
        if (t == T_Q8_0) RD(T_Q8_0);
        if (t == T_MXFP4) RD(T_MXFP4);
    } else if (A == A_Q8_1) {
        if (t == T_Q4_1) RD(T_Q4_1);
        if (t == T_Q5_1) RD(T_Q5_1);
    } else if (A == A_Q8_K) {
        if (t == T_Q4_K) RD(T_Q4_K);
        if (t == T_Q6_K) RD(T_Q6_K);
    }
#undef RD
    return __int_as_float(0x7fc00000);  // the host sends rpw > 1 only for these formats
}

DEV double warp_sum_d(double v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// A load_act whose norm weights were copied into xs's slots beforehand (stage_norm: fmv_impl
// does it before pdl_wait, off the critical path) reads them there.
DEV void stage_norm(const float* __restrict__ nw, int K, float* xs) {
    if (nw == nullptr) return;
    for (int c = threadIdx.x; c < K; c += FMV_THREADS) xs[XI(c)] = nw[c];
}

// The same as one commit group of 4-byte cp.async copies, which the thread does not wait for:
// a block that starts once the kernel before has finished (no slot for it earlier) goes on to
// its input without a round trip for the norm weights first. The caller waits for the group
// (cp_async_wait) and a barrier before reading xs. Always commits, so that group counts hold.
DEV void stage_norm_async(const float* __restrict__ nw, int K, float* xs) {
#if __CUDA_ARCH__ >= 800
    if (nw != nullptr) {
        for (int c = threadIdx.x; c < K; c += FMV_THREADS) {
            const unsigned d = (unsigned)__cvta_generic_to_shared(xs + XI(c));
            asm volatile("cp.async.ca.shared.global [%0], [%1], 4;" ::"r"(d), "l"(nw + c) : "memory");
        }
    }
    cp_async_commit();
#else
    stage_norm(nw, K, xs);
#endif
}

// load_act's fast path: each thread holds chunks of 8 consecutive elements in registers
// (chunk i = tid + 256 j, j < LA_CHUNKS), all loaded at once with 16-byte loads; q8_0 / q8_1
// blocks are then rounded on 4 lanes each and q8_K super-blocks on a warp each, every block
// at once, with no round trip through shared memory before the rounding.
#define LA_CHUNKS 3  // K <= 8 * 256 * 3 = 6144 (Qwen2.5's 4864-wide down projection)

// One q8_K super-block, 8 consecutive elements per lane (lane l: elements 8l .. 8l + 7), rounded
// as act_q8_k rounds it: the scale comes from the signed element of largest |x|, the first one
// on ties (ggml's scan). v becomes d * q; the lane's int8 values go to xq[8l ..], each 32-unit's
// int sum and scale to xsum[u], xd[u] (u = l / 4).
DEV void round_q8k(float (&v)[8], int lane, i8* xq, int* xsum, float* xd) {
    float best = -1.f, vmax = 0.f;  // |x|, its index and its signed value
    int bi = 0;
#pragma unroll
    for (int k = 0; k < 8; ++k) {
        if (fabsf(v[k]) > best) {
            best = fabsf(v[k]);
            bi = lane * 8 + k;
            vmax = v[k];
        }
    }
    for (int o = 16; o > 0; o >>= 1) {
        const float ob = __shfl_xor_sync(0xffffffffu, best, o);
        const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
        const float ov = __shfl_xor_sync(0xffffffffu, vmax, o);
        if (ob > best || (ob == best && oi < bi)) {
            best = ob;
            bi = oi;
            vmax = ov;
        }
    }
    const float iscale = vmax != 0.f ? __fdiv_rn(-127.f, vmax) : 0.f;
    const float d = vmax != 0.f ? __fdiv_rn(1.f, iscale) : 0.f;
    int qsum = 0;
    u32 packed[2] = {0u, 0u};
#pragma unroll
    for (int k = 0; k < 8; ++k) {
        const float q = fminf(rintf(__fmul_rn(v[k], iscale)), 127.f) + 0.f;
        v[k] = __fmul_rn(d, q);
        packed[k >> 2] |= ((u32)(int)q & 0xffu) << (8 * (k & 3));
        qsum += (int)q;
    }
    *(uint2*)(xq + 8 * lane) = make_uint2(packed[0], packed[1]);
    // a 32-unit is 4 lanes' 8 elements
    qsum += __shfl_xor_sync(0xffffffffu, qsum, 1);
    qsum += __shfl_xor_sync(0xffffffffu, qsum, 2);
    if ((lane & 3) == 0) {
        xsum[lane >> 2] = qsum;
        xd[lane >> 2] = d;
    }
}

template <int A>
DEV bool load_act_vec_ok(const float* x, const float* nw, bool nw_staged, int K) {
    const unsigned long long addr = (unsigned long long)x | (nw_staged || nw == nullptr ? 0ull : (unsigned long long)nw);
    if ((addr & 15) != 0 || K > 8 * FMV_THREADS * LA_CHUNKS) return false;
    if (A == A_Q8_K) return K % 256 == 0;
    return (A == A_Q8_0 || A == A_Q8_1) && K % 32 == 0;
}

// The product's input into shared memory: x (or RMSNorm(x) * nw: sum of squares in double,
// scale and products in float32 as the rms_norm kernel), then rounded through activation kind
// A exactly as act_q8_32 / act_q8_k / act_f16 / act_bf16 round it. ss: q8_1 block sums.
// nw_staged: nw's values are in xs already (stage_norm).
template <int A>
DEV void load_act(const float* __restrict__ x, const float* __restrict__ nw, float eps, int K, float* xs,
                  float* ss, bool nw_staged = false) {
    __shared__ double redd[FMV_WARPS];
    __shared__ float scale_s;
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    if (FMV_ABLATE == 2) {
        for (int c = tid; c < K; c += FMV_THREADS) xs[XI(c)] = x[c];
        __syncthreads();
        return;
    }
    if (load_act_vec_ok<A>(x, nw, nw_staged, K)) {
        const int nch = K >> 3;
        float v[LA_CHUNKS][8];
#pragma unroll
        for (int j = 0; j < LA_CHUNKS; ++j) {
            const int i = tid + FMV_THREADS * j;
            if (i < nch) {
                const float4 a = ((const float4*)x)[2 * i], b = ((const float4*)x)[2 * i + 1];
                v[j][0] = a.x; v[j][1] = a.y; v[j][2] = a.z; v[j][3] = a.w;
                v[j][4] = b.x; v[j][5] = b.y; v[j][6] = b.z; v[j][7] = b.w;
            }
        }
        if (nw != nullptr) {
            double acc = 0.0;
#pragma unroll
            for (int j = 0; j < LA_CHUNKS; ++j) {
                if (tid + FMV_THREADS * j < nch) {
#pragma unroll
                    for (int k = 0; k < 8; ++k) acc += (double)v[j][k] * (double)v[j][k];
                }
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
#pragma unroll
            for (int j = 0; j < LA_CHUNKS; ++j) {
                const int i = tid + FMV_THREADS * j;
                if (i < nch) {
#pragma unroll
                    for (int k = 0; k < 8; ++k) {
                        const int c = 8 * i + k;
                        v[j][k] = __fmul_rn(__fmul_rn(v[j][k], scale), nw_staged ? xs[XI(c)] : nw[c]);
                    }
                }
            }
        }
#pragma unroll
        for (int j = 0; j < LA_CHUNKS; ++j) {
            const int i = tid + FMV_THREADS * j;
            if (i - lane >= nch) continue;  // warp-uniform: nch is a multiple of 4 (of 32 for q8_K)
            const bool on = i < nch;
            if (A == A_Q8_0 || A == A_Q8_1) {
                // a 32-block is chunks 4b .. 4b + 3: lanes 4(l/4) .. +3 of this warp
                float m = 0.f;
#pragma unroll
                for (int k = 0; k < 8; ++k) m = fmaxf(m, fabsf(v[j][k]));
                m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 1));
                m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 2));
                const float d = __fdiv_rn(m, 127.f);
                const float inv = m != 0.f ? __fdiv_rn(127.f, m) : 0.f;
                const float dh = round_f16(d);
                int qs = 0;
                u32 packed[2] = {0u, 0u};
#pragma unroll
                for (int k = 0; k < 8; ++k) {
                    const float q = rintf(__fmul_rn(v[j][k], inv)) + 0.f;
                    if (on) xs[XI(8 * i + k)] = __fmul_rn(dh, q);
                    packed[k >> 2] |= ((u32)(int)q & 0xffu) << (8 * (k & 3));
                    qs += (int)q;
                }
                if (on) *(uint2*)(act_xq(xs, K) + 8 * i) = make_uint2(packed[0], packed[1]);
                qs += __shfl_xor_sync(0xffffffffu, qs, 1);
                qs += __shfl_xor_sync(0xffffffffu, qs, 2);
                if (on && (lane & 3) == 0) {
                    const int blk = i >> 2;
                    act_xd(xs, K)[blk] = dh;
                    act_xsum(xs, K)[blk] = qs;
                    if (A == A_Q8_1) ss[blk] = round_f16(__fmul_rn(d, (float)qs));
                }
            } else {
                // a super-block is the 32 chunks of this warp
                const int sb = i >> 5;
                round_q8k(v[j], lane, act_xq(xs, K) + 256 * sb, act_xsum(xs, K) + 8 * sb, act_xd(xs, K) + 8 * sb);
#pragma unroll
                for (int k = 0; k < 8; ++k) xs[XI(8 * i + k)] = v[j][k];
            }
        }
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
        for (int c = tid; c < K; c += FMV_THREADS)
            xs[XI(c)] = __fmul_rn(__fmul_rn(x[c], scale), nw_staged ? xs[XI(c)] : nw[c]);
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
#pragma unroll
            for (int k = 0; k < 8; ++k) v[k] = e[k];
            round_q8k(v, lane, act_xq(xs, K) + 256 * sb, act_xsum(xs, K) + 8 * sb, act_xd(xs, K) + 8 * sb);
#pragma unroll
            for (int k = 0; k < 8; ++k) e[k] = v[k];
        }
    }
    __syncthreads();
}

// A q8_K input rounded once by the kernel that wrote it (fmv_impl's rq: the gate/up product
// for the down projection), copied into load_act's layout: the int8 values, each 32-unit's
// scale and sum. What load_act would have computed from the same floats, bit for bit (the
// same round_q8k, lane for lane); the float copy xs is not filled, so only integer-dot
// formats take it (the host checks).
DEV void load_pre(const i8* __restrict__ pq, const float* __restrict__ pd, const int* __restrict__ psum, int K,
                  float* xs) {
    const uint4* src = (const uint4*)pq;
    uint4* dst = (uint4*)act_xq(xs, K);
    for (int i = threadIdx.x; i < (K >> 4); i += FMV_THREADS) dst[i] = src[i];
    for (int u = threadIdx.x; u < (K >> 5); u += FMV_THREADS) {
        act_xd(xs, K)[u] = pd[u];
        act_xsum(xs, K)[u] = psum[u];
    }
    __syncthreads();
}

// Fused decode product, one activation row.
//   mode 0: up to three weights sharing the input (Q, K, V): y_i = W_i x + b_i
//   mode 1: y0 = resid + (W0 x + b0)                               (O and down projections)
//   mode 2: y0 = silu(W0 x) * (W1 x), n0 rows each                  (gate and up)
//   mode 3: mode 2 with wpr = 2, one warp taking the gate row and one the up row
// nw != null: the input is RMSNorm(x) * nw first. Types t_i: GGML type ids, all of kind A.
// A block does `iters` rounds of 8 / wpr rows; wpr warps share a row (split-K for long rows:
// the down projection has 896 rows of 4864), warp part p taking units p * per .. (mode 3:
// the whole row). Each warp's row segments go through its ring of nst slots of
// (mode 2 ? 2 : 1) * pass_bytes in dynamic shared memory after the input (act_smem_bytes).
// Partial sums of a row are added in warp order.
DEV int act_smem_bytes(int K) {
    const int u = (K + 31) >> 5;
    return ((u * 36 + 3) & ~3) * 4 + u * 32;
}

// Modes 2 / 3 with rcnt: y0 [total] (total a multiple of 256, at most 64 super-blocks) is
// also rounded to q8_K once, for the next product (the down projection) to take as it is
// (load_pre) instead of every one of its blocks rounding all of it. Each block adds the rows
// it wrote, [lo, lo + n), to the counter of each 256-row super-block they touch; the block
// that completes a super-block's count rounds it (one warp) and resets the counter for the
// next launch. The rounding depends only on the values, so the result is the same whichever
// block does it. fin: 65 ints of shared memory (the caller's, free by now) for the
// super-blocks this block completes and their count.
DEV void round_output(const float* y0, int total, int lo, int n, i8* rq, float* rd, int* rsum, unsigned* rcnt,
                      int* fin) {
    int& nfin = fin[64];
    const int hi = min(total, lo + n), lane = threadIdx.x & 31;
    __threadfence();  // this thread's rows of y0 before the block's count
    __syncthreads();
    if (threadIdx.x == 0) {
        nfin = 0;
        for (int sb = lo >> 8; lo < hi && sb <= (hi - 1) >> 8; ++sb) {
            const unsigned part = (unsigned)(min(hi, (sb + 1) << 8) - max(lo, sb << 8));
            if (atomicAdd(rcnt + sb, part) + part == 256u) fin[nfin++] = sb;
        }
        if (nfin) __threadfence();  // the other blocks' rows, counted, before reading them
    }
    __syncthreads();
    for (int f = threadIdx.x >> 5; f < nfin; f += FMV_WARPS) {
        const int sb = fin[f];
        float v[8];
#pragma unroll
        for (int k = 0; k < 8; ++k) v[k] = __ldcg(y0 + (sb << 8) + 8 * lane + k);  // from L2, not L1
        round_q8k(v, lane, rq + (sb << 8), rsum + 8 * sb, rd + 8 * sb);
        if (lane == 0) rcnt[sb] = 0u;
    }
}

// RoPE angle of pair i at position p: ggml's float32 recurrence, cos/sin in double (as rope).
DEV void rope_cs(int p, int i, float theta_scale, float* c, float* s) {
    float theta = (float)p;
    for (int k = 0; k < i; ++k) theta = __fmul_rn(theta, theta_scale);
    *c = (float)cos((double)theta);
    *s = (float)sin((double)theta);
}

// A replayed step's K and V rows of `layer` in the job's cache: kv = {K base, V base, capacity}
// of a cache [layer][capacity][n_kv][d], written by the host before the replay (so read ahead
// of pdl_wait: no earlier kernel's output).
DEV void layer_cache(const unsigned long long* kv, int layer, int n_kv, int d, u16** kc, u16** vc) {
    const i64 layer_elems = (i64)layer * (i64)kv[2] * n_kv * d;
    *kc = (u16*)kv[0] + layer_elems;
    *vc = (u16*)kv[1] + layer_elems;
}

template <int A>
DEV void fmv_impl(const float* __restrict__ x, const float* __restrict__ nw, float eps, int K, int mode, int iters,
                  int wpr, int rpw, int per, int nst, int pass_bytes,
                  const u8* W0, i64 rb0, int t0, int n0, const float* b0, float* y0,
                  const u8* W1, i64 rb1, int t1, int n1, const float* b1, float* y1,
                  const u8* W2, i64 rb2, int t2, int n2, const float* b2, float* y2,
                  const float* __restrict__ resid, i8* rq, float* rd, int* rsum, unsigned* rcnt,
                  const i8* __restrict__ pq, const float* __restrict__ pd, const int* __restrict__ psum,
                  const int* __restrict__ eids, i64 wstride, i64 bstride, int xstride, int xdiv, int ystride,
                  float oai_alpha, float oai_limit) {
    extern __shared__ __align__(16) float fmv_smem[];
    TL_BEGIN
    if (eids != nullptr) {
        // Experts a router chose (gpt-oss): grid row s takes expert eids[s], written by the
        // kernel before (so no weight copies start ahead of pdl_wait here): its weights and
        // biases, input row s / xdiv (a token's k slots share its row; the down projection
        // has a row per slot) and output row s.
        pdl_wait();
        const int s = blockIdx.y;
        const i64 e = eids[s];
        W0 += e * wstride;
        if (W1 != nullptr) W1 += e * wstride;
        if (b0 != nullptr) b0 += e * bstride;
        if (b1 != nullptr) b1 += e * bstride;
        x += (i64)(s / xdiv) * xstride;
        y0 += (i64)s * ystride;
    }
    __shared__ float red_g[FMV_RED_ROUNDS][FMV_WARPS], red_u[FMV_RED_ROUNDS][FMV_WARPS];
    float* xs = fmv_smem;
    float* ss = fmv_smem + ((K + 31) >> 5) * 33;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int rows_per_iter = FMV_WARPS / wpr * rpw, slot = warp / wpr, part = warp % wpr;
    const int total = mode == 0 ? n0 + n1 + n2 : n0;
    const int nunits = K >> 5;
    const int npass = mode == 2 ? 2 : 1;
    const int u0 = mode == 3 ? 0 : part * per;
    const int nu = mode == 3 ? nunits : max(0, min(per, nunits - u0));
    u8* ring = (u8*)fmv_smem + act_smem_bytes(K) + (i64)warp * nst * npass * pass_bytes;
    // Where this warp's units lie in a row of each weight (bytes from the row's start, and how
    // many): constant over the rounds, so computed once.
    const int off0 = unit_offset(t0, u0), len0 = unit_offset(t0, u0 + nu) - off0;
    const int off1 = unit_offset(t1, u0), len1 = unit_offset(t1, u0 + nu) - off1;
    const int off2 = unit_offset(t2, u0), len2 = unit_offset(t2, u0 + nu) - off2;
    // this warp's (first) row in round 0; rpw > 1: rows rw .. rw + rpw - 1 of one weight (the
    // host checks that every weight's row count is a multiple of rpw)
    const int row0 = blockIdx.x * iters * rows_per_iter + slot * rpw;
    // Pass p of the round whose row is rw: which weight (0, 1, 2) and which of its rows.
    auto seg = [&](int rw, int p, int* r) -> int {
        *r = rw;
        if (mode >= 2) return mode == 3 ? part : p;
        if (rw < n0) return 0;
        if (rw < n0 + n1) {
            *r = rw - n0;
            return 1;
        }
        *r = rw - n0 - n1;
        return 2;
    };
    auto row_of = [&](int w, int r) -> const u8* { return w == 0 ? W0 + (i64)r * rb0 : w == 1 ? W1 + (i64)r * rb1 : W2 + (i64)r * rb2; };
    // Round it's copies into ring slot sl; one commit group per round, empty or not
    // (cp_async_wait counts rounds).
    auto issue = [&](int it, int sl) {
        const int rw = row0 + it * rows_per_iter;
        if (it < iters && rw < total) {
            for (int p = 0; p < npass; ++p) {
                int r;
                const int w = seg(rw, p, &r);
                const int len = (w == 0 ? len0 : w == 1 ? len1 : len2) * rpw;
                if (len > 0)
                    stage_async(ring + (sl * npass + p) * pass_bytes, row_of(w, r) + (w == 0 ? off0 : w == 1 ? off1 : off2),
                                len, lane);
            }
        }
        cp_async_commit();
    };
    auto write = [&](int w, int r, float g, float u) {
        if (mode >= 2 && oai_alpha != 0.f) {
            // gpt-oss: biases, then kernels.cu's swiglu_oai arithmetic
            if (b0 != nullptr) g = __fadd_rn(g, b0[r]);
            if (b1 != nullptr) u = __fadd_rn(u, b1[r]);
            const float gv = fminf(g, oai_limit), uv = fminf(fmaxf(u, -oai_limit), oai_limit);
            const float sg = __fdiv_rn(gv, __fadd_rn(1.f, expf(__fmul_rn(oai_alpha, -gv))));
            y0[r] = __fmul_rn(sg, __fadd_rn(uv, 1.f));
        } else if (mode >= 2) {
            y0[r] = __fmul_rn(__fdiv_rn(g, __fadd_rn(1.f, expf(-g))), u);
        } else {
            const float* b = w == 0 ? b0 : w == 1 ? b1 : b2;
            float* y = w == 0 ? y0 : w == 1 ? y1 : y2;
            float acc = g;
            if (b != nullptr) acc = __fadd_rn(acc, b[r]);
            if (mode == 1) acc = __fadd_rn(resid[r], acc);
            y[r] = acc;
        }
    };
    pdl_trigger();
    // the norm weights first, then the rows of rounds 0 .. nst - 1: one commit group each
    const bool norm_async = FMV_ABLATE != 5 && nw != nullptr && eids == nullptr;
    if (norm_async) stage_norm_async(nw, K, xs);
    // (FMV_ABLATE 8: a product whose input was rounded by the kernel before, the down
    // projection, stages its first rows only after pdl_wait)
    const bool late_ring = FMV_ABLATE == 8 && pq != nullptr;
    if (!late_ring)
        for (int it = 0; it < nst; ++it) issue(it, it);
    // (Rows past the ring are not prefetched into L2 ahead of their copies: on the H200 that
    // cost the Qwen-shape step ~30 µs, bench/gpu_decode_ablation.py's "no row prefetch".)
    if (!norm_async) stage_norm(nw, K, xs);
    pdl_wait();
    TL_WAITED(1u + (unsigned)mode + ((unsigned)K << 4))
    // the norm weights' group has landed (load_act's barriers show them to every thread)
    if (norm_async) cp_async_wait(nst);
    if (late_ring)
        for (int it = 0; it < nst; ++it) issue(it, it);
    if (pq != nullptr) load_pre(pq, pd, psum, K, xs);
    else load_act<A>(x, nw, eps, K, xs, ss, true);
    TL_MARK(0)
    int sl = 0;  // ring slot of round it
    for (int it = 0; it < iters; ++it) {
        cp_async_wait(nst - 1);  // round it's group has landed (this lane's copies) ...
        __syncwarp();            // ... and every lane's
        const int rw = row0 + it * rows_per_iter;
        float g = 0.f, u = 0.f;
        int r = 0, w = 0;
        if (rw < total) {
            for (int p = 0; p < npass; ++p) {
                w = seg(rw, p, &r);
                const int t = w == 0 ? t0 : w == 1 ? t1 : t2;
                const u8* row = row_of(w, r);
                const u8* st = ring + (sl * npass + p) * pass_bytes +
                               ((unsigned long long)(row + (w == 0 ? off0 : w == 1 ? off1 : off2)) & 15);
                const float d = rpw > 1 ? rows_dot_any<A>(t, st, rpw, nu, K, xs, ss, lane)
                                        : row_part_any<A>(t, row, st, u0, nu, K, xs, ss, mode == 3 ? 0 : part,
                                                          mode == 3 ? 1 : wpr, lane);
                if ((mode == 3 ? part : p) == 0) g = d;
                else u = d;
            }
            if (mode >= 2) w = 0;
        }
        __syncwarp();  // the slot is free: refill it with round it + nst
        issue(it + nst, sl);
        sl = sl + 1 == nst ? 0 : sl + 1;
        // the lanes holding a row's sum: lane 0, or with rpw > 1 one lane per row
        const bool holds = rpw > 1 ? rows_dot_holds(lane, rpw) : lane == 0;
        const int q = rpw > 1 ? rows_dot_row(lane, rpw) : 0;
        if (wpr == 1) {
            if (rw < total && holds) write(w, r + q, g, u);
        } else if (holds) {
            red_g[it * rpw + q][warp] = g;
            red_u[it * rpw + q][warp] = u;
        }
    }
    TL_MARK(1)
    if (wpr > 1) {
        __syncthreads();
        for (int j = threadIdx.x; j < iters * rows_per_iter; j += FMV_THREADS) {
            const int it = j / rows_per_iter, sr = j % rows_per_iter, sl = sr / rpw, q = sr % rpw;
            const int rw = (blockIdx.x * iters + it) * rows_per_iter + sr;
            if (rw >= total) continue;
            float g = red_g[it * rpw + q][sl * wpr], u = red_u[it * rpw + q][sl * wpr];
            for (int k = 1; k < wpr; ++k) {
                g += red_g[it * rpw + q][sl * wpr + k];
                u += red_u[it * rpw + q][sl * wpr + k];
            }
            int which = 0, r = rw;
            if (mode < 2 && rw >= n0) {
                r = rw - n0;
                which = 1;
                if (r >= n1) {
                    r -= n1;
                    which = 2;
                }
            }
            write(which, r, g, u);
        }
    }
    TL_MARK(2)
    if (rcnt != nullptr)  // red_g: read by now (round_output starts with a barrier)
        round_output(y0, total, blockIdx.x * iters * rows_per_iter, iters * rows_per_iter, rq, rd, rsum, rcnt,
                     (int*)&red_g[0][0]);
    TL_END
}

#define FMV_INSTANTIATE(A, NAME)                                                                       \
    extern "C" __global__ void __launch_bounds__(FMV_THREADS, 4) fmv_##NAME(                            \
        const float* x, const float* nw, float eps, int K, int mode, int iters, int wpr, int rpw,      \
        int per, int nst, int pass_bytes,                                                              \
        const u8* W0, i64 rb0, int t0, int n0, const float* b0, float* y0,                             \
        const u8* W1, i64 rb1, int t1, int n1, const float* b1, float* y1,                             \
        const u8* W2, i64 rb2, int t2, int n2, const float* b2, float* y2, const float* resid,         \
        i8* rq, float* rd, int* rsum, unsigned* rcnt, const i8* pq, const float* pd, const int* psum,  \
        const int* eids, i64 wstride, i64 bstride, int xstride, int xdiv, int ystride, float oai_alpha, \
        float oai_limit) {                                                                             \
        fmv_impl<A>(x, nw, eps, K, mode, iters, wpr, rpw, per, nst, pass_bytes, W0, rb0, t0, n0, b0, y0, \
                    W1, rb1, t1, n1, b1, y1,                                                           \
                    W2, rb2, t2, n2, b2, y2, resid, rq, rd, rsum, rcnt, pq, pd, psum,                  \
                    eids, wstride, bstride, xstride, xdiv, ystride, oai_alpha, oai_limit);             \
    }

FMV_INSTANTIATE(A_F32, f32)
FMV_INSTANTIATE(A_F16, f16)
FMV_INSTANTIATE(A_BF16, bf16)
FMV_INSTANTIATE(A_Q8_0, q8_0)
FMV_INSTANTIATE(A_Q8_1, q8_1)
FMV_INSTANTIATE(A_Q8_K, q8_k)

// One query token: RoPE on q (head h) and on the new k, the new K/V rows written to the
// float16 cache at position p (by the first query head of each KV group; the other heads of
// the group take the new row from their own shared memory, so no block reads a row another
// block is writing), then the attention kernel's arithmetic over positions t0 .. p.
// p = *pos (graph replay: the position lives in device memory) or `start` when pos is null.
// style: 0 no RoPE, 1 normal (adjacent pairs), 2 NeoX (halves).
// kv != null (a replayed step): the job's cache is read from device memory, kv = {K base, V
// base, capacity} of a cache [layer][capacity][n_kv][d], and kc / vc are this layer's rows
// in it; so one recorded step serves every job that binds its cache there.
//
// attn_head is that work for head h, into o (d floats) with the scores in sc (T floats); the
// block writes the new rows only where may_write. ahead() runs just before pdl_wait (work
// that reads no earlier kernel's output), tail() after the output (o is then complete only
// behind a barrier; it gets FMV_TIMELINE's kernel index). attn_decode: a block a head, o and
// sc in global memory.
template <class Ahead, class Tail>
DEV void attn_head(int h, const float* __restrict__ q, const float* __restrict__ k, const float* __restrict__ v,
                   u16* kc, u16* vc, float* o, float* sc, unsigned tl_kind, const int* __restrict__ pos, int start,
                   int n_head, int n_kv, int d, int n_rot, float theta_scale, int style, float q_scale,
                   int has_q_scale, float scale, int window, const unsigned long long* __restrict__ kv, int layer,
                   const float* __restrict__ rcos, const float* __restrict__ rsin, const float* __restrict__ sinks,
                   bool may_write, Ahead ahead, Tail tail, bool trigger = true) {
    __shared__ float qs[256], kn[256], vn[256];
    if (kv != nullptr) layer_cache(kv, layer, n_kv, d, &kc, &vc);
    TL_BEGIN
    if (trigger) pdl_trigger();
    const int tid = threadIdx.x;
    const int group = n_head / n_kv, kvh = h / group;
    // The position is read ahead of pdl_wait: the host or the previous step's argmax_step
    // wrote it, and no kernel of this step writes it before this one has finished.
    const int p = pos != nullptr ? pos[0] : start;
    const int T = p + 1;
    const int t0 = (window > 0 && T > window) ? T - window : 0;
    const i64 kv_stride = (i64)n_kv * d;
    if (FMV_ABLATE != 6 && (d & 63) == 0) {
        // The cached rows t0 .. p - 1 of this head's K and V (earlier steps wrote them, or
        // the prompt: complete before this step began) into L1 while the kernels before finish:
        // after the wait, the scores' and P.V's loads hit L1 rather than L2.
        const int ls = __ffs(d >> 6) - 1;  // log2 of the 128-byte lines a row of halves spans
        for (int j = tid; j < (p - t0) << ls; j += blockDim.x) {
            const i64 off = (i64)(t0 + (j >> ls)) * kv_stride + (i64)kvh * d + 64 * (j & ((1 << ls) - 1));
            asm volatile("prefetch.global.L1 [%0];" ::"l"(kc + off));
            asm volatile("prefetch.global.L1 [%0];" ::"l"(vc + off));
        }
    }
    // RoPE: pair tid (half <= ATT_THREADS, the host checks: one pair a thread). Its cos and sin
    // depend on the position alone, so they are taken ahead of the wait too: a row of the
    // model's table (made at load; YaRN: the reference's own values) or rope_cs.
    const int half = n_rot / 2;
    float rc = 1.f, rs = 0.f;
    auto pair_cs = [&]() {
        if (style == 0 || tid >= half) return;
        if (rcos != nullptr) {
            rc = rcos[(i64)p * half + tid];
            rs = rsin[(i64)p * half + tid];
        } else {
            rope_cs(p, tid, theta_scale, &rc, &rs);
        }
    };
    if (FMV_ABLATE != 6) pair_cs();
    ahead();
    pdl_wait();
    if (FMV_ABLATE == 6) pair_cs();
    TL_WAITED(tl_kind)
    __shared__ float redf[ATT_THREADS];
    __shared__ double redd[ATT_THREADS];
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
        if (tid < half) {
            const int i0 = style == 2 ? tid : 2 * tid, i1 = style == 2 ? tid + half : 2 * tid + 1;
            // (each pair is one thread's: read and rotated in place)
            float x0 = qs[i0], x1 = qs[i1];
            qs[i0] = __fsub_rn(__fmul_rn(x0, rc), __fmul_rn(x1, rs));
            qs[i1] = __fadd_rn(__fmul_rn(x0, rs), __fmul_rn(x1, rc));
            x0 = kn[i0];
            x1 = kn[i1];
            kn[i0] = __fsub_rn(__fmul_rn(x0, rc), __fmul_rn(x1, rs));
            kn[i1] = __fadd_rn(__fmul_rn(x0, rs), __fmul_rn(x1, rc));
        }
        __syncthreads();
    }
    const bool writer = may_write && (h % group) == 0;
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
    TL_MARK(0)
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
    // block max and sum: across each warp with shuffles, then the 4 warps' values in order
    static_assert(ATT_THREADS == 128, "attn_decode reduces over 4 warps");
    m = warp_max(m);
    if ((tid & 31) == 0) redf[tid >> 5] = m;
    __syncthreads();
    m = fmaxf(fmaxf(redf[0], redf[1]), fmaxf(redf[2], redf[3]));
    // a sink (gpt-oss) joins the max and the denominator, not the output (as `attention`)
    const float sink = sinks != nullptr ? sinks[h] : 0.f;
    if (sinks != nullptr) m = fmaxf(m, sink);
    double sum = 0.0;
    for (int t = t0 + tid; t < T; t += blockDim.x) {
        float e = expf(__fsub_rn(sc[t], m));
        sc[t] = e;
        sum += (double)e;
    }
    sum = warp_sum_d(sum);
    if ((tid & 31) == 0) redd[tid >> 5] = sum;
    __syncthreads();
    double total = ((redd[0] + redd[1]) + redd[2]) + redd[3];
    if (sinks != nullptr) total += (double)expf(__fsub_rn(sink, m));
    const float inv = (float)(1.0 / total);
    for (int t = t0 + tid; t < T; t += blockDim.x) sc[t] = round_f16(__fmul_rn(sc[t], inv));
    __syncthreads();
    TL_MARK(1)
    const int tpr = d >> 3;  // threads per V row, 8 halves (one 16-byte load) each
    if ((d & 7) == 0 && tpr <= ATT_THREADS) {
        // R rows at a time: thread (rg, cg) sums columns 8 cg .. 8 cg + 7 over rows t0 + rg,
        // t0 + rg + R, ... with four rows' loads in flight; then the R partial rows are added
        // in order. (The composed path's kernel sums in another order: within float32
        // rounding of it, tests/cuda checks.)
        __shared__ float part[ATT_THREADS * 8];
        const int R = ATT_THREADS / tpr, rg = tid / tpr, cg = tid % tpr;
        float acc[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
        if (rg < R) {
            const u16* vr = vc + (i64)kvh * d + 8 * cg;
            auto row = [&](int t, float pr) {
                float vv[8];
                if (t == p) {
#pragma unroll
                    for (int e = 0; e < 8; ++e) vv[e] = vn[8 * cg + e];
                } else {
                    const uint4 w = *(const uint4*)(vr + (i64)t * kv_stride);
                    const u16* hv = (const u16*)&w;
#pragma unroll
                    for (int e = 0; e < 8; ++e) vv[e] = h2f(hv[e]);
                }
#pragma unroll
                for (int e = 0; e < 8; ++e) acc[e] = fmaf(pr, vv[e], acc[e]);
            };
            int t = t0 + rg;
            for (; t + 3 * R < T; t += 4 * R) {
                // four rows' loads issued before their products (row() reads nothing it writes)
                uint4 w[4];
                float pr[4];
#pragma unroll
                for (int j = 0; j < 4; ++j) {
                    const int tj = t + j * R;
                    pr[j] = sc[tj];
                    if (tj != p) w[j] = *(const uint4*)(vr + (i64)tj * kv_stride);
                }
#pragma unroll
                for (int j = 0; j < 4; ++j) {
                    const int tj = t + j * R;
                    if (tj == p) {
                        row(tj, pr[j]);
                    } else {
                        const u16* hv = (const u16*)&w[j];
#pragma unroll
                        for (int e = 0; e < 8; ++e) acc[e] = fmaf(pr[j], h2f(hv[e]), acc[e]);
                    }
                }
            }
            for (; t < T; t += R) row(t, sc[t]);
#pragma unroll
            for (int e = 0; e < 8; ++e) part[rg * d + 8 * cg + e] = acc[e];
        }
        __syncthreads();
        for (int c = tid; c < d; c += blockDim.x) {
            float r = part[c];
            for (int g = 1; g < R; ++g) r += part[g * d + c];
            o[c] = r;
        }
    } else {
        for (int c = tid; c < d; c += blockDim.x) {
            const u16* vr = vc + (i64)kvh * d + c;
            float acc = 0.f;
            for (int t = t0; t < T; ++t) acc = fmaf(sc[t], t == p ? vn[c] : h2f(vr[t * kv_stride]), acc);
            o[c] = acc;
        }
    }
    tail(TL_KIDX);
    TL_END
}

extern "C" __global__ void __launch_bounds__(ATT_THREADS) attn_decode(
    const float* __restrict__ q, const float* __restrict__ k, const float* __restrict__ v, u16* kc, u16* vc,
    float* __restrict__ out, float* __restrict__ scores, int T_stride, const int* __restrict__ pos, int start,
    int n_head, int n_kv, int d, int n_rot, float theta_scale, int style, float q_scale, int has_q_scale,
    float scale, int window, const unsigned long long* __restrict__ kv, int layer,
    const float* __restrict__ rcos, const float* __restrict__ rsin, const float* __restrict__ sinks) {
    const int h = blockIdx.x;
    attn_head(h, q, k, v, kc, vc, out + (i64)h * d, scores + (i64)h * T_stride, 10u + ((unsigned)T_stride << 4), pos,
              start, n_head, n_kv, d, n_rot, theta_scale, style, q_scale, has_q_scale, scale, window, kv, layer,
              rcos, rsin, sinks, true, [] {}, [](unsigned) {});
}

// Attention and the output projection + residual in one launch, by thread block clusters
// (sm_90; CupyBackend.attention_output while the context is short). Grid (n_head, R), one
// cluster of n_head blocks per row chunk r: block h computes head h's attention (attn_head;
// each cluster repeats it, in parallel on its own multiprocessors) and that head's share of
// O for rows r * rpc .. (r + 1) * rpc - 1, whose units over the head's d columns it copied
// into shared memory ahead of the wait. A 32-unit lies within one head, so rounding the head's
// output as load_act rounds O's input gives the apart path's int8 values and scales. The
// heads' partial sums meet in distributed shared memory: block h adds up, in head order, the
// rows h, h + n_head, ... of the chunk, then the bias and the residual as fmv_* does. So the
// output is the apart path's (attn_decode, then fmv_*) within float32 rounding of the order
// of a row's sums; the K / V rows written are the same bits (cluster 0 writes them). A row's
// partial sums go to its adding block's shared memory (remote stores), so one cluster barrier
// is all the exchange takes and no block reads another's memory after it. Weight
// formats with 32-element input blocks (activation kinds q8_0 / q8_1); the scores stay in
// shared memory, smax of them (the host sends contexts of at most smax positions).
// The next kernel may start only once every block has done its attention (pdl_trigger in the
// tail, not at the start as elsewhere): these blocks are small, and letting gate/up start at
// once let gate/up and then down occupy the multiprocessors early, so that the next layer's
// norm + QKV found no room to stage its weights ahead (bench/gpu_timeline.py: its products
// took 3.1 µs instead of 2.0) and the step took 774.8 µs against 738.0 (Qwen shape, H100).
#if __CUDA_ARCH__ >= 900
DEV void cluster_sync() {
    asm volatile("barrier.cluster.arrive.release.aligned;\n\tbarrier.cluster.wait.acquire.aligned;" ::: "memory");
}
// v into p's float in the shared memory of block `rank` of this cluster (the same offset there)
DEV void st_cluster(float* p, unsigned rank, float v) {
    const unsigned a = (unsigned)__cvta_generic_to_shared(p);
    unsigned ra;
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(ra) : "r"(a), "r"(rank));
    asm volatile("st.shared::cluster.f32 [%0], %1;" ::"r"(ra), "f"(v) : "memory");
}
#endif

template <int A>
DEV float unit_dot_any(int t, const u8* __restrict__ r, int u, const u32* __restrict__ xw, float dx, int xsum,
                       float s8) {
#define UD(TT) return unit_dot_i8<TT>(r, u, xw, dx, xsum, s8)
    if (A == A_Q8_0) {
        if (t == T_Q4_0) UD(T_Q4_0);
        if (t == T_Q5_0) UD(T_Q5_0);
        if (t == T_Q8_0) UD(T_Q8_0);
    } else if (A == A_Q8_1) {
        if (t == T_Q4_1) UD(T_Q4_1);
        if (t == T_Q5_1) UD(T_Q5_1);
    }
#undef UD
    return __int_as_float(0x7fc00000);  // a type the host should not have sent here
}

template <int A>
DEV void attn_out_impl(const float* __restrict__ q, const float* __restrict__ k, const float* __restrict__ v,
                       u16* kc, u16* vc, const int* __restrict__ pos, int start, int n_head, int n_kv, int d,
                       int n_rot, float theta_scale, int style, float q_scale, int has_q_scale, float scale,
                       int window, const unsigned long long* __restrict__ kv, int layer,
                       const float* __restrict__ rcos, const float* __restrict__ rsin,
                       const float* __restrict__ sinks, const u8* __restrict__ W, i64 rb, int wt, int n_out,
                       int rpc, const float* __restrict__ bias, float* __restrict__ y,
                       const float* __restrict__ resid, int smax) {
#if __CUDA_ARCH__ >= 900
    extern __shared__ __align__(16) float ao_smem[];
    __shared__ float os[256], od[8], oss[8];
    __shared__ __align__(16) i8 oq[256];
    __shared__ int osum[8];
    const int h = blockIdx.x, C = gridDim.x, tid = threadIdx.x;  // cluster (C, 1, 1): h is the rank
    const int nu = d >> 5, len = nu * block_bytes_of(wt);      // the head's units of a row: bytes
    const int row0 = blockIdx.y * rpc, nrows = max(0, min(rpc, n_out - row0));
    // a row's slot: its granules, an odd number of them (4-way rather than 16-way bank conflicts
    // when a thread a row reads them)
    const int stride = 16 * (((len + 30) >> 4) | 1);
    float* sc = ao_smem;                                        // smax scores
    const int per = (rpc + C - 1) / C;                          // rows a block adds up
    float* part = ao_smem + smax;                               // [C][per]: row h + C m from block c
    u8* st = (u8*)(ao_smem + smax + ((C * per + 3) & ~3));      // the staged rows (16-byte aligned)
    auto src_of = [&](int i) { return W + (i64)(row0 + i) * rb + (i64)h * len; };
    auto ahead = [&]() {
        for (int i = tid; i < nrows; i += ATT_THREADS) {
            const unsigned long long a = (unsigned long long)src_of(i);
            const u8* s = (const u8*)(a & ~15ull);
            const int nc = ((int)(a & 15) + len + 15) >> 4;
            for (int g = 0; g < nc; ++g) cp_async16(st + (i64)i * stride + 16 * g, s + 16 * g);
        }
        cp_async_commit();
    };
    auto tail = [&](unsigned tl_k) {  // (tl_k: FMV_TIMELINE's TL_MARK)
        if (FMV_ABLATE != 14) pdl_trigger();  // (not before: see the comment above attn_out_impl)
        __syncthreads();  // the head's output is complete
        const int warp = tid >> 5, lane = tid & 31;
        for (int u = warp; u < nu; u += ATT_THREADS / 32) {  // load_act's q8_0 / q8_1 rounding
            const float x = os[32 * u + lane];
            const float m = warp_max(fabsf(x));
            const float dd = __fdiv_rn(m, 127.f);
            const float inv = m != 0.f ? __fdiv_rn(127.f, m) : 0.f;
            const float qv = rintf(__fmul_rn(x, inv)) + 0.f;
            oq[32 * u + lane] = (i8)(int)qv;
            const int qsum = __reduce_add_sync(0xffffffffu, (int)qv);
            if (lane == 0) {
                od[u] = round_f16(dd);
                osum[u] = qsum;
                oss[u] = round_f16(__fmul_rn(dd, (float)qsum));
            }
        }
        cp_async_wait(0);
        __syncthreads();
        for (int i = tid; i < nrows; i += ATT_THREADS) {
            const u8* row = st + (i64)i * stride + ((unsigned long long)src_of(i) & 15);
            float acc = 0.f;
            for (int j = 0; j < nu; ++j) {
                const uint4* xp = (const uint4*)(oq + 32 * j);
                const uint4 q0 = xp[0], q1 = xp[1];
                const u32 xw[8] = {q0.x, q0.y, q0.z, q0.w, q1.x, q1.y, q1.z, q1.w};
                acc += FMV_ABLATE == 1 ? (float)row[j] : unit_dot_any<A>(wt, row, j, xw, od[j], osum[j], oss[j]);
            }
            st_cluster(part + h * per + i / C, (unsigned)(i % C), acc);  // row i is block i % C's
        }
        TL_MARK(2)
        cluster_sync();  // every block's partial sums have landed (release / acquire)
        for (int m = tid; h + C * m < nrows; m += ATT_THREADS) {
            float acc = 0.f;
            for (int c = 0; c < C; ++c) acc += part[c * per + m];  // in head order
            const int rr = row0 + h + C * m;
            if (bias != nullptr) acc = __fadd_rn(acc, bias[rr]);
            y[rr] = __fadd_rn(resid[rr], acc);
        }
    };
    attn_head(h, q, k, v, kc, vc, os, sc, 11u + ((unsigned)(n_head * d) << 4), pos, start, n_head, n_kv, d, n_rot,
              theta_scale, style, q_scale, has_q_scale, scale, window, kv, layer, rcos, rsin, sinks,
              blockIdx.y == 0, ahead, tail, FMV_ABLATE == 14);
#else
    __trap();  // the host takes this path on sm_90 and later only
#endif
}

#define ATTO_INSTANTIATE(A, NAME)                                                                      \
    extern "C" __global__ void __launch_bounds__(ATT_THREADS) attn_out_##NAME(                         \
        const float* q, const float* k, const float* v, u16* kc, u16* vc, const int* pos, int start,   \
        int n_head, int n_kv, int d, int n_rot, float theta_scale, int style, float q_scale,           \
        int has_q_scale, float scale, int window, const unsigned long long* kv, int layer,             \
        const float* rcos, const float* rsin, const float* sinks, const u8* W, i64 rb, int wt,         \
        int n_out, int rpc, const float* bias, float* y, const float* resid, int smax) {               \
        attn_out_impl<A>(q, k, v, kc, vc, pos, start, n_head, n_kv, d, n_rot, theta_scale, style,      \
                         q_scale, has_q_scale, scale, window, kv, layer, rcos, rsin, sinks, W, rb, wt, \
                         n_out, rpc, bias, y, resid, smax);                                            \
    }
ATTO_INSTANTIATE(A_Q8_0, q8_0)
ATTO_INSTANTIATE(A_Q8_1, q8_1)

// RoPE's cos and sin at positions 0 .. n - 1 for pairs 0 .. half - 1, [n][half] each, by
// rope_cs: what attn_decode would compute at each step, made once per model (the backend's
// prepare) so that a step reads a row of it instead.
extern "C" __global__ void rope_cs_table(float* __restrict__ cos_t, float* __restrict__ sin_t, int n, int half,
                                         float theta_scale) {
    const i64 j = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= (i64)n * half) return;
    float c, s;
    rope_cs((int)(j / half), (int)(j % half), theta_scale, &c, &s);
    cos_t[j] = c;
    sin_t[j] = s;
}

// Router order: descending logit, the first index on ties, NaN after every number (as
// np.argsort(-logits, kind="stable") orders them). True when (v, i) comes before (bv, bi).
DEV bool route_before(float v, int i, float bv, int bi) {
    if (bi < 0) return true;
    const bool vn = v != v, bn = bv != bv;
    if (vn != bn) return bn;
    if (vn) return i < bi;
    return v > bv || (v == bv && i < bi);
}

// gpt-oss's routing, a warp (block) per token: the k (<= 8) experts first in router order (of
// n <= 256, 8 a lane, kept in registers) and the softmax of their logits: exp(l - max) in
// float32, their sum in double, in order, times float32(1 / sum) (base.Backend.norm_moe).
// Token t's logits are row t of [tokens, n]; its choices go to eids / ew [t * k ..].
extern "C" __global__ void __launch_bounds__(32) moe_route(const float* __restrict__ logits, int n, int k,
                                                           int* __restrict__ eids, float* __restrict__ ew) {
    pdl_trigger();
    pdl_wait();
    const int lane = threadIdx.x;
    logits += (i64)blockIdx.x * n;
    eids += (i64)blockIdx.x * k;
    ew += (i64)blockIdx.x * k;
    float v[8];
    bool free_[8];
#pragma unroll
    for (int j = 0; j < 8; ++j) {
        const int e = lane + 32 * j;
        free_[j] = e < n;
        v[j] = free_[j] ? logits[e] : 0.f;
    }
    float sel[8];
    int chosen[8];
    for (int r = 0; r < k; ++r) {
        float bv = 0.f;
        int bi = -1;
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            if (free_[j] && route_before(v[j], lane + 32 * j, bv, bi)) {
                bv = v[j];
                bi = lane + 32 * j;
            }
        }
        for (int o = 16; o > 0; o >>= 1) {
            const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
            const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
            if (oi >= 0 && route_before(ov, oi, bv, bi)) {
                bv = ov;
                bi = oi;
            }
        }
#pragma unroll
        for (int j = 0; j < 8; ++j) free_[j] = free_[j] && lane + 32 * j != bi;
        sel[r] = bv;
        chosen[r] = bi;
    }
    if (lane != 0) return;
    float mx = sel[0];
    for (int j = 1; j < k; ++j) mx = fmaxf(mx, sel[j]);
    float w[8];
    double sum = 0.0;
    for (int j = 0; j < k; ++j) {
        w[j] = expf(__fsub_rn(sel[j], mx));
        sum += (double)w[j];
    }
    const float inv = (float)(1.0 / sum);
    for (int j = 0; j < k; ++j) {
        eids[j] = chosen[j];
        ew[j] = __fmul_rn(w[j], inv);
    }
}

// out = resid + the experts' outputs y [k][n] weighted by ew, added in slot order (each
// y_s * w_s rounded, as the reference scales then adds); token t (grid row t): rows t of
// resid and out [tokens, n], y [t * k ..], ew [t * k ..].
extern "C" __global__ void __launch_bounds__(256) moe_combine(const float* __restrict__ y, const float* __restrict__ ew,
                                                              const float* __restrict__ resid, float* __restrict__ out,
                                                              int n, int k) {
    pdl_trigger();
    pdl_wait();
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const i64 t = blockIdx.y;
    y += t * k * n;
    ew += t * k;
    resid += t * n;
    out += t * n;
    float acc = __fmul_rn(y[i], ew[0]);
    for (int s = 1; s < k; ++s) acc = __fadd_rn(acc, __fmul_rn(y[(i64)s * n + i], ew[s]));
    out[i] = __fadd_rn(resid[i], acc);
}

// argmax of logits[0..n) (the first index on ties and the first NaN if any, as np.argmax) in
// two passes: many blocks, then one.
DEV bool argmax_better(float v, int i, float best, int bi) {
    if (bi < 0) return true;
    const bool vn = v != v, bn = best != best;
    if (vn || bn) return vn && bn ? i < bi : vn;
    return v > best || (v == best && i < bi);
}

// The best (value, index) pair of the block's threads (argmax_better is a total order, so any
// grouping gives the same pair), to every thread: across each warp with shuffles, then the
// warps' pairs through shared memory (one barrier where a tree over the 256 threads took
// eight; bench/gpu_decode_ablation.py measured no difference in the step, 772.4 µs against
// 773.5 on the H100).
DEV void argmax_block(float& best, int& idx, float* bv, int* bi) {
    const int tid = threadIdx.x;
    for (int o = 16; o > 0; o >>= 1) {
        const float ov = __shfl_xor_sync(0xffffffffu, best, o);
        const int oi = __shfl_xor_sync(0xffffffffu, idx, o);
        if (oi >= 0 && argmax_better(ov, oi, best, idx)) {
            best = ov;
            idx = oi;
        }
    }
    if ((tid & 31) == 0) {
        bv[tid >> 5] = best;
        bi[tid >> 5] = idx;
    }
    __syncthreads();
    best = bv[0];
    idx = bi[0];
    for (int w = 1; w < (int)(blockDim.x >> 5); ++w) {
        if (bi[w] >= 0 && argmax_better(bv[w], bi[w], best, idx)) {
            best = bv[w];
            idx = bi[w];
        }
    }
}

// Pass 1: block b reduces logits[b * chunk, (b + 1) * chunk) to one (value, index) pair.
extern "C" __global__ void __launch_bounds__(256) argmax_partial(const float* __restrict__ logits, int n, int chunk,
                                                                 float* __restrict__ pv, int* __restrict__ pi) {
    __shared__ float bv[256 / 32];  // a pair a warp (argmax_block)
    __shared__ int bi[256 / 32];
    TL_BEGIN
    pdl_trigger();
    pdl_wait();
    TL_WAITED(13u)
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
    argmax_block(best, idx, bv, bi);
    if (tid == 0) {
        pv[blockIdx.x] = best;
        pi[blockIdx.x] = idx;
    }
    TL_END
}

// Pass 2, one block: the best of the m partial pairs -> next[0]; for a replayed step also
// tok[0] (the next step's input) and pos[0] += 1.
extern "C" __global__ void __launch_bounds__(256) argmax_step(const float* __restrict__ pv, const int* __restrict__ pi,
                                                              int m, int* next, int* tok, int* pos) {
    __shared__ float bv[256 / 32];  // a pair a warp (argmax_block)
    __shared__ int bi[256 / 32];
    TL_BEGIN
    pdl_trigger();
    pdl_wait();
    TL_WAITED(14u)
    const int tid = threadIdx.x;
    float best = 0.f;
    int idx = -1;
    for (int j = tid; j < m; j += blockDim.x) {
        if (pi[j] >= 0 && argmax_better(pv[j], pi[j], best, idx)) {
            best = pv[j];
            idx = pi[j];
        }
    }
    argmax_block(best, idx, bv, bi);
    if (tid == 0) {
        next[0] = idx;
        if (tok != nullptr) tok[0] = idx;
        if (pos != nullptr) pos[0] += 1;
    }
    TL_END
}

#endif  // __CUDACC__
