// Decode (one token): every weight is read once per step, so each step is a chain of
// matrix-vector products streaming weights at memory bandwidth, with the elementwise work folded
// into their prologues and epilogues, and an attention kernel split along the keys.
// Roundings to T (bf16 or f16) are where transformers' Qwen3 rounds (see layer_ops.cu).
//
//   gemv_<pro>_<epi>   y (N) = W (N, K) . xin (K), W row-major (a Linear weight, out x in),
//                      the weights in flight in registers; the prologues (copy, rmsnorm, swiglu)
//                      and epilogues (store, residual, f32) are decode_gemv_io.cuh's
//   embed_row          out (hidden) = table[token] (*token_at when given)
//   decode_attention_g<G>   attention of the token for G query heads per KV head, split along the
//                           keys and merged in the same kernel (decode_step_attention.cuh)
//   decode_attention_qk_g<G>  the same with the layer's q/k norm, RoPE and cache write folded in
//                           (QWEN3_MPI_DECODE_QK=fused, in place of layer_ops.cu's qk kernel)
// Every kernel here waits for the previous one itself (overlap.cuh), so the step's launches may
// overlap (programmatic dependent launch): a matrix-vector kernel starts streaming its weights
// while the kernel before it finishes.
#include "decode_gemv_io.cuh"
#include "overlap.cuh"
#include "decode_step_attention.cuh"

namespace {

constexpr int R = GEMV_R;
constexpr int U = 4;  // 16-byte vectors of each row in flight a lane

// Loads 16-byte vectors [batch * 32 * U + lane + 32 u] of the warp's R rows of row group
// `group` (zeros past the end of a row or of W).
template <typename T>
__device__ __forceinline__ void load_batch(Vec8<T> (&w)[R][U], const T* __restrict__ W, int N, int K, int group,
                                           int batch) {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, vecs = K / 8;
    const int row0 = group * ROWS_PER_BLOCK + warp * R;
#pragma unroll
    for (int r = 0; r < R; ++r)
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const int v = batch * 32 * U + lane + u * 32;
            if (row0 + r < N && v < vecs) w[r][u] = load8_stream(W + (size_t)(row0 + r) * K + (size_t)v * 8);
            else w[r][u] = Vec8<T>{};
        }
}

// A persistent grid (at most ceil(N / ROWS_PER_BLOCK) blocks), GEMV_THREADS threads,
// K * sizeof(T) bytes of dynamic shared memory. Block b takes row groups b, b + gridDim.x, ...;
// warp w of a group owns rows w * R + [0, R); lane l reads 16-byte vectors l, l + 32, ... of
// each row. The next batch of weights is in flight while one is multiplied, and the first is in
// flight before the kernel waits for the one before it (overlap.cuh) and during the prologue.
// (Measured on an
// H200 against rows dealt to warps one at a time with 8 vectors in flight: this was faster, 5.58
// against 6.25 ms a Qwen3-8B step.)
template <typename T, int PRO, int EPI>
__device__ void gemv(const T* __restrict__ W, int N, int K, const T* __restrict__ x, const T* __restrict__ norm_w,
                     float eps, const T* residual, void* out) {
    extern __shared__ __align__(16) unsigned char gemv_smem[];
    T* xin = reinterpret_cast<T*>(gemv_smem);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int vecs = K / 8, batches = (vecs + 32 * U - 1) / (32 * U);
    const int groups = (N + ROWS_PER_BLOCK - 1) / ROWS_PER_BLOCK;
    Vec8<T> w[R][U], next[R][U];
    int group = blockIdx.x;
    allow_next_kernel_launch();
    if (group < groups) load_batch(w, W, N, K, group, 0);  // weights: no kernel writes them
    wait_for_previous_kernel();
    gemv_prologue<T, PRO>(xin, x, norm_w, K, eps);

    for (; group < groups; group += gridDim.x) {
        float acc[R] = {};
        for (int b = 0; b < batches; ++b) {
            const int next_group = b + 1 < batches ? group : group + gridDim.x;
            if (next_group < groups) load_batch(next, W, N, K, next_group, b + 1 < batches ? b + 1 : 0);
#pragma unroll
            for (int u = 0; u < U; ++u) {
                const int v = b * 32 * U + lane + u * 32;
                if (v < vecs) {
                    const Vec8<T> xv = *reinterpret_cast<const Vec8<T>*>(xin + v * 8);
#pragma unroll
                    for (int r = 0; r < R; ++r)
#pragma unroll
                        for (int j = 0; j < 8; ++j) acc[r] += to_f32(w[r][u].v[j]) * to_f32(xv.v[j]);
                }
            }
#pragma unroll
            for (int r = 0; r < R; ++r)
#pragma unroll
                for (int u = 0; u < U; ++u) w[r][u] = next[r][u];
        }
        const int row0 = group * ROWS_PER_BLOCK + warp * R;
#pragma unroll
        for (int r = 0; r < R; ++r) {
            const float sum = warp_sum(acc[r]);
            if (lane == 0 && row0 + r < N) gemv_store<T, EPI>(sum, row0 + r, residual, out);
        }
    }
}

}  // namespace

#define GEMV(T, SUFFIX, NAME, PRO, EPI)                                                                       \
    extern "C" __global__ void __launch_bounds__(GEMV_THREADS, 2)                                             \
        gemv_##NAME##_##SUFFIX(const T* W, int N, int K, const T* x, const T* norm_w, float eps, const T* residual, \
                               void* out) {                                                                   \
        gemv<T, PRO, EPI>(W, N, K, x, norm_w, eps, residual, out);                                            \
    }

// Both attention entry points take the same arguments, the q/k step's last (the separate kernel
// ignores them), so that one launch serves either (step_attention.rs).
#define DECODE_ATTENTION_ENTRY(T, NAME, G, QK)                                                                     \
    extern "C" __global__ void __launch_bounds__(ATTN_THREADS)                                                     \
        NAME(const T* q, T* kv, float* part_o, float* part_ml, int* ranges_done, T* out, const int* keys_at,       \
             int split_keys, int H, int KVH, float scale_log2, const T* qkv, const T* q_w, const T* k_w,            \
             const T* cos, const T* sin, const int* position_at, float eps) {                                       \
        decode_attention<T, G, QK>(q, kv, part_o, part_ml, ranges_done, out, keys_at, split_keys, H, KVH,           \
                                   scale_log2, QkStep<T>{kv, qkv, q_w, k_w, cos, sin, position_at, eps});           \
    }

#define DECODE_ATTENTION(T, SUFFIX, G) DECODE_ATTENTION_ENTRY(T, decode_attention_g##G##_##SUFFIX, G, false)
#define DECODE_ATTENTION_QK(T, SUFFIX, G) DECODE_ATTENTION_ENTRY(T, decode_attention_qk_g##G##_##SUFFIX, G, true)

#define DECODE_OPS(T, SUFFIX)                                                                                      \
    GEMV(T, SUFFIX, copy_store, PRO_COPY, EPI_STORE)                                                               \
    GEMV(T, SUFFIX, copy_residual, PRO_COPY, EPI_RESIDUAL)                                                         \
    GEMV(T, SUFFIX, rmsnorm_store, PRO_RMSNORM, EPI_STORE)                                                         \
    GEMV(T, SUFFIX, rmsnorm_f32, PRO_RMSNORM, EPI_F32)                                                             \
    GEMV(T, SUFFIX, swiglu_residual, PRO_SWIGLU, EPI_RESIDUAL)                                                     \
    extern "C" __global__ void embed_row_##SUFFIX(const T* table, uint32_t token, const uint32_t* token_at, T* out, \
                                                  int hidden) {                                                    \
        allow_next_kernel_launch();                                                                                \
        wait_for_previous_kernel();                                                                                \
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
    DECODE_ATTENTION_QK(T, SUFFIX, 1)                                                                              \
    DECODE_ATTENTION_QK(T, SUFFIX, 2)                                                                              \
    DECODE_ATTENTION_QK(T, SUFFIX, 3)                                                                              \
    DECODE_ATTENTION_QK(T, SUFFIX, 4)                                                                              \
    DECODE_ATTENTION_QK(T, SUFFIX, 5)                                                                              \
    DECODE_ATTENTION_QK(T, SUFFIX, 6)                                                                              \
    DECODE_ATTENTION_QK(T, SUFFIX, 7)                                                                              \
    DECODE_ATTENTION_QK(T, SUFFIX, 8)

DECODE_OPS(__nv_bfloat16, bf16)
DECODE_OPS(__half, f16)
