// The decode step's matrix-vector product with the weights streamed through shared memory by
// the copy engine of each multiprocessor (TMA bulk copies, sm_90): y (N) = W (N, K) . xin (K).
//
// Why: a decode product is a stream of weights at memory bandwidth, so what costs is the ramp and
// the tail of each kernel, not arithmetic. With the weights in registers (decode_ops.cu's
// `gemv`) a block can hold only a few KB in flight and must wait for each batch; here one
// thread queues whole tiles (SR rows, 8–16 KB) into a ring of S stages (about 96 KB), so a block
// has the ring's bytes in flight from its first instruction — before it waits for the kernel
// before it (overlap.cuh), since weights are written by no kernel — and the other threads only
// multiply what has landed.
//
// Layout of the work:
//   block b owns rows [N b / G, N (b + 1) / G) of W (G = gridDim.x, one block a multiprocessor),
//   which it streams in tiles of SR consecutive rows (SR · K · sizeof(T) contiguous bytes);
//   warp w takes tile row w / P, P = 8 / SR warps a row, and in it the 16-byte vectors
//   v = (w % P + P i) · 32 + lane;
//   each thread holds the vectors of xin it multiplies (the same v for every tile) in registers,
//   made by the prologue (copy, RMSNorm or SwiGLU, as in decode_ops.cu);
//   per tile, each warp's partial sum goes to shared memory, and thread r < SR adds row r's P
//   partials and writes the epilogue.
// Requirements (checked on the host, decode_split.rs `stream_plan`): K % 256 == 0 (whole 32-lane
// rows of vectors), K / (256 / SR · 8) ≤ MAX_VECS vectors a lane, W 16-byte aligned.
#pragma once

namespace {

constexpr int STREAM_THREADS = 256;
constexpr int STREAM_WARPS = STREAM_THREADS / 32;
constexpr int STREAM_MAX_STAGES = 8;
constexpr int STREAM_MAX_VECS = 8;   // 16-byte vectors of xin a lane: K ≤ 16 · 8 · 32 · P

__device__ __forceinline__ unsigned smem_address(const void* p) {
    return static_cast<unsigned>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void barrier_init(uint64_t* bar, unsigned arrivals) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(smem_address(bar)), "r"(arrivals) : "memory");
}

// Makes the barriers' initialisation visible to the copy engine (the async proxy).
__device__ __forceinline__ void barrier_init_fence() {
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
}

// The one arrival of a stage's barrier, announcing `bytes` of copies that complete it.
__device__ __forceinline__ void barrier_expect_bytes(uint64_t* bar, unsigned bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(smem_address(bar)), "r"(bytes)
                 : "memory");
}

__device__ __forceinline__ void barrier_wait(uint64_t* bar, unsigned parity) {
    unsigned done = 0;
    while (!done) {
        asm volatile(
            "{\n\t.reg .pred p;\n\t"
            "mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n\t"
            "selp.u32 %0, 1, 0, p;\n\t}"
            : "=r"(done)
            : "r"(smem_address(bar)), "r"(parity)
            : "memory");
    }
}

// Orders this thread's earlier generic-proxy accesses of shared memory (the tile just read,
// made visible to it by __syncthreads) before the copy engine writes there again.
__device__ __forceinline__ void async_proxy_fence() { asm volatile("fence.proxy.async.shared::cta;" ::: "memory"); }

// `bytes` (a multiple of 16) from global `src` to shared `dst` (both 16-byte aligned), counted
// on `bar`; read once, so evicted from L2 first.
__device__ __forceinline__ void bulk_copy(void* dst, const void* src, unsigned bytes, uint64_t* bar) {
    asm volatile(
        "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(
            smem_address(dst)),
        "l"(src), "r"(bytes), "r"(smem_address(bar))
        : "memory");
}

template <typename T>
__device__ __forceinline__ float dot8(const Vec8<T>& w, const Vec8<T>& x) {
    float s = 0.f;
#pragma unroll
    for (int j = 0; j < 8; ++j) s += to_f32(w.v[j]) * to_f32(x.v[j]);
    return s;
}

// The 16-byte vector index of this lane's i-th vector of a row (see the layout above).
__device__ __forceinline__ int stream_vec(int part, int parts, int i, int lane) { return (part + parts * i) * 32 + lane; }

template <typename T, int PRO, int EPI>
__device__ void gemv_stream(const T* __restrict__ W, int N, int K, const T* __restrict__ x,
                            const T* __restrict__ norm_w, float eps, const T* residual, void* out, int tile_rows,
                            int stages) {
    extern __shared__ __align__(128) unsigned char ring[];
    __shared__ uint64_t full[STREAM_MAX_STAGES];
    __shared__ float partial[2][STREAM_WARPS];
    __shared__ float scratch[STREAM_WARPS];
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int parts = STREAM_WARPS / tile_rows, row_in_tile = warp / parts, part = warp % parts;
    const int vecs = K / 8, lane_vecs = (vecs / 32 + parts - 1) / parts;
    const int row_begin = (int)((long long)N * blockIdx.x / gridDim.x);
    const int row_end = (int)((long long)N * (blockIdx.x + 1) / gridDim.x);
    const int tiles = (row_end - row_begin + tile_rows - 1) / tile_rows;
    const unsigned stage_bytes = (unsigned)tile_rows * K * sizeof(T);

    auto issue = [&](int t) {  // thread 0: tile t into its stage
        const int s = t % stages, row0 = row_begin + t * tile_rows;
        const int rows = min(tile_rows, row_end - row0);
        const unsigned bytes = (unsigned)rows * K * sizeof(T);
        barrier_expect_bytes(&full[s], bytes);
        bulk_copy(ring + (size_t)s * stage_bytes, W + (size_t)row0 * K, bytes, &full[s]);
    };
    if (threadIdx.x == 0) {
        for (int s = 0; s < stages; ++s) barrier_init(&full[s], 1);
        barrier_init_fence();
    }
    __syncthreads();
    allow_next_kernel_launch();
    if (threadIdx.x == 0)
        for (int t = 0; t < min(stages, tiles); ++t) issue(t);  // weights: no kernel writes them
    wait_for_previous_kernel();

    // The prologue: this thread's vectors of xin, in registers.
    Vec8<T> xr[STREAM_MAX_VECS];
    if (PRO == PRO_RMSNORM) {
        float squares = 0.f;
#pragma unroll
        for (int i = 0; i < STREAM_MAX_VECS; ++i) {
            const int v = stream_vec(part, parts, i, lane);
            if (i < lane_vecs && v < vecs) {
                xr[i] = load8(x + (size_t)v * 8);
                if (row_in_tile == 0)  // each vector once: the warps of tile row 0 cover the row
#pragma unroll
                    for (int j = 0; j < 8; ++j) squares += to_f32(xr[i].v[j]) * to_f32(xr[i].v[j]);
            }
        }
        const float inv_rms = rsqrtf(block_sum<STREAM_THREADS>(squares, scratch) / K + eps);
#pragma unroll
        for (int i = 0; i < STREAM_MAX_VECS; ++i) {
            const int v = stream_vec(part, parts, i, lane);
            if (i < lane_vecs && v < vecs) {
                const Vec8<T> w = load8(norm_w + (size_t)v * 8);
#pragma unroll
                for (int j = 0; j < 8; ++j)
                    xr[i].v[j] = from_f32<T>(to_f32(w.v[j]) * round_to<T>(to_f32(xr[i].v[j]) * inv_rms));
            }
        }
    } else {
#pragma unroll
        for (int i = 0; i < STREAM_MAX_VECS; ++i) {
            const int v = stream_vec(part, parts, i, lane);
            if (i < lane_vecs && v < vecs) {
                if (PRO == PRO_COPY) {
                    xr[i] = load8(x + (size_t)v * 8);
                } else {  // PRO_SWIGLU: x = (gate (K), up (K))
                    const Vec8<T> g = load8(x + (size_t)v * 8), u = load8(x + K + (size_t)v * 8);
#pragma unroll
                    for (int j = 0; j < 8; ++j) {
                        const float a = to_f32(g.v[j]);
                        xr[i].v[j] = from_f32<T>(round_to<T>(a / (1.f + __expf(-a))) * to_f32(u.v[j]));
                    }
                }
            }
        }
    }

    for (int t = 0; t < tiles; ++t) {
        const int s = t % stages, row0 = row_begin + t * tile_rows;
        const int rows = min(tile_rows, row_end - row0);
        barrier_wait(&full[s], (unsigned)(t / stages) & 1u);
        float acc = 0.f;
        if (row_in_tile < rows) {
            const T* tile_row = reinterpret_cast<const T*>(ring + (size_t)s * stage_bytes) + (size_t)row_in_tile * K;
#pragma unroll
            for (int i = 0; i < STREAM_MAX_VECS; ++i) {
                const int v = stream_vec(part, parts, i, lane);
                if (i < lane_vecs && v < vecs) acc += dot8(load8(tile_row + (size_t)v * 8), xr[i]);
            }
        }
        acc = warp_sum(acc);
        if (lane == 0) partial[t & 1][warp] = acc;
        __syncthreads();  // every thread is done with stage s, and the partials are in
        if (threadIdx.x == 0 && t + stages < tiles) {
            async_proxy_fence();
            issue(t + stages);
        }
        if (threadIdx.x < rows) {
            float sum = 0.f;
            for (int p = 0; p < parts; ++p) sum += partial[t & 1][threadIdx.x * parts + p];
            const int n = row0 + threadIdx.x;
            if (EPI == EPI_STORE) reinterpret_cast<T*>(out)[n] = from_f32<T>(sum);
            if (EPI == EPI_RESIDUAL) reinterpret_cast<T*>(out)[n] = from_f32<T>(round_to<T>(sum) + to_f32(residual[n]));
            if (EPI == EPI_F32) reinterpret_cast<float*>(out)[n] = round_to<T>(sum);
        }
    }
}

}  // namespace
