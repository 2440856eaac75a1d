// The q/k RMSNorm, RoPE and the K/V cache write of a decoder layer (one kernel of the fused layer,
// layer_ops.cu, and a phase of the decode step, decode_ops.cu and decode_persistent.cu).
#pragma once
#include "elementwise.cuh"
#include "overlap.cuh"

namespace {

constexpr int QK_HEAD_DIM = 128;
constexpr int PER_LANE = QK_HEAD_DIM / 16;  // 8 elements (16 bytes) of a head per lane of a half-warp

// One half-warp per (row, head) of the fused q/k/v projection output, two per warp:
//   qkv     (rows, (H + 2 KVH) * D)   q heads, then k heads, then v heads
//   q_out   (rows, H, D)              RMSNorm(q) * q_w, then RoPE
//   kv      (capacity, 2, KVH, D)     one layer of the cache: row r goes to position start + r,
//                                     K = RoPE(RMSNorm(k) * k_w), V = v
//   cos/sin (positions, D / 2)        the RoPE table, in T
// The position of row 0 is `*start_at` when start_at is given (decode under a CUDA graph reads it
// from device memory), else `start`.
// Lane l of a half holds elements [8l, 8l + 8); rotate_half pairs element i with i +- D/2, held by
// lane l ^ 8. Shuffles stay inside the half (offsets < 16, the half's own mask).
template <typename T>
__device__ void qk_norm_rope_cache(const T* qkv, const T* __restrict__ q_w, const T* __restrict__ k_w,
                                   const T* __restrict__ cos, const T* __restrict__ sin, T* __restrict__ q_out,
                                   T* __restrict__ kv, int rows, int H, int KVH, int start, const int* start_at,
                                   float eps) {
    // in the decode step this kernel's launch may overlap the qkv product's (overlap.cuh)
    allow_next_kernel_launch();
    wait_for_previous_kernel();
    const int warps_per_block = blockDim.x / 32;
    const int lane = threadIdx.x % 16, half = (threadIdx.x / 16) % 2;
    const unsigned mask = 0xffffu << (16 * half);
    const int heads = H + 2 * KVH;
    const long item = ((long)blockIdx.x * warps_per_block + threadIdx.x / 32) * 2 + half;
    if (item >= (long)rows * heads) return;  // the whole half-warp
    const int row = (int)(item / heads), head = (int)(item % heads);
    const int pos = (start_at != nullptr ? *start_at : start) + row;
    const Vec8<T> in = load8_l2(qkv + (size_t)row * heads * QK_HEAD_DIM + (size_t)head * QK_HEAD_DIM + lane * PER_LANE);
    T* kv_pos = kv + (size_t)pos * 2 * KVH * QK_HEAD_DIM;
    if (head >= H + KVH) {  // v: into the cache as it is
        store8(kv_pos + (size_t)(head - H) * QK_HEAD_DIM + lane * PER_LANE, in);
        return;
    }
    const bool is_q = head < H;
    const Vec8<T> w = load8((is_q ? q_w : k_w) + lane * PER_LANE);
    float x[PER_LANE];
    float squares = 0.f;
#pragma unroll
    for (int j = 0; j < PER_LANE; ++j) {
        x[j] = to_f32(in.v[j]);
        squares += x[j] * x[j];
    }
#pragma unroll
    for (int off = 8; off > 0; off /= 2) squares += __shfl_xor_sync(mask, squares, off);
    const float inv_rms = rsqrtf(squares / QK_HEAD_DIM + eps);
    float n[PER_LANE];
#pragma unroll
    for (int j = 0; j < PER_LANE; ++j) n[j] = round_to<T>(to_f32(w.v[j]) * round_to<T>(x[j] * inv_rms));
    const bool low_half = lane < 8;  // elements [0, D/2)
    const size_t table = (size_t)pos * (QK_HEAD_DIM / 2) + (lane % 8) * PER_LANE;  // frequencies [8 (l % 8), +8)
    const Vec8<T> c = load8(cos + table), s = load8(sin + table);
    Vec8<T> out;
#pragma unroll
    for (int j = 0; j < PER_LANE; ++j) {
        const float partner = __shfl_xor_sync(mask, n[j], 8);
        const float rotated = low_half ? -partner : partner;
        out.v[j] = from_f32<T>(round_to<T>(n[j] * to_f32(c.v[j])) + round_to<T>(rotated * to_f32(s.v[j])));
    }
    T* dst = is_q ? q_out + ((size_t)row * H + head) * QK_HEAD_DIM : kv_pos + (size_t)(head - H) * QK_HEAD_DIM;
    store8(dst + lane * PER_LANE, out);
}

}  // namespace
