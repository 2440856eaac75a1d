// Causal prefill attention for one chunk, FlashAttention-2 style: scores stay in registers
// (f32), softmax is computed online per key tile, K/V are read straight from the KV cache.
//
//   q    (L, H, D)                  bf16, the chunk's queries after q-norm and RoPE
//   kv   (positions, 2, KVH, D)     bf16, one layer of the cache: K then V per position
//   out  (L, H, D)                  bf16
// Query i sits at position start + i and sees keys [0, start + i]. D = 128.
// Grid (ceil(L / 64), H), 128 threads: each warp owns 16 query rows of one head and walks the
// keys in tiles of 64 through shared memory, with tensor-core mma.sync m16n8k16 (bf16 in, f32
// accumulate). Fragment layouts follow the PTX ISA's m16n8k16 tables: lane = 4 * g + t.
#include <cuda_bf16.h>
#include <stdint.h>

#define HEAD_DIM 128
#define ROWS_PER_WARP 16
#define WARPS 4
#define Q_TILE (ROWS_PER_WARP * WARPS)
#define K_TILE 64
#define SMEM_STRIDE (HEAD_DIM + 8)  // padding: conflict-free fragment reads

__device__ __forceinline__ void mma_bf16_16816(float* c, const uint32_t* a, uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
        "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
}

__device__ __forceinline__ uint32_t pack_u16(uint16_t lo, uint16_t hi) {
    return (uint32_t)lo | ((uint32_t)hi << 16);
}

extern "C" __global__ void __launch_bounds__(128) flash_attn_prefill_bf16(
    const __nv_bfloat16* __restrict__ q, const __nv_bfloat16* __restrict__ kv, __nv_bfloat16* __restrict__ out,
    int L, int start, int H, int KVH, float scale_log2) {
    __shared__ __align__(16) uint16_t ks[K_TILE][SMEM_STRIDE];
    __shared__ __align__(16) uint16_t vs[K_TILE][SMEM_STRIDE];

    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    const int g = lane / 4, t = lane % 4;
    // later query tiles have more keys: start them first
    const int q0 = (gridDim.x - 1 - blockIdx.x) * Q_TILE;
    const int h = blockIdx.y, hk = h / (H / KVH);
    const size_t q_row = (size_t)H * HEAD_DIM;         // elements between queries
    const size_t kv_pos = (size_t)2 * KVH * HEAD_DIM;  // elements between cache positions
    const __nv_bfloat16* k_base = kv + (size_t)hk * HEAD_DIM;
    const __nv_bfloat16* v_base = kv + (size_t)(KVH + hk) * HEAD_DIM;

    // This warp's rows (local 0..15): g and g + 8.
    const int row0 = q0 + warp * ROWS_PER_WARP + g, row1 = row0 + 8;
    const int pos0 = start + row0, pos1 = start + row1;

    // Q fragments for the 8 slices of 16 dims: a0 (row g, 2t..), a1 (row g+8), a2/a3 (+8 cols).
    uint32_t qa[8][4];
    {
        const uint32_t* r0 = reinterpret_cast<const uint32_t*>(q + (size_t)row0 * q_row + (size_t)h * HEAD_DIM);
        const uint32_t* r1 = reinterpret_cast<const uint32_t*>(q + (size_t)row1 * q_row + (size_t)h * HEAD_DIM);
        #pragma unroll
        for (int kk = 0; kk < 8; ++kk) {
            qa[kk][0] = row0 < L ? r0[kk * 8 + t] : 0u;
            qa[kk][1] = row1 < L ? r1[kk * 8 + t] : 0u;
            qa[kk][2] = row0 < L ? r0[kk * 8 + 4 + t] : 0u;
            qa[kk][3] = row1 < L ? r1[kk * 8 + 4 + t] : 0u;
        }
    }

    float o[16][4];
    #pragma unroll
    for (int n = 0; n < 16; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f;
    float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.f, l1 = 0.f;

    const int last_row = min(q0 + Q_TILE, L) - 1;
    const int keys = start + last_row + 1;  // keys this block needs: [0, keys)
    for (int kb = 0; kb < keys; kb += K_TILE) {
        __syncthreads();  // the previous tile is no longer read
        #pragma unroll
        for (int i = 0; i < (K_TILE * HEAD_DIM / 8) / 128; ++i) {
            const int c = tid + i * 128, r = c / (HEAD_DIM / 8), col = (c % (HEAD_DIM / 8)) * 8;
            const int p = kb + r;
            uint4 kval = make_uint4(0, 0, 0, 0), vval = make_uint4(0, 0, 0, 0);
            if (p < keys) {
                kval = *reinterpret_cast<const uint4*>(k_base + (size_t)p * kv_pos + col);
                vval = *reinterpret_cast<const uint4*>(v_base + (size_t)p * kv_pos + col);
            }
            *reinterpret_cast<uint4*>(&ks[r][col]) = kval;
            *reinterpret_cast<uint4*>(&vs[r][col]) = vval;
        }
        __syncthreads();

        // S = Q K^T for 64 keys: 8 tiles of 8 keys; s[n]: (g, 2t), (g, 2t+1), (g+8, 2t), (g+8, 2t+1)
        float s[8][4];
        #pragma unroll
        for (int n = 0; n < 8; ++n) {
            s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.f;
            #pragma unroll
            for (int kk = 0; kk < 8; ++kk) {
                const uint32_t b0 = *reinterpret_cast<const uint32_t*>(&ks[n * 8 + g][kk * 16 + 2 * t]);
                const uint32_t b1 = *reinterpret_cast<const uint32_t*>(&ks[n * 8 + g][kk * 16 + 8 + 2 * t]);
                mma_bf16_16816(s[n], qa[kk], b0, b1);
            }
        }
        // scale (log2 domain), causal mask, row maxima
        float tile_m0 = -INFINITY, tile_m1 = -INFINITY;
        #pragma unroll
        for (int n = 0; n < 8; ++n) {
            const int key = kb + n * 8 + 2 * t;
            s[n][0] = key <= pos0 ? s[n][0] * scale_log2 : -INFINITY;
            s[n][1] = key + 1 <= pos0 ? s[n][1] * scale_log2 : -INFINITY;
            s[n][2] = key <= pos1 ? s[n][2] * scale_log2 : -INFINITY;
            s[n][3] = key + 1 <= pos1 ? s[n][3] * scale_log2 : -INFINITY;
            tile_m0 = fmaxf(tile_m0, fmaxf(s[n][0], s[n][1]));
            tile_m1 = fmaxf(tile_m1, fmaxf(s[n][2], s[n][3]));
        }
        tile_m0 = fmaxf(tile_m0, __shfl_xor_sync(0xffffffff, tile_m0, 1));
        tile_m0 = fmaxf(tile_m0, __shfl_xor_sync(0xffffffff, tile_m0, 2));
        tile_m1 = fmaxf(tile_m1, __shfl_xor_sync(0xffffffff, tile_m1, 1));
        tile_m1 = fmaxf(tile_m1, __shfl_xor_sync(0xffffffff, tile_m1, 2));
        const float new_m0 = fmaxf(m0, tile_m0), new_m1 = fmaxf(m1, tile_m1);
        // A row whose keys are all masked so far keeps m = -inf: use 0 so exp2 gives 0, not NaN.
        const float base0 = new_m0 == -INFINITY ? 0.f : new_m0, base1 = new_m1 == -INFINITY ? 0.f : new_m1;
        const float corr0 = exp2f(m0 - base0), corr1 = exp2f(m1 - base1);
        m0 = new_m0;
        m1 = new_m1;
        float sum0 = 0.f, sum1 = 0.f;
        #pragma unroll
        for (int n = 0; n < 8; ++n) {
            s[n][0] = exp2f(s[n][0] - base0);
            s[n][1] = exp2f(s[n][1] - base0);
            s[n][2] = exp2f(s[n][2] - base1);
            s[n][3] = exp2f(s[n][3] - base1);
            sum0 += s[n][0] + s[n][1];
            sum1 += s[n][2] + s[n][3];
        }
        l0 = l0 * corr0 + sum0;
        l1 = l1 * corr1 + sum1;
        #pragma unroll
        for (int n = 0; n < 16; ++n) {
            o[n][0] *= corr0;
            o[n][1] *= corr0;
            o[n][2] *= corr1;
            o[n][3] *= corr1;
        }
        // O += P V: P's accumulator layout is the A layout of the next mma (two 8-key tiles
        // per 16-key slice); V fragments: (keys 2t, 2t+1 | 2t+8, 2t+9; dim g) from shared memory.
        #pragma unroll
        for (int ks16 = 0; ks16 < 4; ++ks16) {
            uint32_t pa[4];
            pa[0] = pack_bf16(s[2 * ks16][0], s[2 * ks16][1]);
            pa[1] = pack_bf16(s[2 * ks16][2], s[2 * ks16][3]);
            pa[2] = pack_bf16(s[2 * ks16 + 1][0], s[2 * ks16 + 1][1]);
            pa[3] = pack_bf16(s[2 * ks16 + 1][2], s[2 * ks16 + 1][3]);
            const int k0 = ks16 * 16 + 2 * t;
            #pragma unroll
            for (int n = 0; n < 16; ++n) {
                const int d = n * 8 + g;
                const uint32_t b0 = pack_u16(vs[k0][d], vs[k0 + 1][d]);
                const uint32_t b1 = pack_u16(vs[k0 + 8][d], vs[k0 + 9][d]);
                mma_bf16_16816(o[n], pa, b0, b1);
            }
        }
    }
    l0 += __shfl_xor_sync(0xffffffff, l0, 1);
    l0 += __shfl_xor_sync(0xffffffff, l0, 2);
    l1 += __shfl_xor_sync(0xffffffff, l1, 1);
    l1 += __shfl_xor_sync(0xffffffff, l1, 2);
    const float inv0 = l0 > 0.f ? 1.f / l0 : 0.f, inv1 = l1 > 0.f ? 1.f / l1 : 0.f;
    uint32_t* out0 = reinterpret_cast<uint32_t*>(out + (size_t)row0 * q_row + (size_t)h * HEAD_DIM);
    uint32_t* out1 = reinterpret_cast<uint32_t*>(out + (size_t)row1 * q_row + (size_t)h * HEAD_DIM);
    #pragma unroll
    for (int n = 0; n < 16; ++n) {
        if (row0 < L) out0[n * 4 + t] = pack_bf16(o[n][0] * inv0, o[n][1] * inv0);
        if (row1 < L) out1[n * 4 + t] = pack_bf16(o[n][2] * inv1, o[n][3] * inv1);
    }
}
