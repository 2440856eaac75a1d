// Qwen3-MoE's sparse block for one token (moe_ops.cu has the table): three kernels of moe_ops.cu
// in the decode step's chain, three phases of the persistent step (decode_persistent.cu).
#pragma once
#include "elementwise.cuh"
#include "overlap.cuh"
#include "moe_route.cuh"

namespace {


constexpr int MOE_THREADS = 256;  // MOE_DECODE_THREADS in moe_decode.rs
constexpr int MOE_WARPS = MOE_THREADS / 32;
constexpr int MU = 4;  // 16-byte vectors of each row a lane has in flight per batch

// Vectors [batch 32 MU + lane + 32 u] of one row of K (zeros past its end).
template <typename T>
__device__ __forceinline__ void load_row(Vec8<T> (&w)[MU], const T* __restrict__ row, int K, int batch) {
    const int lane = threadIdx.x % 32, vecs = K / 8;
#pragma unroll
    for (int u = 0; u < MU; ++u) {
        const int v = batch * 32 * MU + lane + u * 32;
        if (v < vecs) w[u] = load8_stream(row + (size_t)v * 8);
        else w[u] = Vec8<T>{};
    }
}

// acc += w . xin over batch `batch` of a row (this lane's part).
template <typename T>
__device__ __forceinline__ float dot_batch(const Vec8<T> (&w)[MU], const T* xin, int K, int batch, float acc) {
    const int lane = threadIdx.x % 32, vecs = K / 8;
#pragma unroll
    for (int u = 0; u < MU; ++u) {
        const int v = batch * 32 * MU + lane + u * 32;
        if (v < vecs) {
            const Vec8<T> xv = *reinterpret_cast<const Vec8<T>*>(xin + v * 8);
#pragma unroll
            for (int j = 0; j < 8; ++j) acc += to_f32(w[u].v[j]) * to_f32(xv.v[j]);
        }
    }
    return acc;
}

// logits (E, f32 of the T product) = W (E, K) . RMSNorm(x) * norm_w. One warp per row; K * sizeof(T)
// bytes of dynamic shared memory. A block's first rows are in flight before it waits for the
// kernel before it (weights: no kernel writes them).
template <typename T>
__device__ void moe_router(const T* __restrict__ W, int E, int K, const T* x,
                           const T* __restrict__ norm_w, float eps, float* __restrict__ logits) {
    extern __shared__ __align__(16) unsigned char moe_smem[];
    T* xin = reinterpret_cast<T*>(moe_smem);
    const int row = blockIdx.x * MOE_WARPS + threadIdx.x / 32;
    const int batches = (K / 8 + 32 * MU - 1) / (32 * MU);
    const T* w_row = W + (size_t)(row < E ? row : 0) * K;
    Vec8<T> w[MU];
    allow_next_kernel_launch();
    load_row(w, w_row, K, 0);
    wait_for_previous_kernel();
    rms_norm_to_shared<T, MOE_THREADS>(xin, x, norm_w, K, eps);
    float acc = 0.f;
    for (int b = 0; b < batches; ++b) {
        if (b > 0) load_row(w, w_row, K, b);
        acc = dot_batch(w, xin, K, b, acc);
    }
    acc = warp_sum(acc);
    if (threadIdx.x % 32 == 0 && row < E) logits[row] = round_to<T>(acc);
}

// act (k, I) = T(T(silu(g)) * u) with g = T(gate row i . xin), u = T(up row i . xin) of chosen
// expert e_j for item j I + i, xin = RMSNorm(x) * norm_w; W (E, 2 I, K), gate rows first. A
// persistent grid: warp w of block b takes items b MOE_WARPS + w, then + gridDim.x MOE_WARPS, ...;
// the next batch of weights is in flight while one is multiplied. Every block routes the token
// from the logits itself; block 0 writes the route (k experts, then k f32 weights) for
// moe_down_residual. K * sizeof(T) bytes of dynamic shared memory.
template <typename T>
__device__ void moe_gate_up(const T* __restrict__ W, const float* logits, int E, int k, int normalize,
                            int I, int K, const T* x, const T* __restrict__ norm_w, float eps,
                            T* __restrict__ act, int* __restrict__ route_out) {
    extern __shared__ __align__(16) unsigned char moe_smem[];
    T* xin = reinterpret_cast<T*>(moe_smem);
    __shared__ int experts[MOE_MAX_TOP_K];
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    allow_next_kernel_launch();
    wait_for_previous_kernel();
    if (warp == 0) {
        const Route route = route_warp(logits, E, k, normalize != 0);
#pragma unroll
        for (int j = 0; j < MOE_MAX_TOP_K; ++j) {
            if (j < k && lane == j) {
                experts[j] = route.expert[j];
                if (blockIdx.x == 0) {
                    route_out[j] = route.expert[j];
                    reinterpret_cast<float*>(route_out)[k + j] = route.weight[j];
                }
            }
        }
    }
    rms_norm_to_shared<T, MOE_THREADS>(xin, x, norm_w, K, eps);  // ends with __syncthreads: experts[] is visible

    const long items = (long)k * I, stride = (long)gridDim.x * MOE_WARPS;
    const int batches = (K / 8 + 32 * MU - 1) / (32 * MU);
    auto rows_of = [&](long item, const T*& gate, const T*& up) {
        const int j = (int)(item / I), i = (int)(item % I);
        gate = W + ((size_t)experts[j] * 2 * I + i) * K;
        up = gate + (size_t)I * K;
    };
    long item = (long)blockIdx.x * MOE_WARPS + warp;
    Vec8<T> wg[MU], wu[MU], ng[MU], nu[MU];
    const T *gate = W, *up = W;
    if (item < items) {
        rows_of(item, gate, up);
        load_row(wg, gate, K, 0);
        load_row(wu, up, K, 0);
    }
    for (; item < items; item += stride) {
        float g = 0.f, u = 0.f;
        for (int b = 0; b < batches; ++b) {
            const bool same = b + 1 < batches;
            const long next = same ? item : item + stride;
            const T *next_gate = gate, *next_up = up;
            if (next < items) {
                if (!same) rows_of(next, next_gate, next_up);
                load_row(ng, next_gate, K, same ? b + 1 : 0);
                load_row(nu, next_up, K, same ? b + 1 : 0);
            }
            g = dot_batch(wg, xin, K, b, g);
            u = dot_batch(wu, xin, K, b, u);
#pragma unroll
            for (int v = 0; v < MU; ++v) {
                wg[v] = ng[v];
                wu[v] = nu[v];
            }
            gate = next_gate;
            up = next_up;
        }
        g = warp_sum(g);
        u = warp_sum(u);
        if (lane == 0) {
            const float gt = round_to<T>(g);
            const float silu = round_to<T>(gt / (1.f + __expf(-gt)));
            act[item] = from_f32<T>(silu * round_to<T>(u));
        }
    }
}

constexpr int DOWN_ROWS = 2;  // output rows a warp

// x[n] = T(x[n] + T(sum over the k chosen experts j (ascending) of T(T(W[e_j][n] . act_j) * T(w_j))))
// for W (E, H, I), act (k, I), the route as moe_gate_up wrote it. A persistent grid: warp w of
// block b takes rows 2 (b MOE_WARPS + w) + [0, 2), then + 2 gridDim.x MOE_WARPS, ...; a row pair's
// batches (expert j, pass p over I) are streamed with the next one in flight. act is copied into
// shared memory first (k I sizeof(T) bytes of dynamic shared memory).
template <typename T>
__device__ void moe_down_residual(const T* __restrict__ W, const int* route, int k, int I, int H, const T* act,
                                  T* x) {
    extern __shared__ __align__(16) unsigned char moe_smem[];
    T* act_s = reinterpret_cast<T*>(moe_smem);
    __shared__ int experts[MOE_MAX_TOP_K];
    __shared__ float weights[MOE_MAX_TOP_K];
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    allow_next_kernel_launch();
    wait_for_previous_kernel();
    if (threadIdx.x < k) {
        experts[threadIdx.x] = __ldcg(route + threadIdx.x);
        weights[threadIdx.x] = round_to<T>(__ldcg(reinterpret_cast<const float*>(route) + k + threadIdx.x));
    }
    for (int v = threadIdx.x; v < k * I / 8; v += MOE_THREADS)
        *reinterpret_cast<Vec8<T>*>(act_s + v * 8) = load8_l2(act + (size_t)v * 8);
    __syncthreads();

    const int groups = (H + DOWN_ROWS - 1) / DOWN_ROWS;
    const int passes = (I / 8 + 32 * MU - 1) / (32 * MU), batches = k * passes;
    for (int group = blockIdx.x * MOE_WARPS + warp; group < groups; group += gridDim.x * MOE_WARPS) {
        const int n0 = group * DOWN_ROWS;
        auto load = [&](Vec8<T> (&w)[DOWN_ROWS][MU], int batch) {
            const int j = batch / passes, p = batch % passes;
#pragma unroll
            for (int r = 0; r < DOWN_ROWS; ++r) {
                const int n = n0 + r < H ? n0 + r : H - 1;
                load_row(w[r], W + ((size_t)experts[j] * H + n) * I, I, p);
            }
        };
        float total[DOWN_ROWS] = {}, acc[DOWN_ROWS] = {};
        Vec8<T> w[DOWN_ROWS][MU], next[DOWN_ROWS][MU];
        load(w, 0);
        for (int b = 0; b < batches; ++b) {
            const int j = b / passes, p = b % passes;
            if (b + 1 < batches) load(next, b + 1);
#pragma unroll
            for (int r = 0; r < DOWN_ROWS; ++r) acc[r] = dot_batch(w[r], act_s + (size_t)j * I, I, p, acc[r]);
#pragma unroll
            for (int r = 0; r < DOWN_ROWS; ++r)
#pragma unroll
                for (int u = 0; u < MU; ++u) w[r][u] = next[r][u];
            if (p + 1 == passes) {  // expert j done: its rounded product, weighted, into the sum
#pragma unroll
                for (int r = 0; r < DOWN_ROWS; ++r) {
                    total[r] += round_to<T>(round_to<T>(warp_sum(acc[r])) * weights[j]);
                    acc[r] = 0.f;
                }
            }
        }
        if (lane == 0) {
#pragma unroll
            for (int r = 0; r < DOWN_ROWS; ++r)
                if (n0 + r < H) x[n0 + r] = from_f32<T>(to_f32(__ldcg(x + n0 + r)) + round_to<T>(total[r]));
        }
    }
}

}  // namespace
