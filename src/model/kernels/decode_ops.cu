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
//   decode_attention_g<G>   attention of the token for G query heads per KV head, split along the
//                           keys and merged in the same kernel (decode_step_attention.cuh)
// Every kernel here waits for the previous one itself (overlap.cuh), so the step's launches may
// overlap (programmatic dependent launch): a matrix-vector kernel starts streaming its weights
// while the kernel before it finishes.
#include "elementwise.cuh"
#include "overlap.cuh"
#include "decode_step_attention.cuh"

#include "decode_gemv.cuh"

#define GEMV(T, SUFFIX, NAME, PRO, EPI)                                                                       \
    extern "C" __global__ void __launch_bounds__(GEMV_THREADS, 2)                                             \
        gemv_##NAME##_##SUFFIX(const T* W, int N, int K, const T* x, const T* norm_w, float eps, const T* residual, \
                               void* out) {                                                                   \
        gemv<T, PRO, EPI>(W, N, K, x, norm_w, eps, residual, out, PreviousKernel{});                                            \
    }

#define DECODE_ATTENTION(T, SUFFIX, G)                                                                             \
    extern "C" __global__ void __launch_bounds__(ATTN_THREADS)                                                     \
        decode_attention_g##G##_##SUFFIX(const T* q, const T* kv, float* part_o, float* part_ml, int* ranges_done, \
                                         T* out, const int* keys_at, int split_keys, int H, int KVH,               \
                                         float scale_log2) {                                                       \
        decode_attention<T, G>(q, kv, part_o, part_ml, ranges_done, out, keys_at, split_keys, H, KVH, scale_log2); \
    }

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
    DECODE_ATTENTION(T, SUFFIX, 8)

DECODE_OPS(__nv_bfloat16, bf16)
DECODE_OPS(__half, f16)
