// Causal prefill attention for one chunk, FlashAttention-2 style: scores stay in registers
// (f32), softmax is computed online per key tile, K/V are read straight from the KV cache.
//
//   q    (L, H, D)                  bf16, the chunk's queries after q-norm and RoPE
//   kv   (positions, 2, KVH, D)     bf16, one layer of the cache: K then V per position
//   out  (L, H, D)                  bf16
// Query i sits at position start + i and sees keys [0, start + i]. D = 128.
//
// Grid (ceil(L / Q_TILE), H), WARPS warps per block: each warp owns 16 query rows of one head;
// the block walks the keys in tiles of 64 through shared memory. Tensor-core mma.sync m16n8k16
// (bf16 in, f32 accumulate); fragments come from shared memory through ldmatrix (V transposed
// on the way). Loads are asynchronous (cp.async) and overlap the maths: V of tile j streams in
// while S = Q K_j^T is computed, K of tile j+1 while O += P V_j is. Only tiles that cross the
// diagonal are masked; a warp whose rows all precede a tile skips it.
// Two entry points: 64-row query tiles (4 warps) and 128-row tiles (8 warps, half the shared
// memory traffic per FLOP). Fragment layouts follow the PTX ISA's m16n8k16 tables: lane = 4g + t.
#include <cuda_bf16.h>
#include <stdint.h>

#define HEAD_DIM 128
#define ROWS_PER_WARP 16
#define K_TILE 64
#define SMEM_STRIDE (HEAD_DIM + 8)  // 272-byte rows: ldmatrix's 8 row addresses hit distinct banks

__device__ __forceinline__ void mma_bf16_16816(float* c, const uint32_t* a, uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
        "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Four 8x8 b16 matrices; lanes 8m..8m+7 give the row addresses of matrix m, register m receives
// (row lane/4, cols 2(lane%4), +1) of it, or with .trans (rows 2(lane%4), +1; col lane/4).
__device__ __forceinline__ void ldmatrix_x4(uint32_t* r, const void* row) {
    const unsigned a = static_cast<unsigned>(__cvta_generic_to_shared(row));
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(a));
}

__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t* r, const void* row) {
    const unsigned a = static_cast<unsigned>(__cvta_generic_to_shared(row));
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(a));
}

// 16 bytes global → shared without passing through registers; zero-filled when !valid.
__device__ __forceinline__ void cp_async_16(void* dst, const void* src, bool valid) {
    const unsigned a = static_cast<unsigned>(__cvta_generic_to_shared(dst));
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(a), "l"(src), "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_group 0;\n" ::); }

// 2^x on the special-function unit (about 2 ulp; 2^-inf = 0), as FlashAttention does.
__device__ __forceinline__ float fast_exp2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
}

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
}

// One 64-key tile of K or V (rows kb .. kb+63 of `base`, `stride` elements apart) into shared
// memory; rows at or past `keys` become zeros.
template <int THREADS>
__device__ __forceinline__ void load_tile(uint16_t (*tile)[SMEM_STRIDE], const __nv_bfloat16* base, size_t stride,
                                          int kb, int keys, int tid) {
    constexpr int CHUNKS = HEAD_DIM / 8;  // 16-byte pieces per row
    #pragma unroll
    for (int i = 0; i < K_TILE * CHUNKS / THREADS; ++i) {
        const int c = tid + i * THREADS, r = c / CHUNKS, col = (c % CHUNKS) * 8;
        const int p = kb + r;
        const bool valid = p < keys;
        cp_async_16(&tile[r][col], base + (size_t)(valid ? p : 0) * stride + col, valid);
    }
}

template <int WARPS>
__device__ __forceinline__ void flash_prefill(const __nv_bfloat16* __restrict__ q, const __nv_bfloat16* __restrict__ kv,
                                              __nv_bfloat16* __restrict__ out, int L, int start, int H, int KVH,
                                              float scale_log2) {
    constexpr int THREADS = WARPS * 32, Q_TILE = WARPS * ROWS_PER_WARP;
    __shared__ __align__(128) uint16_t ks[K_TILE][SMEM_STRIDE];
    __shared__ __align__(128) uint16_t vs[K_TILE][SMEM_STRIDE];

    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    const int g = lane / 4, t = lane % 4;
    // later query tiles have more keys: start them first
    const int q0 = (gridDim.x - 1 - blockIdx.x) * Q_TILE;
    const int h = blockIdx.y, hk = h / (H / KVH);
    const size_t q_row = (size_t)H * HEAD_DIM;         // elements between queries
    const size_t kv_pos = (size_t)2 * KVH * HEAD_DIM;  // elements between cache positions
    const __nv_bfloat16* k_base = kv + (size_t)hk * HEAD_DIM;
    const __nv_bfloat16* v_base = kv + (size_t)(KVH + hk) * HEAD_DIM;

    // This warp's rows (local 0..15): g and g + 8; its positions span [first_pos, first_pos + 15].
    const int row0 = q0 + warp * ROWS_PER_WARP + g, row1 = row0 + 8;
    const int pos0 = start + row0, pos1 = start + row1;
    const int first_pos = start + q0 + warp * ROWS_PER_WARP;

    const int last_row = min(q0 + Q_TILE, L) - 1;
    const int keys = start + last_row + 1;  // keys this block needs: [0, keys)
    load_tile<THREADS>(ks, k_base, kv_pos, 0, keys, tid);
    cp_async_commit();

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
    // ldmatrix row addresses of this lane: K tile (keys, dims) and V tile (keys, dims, transposed)
    const int k_row = lane & 7, k_col = (lane >> 3) * 8;
    const int v_row = (lane & 7) + ((lane >> 3) & 1) * 8, v_col = (lane >> 4) * 8;

    for (int kb = 0; kb < keys; kb += K_TILE) {
        cp_async_wait_all();
        __syncthreads();  // K of this tile has landed; every warp is done with the last V
        load_tile<THREADS>(vs, v_base, kv_pos, kb, keys, tid);
        cp_async_commit();
        const bool active = kb <= first_pos + ROWS_PER_WARP - 1;  // some row of this warp sees a key
        float s[8][4];
        if (active) {
            // S = Q K^T for 64 keys: 8 tiles of 8 keys; s[n]: (g, 2t), (g, 2t+1), (g+8, 2t), (g+8, 2t+1)
            #pragma unroll
            for (int n = 0; n < 8; ++n) {
                s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.f;
                #pragma unroll
                for (int kk = 0; kk < 8; kk += 2) {
                    uint32_t b[4];  // (kk: b0, b1), (kk + 1: b0, b1)
                    ldmatrix_x4(b, &ks[n * 8 + k_row][kk * 16 + k_col]);
                    mma_bf16_16816(s[n], qa[kk], b[0], b[1]);
                    mma_bf16_16816(s[n], qa[kk + 1], b[2], b[3]);
                }
            }
            // scale (log2 domain); the causal mask only on tiles that reach past the warp's first row
            const bool masked = kb + K_TILE - 1 > first_pos;
            float tile_m0 = -INFINITY, tile_m1 = -INFINITY;
            #pragma unroll
            for (int n = 0; n < 8; ++n) {
                const int key = kb + n * 8 + 2 * t;
                s[n][0] = !masked || key <= pos0 ? s[n][0] * scale_log2 : -INFINITY;
                s[n][1] = !masked || key + 1 <= pos0 ? s[n][1] * scale_log2 : -INFINITY;
                s[n][2] = !masked || key <= pos1 ? s[n][2] * scale_log2 : -INFINITY;
                s[n][3] = !masked || key + 1 <= pos1 ? s[n][3] * scale_log2 : -INFINITY;
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
            const float corr0 = fast_exp2(m0 - base0), corr1 = fast_exp2(m1 - base1);
            m0 = new_m0;
            m1 = new_m1;
            float sum0 = 0.f, sum1 = 0.f;
            #pragma unroll
            for (int n = 0; n < 8; ++n) {
                s[n][0] = fast_exp2(s[n][0] - base0);
                s[n][1] = fast_exp2(s[n][1] - base0);
                s[n][2] = fast_exp2(s[n][2] - base1);
                s[n][3] = fast_exp2(s[n][3] - base1);
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
        }
        cp_async_wait_all();
        __syncthreads();  // V of this tile has landed; every warp is done with this K tile
        if (kb + K_TILE < keys) load_tile<THREADS>(ks, k_base, kv_pos, kb + K_TILE, keys, tid);
        cp_async_commit();
        if (active) {
            // O += P V: P's accumulator layout is the A layout of the next mma (two 8-key tiles
            // per 16-key slice); V fragments (keys 2t, 2t+1 | 2t+8, 2t+9; dim g) by ldmatrix.trans.
            #pragma unroll
            for (int ks16 = 0; ks16 < 4; ++ks16) {
                uint32_t pa[4];
                pa[0] = pack_bf16(s[2 * ks16][0], s[2 * ks16][1]);
                pa[1] = pack_bf16(s[2 * ks16][2], s[2 * ks16][3]);
                pa[2] = pack_bf16(s[2 * ks16 + 1][0], s[2 * ks16 + 1][1]);
                pa[3] = pack_bf16(s[2 * ks16 + 1][2], s[2 * ks16 + 1][3]);
                #pragma unroll
                for (int n = 0; n < 16; n += 2) {
                    uint32_t b[4];  // (dims n: b0, b1), (dims n + 1: b0, b1)
                    ldmatrix_x4_trans(b, &vs[ks16 * 16 + v_row][n * 8 + v_col]);
                    mma_bf16_16816(o[n], pa, b[0], b[1]);
                    mma_bf16_16816(o[n + 1], pa, b[2], b[3]);
                }
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

extern "C" __global__ void __launch_bounds__(128) flash_attn_prefill_bf16(
    const __nv_bfloat16* __restrict__ q, const __nv_bfloat16* __restrict__ kv, __nv_bfloat16* __restrict__ out, int L,
    int start, int H, int KVH, float scale_log2) {
    flash_prefill<4>(q, kv, out, L, start, H, KVH, scale_log2);
}

extern "C" __global__ void __launch_bounds__(256) flash_attn_prefill_bf16_q128(
    const __nv_bfloat16* __restrict__ q, const __nv_bfloat16* __restrict__ kv, __nv_bfloat16* __restrict__ out, int L,
    int start, int H, int KVH, float scale_log2) {
    flash_prefill<8>(q, kv, out, L, start, H, KVH, scale_log2);
}
