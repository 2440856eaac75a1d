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

}  // namespace
