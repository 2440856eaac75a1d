// One head's q/k RMSNorm and RoPE, by a half-warp: shared by layer_ops.cu's qk_norm_rope_cache
// (prefill, and decode's separate kernel) and decode_step_attention.cuh (decode with the q/k step
// folded into the attention). Rounds as transformers' Qwen3 does:
//   T(T(n * cos) + T(rotate_half(n) * sin)),  n = T(w * T(x * rsqrt(mean(x^2) + eps)))
#pragma once
#include "elementwise.cuh"

namespace {

constexpr int QK_HEAD_DIM = 128;
constexpr int QK_PER_LANE = QK_HEAD_DIM / 16;  // 8 elements (16 bytes) of a head a lane of a half-warp

// in: this lane's elements [8 lane, 8 lane + 8) of the head (lane = 0..15 of its half-warp, whose
// lanes all call this together; `mask` is the half's). w (D) the norm's weight; cos/sin
// (positions, D / 2) the RoPE table in T, row `pos`. rotate_half pairs element i with i +- D/2,
// held by lane l ^ 8; shuffles stay inside the half (offsets < 16).
template <typename T>
__device__ __forceinline__ Vec8<T> norm_rope_head(const Vec8<T>& in, const T* __restrict__ w,
                                                  const T* __restrict__ cos, const T* __restrict__ sin, int pos,
                                                  float eps, int lane, unsigned mask) {
    const Vec8<T> wv = load8(w + lane * QK_PER_LANE);
    float x[QK_PER_LANE];
    float squares = 0.f;
#pragma unroll
    for (int j = 0; j < QK_PER_LANE; ++j) {
        x[j] = to_f32(in.v[j]);
        squares += x[j] * x[j];
    }
#pragma unroll
    for (int off = 8; off > 0; off /= 2) squares += __shfl_xor_sync(mask, squares, off);
    const float inv_rms = rsqrtf(squares / QK_HEAD_DIM + eps);
    float n[QK_PER_LANE];
#pragma unroll
    for (int j = 0; j < QK_PER_LANE; ++j) n[j] = round_to<T>(to_f32(wv.v[j]) * round_to<T>(x[j] * inv_rms));
    const bool low_half = lane < 8;  // elements [0, D/2)
    const size_t table = (size_t)pos * (QK_HEAD_DIM / 2) + (lane % 8) * QK_PER_LANE;  // frequencies [8 (l % 8), +8)
    const Vec8<T> c = load8(cos + table), s = load8(sin + table);
    Vec8<T> out;
#pragma unroll
    for (int j = 0; j < QK_PER_LANE; ++j) {
        const float partner = __shfl_xor_sync(mask, n[j], 8);
        const float rotated = low_half ? -partner : partner;
        out.v[j] = from_f32<T>(round_to<T>(n[j] * to_f32(c.v[j])) + round_to<T>(rotated * to_f32(s.v[j])));
    }
    return out;
}

}  // namespace
