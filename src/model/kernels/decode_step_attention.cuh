// Attention of the decode step's one token over the cache (flash-decoding), with the merge of the
// key ranges in the same kernel. Included by decode_ops.cu.
//
//   q        (H, D)                  T, after q-norm and RoPE; D = 128
//   kv       (positions, 2, KVH, D)  T, one layer of the cache: K then V per position
//   part_o   (splits, H, D)          f32, each key range's unnormalised output
//   part_ml  (splits, H, 2)          f32, each range's (max score, sum of exp2), log2 units
//   ranges_done (KVH)                i32, zero between launches
//   out      (H, D)                  T
//
// Grid (KVH, splits), ATTN_THREADS threads, ATTN_SMEM_BYTES of dynamic shared memory. Block
// (h, s) takes KV head h with its G = H / KVH query heads and keys [s * split_keys,
// min(keys, (s + 1) * split_keys)); keys = *keys_at. K and V come through shared memory in tiles
// of TILE_KEYS keys, ATTN_STAGES - 1 tiles in flight (cp.async) while one is computed. Warp w
// takes query heads w, w + 4, ... and each whole tile for them, so warps meet only where a tile
// arrives:
//   1. scores: lane k the score of key k (K rows stored with their 16-byte chunks swizzled by the
//      row, so that eight lanes reading eight rows hit distinct banks; q in shared memory as f32);
//   2. online softmax over the tile, in the warp's registers;
//   3. P V: lane l dims [4l, 4l + 4), every key of the tile.
// The last block of a KV head to finish (a counter per head) merges the heads' ranges into out
// and resets the counter, so no second kernel runs.
#pragma once
#include "qk_norm_rope.cuh"

constexpr int HEAD_DIM = 128;
static_assert(HEAD_DIM == QK_HEAD_DIM, "qk_step writes whole heads of norm_rope_head");
constexpr int ATTN_THREADS = 128;
constexpr int ATTN_WARPS = ATTN_THREADS / 32;
constexpr int TILE_KEYS = 32;  // KEYS_PER_ITER in decode_split.rs
constexpr int ATTN_STAGES = 4;
static_assert(TILE_KEYS == 32, "a key a lane");
constexpr int ATTN_SMEM_BYTES = ATTN_STAGES * 2 * TILE_KEYS * HEAD_DIM * 2;  // 64 KiB (T is 2 bytes)

namespace {

// Tile of keys [first, first + TILE_KEYS) into shared memory (rows past k_end zero-filled); K's
// chunk c of row r is stored at chunk c ^ (r % 8) of the row. With SKIP, key `skip`'s row is left
// alone (no copy at all: the kernel writes it itself).
template <typename T, bool SKIP = false>
__device__ __forceinline__ void load_kv_tile(T* k_tile, T* v_tile, const T* k_base, const T* v_base,
                                             size_t pos_stride, int first, int k_end, int skip = -1) {
    constexpr int CHUNKS = HEAD_DIM / 8;  // 16-byte chunks a row
#pragma unroll
    for (int j = 0; j < TILE_KEYS * CHUNKS / ATTN_THREADS; ++j) {
        const int c = threadIdx.x + j * ATTN_THREADS, row = c / CHUNKS, col = c % CHUNKS;
        if (SKIP && first + row == skip) continue;
        const bool valid = first + row < k_end;
        const size_t at = valid ? (size_t)(first + row) * pos_stride + col * 8 : 0;
        cp_async16(k_tile + row * HEAD_DIM + (col ^ (row & 7)) * 8, k_base + at, valid);  // swizzled
        cp_async16(v_tile + row * HEAD_DIM + col * 8, v_base + at, valid);
    }
}

// Every range of KV head `hk` merged into out (H, D): block-wide, after every range is written.
// Warp w reads ranges w, w + 4, ...; lane l dims [4l, 4l + 4).
template <typename T, int G>
__device__ void merge_ranges(const float* part_o, const float* part_ml, T* __restrict__ out, float* smem, int used,
                             int hk, int H) {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    float m[G], l[G], acc[G][4];
#pragma unroll
    for (int g = 0; g < G; ++g) {
        m[g] = -INFINITY;
        l[g] = 0.f;
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[g][j] = 0.f;
    }
    // unrolled so that several ranges' loads are in flight at once
#pragma unroll 4
    for (int s = warp; s < used; s += ATTN_WARPS) {
#pragma unroll
        for (int g = 0; g < G; ++g) {
            const size_t row = (size_t)s * H + hk * G + g;
            const float2 ml = __ldcg(reinterpret_cast<const float2*>(part_ml) + row);
            const float4 o = __ldcg(reinterpret_cast<const float4*>(part_o + row * HEAD_DIM) + lane);
            const float m_new = fmaxf(m[g], ml.x);  // ml.x is finite: every used range has a key
            const float keep = exp2f(m[g] - m_new), add = exp2f(ml.x - m_new);
            l[g] = l[g] * keep + ml.y * add;
            acc[g][0] = acc[g][0] * keep + o.x * add;
            acc[g][1] = acc[g][1] * keep + o.y * add;
            acc[g][2] = acc[g][2] * keep + o.z * add;
            acc[g][3] = acc[g][3] * keep + o.w * add;
            m[g] = m_new;
        }
    }
    // smem: [ATTN_WARPS][G][HEAD_DIM] sums, then [ATTN_WARPS][G] (m, l)
    float* warp_acc = smem;
    float* warp_ml = smem + ATTN_WARPS * G * HEAD_DIM;
#pragma unroll
    for (int g = 0; g < G; ++g) {
#pragma unroll
        for (int j = 0; j < 4; ++j) warp_acc[(warp * G + g) * HEAD_DIM + lane * 4 + j] = acc[g][j];
        if (lane == 0) {
            warp_ml[(warp * G + g) * 2] = m[g];
            warp_ml[(warp * G + g) * 2 + 1] = l[g];
        }
    }
    __syncthreads();
    const int d = threadIdx.x;  // one dim a thread
#pragma unroll
    for (int g = 0; g < G; ++g) {
        float mb = -INFINITY;
#pragma unroll
        for (int w = 0; w < ATTN_WARPS; ++w) mb = fmaxf(mb, warp_ml[(w * G + g) * 2]);
        float lb = 0.f, ob = 0.f;
#pragma unroll
        for (int w = 0; w < ATTN_WARPS; ++w) {
            const float scale = exp2f(warp_ml[(w * G + g) * 2] - mb);  // 0 for a warp with no range
            lb += scale * warp_ml[(w * G + g) * 2 + 1];
            ob += scale * warp_acc[(w * G + g) * HEAD_DIM + d];
        }
        out[(size_t)(hk * G + g) * HEAD_DIM + d] = from_f32<T>(lb > 0.f ? ob / lb : 0.f);
    }
}

// With QK (decode_attention_qk_g<G>, QWEN3_MPI_DECODE_QK=fused): the q/k step of the layer
// (layer_ops.cu's qk_norm_rope_cache) folded in, so that no kernel runs between the q/k/v product
// and this one. `q` is then unused and `qk` holds the raw q/k/v product row
// ((H + 2 KVH) D), the norms' weights, the RoPE table and the position: every block builds its G
// query heads itself (q/k norm, RoPE), and the block of the range holding the new key (the last)
// builds that key, writes it and its value into the cache and into its own tile. Before it waits
// for the kernel before it, a block already copies its tiles of the earlier keys: the cache holds
// them from earlier steps, which are complete before this step's first kernel starts (the
// step's inputs are copied in between), and no kernel of this step writes them.
template <typename T>
struct QkStep {
    T* kv;  // the layer's cache (the kernel's `kv`), where the new key and value go
    const T* qkv;
    const T* q_w;
    const T* k_w;
    const T* cos;
    const T* sin;
    const int* position_at;
    float eps;
};

// This half-warp's part (lane hl of 16) of q/k norm and RoPE of the G query heads of KV head hk,
// into q_s as f32 of T; and on the block of the range holding the new key at `pos`, that key and
// its value into the cache and, where its tile was copied without it (tile index < ATTN_STAGES -
// 1), into the tile.
template <typename T, int G>
__device__ __forceinline__ void qk_step(const QkStep<T>& qk, float (*q_s)[HEAD_DIM], T* k_tiles, T* v_tiles,
                                        int hk, int H, int KVH, int pos, int k_begin, bool holds_new_key) {
    const int half = threadIdx.x / 16, hl = threadIdx.x % 16;
    const unsigned mask = 0xffffu << (16 * (half % 2));
    if (half < G) {
        const int head = hk * G + half;
        const Vec8<T> in = load8(qk.qkv + (size_t)head * HEAD_DIM + hl * QK_PER_LANE);
        const Vec8<T> q = norm_rope_head(in, qk.q_w, qk.cos, qk.sin, pos, qk.eps, hl, mask);
#pragma unroll
        for (int j = 0; j < QK_PER_LANE; ++j) q_s[half][hl * QK_PER_LANE + j] = to_f32(q.v[j]);
    }
    if (holds_new_key && half == G % (ATTN_THREADS / 16)) {
        const Vec8<T> k_in = load8(qk.qkv + (size_t)(H + hk) * HEAD_DIM + hl * QK_PER_LANE);
        const Vec8<T> k = norm_rope_head(k_in, qk.k_w, qk.cos, qk.sin, pos, qk.eps, hl, mask);
        const Vec8<T> v = load8(qk.qkv + (size_t)(H + KVH + hk) * HEAD_DIM + hl * QK_PER_LANE);
        T* kv_pos = qk.kv + (size_t)pos * 2 * KVH * HEAD_DIM;
        store8(kv_pos + (size_t)hk * HEAD_DIM + hl * QK_PER_LANE, k);
        store8(kv_pos + (size_t)(KVH + hk) * HEAD_DIM + hl * QK_PER_LANE, v);
        const int r = pos - k_begin, tile = r / TILE_KEYS, row = r % TILE_KEYS;
        if (tile < ATTN_STAGES - 1) {  // copied before the wait, without this row: write it (chunk hl)
            store8(k_tiles + (tile * TILE_KEYS + row) * HEAD_DIM + (hl ^ (row & 7)) * 8, k);
            store8(v_tiles + (tile * TILE_KEYS + row) * HEAD_DIM + hl * 8, v);
        } else {
            __threadfence();  // the main loop copies its tile from the cache, after a barrier
        }
    }
}

template <typename T, int G, bool QK = false>
__device__ void decode_attention(const T* __restrict__ q, const T* kv, float* part_o, float* part_ml,
                                 int* ranges_done, T* __restrict__ out, const int* keys_at, int split_keys, int H,
                                 int KVH, float scale_log2, QkStep<T> qk = {}) {
    static_assert(G <= ATTN_THREADS / 16, "a half-warp a query head");
    constexpr int HEADS_PER_WARP = (G + ATTN_WARPS - 1) / ATTN_WARPS;
    extern __shared__ __align__(16) unsigned char attn_smem[];
    __shared__ __align__(16) float q_s[G][HEAD_DIM];
    __shared__ __align__(16) float p_s[ATTN_WARPS][TILE_KEYS];
    __shared__ int is_last;
    T* k_tiles = reinterpret_cast<T*>(attn_smem);
    T* v_tiles = k_tiles + ATTN_STAGES * TILE_KEYS * HEAD_DIM;

    allow_next_kernel_launch();
    if constexpr (!QK) wait_for_previous_kernel();
    if (G * KVH != H) __trap();  // the launcher picks the kernel of H / KVH (decode_step.rs)
    const int hk = blockIdx.x, split = blockIdx.y;
    const int n_keys = *keys_at;  // the step's inputs: written before its first kernel
    const int used = (n_keys + split_keys - 1) / split_keys;
    const int k_begin = split * split_keys, k_end = min(n_keys, k_begin + split_keys);
    if (split >= used) return;  // past the keys (the grid covers the cache's capacity)
    const int tiles = (k_end - k_begin + TILE_KEYS - 1) / TILE_KEYS;
    const size_t pos_stride = (size_t)2 * KVH * HEAD_DIM;
    const T* k_base = kv + (size_t)hk * HEAD_DIM;
    const T* v_base = kv + (size_t)(KVH + hk) * HEAD_DIM;
    const int pos = QK ? *qk.position_at : -1;  // the new key (QK: the last of the keys)

    for (int s = 0; s < ATTN_STAGES - 1; ++s) {
        if (s < tiles)
            load_kv_tile<T, QK>(k_tiles + s * TILE_KEYS * HEAD_DIM, v_tiles + s * TILE_KEYS * HEAD_DIM, k_base,
                                v_base, pos_stride, k_begin + s * TILE_KEYS, k_end, pos);
        cp_async_commit();
    }
    if constexpr (QK) {
        wait_for_previous_kernel();
        if (pos != n_keys - 1) __trap();  // the step's inputs (decode_step.rs)
        qk_step<T, G>(qk, q_s, k_tiles, v_tiles, hk, H, KVH, pos, k_begin, split == used - 1);
    } else {
        for (int i = threadIdx.x; i < G * HEAD_DIM; i += ATTN_THREADS)
            q_s[i / HEAD_DIM][i % HEAD_DIM] = to_f32(q[(size_t)hk * G * HEAD_DIM + i]);
    }
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    float m[HEADS_PER_WARP], l[HEADS_PER_WARP], o[HEADS_PER_WARP][4];
#pragma unroll
    for (int hw = 0; hw < HEADS_PER_WARP; ++hw) {
        m[hw] = -INFINITY;
        l[hw] = 0.f;
#pragma unroll
        for (int j = 0; j < 4; ++j) o[hw][j] = 0.f;
    }

    for (int i = 0; i < tiles; ++i) {
        cp_async_wait<ATTN_STAGES - 2>();
        __syncthreads();  // tile i is in (and q); every warp is done with tile i - 1 and its stage
        const int next = i + ATTN_STAGES - 1;
        if (next < tiles) {
            const int stage = next % ATTN_STAGES;
            load_kv_tile(k_tiles + stage * TILE_KEYS * HEAD_DIM, v_tiles + stage * TILE_KEYS * HEAD_DIM, k_base,
                         v_base, pos_stride, k_begin + next * TILE_KEYS, k_end);
        }
        cp_async_commit();
        const T* k_tile = k_tiles + (i % ATTN_STAGES) * TILE_KEYS * HEAD_DIM;
        const T* v_tile = v_tiles + (i % ATTN_STAGES) * TILE_KEYS * HEAD_DIM;
        const bool in_range = k_begin + i * TILE_KEYS + lane < k_end;
#pragma unroll
        for (int hw = 0; hw < HEADS_PER_WARP; ++hw) {
            const int g = warp + hw * ATTN_WARPS;
            if (g >= G) break;  // uniform over the warp
            // 1. the score of key `lane` (log2 units)
            const T* k_row = k_tile + lane * HEAD_DIM;
            float dot[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
            for (int c = 0; c < HEAD_DIM / 8; ++c) {
                const Vec8<T> k8 = load8(k_row + (c ^ (lane & 7)) * 8);
                const float4 qa = *reinterpret_cast<const float4*>(&q_s[g][c * 8]);
                const float4 qb = *reinterpret_cast<const float4*>(&q_s[g][c * 8 + 4]);
                dot[c % 4] += qa.x * to_f32(k8.v[0]) + qa.y * to_f32(k8.v[1]) + qa.z * to_f32(k8.v[2]) +
                              qa.w * to_f32(k8.v[3]) + qb.x * to_f32(k8.v[4]) + qb.y * to_f32(k8.v[5]) +
                              qb.z * to_f32(k8.v[6]) + qb.w * to_f32(k8.v[7]);
            }
            const float score = in_range ? (dot[0] + dot[1] + dot[2] + dot[3]) * scale_log2 : -INFINITY;
            // 2. online softmax: every tile has a key in range, so the new max is finite
            float tile_max = score;
#pragma unroll
            for (int off = 16; off > 0; off /= 2) tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffff, tile_max, off));
            const float m_new = fmaxf(m[hw], tile_max);
            const float p = exp2f(score - m_new);  // 0 past the keys
            const float keep = exp2f(m[hw] - m_new);
            l[hw] = l[hw] * keep + warp_sum(p);
            m[hw] = m_new;
            p_s[warp][lane] = p;
            __syncwarp();
            // 3. o = o * keep + P V for dims [4 lane, 4 lane + 4)
#pragma unroll
            for (int j = 0; j < 4; ++j) o[hw][j] *= keep;
#pragma unroll
            for (int k = 0; k < TILE_KEYS; k += 4) {
                const float4 p4 = *reinterpret_cast<const float4*>(&p_s[warp][k]);
                const float pk[4] = {p4.x, p4.y, p4.z, p4.w};
#pragma unroll
                for (int kk = 0; kk < 4; ++kk) {
                    const uint2 raw = *reinterpret_cast<const uint2*>(v_tile + (k + kk) * HEAD_DIM + lane * 4);
                    const T* v4 = reinterpret_cast<const T*>(&raw);
#pragma unroll
                    for (int j = 0; j < 4; ++j) o[hw][j] += pk[kk] * to_f32(v4[j]);  // V is zero past the keys
                }
            }
            __syncwarp();  // p_s is rewritten for the next head
        }
    }
    cp_async_wait<0>();

    // the range's output, one head a warp
#pragma unroll
    for (int hw = 0; hw < HEADS_PER_WARP; ++hw) {
        const int g = warp + hw * ATTN_WARPS;
        if (g >= G) break;
        const size_t row = (size_t)split * H + hk * G + g;
        *reinterpret_cast<float4*>(part_o + row * HEAD_DIM + lane * 4) = make_float4(o[hw][0], o[hw][1], o[hw][2], o[hw][3]);
        if (lane == 0) *reinterpret_cast<float2*>(part_ml + row * 2) = make_float2(m[hw], l[hw]);
    }
    // the last range of this KV head to finish merges them all
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) is_last = atomicAdd(ranges_done + hk, 1) == used - 1;
    __syncthreads();
    if (!is_last) return;
    __threadfence();
    merge_ranges<T, G>(part_o, part_ml, out, reinterpret_cast<float*>(attn_smem), used, hk, H);
    if (threadIdx.x == 0) ranges_done[hk] = 0;  // for the next launch
}

}  // namespace
