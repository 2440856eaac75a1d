// What the decode step's two matrix-vector kernels share (the register kernel of decode_ops.cu
// and the ring kernel of decode_gemv_ring.cu): the prologue that builds the input vector in
// shared memory and the epilogue that writes an output row. Roundings to T as layer_ops.cu.
//
//   prologue, into shared memory:   copy:    xin = x
//                                   rmsnorm: xin = RMSNorm(x) * norm_w
//                                   swiglu:  xin = T(T(silu(x[:K])) * x[K:])   (x is 2K long)
//   epilogue (row n, sum = W[n] . xin):
//                                   store:    y[n] = T(sum)
//                                   residual: y[n] = T(T(sum) + residual[n])   (residual may be y)
//                                   f32:      y[n] = float(T(sum))          (logits)
#pragma once
#include "elementwise.cuh"

namespace {

constexpr int GEMV_THREADS = 256;  // GEMV_THREADS in decode_gemv.rs
constexpr int GEMV_WARPS = GEMV_THREADS / 32;
constexpr int GEMV_R = 2;  // rows a warp (one row a warp with 8 vectors in flight measured slower on an H200)
constexpr int ROWS_PER_BLOCK = GEMV_WARPS * GEMV_R;  // GEMV_ROWS_PER_BLOCK in decode_gemv.rs

enum Prologue { PRO_COPY, PRO_RMSNORM, PRO_SWIGLU };
enum Epilogue { EPI_STORE, EPI_RESIDUAL, EPI_F32 };

// xin (K, in shared memory) from the prologue's inputs, by all GEMV_THREADS threads, visible to
// all of them on return. K % 8 == 0.
template <typename T, int PRO>
__device__ void gemv_prologue(T* xin, const T* __restrict__ x, const T* __restrict__ norm_w, int K, float eps) {
    const int vecs = K / 8;
    if (PRO == PRO_COPY) {
        for (int v = threadIdx.x; v < vecs; v += GEMV_THREADS)
            *reinterpret_cast<Vec8<T>*>(xin + v * 8) = load8(x + (size_t)v * 8);
    } else if (PRO == PRO_RMSNORM) {
        rms_norm_to_shared<T, GEMV_THREADS>(xin, x, norm_w, K, eps);
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

// Output row n of N from its (whole) sum; one lane calls it.
template <typename T, int EPI>
__device__ __forceinline__ void gemv_store(float sum, int n, const T* residual, void* out) {
    if (EPI == EPI_STORE) reinterpret_cast<T*>(out)[n] = from_f32<T>(sum);
    if (EPI == EPI_RESIDUAL) reinterpret_cast<T*>(out)[n] = from_f32<T>(round_to<T>(sum) + to_f32(residual[n]));
    if (EPI == EPI_F32) reinterpret_cast<float*>(out)[n] = round_to<T>(sum);
}

}  // namespace
