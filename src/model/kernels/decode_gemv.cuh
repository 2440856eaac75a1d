// The decode step's matrix-vector product with its prologue and epilogue (decode_ops.cu has the
// table): one kernel each in the chain of decode_ops.cu, a phase of decode_persistent.cu.
// `wait` is called by every thread once the block's first weights are in flight and before it
// reads anything an earlier kernel or phase wrote: the kernel before it (PreviousKernel) or the
// persistent step's grid barrier.
#pragma once
#include "elementwise.cuh"
#include "overlap.cuh"

namespace {

enum Prologue { PRO_COPY, PRO_RMSNORM, PRO_SWIGLU };
enum Epilogue { EPI_STORE, EPI_RESIDUAL, EPI_F32 };

constexpr int GEMV_THREADS = 256;
constexpr int GEMV_WARPS = GEMV_THREADS / 32;
constexpr int R = 2;  // rows a warp (one row a warp with 8 vectors in flight measured slower on an H200)
constexpr int U = 4;  // 16-byte vectors of each row in flight a lane (UN: the persistent step takes 8)
constexpr int ROWS_PER_BLOCK = GEMV_WARPS * R;  // GEMV_ROWS_PER_BLOCK in decode_split.rs

// xin (K, in shared memory) from the prologue's inputs. K % 8 == 0.
template <typename T, int PRO>
__device__ void gemv_prologue(T* xin, const T* x, const T* __restrict__ norm_w, int K, float eps) {
    const int vecs = K / 8;
    if (PRO == PRO_COPY) {
        for (int v = threadIdx.x; v < vecs; v += GEMV_THREADS)
            *reinterpret_cast<Vec8<T>*>(xin + v * 8) = load8_l2(x + (size_t)v * 8);
    } else if (PRO == PRO_RMSNORM) {
        rms_norm_to_shared<T, GEMV_THREADS>(xin, x, norm_w, K, eps);
    } else {  // PRO_SWIGLU: x = (gate (K), up (K))
        for (int v = threadIdx.x; v < vecs; v += GEMV_THREADS) {
            const Vec8<T> g = load8_l2(x + (size_t)v * 8), u = load8_l2(x + K + (size_t)v * 8);
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

// Loads 16-byte vectors [batch * 32 * U + lane + 32 u] of the warp's R rows of row group
// `group` (zeros past the end of a row or of W).
template <int UN, typename T>
__device__ __forceinline__ void load_batch(Vec8<T> (&w)[R][UN], const T* __restrict__ W, int N, int K, int group,
                                           int batch) {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, vecs = K / 8;
    const int row0 = group * ROWS_PER_BLOCK + warp * R;
#pragma unroll
    for (int r = 0; r < R; ++r)
#pragma unroll
        for (int u = 0; u < UN; ++u) {
            const int v = batch * 32 * UN + lane + u * 32;
            if (row0 + r < N && v < vecs) w[r][u] = load8_stream(W + (size_t)(row0 + r) * K + (size_t)v * 8);
            else w[r][u] = Vec8<T>{};
        }
}

// A persistent grid (at most ceil(N / ROWS_PER_BLOCK) blocks), GEMV_THREADS threads,
// K * sizeof(T) bytes of dynamic shared memory. Block b takes row groups b, b + gridDim.x, ...;
// warp w of a group owns rows w * R + [0, R); lane l reads 16-byte vectors l, l + 32, ... of
// each row. The next batch of weights is in flight while one is multiplied, and the first is in
// flight before the kernel waits for the one before it (overlap.cuh; `wait`) and during the prologue.
// (Measured on an
// H200 against rows dealt to warps one at a time with 8 vectors in flight: this was faster, 5.58
// against 6.25 ms a Qwen3-8B step.)
template <typename T, int PRO, int EPI, typename Wait, int UN = U>
__device__ void gemv(const T* __restrict__ W, int N, int K, const T* x, const T* __restrict__ norm_w, float eps,
                     const T* residual, void* out, Wait wait) {
    extern __shared__ __align__(16) unsigned char gemv_smem[];
    T* xin = reinterpret_cast<T*>(gemv_smem);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int vecs = K / 8, batches = (vecs + 32 * UN - 1) / (32 * UN);
    const int groups = (N + ROWS_PER_BLOCK - 1) / ROWS_PER_BLOCK;
    Vec8<T> w[R][UN], next[R][UN];
    int group = blockIdx.x;
    allow_next_kernel_launch();
    if (group < groups) load_batch<UN>(w, W, N, K, group, 0);  // weights: no kernel writes them
    wait();  // the kernel before (a chain) or a grid barrier (the persistent step)
    gemv_prologue<T, PRO>(xin, x, norm_w, K, eps);

    for (; group < groups; group += gridDim.x) {
        float acc[R] = {};
        for (int b = 0; b < batches; ++b) {
            const int next_group = b + 1 < batches ? group : group + gridDim.x;
            if (next_group < groups) load_batch<UN>(next, W, N, K, next_group, b + 1 < batches ? b + 1 : 0);
#pragma unroll
            for (int u = 0; u < UN; ++u) {
                const int v = b * 32 * UN + lane + u * 32;
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
                for (int u = 0; u < UN; ++u) w[r][u] = next[r][u];
        }
        const int row0 = group * ROWS_PER_BLOCK + warp * R;
#pragma unroll
        for (int r = 0; r < R; ++r) {
            const float sum = warp_sum(acc[r]);
            const int n = row0 + r;
            if (lane == 0 && n < N) {
                if (EPI == EPI_STORE) reinterpret_cast<T*>(out)[n] = from_f32<T>(sum);
                if (EPI == EPI_RESIDUAL)
                    reinterpret_cast<T*>(out)[n] = from_f32<T>(round_to<T>(sum) + to_f32(__ldcg(residual + n)));
                if (EPI == EPI_F32) reinterpret_cast<float*>(out)[n] = round_to<T>(sum);
            }
        }
    }
}

// `wait` of a kernel in a chain (overlap.cuh).
struct PreviousKernel {
    __device__ void operator()() const { wait_for_previous_kernel(); }
};

}  // namespace
