// Decode (one token): every weight is read once per step, so each step is a chain of
// matrix-vector products streaming weights at memory bandwidth, with the elementwise work folded
// into their prologues and epilogues, and an attention kernel split along the keys.
// Roundings to T (bf16 or f16) are where transformers' Qwen3 rounds (see layer_ops.cu).
//
//   gemv_<pro>_<epi>   y (N) = W (N, K) . xin (K), W row-major (a Linear weight, out x in)
//     prologue, into shared memory:   copy:    xin = x
//                                     rmsnorm: xin = RMSNorm(x) * norm_w
//                                     swiglu:  xin = T(T(silu(x[:K])) * x[K:])   (x is 2K long)
//     epilogue:                       store:    y = T(acc)
//                                     residual: y = T(T(acc) + residual)   (residual may be y)
//                                     f32:      y = float(T(acc))          (logits)
//   embed_row          out (hidden) = table[token] (*token_at when given)
//   decode_attention_g<G>   softmax-weighted V over one range of keys per block, for G query heads
//                           per KV head; decode_attention_combine merges the ranges
#include "elementwise.cuh"

namespace {

enum Prologue { PRO_COPY, PRO_RMSNORM, PRO_SWIGLU };
enum Epilogue { EPI_STORE, EPI_RESIDUAL, EPI_F32 };

constexpr int GEMV_THREADS = 256;
constexpr int GEMV_WARPS = GEMV_THREADS / 32;
constexpr int ROWS_PER_WARP = 2;
constexpr int ROWS_PER_BLOCK = GEMV_WARPS * ROWS_PER_WARP;
constexpr int UNROLL = 4;  // 16-byte vectors per row in flight per lane

// xin (K, in shared memory) from the prologue's inputs. K % 8 == 0.
template <typename T, int PRO>
__device__ void gemv_prologue(T* xin, const T* __restrict__ x, const T* __restrict__ norm_w, int K, float eps) {
    __shared__ float scratch[GEMV_WARPS];
    const int vecs = K / 8;
    if (PRO == PRO_COPY) {
        for (int v = threadIdx.x; v < vecs; v += GEMV_THREADS)
            *reinterpret_cast<Vec8<T>*>(xin + v * 8) = load8(x + (size_t)v * 8);
    } else if (PRO == PRO_RMSNORM) {
        float squares = 0.f;
        for (int v = threadIdx.x; v < vecs; v += GEMV_THREADS) {
            const Vec8<T> a = load8(x + (size_t)v * 8);
#pragma unroll
            for (int j = 0; j < 8; ++j) squares += to_f32(a.v[j]) * to_f32(a.v[j]);
        }
        squares = warp_sum(squares);
        if (threadIdx.x % 32 == 0) scratch[threadIdx.x / 32] = squares;
        __syncthreads();
        float total = 0.f;
#pragma unroll
        for (int w = 0; w < GEMV_WARPS; ++w) total += scratch[w];
        const float inv_rms = rsqrtf(total / K + eps);
        for (int v = threadIdx.x; v < vecs; v += GEMV_THREADS) {
            const Vec8<T> a = load8(x + (size_t)v * 8), w = load8(norm_w + (size_t)v * 8);
            Vec8<T> o;
#pragma unroll
            for (int j = 0; j < 8; ++j) o.v[j] = from_f32<T>(to_f32(w.v[j]) * round_to<T>(to_f32(a.v[j]) * inv_rms));
            *reinterpret_cast<Vec8<T>*>(xin + v * 8) = o;
        }
    } else {  // PRO_SWIGLU: x = (gate (K), up (K))
        for (int v = threadIdx.x; v < vecs; v += GEMV_THREADS) {
            const Vec8<T> g = load8(x + (size_t)v * 8), u = load8(x + K + (size_t)v * 8);
            Vec8<T> o;
#pragma unroll
            for (int j = 0; j < 8; ++j) {
                const float a = to_f32(g.v[j]);
                o.v[j] = from_f32<T>(round_to<T>(a / (1.f + __expf(-a))) * to_f32(u.v[j]));
            }
            *reinterpret_cast<Vec8<T>*>(xin + v * 8) = o;
        }
    }
    __syncthreads();
}

// Loads 16-byte vectors [batch * 32 * UNROLL + lane + 32 u] of the warp's rows of row group
// `group` (zeros past the end of a row or of W).
template <typename T>
__device__ __forceinline__ void load_batch(Vec8<T> (&w)[ROWS_PER_WARP][UNROLL], const T* __restrict__ W, int N, int K,
                                           int group, int batch) {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, vecs = K / 8;
    const int row0 = group * ROWS_PER_BLOCK + warp * ROWS_PER_WARP;
#pragma unroll
    for (int r = 0; r < ROWS_PER_WARP; ++r)
#pragma unroll
        for (int u = 0; u < UNROLL; ++u) {
            const int v = batch * 32 * UNROLL + lane + u * 32;
            if (row0 + r < N && v < vecs) w[r][u] = load8_stream(W + (size_t)(row0 + r) * K + (size_t)v * 8);
            else w[r][u] = Vec8<T>{};
        }
}

// A persistent grid (at most ceil(N / ROWS_PER_BLOCK) blocks), GEMV_THREADS threads,
// K * sizeof(T) bytes of dynamic shared memory. Block b takes row groups b, b + gridDim.x, ...;
// warp w of a group owns its rows w * ROWS_PER_WARP + {0, 1}; lane l reads 16-byte vectors
// l, l + 32, ... of each row. The next batch of weights is in flight while one is multiplied, and
// the first is in flight during the prologue. (Measured on an H200 against rows dealt to warps
// one at a time with 8 vectors in flight: this was faster, 5.58 against 6.25 ms a Qwen3-8B step.)
template <typename T, int PRO, int EPI>
__device__ void gemv(const T* __restrict__ W, int N, int K, const T* __restrict__ x, const T* __restrict__ norm_w,
                     float eps, const T* residual, void* out) {
    extern __shared__ __align__(16) unsigned char gemv_smem[];
    T* xin = reinterpret_cast<T*>(gemv_smem);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int vecs = K / 8, batches = (vecs + 32 * UNROLL - 1) / (32 * UNROLL);
    const int groups = (N + ROWS_PER_BLOCK - 1) / ROWS_PER_BLOCK;
    Vec8<T> w[ROWS_PER_WARP][UNROLL], next[ROWS_PER_WARP][UNROLL];
    int group = blockIdx.x;
    if (group < groups) load_batch(w, W, N, K, group, 0);
    gemv_prologue<T, PRO>(xin, x, norm_w, K, eps);

    for (; group < groups; group += gridDim.x) {
        float acc[ROWS_PER_WARP] = {};
        for (int b = 0; b < batches; ++b) {
            const int next_group = b + 1 < batches ? group : group + gridDim.x;
            if (next_group < groups) load_batch(next, W, N, K, next_group, b + 1 < batches ? b + 1 : 0);
#pragma unroll
            for (int u = 0; u < UNROLL; ++u) {
                const int v = b * 32 * UNROLL + lane + u * 32;
                if (v < vecs) {
                    const Vec8<T> xv = *reinterpret_cast<const Vec8<T>*>(xin + v * 8);
#pragma unroll
                    for (int r = 0; r < ROWS_PER_WARP; ++r)
#pragma unroll
                        for (int j = 0; j < 8; ++j) acc[r] += to_f32(w[r][u].v[j]) * to_f32(xv.v[j]);
                }
            }
#pragma unroll
            for (int r = 0; r < ROWS_PER_WARP; ++r)
#pragma unroll
                for (int u = 0; u < UNROLL; ++u) w[r][u] = next[r][u];
        }
        const int row0 = group * ROWS_PER_BLOCK + warp * ROWS_PER_WARP;
#pragma unroll
        for (int r = 0; r < ROWS_PER_WARP; ++r) {
            const float sum = warp_sum(acc[r]);
            const int n = row0 + r;
            if (lane == 0 && n < N) {
                if (EPI == EPI_STORE) reinterpret_cast<T*>(out)[n] = from_f32<T>(sum);
                if (EPI == EPI_RESIDUAL)
                    reinterpret_cast<T*>(out)[n] = from_f32<T>(round_to<T>(sum) + to_f32(residual[n]));
                if (EPI == EPI_F32) reinterpret_cast<float*>(out)[n] = round_to<T>(sum);
            }
        }
    }
}

constexpr int HEAD_DIM = 128;
// query heads per KV head: a kernel for each G in [1, 8] (layer_plan.rs and decode_step.rs check)
constexpr int ATTN_THREADS = 128;
constexpr int ATTN_WARPS = ATTN_THREADS / 32;
constexpr int KEYS_PER_HALF = 4;                          // keys a half-warp takes per iteration
constexpr int KEYS_PER_WARP = 2 * KEYS_PER_HALF;          // 8
constexpr int KEYS_PER_ITER = ATTN_WARPS * KEYS_PER_WARP;  // 32 keys per block per iteration

// Grid (KVH, splits), ATTN_THREADS threads. Block (h, s) takes KV head h with its G = H / KVH query
// heads and keys [s * split_keys, min(keys, (s + 1) * split_keys)), keys = *keys_at when given.
// Half-warp `half` of warp w takes keys base + w * 8 + half * 4 + i (i < 4); lane l % 16 owns dims
// [8 (l % 16), +8) of q, K and V. K and V of the four keys are loaded together (16 B each, 128 B per
// lane in flight), scores are reduced over the half-warp, and each warp keeps an online softmax
// (max m, sum l, unnormalised o) per query head, in log2 units; the warps are merged at the end.
//   q (H, D) after q-norm and RoPE    kv (positions, 2, KVH, D)
//   part_o (splits, H, D) f32         part_ml (splits, H, 2) f32: (max, sum of exp2) per range
template <typename T, int G>
__device__ void decode_attention(const T* __restrict__ q, const T* __restrict__ kv, float* __restrict__ part_o,
                                 float* __restrict__ part_ml, int keys, const int* keys_at, int split_keys, int H,
                                 int KVH, float scale_log2) {
    __shared__ float warp_m[ATTN_WARPS][G], warp_l[ATTN_WARPS][G];
    __shared__ float warp_o[ATTN_WARPS][G][HEAD_DIM];
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, half = lane / 16, d0 = (lane % 16) * 8;
    const int hk = blockIdx.x, split = blockIdx.y;
    if (G * KVH != H) __trap();  // the launcher picks the kernel of H / KVH (decode_step.rs)
    const int n_keys = keys_at != nullptr ? *keys_at : keys;
    const int k_begin = split * split_keys, k_end = min(n_keys, k_begin + split_keys);
    const size_t pos_stride = (size_t)2 * KVH * HEAD_DIM;
    const T* k_base = kv + (size_t)hk * HEAD_DIM + d0;
    const T* v_base = kv + (size_t)(KVH + hk) * HEAD_DIM + d0;

    float qr[G][8];
#pragma unroll
    for (int g = 0; g < G; ++g) {
        const Vec8<T> qv = load8(q + (size_t)(hk * G + g) * HEAD_DIM + d0);
#pragma unroll
        for (int j = 0; j < 8; ++j) qr[g][j] = to_f32(qv.v[j]) * scale_log2;
    }
    float m[G], l[G], o[G][8];
#pragma unroll
    for (int g = 0; g < G; ++g) {
        m[g] = -INFINITY;
        l[g] = 0.f;
#pragma unroll
        for (int j = 0; j < 8; ++j) o[g][j] = 0.f;
    }

    for (int base = k_begin; base < k_end; base += KEYS_PER_ITER) {
        const int first = base + warp * KEYS_PER_WARP + half * KEYS_PER_HALF;
        Vec8<T> kr[KEYS_PER_HALF], vr[KEYS_PER_HALF];
#pragma unroll
        for (int i = 0; i < KEYS_PER_HALF; ++i) {
            const int key = first + i;
            if (key < k_end) {
                kr[i] = load8_stream(k_base + (size_t)key * pos_stride);
                vr[i] = load8_stream(v_base + (size_t)key * pos_stride);
            }
        }
#pragma unroll
        for (int g = 0; g < G; ++g) {
            float s[KEYS_PER_HALF];
            float tile_max = -INFINITY;
#pragma unroll
            for (int i = 0; i < KEYS_PER_HALF; ++i) {
                float dot = 0.f;
                if (first + i < k_end) {
#pragma unroll
                    for (int j = 0; j < 8; ++j) dot += qr[g][j] * to_f32(kr[i].v[j]);
                }
#pragma unroll
                for (int off = 8; off > 0; off /= 2) dot += __shfl_xor_sync(0xffffffff, dot, off);
                s[i] = first + i < k_end ? dot : -INFINITY;
                tile_max = fmaxf(tile_max, s[i]);
            }
            tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffff, tile_max, 16));  // both halves
            const float m_new = fmaxf(m[g], tile_max);
            if (m_new == -INFINITY) continue;  // no key of this warp yet (uniform over the warp)
            const float correction = exp2f(m[g] - m_new);
            float p_sum = 0.f;
#pragma unroll
            for (int j = 0; j < 8; ++j) o[g][j] *= correction;
#pragma unroll
            for (int i = 0; i < KEYS_PER_HALF; ++i) {
                const float p = exp2f(s[i] - m_new);  // 0 for keys out of range
                p_sum += p;
                if (first + i < k_end) {
#pragma unroll
                    for (int j = 0; j < 8; ++j) o[g][j] += p * to_f32(vr[i].v[j]);
                }
            }
            p_sum += __shfl_xor_sync(0xffffffff, p_sum, 16);
            l[g] = l[g] * correction + p_sum;
            m[g] = m_new;
        }
    }
    // the two halves hold the same (m, l) and disjoint keys' o: add them, then merge the warps
#pragma unroll
    for (int g = 0; g < G; ++g) {
#pragma unroll
        for (int j = 0; j < 8; ++j) o[g][j] += __shfl_xor_sync(0xffffffff, o[g][j], 16);
        if (half == 0) {
#pragma unroll
            for (int j = 0; j < 8; ++j) warp_o[warp][g][d0 + j] = o[g][j];
        }
        if (lane == 0) {
            warp_m[warp][g] = m[g];
            warp_l[warp][g] = l[g];
        }
    }
    __syncthreads();
    // thread t: dim t of every head of the group
    const int d = threadIdx.x;
#pragma unroll
    for (int g = 0; g < G; ++g) {
        float mb = -INFINITY;
#pragma unroll
        for (int w = 0; w < ATTN_WARPS; ++w) mb = fmaxf(mb, warp_m[w][g]);
        float lb = 0.f, ob = 0.f;
        if (mb != -INFINITY) {
#pragma unroll
            for (int w = 0; w < ATTN_WARPS; ++w) {
                const float scale = exp2f(warp_m[w][g] - mb);  // 0 for a warp with no key
                lb += scale * warp_l[w][g];
                ob += scale * warp_o[w][g][d];
            }
        }
        const size_t row = (size_t)split * H + hk * G + g;
        part_o[row * HEAD_DIM + d] = ob;
        if (d == 0) {
            part_ml[row * 2] = mb;
            part_ml[row * 2 + 1] = lb;
        }
    }
}

// Grid (H), HEAD_DIM threads (one dim each): out[h] = sum_s 2^(m_s - M) o_s / sum_s 2^(m_s - M) l_s,
// M the largest m_s; a range with no key has m_s = -inf and weighs 0.
template <typename T>
__device__ void decode_attention_combine(const float* __restrict__ part_o, const float* __restrict__ part_ml,
                                         T* __restrict__ out, int splits, int H) {
    const int h = blockIdx.x, d = threadIdx.x;
    float m = -INFINITY;
    for (int s = 0; s < splits; ++s) m = fmaxf(m, part_ml[((size_t)s * H + h) * 2]);
    float acc = 0.f, sum = 0.f;
    if (m != -INFINITY)
        for (int s = 0; s < splits; ++s) {
            const float w = exp2f(part_ml[((size_t)s * H + h) * 2] - m);
            acc += w * part_o[((size_t)s * H + h) * HEAD_DIM + d];
            sum += w * part_ml[((size_t)s * H + h) * 2 + 1];
        }
    out[(size_t)h * HEAD_DIM + d] = from_f32<T>(sum > 0.f ? acc / sum : 0.f);
}

}  // namespace

#define GEMV(T, SUFFIX, NAME, PRO, EPI)                                                                       \
    extern "C" __global__ void __launch_bounds__(GEMV_THREADS, 2)                                             \
        gemv_##NAME##_##SUFFIX(const T* W, int N, int K, const T* x, const T* norm_w, float eps, const T* residual, \
                               void* out) {                                                                   \
        gemv<T, PRO, EPI>(W, N, K, x, norm_w, eps, residual, out);                                            \
    }

#define DECODE_ATTENTION(T, SUFFIX, G)                                                                          \
    extern "C" __global__ void __launch_bounds__(ATTN_THREADS)                                                     \
        decode_attention_g##G##_##SUFFIX(const T* q, const T* kv, float* part_o, float* part_ml, int keys,         \
                                         const int* keys_at, int split_keys, int H, int KVH, float scale_log2) {   \
        decode_attention<T, G>(q, kv, part_o, part_ml, keys, keys_at, split_keys, H, KVH, scale_log2);             \
    }

#define DECODE_OPS(T, SUFFIX)                                                                                      \
    GEMV(T, SUFFIX, copy_store, PRO_COPY, EPI_STORE)                                                               \
    GEMV(T, SUFFIX, copy_residual, PRO_COPY, EPI_RESIDUAL)                                                         \
    GEMV(T, SUFFIX, rmsnorm_store, PRO_RMSNORM, EPI_STORE)                                                         \
    GEMV(T, SUFFIX, rmsnorm_f32, PRO_RMSNORM, EPI_F32)                                                             \
    GEMV(T, SUFFIX, swiglu_residual, PRO_SWIGLU, EPI_RESIDUAL)                                                     \
    extern "C" __global__ void embed_row_##SUFFIX(const T* table, uint32_t token, const uint32_t* token_at, T* out, \
                                                  int hidden) {                                                    \
        const size_t row = token_at != nullptr ? *token_at : token;                                                \
        for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < hidden; i += gridDim.x * blockDim.x)               \
            out[i] = table[row * hidden + i];                                                                      \
    }                                                                                                              \
    DECODE_ATTENTION(T, SUFFIX, 1)                                                                                 \
    DECODE_ATTENTION(T, SUFFIX, 2)                                                                                 \
    DECODE_ATTENTION(T, SUFFIX, 3)                                                                                 \
    DECODE_ATTENTION(T, SUFFIX, 4)                                                                                 \
    DECODE_ATTENTION(T, SUFFIX, 5)                                                                                 \
    DECODE_ATTENTION(T, SUFFIX, 6)                                                                                 \
    DECODE_ATTENTION(T, SUFFIX, 7)                                                                                 \
    DECODE_ATTENTION(T, SUFFIX, 8)                                                                                 \
    extern "C" __global__ void decode_attention_combine_##SUFFIX(const float* part_o, const float* part_ml, T* out, \
                                                               int splits, int H) {                                \
        decode_attention_combine<T>(part_o, part_ml, out, splits, H);                                              \
    }

DECODE_OPS(__nv_bfloat16, bf16)
DECODE_OPS(__half, f16)
