// Qwen3-MoE's sparse block on the GPU, rounding where moe.rs (and transformers 5.x's grouped_mm
// experts path) rounds: router logits in T, the softmax, top k and renormalisation in f32, each
// expert's products in T, the routing weights cast to T and multiplied in T, each token's k
// weighted outputs summed in f32 (in ascending expert order) and rounded once, then the residual
// add T(x + T(sum)). T is bf16 or f16 (one extern "C" entry point per type).
//
// Prefill (moe_ops.rs, around cuBLAS's grouped products):
//   moe_route      one warp per token: its top k experts and weights, and its row in each
//                  expert's group (an atomic count per expert: which token lands on which row
//                  of a group does not change any row's product)
//   moe_gather     gathered[base[e] + rank] = x[token] for every (token, expert) pair
//   moe_combine    x[t] = T(x[t] + T(sum_j T(y[row_j] * T(w_j))))       (in place)
// Decode (moe_decode.rs, three kernels of a sparse layer in the CUDA-graph decode step; each
// waits for the kernel before it, overlap.cuh):
//   moe_router_f32     logits (E, f32 of T) = W_router . RMSNorm(x)
//   moe_gate_up        act (k, I) = SwiGLU(W_gate_up[e_j] . RMSNorm(x)) for the k chosen experts,
//                      the routing recomputed by every block from the logits (E is small)
//   moe_down_residual  x[n] = T(x[n] + T(sum_j T(T(W_down[e_j][n] . act_j) * T(w_j))))
#include "elementwise.cuh"
#include "overlap.cuh"
#include "moe_route.cuh"
#include "moe_decode.cuh"

namespace {

// ---------------------------------------------------------------------------------------------
// Prefill

// One warp per token t of logits (L, E): pair t k + j is the token's j-th expert (ascending),
// with its weight and its rank among the rows of that expert (counts (E) zeroed before).
template <typename T>
__device__ void moe_route(const T* __restrict__ logits, long L, int E, int k, int normalize,
                          int* __restrict__ pair_expert, int* __restrict__ pair_rank, float* __restrict__ pair_weight,
                          unsigned* __restrict__ counts) {
    const long t = (long)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (t >= L) return;  // the whole warp
    const Route route = route_warp(logits + t * E, E, k, normalize != 0);
    const int lane = threadIdx.x % 32;
#pragma unroll
    for (int j = 0; j < MOE_MAX_TOP_K; ++j) {
        if (j < k && lane == j) {
            const long pair = t * k + j;
            pair_expert[pair] = route.expert[j];
            pair_weight[pair] = route.weight[j];
            pair_rank[pair] = (int)atomicAdd(counts + route.expert[j], 1u);
        }
    }
}

// One block per pair p = (token p / k, its expert): gathered (rows, H) row base[e] + rank = x
// (L, H) row p / k. H % 8 == 0.
template <typename T>
__device__ void moe_gather(const T* __restrict__ x, const int* __restrict__ pair_expert,
                           const int* __restrict__ pair_rank, const int* __restrict__ base, int k, int H,
                           T* __restrict__ gathered) {
    const long pair = blockIdx.x;
    const long token = pair / k;
    const long row = (long)base[pair_expert[pair]] + pair_rank[pair];
    for (int v = threadIdx.x; v < H / 8; v += blockDim.x)
        store8(gathered + row * H + (long)v * 8, load8(x + token * H + (long)v * 8));
}

// One block per token t: x (L, H) row t = T(x + T(sum over its k pairs, ascending expert, of
// T(y[base[e] + rank] * T(w)))), y (rows, H) the experts' outputs. H % 8 == 0.
template <typename T>
__device__ void moe_combine(T* __restrict__ x, const T* __restrict__ y, const int* __restrict__ pair_expert,
                            const int* __restrict__ pair_rank, const float* __restrict__ pair_weight,
                            const int* __restrict__ base, int k, int H) {
    const long token = blockIdx.x;
    for (int v = threadIdx.x; v < H / 8; v += blockDim.x) {
        float acc[8] = {};
        for (int j = 0; j < k; ++j) {
            const long pair = token * k + j;
            const long row = (long)base[pair_expert[pair]] + pair_rank[pair];
            const float w = round_to<T>(pair_weight[pair]);
            const Vec8<T> yv = load8(y + row * H + (long)v * 8);
#pragma unroll
            for (int i = 0; i < 8; ++i) acc[i] += round_to<T>(to_f32(yv.v[i]) * w);
        }
        T* at = x + token * H + (long)v * 8;
        const Vec8<T> xv = load8(at);
        Vec8<T> out;
#pragma unroll
        for (int i = 0; i < 8; ++i) out.v[i] = from_f32<T>(to_f32(xv.v[i]) + round_to<T>(acc[i]));
        store8(at, out);
    }
}

}  // namespace

#define MOE_OPS(T, SUFFIX)                                                                                          \
    extern "C" __global__ void moe_route_##SUFFIX(const T* logits, long L, int E, int k, int normalize,             \
                                                  int* pair_expert, int* pair_rank, float* pair_weight,             \
                                                  unsigned* counts) {                                               \
        moe_route<T>(logits, L, E, k, normalize, pair_expert, pair_rank, pair_weight, counts);                      \
    }                                                                                                               \
    extern "C" __global__ void moe_gather_##SUFFIX(const T* x, const int* pair_expert, const int* pair_rank,        \
                                                   const int* base, int k, int H, T* gathered) {                    \
        moe_gather<T>(x, pair_expert, pair_rank, base, k, H, gathered);                                             \
    }                                                                                                               \
    extern "C" __global__ void moe_combine_##SUFFIX(T* x, const T* y, const int* pair_expert, const int* pair_rank, \
                                                    const float* pair_weight, const int* base, int k, int H) {      \
        moe_combine<T>(x, y, pair_expert, pair_rank, pair_weight, base, k, H);                                      \
    }                                                                                                               \
    extern "C" __global__ void __launch_bounds__(MOE_THREADS)                                                       \
        moe_router_f32_##SUFFIX(const T* W, int E, int K, const T* x, const T* norm_w, float eps, float* logits) {  \
        moe_router<T>(W, E, K, x, norm_w, eps, logits);                                                             \
    }                                                                                                               \
    extern "C" __global__ void __launch_bounds__(MOE_THREADS, 2)                                                    \
        moe_gate_up_##SUFFIX(const T* W, const float* logits, int E, int k, int normalize, int I, int K,           \
                             const T* x, const T* norm_w, float eps, T* act, int* route_out) {                      \
        moe_gate_up<T>(W, logits, E, k, normalize, I, K, x, norm_w, eps, act, route_out);                           \
    }                                                                                                               \
    extern "C" __global__ void __launch_bounds__(MOE_THREADS, 2)                                                    \
        moe_down_residual_##SUFFIX(const T* W, const int* route, int k, int I, int H, const T* act, T* x) {         \
        moe_down_residual<T>(W, route, k, I, H, act, x);                                                            \
    }

MOE_OPS(__nv_bfloat16, bf16)
MOE_OPS(__half, f16)
