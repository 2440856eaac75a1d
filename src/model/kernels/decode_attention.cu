// Attention of one new token (decode) over the whole cache, split across blocks along the keys
// (flash-decoding): with one query per head there is too little work per head to fill the GPU,
// so each block takes one KV head with its G = H / KVH query heads and one range of keys, and
// a second kernel merges the ranges' partial results.
//
//   q        (1, H, D)                   bf16, after q-norm and RoPE; D = 128, G <= MAX_G
//   kv       (positions, 2, KVH, D)      bf16, one layer of the cache: K then V per position
//   part_o   (splits, H, D)              f32, unnormalised output of each key range
//   part_ml  (splits, H, 2)              f32, (running max in log2 units, sum of exp2) per range
//   out      (1, H, D)                   bf16
// The query sits at position keys - 1 and sees every key in [0, keys).
#include <cuda_bf16.h>
#include <stdint.h>

#define HEAD_DIM 128
#define MAX_G 8
#define MAX_SPLIT_KEYS 1024
#define THREADS 128
#define WARPS (THREADS / 32)

// Grid (KVH, splits), 128 threads. Keys [split * split_keys, min(keys, (split + 1) * split_keys)).
// 1. Scores: a warp takes one key at a time, each lane 4 of its 128 dims (one coalesced 256-byte
//    row per warp), summed over the warp for every query head of the group.
// 2. Softmax statistics of the range per head (max, sum of exp2) in shared memory.
// 3. P V: thread t owns dims 2(t % 64), +1 and every other key; the two halves are added at the end.
extern "C" __global__ void __launch_bounds__(THREADS) flash_attn_decode_bf16(
    const __nv_bfloat16* __restrict__ q, const __nv_bfloat16* __restrict__ kv, float* __restrict__ part_o,
    float* __restrict__ part_ml, int keys, int split_keys, int H, int KVH, float scale_log2) {
    __shared__ float qs[MAX_G][HEAD_DIM];
    __shared__ float p[MAX_G][MAX_SPLIT_KEYS];
    __shared__ float stat_max[MAX_G], stat_sum[MAX_G];
    __shared__ float half_o[MAX_G][HEAD_DIM];

    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    const int hk = blockIdx.x, split = blockIdx.y, G = H / KVH;
    if (G > MAX_G || split_keys > MAX_SPLIT_KEYS) __trap();  // the launcher's bounds (flash_decode.rs)
    const int k_begin = split * split_keys, k_end = min(keys, k_begin + split_keys), n = k_end - k_begin;
    const size_t kv_pos = (size_t)2 * KVH * HEAD_DIM;  // elements between cache positions
    const __nv_bfloat16* k_base = kv + (size_t)hk * HEAD_DIM;
    const __nv_bfloat16* v_base = kv + (size_t)(KVH + hk) * HEAD_DIM;

    for (int i = tid; i < G * HEAD_DIM; i += THREADS)
        qs[i / HEAD_DIM][i % HEAD_DIM] = __bfloat162float(q[(size_t)(hk * G + i / HEAD_DIM) * HEAD_DIM + i % HEAD_DIM]);
    __syncthreads();

    // 1. scores p[g][j] = (q_g . k_j) * scale, log2 units
    float qr[MAX_G][4];
    #pragma unroll
    for (int g = 0; g < MAX_G; ++g)
        #pragma unroll
        for (int i = 0; i < 4; ++i) qr[g][i] = g < G ? qs[g][lane * 4 + i] : 0.f;
    constexpr int UNROLL = 4;  // rows in flight per warp
    for (int j0 = warp; j0 < n; j0 += WARPS * UNROLL) {
        uint2 raw[UNROLL];
        #pragma unroll
        for (int u = 0; u < UNROLL; ++u) {
            const int j = j0 + u * WARPS;
            raw[u] = j < n ? *reinterpret_cast<const uint2*>(k_base + (size_t)(k_begin + j) * kv_pos + lane * 4)
                           : make_uint2(0u, 0u);
        }
        #pragma unroll
        for (int u = 0; u < UNROLL; ++u) {
            const int j = j0 + u * WARPS;
            if (j >= n) break;
            const float2 k01 = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&raw[u].x));
            const float2 k23 = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&raw[u].y));
            #pragma unroll
            for (int g = 0; g < MAX_G; ++g) {
                if (g >= G) break;
                float dot = qr[g][0] * k01.x + qr[g][1] * k01.y + qr[g][2] * k23.x + qr[g][3] * k23.y;
                #pragma unroll
                for (int off = 16; off > 0; off /= 2) dot += __shfl_xor_sync(0xffffffff, dot, off);
                if (lane == 0) p[g][j] = dot * scale_log2;
            }
        }
    }
    __syncthreads();

    // 2. per head: max and sum of exp2 over the range (warp w handles heads w, w + 4)
    for (int g = warp; g < G; g += WARPS) {
        float m = -INFINITY;
        for (int j = lane; j < n; j += 32) m = fmaxf(m, p[g][j]);
        #pragma unroll
        for (int off = 16; off > 0; off /= 2) m = fmaxf(m, __shfl_xor_sync(0xffffffff, m, off));
        float sum = 0.f;
        for (int j = lane; j < n; j += 32) {
            const float e = exp2f(p[g][j] - m);
            p[g][j] = e;
            sum += e;
        }
        #pragma unroll
        for (int off = 16; off > 0; off /= 2) sum += __shfl_xor_sync(0xffffffff, sum, off);
        if (lane == 0) {
            stat_max[g] = m;
            stat_sum[g] = sum;
        }
    }
    __syncthreads();

    // 3. o[g][d] = sum_j p[g][j] * v_j[d]
    const int d = 2 * (tid % 64), parity = tid / 64;
    float o[MAX_G][2];
    #pragma unroll
    for (int g = 0; g < MAX_G; ++g) o[g][0] = o[g][1] = 0.f;
    #pragma unroll 8
    for (int j = parity; j < n; j += 2) {
        const float2 v = __bfloat1622float2(
            *reinterpret_cast<const __nv_bfloat162*>(v_base + (size_t)(k_begin + j) * kv_pos + d));
        #pragma unroll
        for (int g = 0; g < MAX_G; ++g) {
            if (g >= G) break;
            o[g][0] += p[g][j] * v.x;
            o[g][1] += p[g][j] * v.y;
        }
    }
    if (parity == 1)
        for (int g = 0; g < G; ++g) {
            half_o[g][d] = o[g][0];
            half_o[g][d + 1] = o[g][1];
        }
    __syncthreads();
    if (parity == 0)
        for (int g = 0; g < G; ++g) {
            float* dst = part_o + ((size_t)split * H + hk * G + g) * HEAD_DIM + d;
            dst[0] = o[g][0] + half_o[g][d];
            dst[1] = o[g][1] + half_o[g][d + 1];
        }
    if (tid < G) {
        float* ml = part_ml + ((size_t)split * H + hk * G + tid) * 2;
        ml[0] = stat_max[tid];
        ml[1] = stat_sum[tid];
    }
}

// Grid (H), 128 threads (one dim each): out[h] = sum_s 2^(m_s - M) o_s / sum_s 2^(m_s - M) l_s.
extern "C" __global__ void __launch_bounds__(THREADS) flash_attn_decode_combine(
    const float* __restrict__ part_o, const float* __restrict__ part_ml, __nv_bfloat16* __restrict__ out, int splits,
    int H) {
    const int h = blockIdx.x, d = threadIdx.x;
    float m = -INFINITY;
    for (int s = 0; s < splits; ++s) m = fmaxf(m, part_ml[((size_t)s * H + h) * 2]);
    float acc = 0.f, sum = 0.f;
    for (int s = 0; s < splits; ++s) {
        const float w = exp2f(part_ml[((size_t)s * H + h) * 2] - m);
        acc += w * part_o[((size_t)s * H + h) * HEAD_DIM + d];
        sum += w * part_ml[((size_t)s * H + h) * 2 + 1];
    }
    out[(size_t)h * HEAD_DIM + d] = __float2bfloat16(sum > 0.f ? acc / sum : 0.f);
}
