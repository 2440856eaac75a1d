// What our bf16/f16 kernels share: conversions, the rounding to T that a T tensor's value has,
// 16-byte vectors of eight elements, and a warp's sum. Included by layer_ops.cu and
// decode_ops.cu (each file is its own PTX module, so these are internal to each).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

namespace {

__device__ __forceinline__ float to_f32(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_f32(__half x) { return __half2float(x); }
template <typename T> __device__ __forceinline__ T from_f32(float x);
template <> __device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float x) { return __float2bfloat16(x); }
template <> __device__ __forceinline__ __half from_f32<__half>(float x) { return __float2half(x); }
// x rounded to T and back: the value a T tensor would hold.
template <typename T> __device__ __forceinline__ float round_to(float x) { return to_f32(from_f32<T>(x)); }

// Eight elements moved as one 16-byte access.
template <typename T> struct alignas(16) Vec8 {
    T v[8];
};

template <typename T> __device__ __forceinline__ Vec8<T> load8(const T* p) {
    return *reinterpret_cast<const Vec8<T>*>(p);
}
template <typename T> __device__ __forceinline__ void store8(T* p, const Vec8<T>& x) {
    *reinterpret_cast<Vec8<T>*>(p) = x;
}
// A load that bypasses L1 (weights and cache entries read once).
template <typename T> __device__ __forceinline__ Vec8<T> load8_stream(const T* p) {
    const uint4 raw = __ldcs(reinterpret_cast<const uint4*>(p));
    return *reinterpret_cast<const Vec8<T>*>(&raw);
}

__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
    for (int off = 16; off > 0; off /= 2) x += __shfl_xor_sync(0xffffffff, x, off);
    return x;
}

// Sum of `x` over a block of THREADS threads, to every thread; `scratch` holds THREADS / 32
// floats and may be reused once this returns.
template <int THREADS> __device__ __forceinline__ float block_sum(float x, float* scratch) {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    x = warp_sum(x);
    if (lane == 0) scratch[warp] = x;
    __syncthreads();
    float total = 0.f;
#pragma unroll
    for (int w = 0; w < THREADS / 32; ++w) total += scratch[w];
    __syncthreads();
    return total;
}

// xin (K, shared memory) = T(norm_w * T(x * rsqrt(mean(x^2) + eps))), by a block of THREADS
// threads, visible to all of them on return. K % 8 == 0.
template <typename T, int THREADS>
__device__ void rms_norm_to_shared(T* xin, const T* __restrict__ x, const T* __restrict__ norm_w, int K, float eps) {
    __shared__ float scratch[THREADS / 32];
    const int vecs = K / 8;
    float squares = 0.f;
    for (int v = threadIdx.x; v < vecs; v += THREADS) {
        const Vec8<T> a = load8(x + (size_t)v * 8);
#pragma unroll
        for (int j = 0; j < 8; ++j) squares += to_f32(a.v[j]) * to_f32(a.v[j]);
    }
    const float inv_rms = rsqrtf(block_sum<THREADS>(squares, scratch) / K + eps);
    for (int v = threadIdx.x; v < vecs; v += THREADS) {
        const Vec8<T> a = load8(x + (size_t)v * 8), w = load8(norm_w + (size_t)v * 8);
        Vec8<T> o;
#pragma unroll
        for (int j = 0; j < 8; ++j) o.v[j] = from_f32<T>(to_f32(w.v[j]) * round_to<T>(to_f32(a.v[j]) * inv_rms));
        store8(xin + (size_t)v * 8, o);
    }
    __syncthreads();
}

}  // namespace
