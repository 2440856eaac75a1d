// Decode's matrix-vector products with their weights in flight through shared memory: the ring
// kernel (`QWEN3_MPI_DECODE_GEMV=ring-u<U>s<S>`, decode_gemv.rs; the default is decode_ops.cu's
// register kernel).
//
//   gemv_ring_u<U>s<S>_<pro>_<epi>   y (N) = W (N, K) . xin (K), W row-major, with the prologues
//                                    and epilogues of decode_gemv_io.cuh
//
// Each warp takes the same rows as in the register kernel (GEMV_R rows of row group g, for
// g = block, block + grid, ...), each lane the same 16-byte vectors, and every row's sum is
// taken in the same order, so y is bit for bit the register kernel's. What differs is where the
// weights wait: a lane copies its vectors into shared memory with cp.async, into slots of its own
// in a ring of S batches (a batch: U vectors of each of the warp's GEMV_R rows, GEMV_R * U copies a
// lane), and reads back only the slots it filled. So nothing but cp.async.wait_group orders the
// main loop (no barrier, no other thread), and S - 1 batches are in flight while one is
// multiplied (S while the lane waits), the first S - 1 before the kernel waits for the one
// before it. Registers hold one
// vector at a time, so a multiprocessor can hold this kernel's block beside the next kernel's,
// which fills its own ring while this one drains (programmatic dependent launch, overlap.cuh).
//
// GEMV_THREADS threads; dynamic shared memory: xin (K elements of T), then the ring
// (GEMV_WARPS x S x GEMV_R x U x 32 slots of 16 bytes): `GemvChoice::shared_bytes` in decode_gemv.rs.
#include "decode_gemv_io.cuh"
#include "overlap.cuh"

namespace {

// Where the ring's cursor stands: item (row group, batch of the row) of this block.
struct RingItem {
    int group, batch;
    __device__ __forceinline__ void advance(int batches) {
        if (++batch == batches) {
            batch = 0;
            group += gridDim.x;
        }
    }
};

// Byte offset in the ring of this lane's slot for vector u of row r in stage s of warp w.
template <int U, int S>
__device__ __forceinline__ int ring_slot(int w, int s, int r, int u, int lane) {
    return ((((w * S + s) * GEMV_R + r) * U + u) * 32 + lane) * 16;
}

// Queues this lane's copies of item `it` into stage s (zeros past the end of a row or of W) and
// commits them as one group; a cursor past the last row group commits an empty group, so that
// every lane's count of groups stays S - 1 ahead of the item it multiplies.
template <typename T, int U, int S>
__device__ __forceinline__ void ring_issue(unsigned char* ring, const T* __restrict__ W, int N, int K, int groups,
                                           RingItem it, int s) {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, vecs = K / 8;
    if (it.group < groups) {
        const int row0 = it.group * ROWS_PER_BLOCK + warp * GEMV_R;
#pragma unroll
        for (int r = 0; r < GEMV_R; ++r)
#pragma unroll
            for (int u = 0; u < U; ++u) {
                const int v = it.batch * 32 * U + lane + u * 32;
                const bool valid = row0 + r < N && v < vecs;
                const T* src = valid ? W + (size_t)(row0 + r) * K + (size_t)v * 8 : W;
                cp_async16(ring + ring_slot<U, S>(warp, s, r, u, lane), src, valid);
            }
    }
    cp_async_commit();
}

template <typename T, int PRO, int EPI, int U, int S>
__device__ void gemv_ring(const T* __restrict__ W, int N, int K, const T* __restrict__ x, const T* __restrict__ norm_w,
                          float eps, const T* residual, void* out) {
    static_assert(S >= 2, "one batch multiplied while the next is in flight");
    extern __shared__ __align__(16) unsigned char gemv_smem[];
    T* xin = reinterpret_cast<T*>(gemv_smem);
    unsigned char* ring = gemv_smem + (size_t)K * sizeof(T);  // K % 8 == 0: 16-byte aligned
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int vecs = K / 8, batches = (vecs + 32 * U - 1) / (32 * U);
    const int groups = (N + ROWS_PER_BLOCK - 1) / ROWS_PER_BLOCK;
    RingItem next{(int)blockIdx.x, 0};  // the next item to queue
    allow_next_kernel_launch();
#pragma unroll
    for (int s = 0; s < S - 1; ++s) {  // weights: no kernel writes them
        ring_issue<T, U, S>(ring, W, N, K, groups, next, s);
        next.advance(batches);
    }
    wait_for_previous_kernel();
    gemv_prologue<T, PRO>(xin, x, norm_w, K, eps);

    float acc[GEMV_R] = {};
    int stage = 0;  // the stage of item `at`; item `next` goes to the stage before it
    for (RingItem at{(int)blockIdx.x, 0}; at.group < groups; at.advance(batches)) {
        // refill the stage that the previous item used (this lane read it in the iteration
        // before, in program order), then wait for item `at`: S batches in flight while waiting
        ring_issue<T, U, S>(ring, W, N, K, groups, next, stage == 0 ? S - 1 : stage - 1);
        next.advance(batches);
        cp_async_wait<S - 1>();  // this lane's copies of item `at` have landed
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const int v = at.batch * 32 * U + lane + u * 32;
            if (v < vecs) {
                const Vec8<T> xv = *reinterpret_cast<const Vec8<T>*>(xin + v * 8);
#pragma unroll
                for (int r = 0; r < GEMV_R; ++r) {
                    const Vec8<T> w = *reinterpret_cast<const Vec8<T>*>(ring + ring_slot<U, S>(warp, stage, r, u, lane));
#pragma unroll
                    for (int j = 0; j < 8; ++j) acc[r] += to_f32(w.v[j]) * to_f32(xv.v[j]);
                }
            }
        }
        if (at.batch == batches - 1) {
            const int row0 = at.group * ROWS_PER_BLOCK + warp * GEMV_R;
#pragma unroll
            for (int r = 0; r < GEMV_R; ++r) {
                const float sum = warp_sum(acc[r]);
                if (lane == 0 && row0 + r < N) gemv_store<T, EPI>(sum, row0 + r, residual, out);
                acc[r] = 0.f;
            }
        }
        stage = stage == S - 1 ? 0 : stage + 1;
    }
    cp_async_wait<0>();  // no copy outlives the block
}

}  // namespace

#define GEMV_RING(T, SUFFIX, U, S, NAME, PRO, EPI)                                                             \
    extern "C" __global__ void __launch_bounds__(GEMV_THREADS, 2) gemv_ring_u##U##s##S##_##NAME##_##SUFFIX(   \
        const T* W, int N, int K, const T* x, const T* norm_w, float eps, const T* residual, void* out) {     \
        gemv_ring<T, PRO, EPI, U, S>(W, N, K, x, norm_w, eps, residual, out);                                  \
    }

// One ring shape (U vectors a row a batch, S stages) for every prologue and epilogue;
// RING_SHAPES in decode_gemv.rs lists the shapes built here.
#define RING_SHAPE(T, SUFFIX, U, S)                                       \
    GEMV_RING(T, SUFFIX, U, S, copy_store, PRO_COPY, EPI_STORE)           \
    GEMV_RING(T, SUFFIX, U, S, copy_residual, PRO_COPY, EPI_RESIDUAL)     \
    GEMV_RING(T, SUFFIX, U, S, rmsnorm_store, PRO_RMSNORM, EPI_STORE)     \
    GEMV_RING(T, SUFFIX, U, S, rmsnorm_f32, PRO_RMSNORM, EPI_F32)         \
    GEMV_RING(T, SUFFIX, U, S, swiglu_residual, PRO_SWIGLU, EPI_RESIDUAL)

#define RING_SHAPES(T, SUFFIX)  \
    RING_SHAPE(T, SUFFIX, 4, 2)  \
    RING_SHAPE(T, SUFFIX, 4, 3)  \
    RING_SHAPE(T, SUFFIX, 2, 4)  \
    RING_SHAPE(T, SUFFIX, 2, 6)

RING_SHAPES(__nv_bfloat16, bf16)
RING_SHAPES(__half, f16)
