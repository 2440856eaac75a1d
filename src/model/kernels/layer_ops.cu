// The elementwise steps of a Qwen3 decoder layer, each one kernel, between the matrix products
// (cuBLAS) and the attention kernel. Every rounding to the model's dtype T happens where
// transformers' Qwen3 (PyTorch, bf16/f16 tensors) rounds, so that the fused layer computes the
// same function as the reference:
//   RMSNorm:  T(w * T(x * rsqrt(mean(x^2) + eps)))         (mean in f32)
//   residual: T(x + delta)
//   RoPE:     T(T(x * cos) + T(rotate_half(x) * sin))
//   SwiGLU:   T(T(silu(gate)) * up)                         (silu in f32)
// T is bf16 or f16 (one extern "C" entry point per type); accumulation is f32.
#include "elementwise.cuh"
#include "overlap.cuh"
#include "qk_norm_rope.cuh"

namespace {

constexpr int NORM_THREADS = 256;
constexpr int NORM_MAX_VECS = 4;  // 16-byte vectors a thread holds: dim <= 256 * 8 * 4 = 8192

// One row per block. sum = T(x + delta) (when delta is given; else sum is x and is not written);
// normed = RMSNorm(sum) * w.
//   x, delta, sum, normed  (rows, dim)    w  (dim)        dim % 8 == 0, dim <= 8192
template <typename T>
__device__ void residual_rms_norm(const T* __restrict__ x, const T* __restrict__ delta, const T* __restrict__ w,
                                  T* __restrict__ sum, T* __restrict__ normed, int dim, float eps) {
    __shared__ float scratch[NORM_THREADS / 32];
    const size_t row = blockIdx.x;
    const int vecs = dim / 8;
    float h[NORM_MAX_VECS][8];
    float squares = 0.f;
#pragma unroll
    for (int i = 0; i < NORM_MAX_VECS; ++i) {
        const int v = threadIdx.x + i * NORM_THREADS;
        if (v < vecs) {
            const size_t at = row * dim + (size_t)v * 8;
            const Vec8<T> a = load8(x + at);
            Vec8<T> s = a;
            if (delta != nullptr) {
                const Vec8<T> b = load8(delta + at);
#pragma unroll
                for (int j = 0; j < 8; ++j) s.v[j] = from_f32<T>(to_f32(a.v[j]) + to_f32(b.v[j]));
                store8(sum + at, s);
            }
#pragma unroll
            for (int j = 0; j < 8; ++j) {
                h[i][j] = to_f32(s.v[j]);
                squares += h[i][j] * h[i][j];
            }
        }
    }
    const float inv_rms = rsqrtf(block_sum<NORM_THREADS>(squares, scratch) / dim + eps);
#pragma unroll
    for (int i = 0; i < NORM_MAX_VECS; ++i) {
        const int v = threadIdx.x + i * NORM_THREADS;
        if (v < vecs) {
            const Vec8<T> wv = load8(w + (size_t)v * 8);
            Vec8<T> out;
#pragma unroll
            for (int j = 0; j < 8; ++j) out.v[j] = from_f32<T>(to_f32(wv.v[j]) * round_to<T>(h[i][j] * inv_rms));
            store8(normed + row * dim + (size_t)v * 8, out);
        }
    }
}

constexpr int HEAD_DIM = QK_HEAD_DIM;
constexpr int PER_LANE = QK_PER_LANE;

// One half-warp per (row, head) of the fused q/k/v projection output, two per warp:
//   qkv     (rows, (H + 2 KVH) * D)   q heads, then k heads, then v heads
//   q_out   (rows, H, D)              RMSNorm(q) * q_w, then RoPE
//   kv      (capacity, 2, KVH, D)     one layer of the cache: row r goes to position start + r,
//                                     K = RoPE(RMSNorm(k) * k_w), V = v
//   cos/sin (positions, D / 2)        the RoPE table, in T
// The position of row 0 is `*start_at` when start_at is given (decode under a CUDA graph reads it
// from device memory), else `start`.
// Lane l of a half holds elements [8l, 8l + 8) of its head (norm_rope_head, qk_norm_rope.cuh).
template <typename T>
__device__ void qk_norm_rope_cache(const T* __restrict__ qkv, const T* __restrict__ q_w, const T* __restrict__ k_w,
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
    const Vec8<T> in = load8(qkv + (size_t)row * heads * HEAD_DIM + (size_t)head * HEAD_DIM + lane * PER_LANE);
    T* kv_pos = kv + (size_t)pos * 2 * KVH * HEAD_DIM;
    if (head >= H + KVH) {  // v: into the cache as it is
        store8(kv_pos + (size_t)(head - H) * HEAD_DIM + lane * PER_LANE, in);
        return;
    }
    const bool is_q = head < H;
    const Vec8<T> out = norm_rope_head(in, is_q ? q_w : k_w, cos, sin, pos, eps, lane, mask);
    T* dst = is_q ? q_out + ((size_t)row * H + head) * HEAD_DIM : kv_pos + (size_t)(head - H) * HEAD_DIM;
    store8(dst + lane * PER_LANE, out);
}

// out (rows, inter) = T(T(silu(gate)) * up), from the fused gate/up output (rows, 2 * inter):
// gate in columns [0, inter), up in [inter, 2 inter). One thread per 8 outputs; inter % 8 == 0.
template <typename T>
__device__ void swiglu(const T* __restrict__ gate_up, T* __restrict__ out, long rows, int inter) {
    const long v = (long)blockIdx.x * blockDim.x + threadIdx.x;
    const long per_row = inter / 8;
    if (v >= rows * per_row) return;
    const long row = v / per_row, col = (v % per_row) * 8;
    const Vec8<T> g = load8(gate_up + row * 2 * inter + col);
    const Vec8<T> u = load8(gate_up + row * 2 * inter + inter + col);
    Vec8<T> o;
#pragma unroll
    for (int j = 0; j < 8; ++j) {
        const float a = to_f32(g.v[j]);
        const float silu = round_to<T>(a / (1.f + __expf(-a)));
        o.v[j] = from_f32<T>(silu * to_f32(u.v[j]));
    }
    store8(out + row * inter + col, o);
}

}  // namespace

#define LAYER_OPS(T, SUFFIX)                                                                                        \
    extern "C" __global__ void __launch_bounds__(NORM_THREADS)                                                      \
        residual_rms_norm_##SUFFIX(const T* x, const T* delta, const T* w, T* sum, T* normed, int dim, float eps) { \
        residual_rms_norm<T>(x, delta, w, sum, normed, dim, eps);                                                   \
    }                                                                                                               \
    extern "C" __global__ void qk_norm_rope_cache_##SUFFIX(const T* qkv, const T* q_w, const T* k_w, const T* cos,  \
                                                           const T* sin, T* q_out, T* kv, int rows, int H, int KVH, \
                                                           int start, const int* start_at, float eps) {             \
        qk_norm_rope_cache<T>(qkv, q_w, k_w, cos, sin, q_out, kv, rows, H, KVH, start, start_at, eps);              \
    }                                                                                                               \
    extern "C" __global__ void swiglu_##SUFFIX(const T* gate_up, T* out, long rows, int inter) {                    \
        swiglu<T>(gate_up, out, rows, inter);                                                                       \
    }

LAYER_OPS(__nv_bfloat16, bf16)
LAYER_OPS(__half, f16)
