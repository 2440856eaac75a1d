// Qwen3-MoE's sparse block on the GPU, rounding where moe.rs (and transformers 5.x's grouped_mm
// experts path) rounds: router logits in T, the softmax, top k and renormalisation in f32, each
// expert's products in T, the routing weights cast to T and multiplied in T, each token's k
// weighted outputs summed in f32 (in ascending expert order) and rounded once, then the residual
// add T(x + T(sum)). T is bf16 or f16 (one extern "C" entry point per type).
//
// Prefill (moe_ops.rs, around cuBLAS's grouped products):
//   moe_route      one warp per token: its top k experts and weights, and its row in each
//                  expert's group (an atomic count per expert: which token lands on which row
//                  of a group does not change any row's product)
//   moe_gather     gathered[base[e] + rank] = x[token] for every (token, expert) pair
//   moe_combine    x[t] = T(x[t] + T(sum_j T(y[row_j] * T(w_j))))       (in place)
// Decode (moe_decode.rs, three kernels of a sparse layer in the CUDA-graph decode step; each
// waits for the kernel before it, overlap.cuh):
//   moe_router_f32     logits (E, f32 of T) = W_router . RMSNorm(x)
//   moe_gate_up        act (k, I) = SwiGLU(W_gate_up[e_j] . RMSNorm(x)) for the k chosen experts,
//                      the routing recomputed by every block from the logits (E is small)
//   moe_down_residual  x[n] = T(x[n] + T(sum_j T(T(W_down[e_j][n] . act_j) * T(w_j))))
//   moe_down_experts   the same, the experts of a row pair spread over a block's warps
#include "elementwise.cuh"
#include "overlap.cuh"

namespace {

__device__ __forceinline__ float to_f32(float x) { return x; }

constexpr int MOE_MAX_EXPERTS = 256;  // MOE_MAX_EXPERTS in moe_ops.rs
constexpr int EXPERTS_PER_LANE = MOE_MAX_EXPERTS / 32;
constexpr int MOE_MAX_TOP_K = 8;  // MOE_MAX_TOP_K in moe_ops.rs
constexpr int NOT_FOUND = 0x7fffffff;

__device__ __forceinline__ float warp_max(float x) {
#pragma unroll
    for (int off = 16; off > 0; off /= 2) x = fmaxf(x, __shfl_xor_sync(0xffffffff, x, off));
    return x;
}

// A token's chosen experts, ascending, and their routing weights (f32).
struct Route {
    int expert[MOE_MAX_TOP_K];
    float weight[MOE_MAX_TOP_K];
};

// One whole warp: the route of one token from its E logits (E <= MOE_MAX_EXPERTS,
// k <= MOE_MAX_TOP_K <= E), as router.rs computes it: softmax over the experts in f32, the k
// largest probabilities (a tie goes to the lower expert), divided by their sum (taken in
// descending order, as torch.topk returns them) when `normalize`. Every lane returns the route.
template <typename L>
__device__ Route route_warp(const L* __restrict__ logits, int E, int k, bool normalize) {
    const int lane = threadIdx.x % 32;
    float p[EXPERTS_PER_LANE];
    float top = -INFINITY;
#pragma unroll
    for (int i = 0; i < EXPERTS_PER_LANE; ++i) {
        const int e = lane + 32 * i;
        p[i] = e < E ? to_f32(logits[e]) : -INFINITY;
        top = fmaxf(top, p[i]);
    }
    top = warp_max(top);
    float sum = 0.f;
#pragma unroll
    for (int i = 0; i < EXPERTS_PER_LANE; ++i) {
        p[i] = lane + 32 * i < E ? expf(p[i] - top) : 0.f;
        sum += p[i];
    }
    sum = warp_sum(sum);
#pragma unroll
    for (int i = 0; i < EXPERTS_PER_LANE; ++i) p[i] /= sum;

    int chosen[MOE_MAX_TOP_K];
    float prob[MOE_MAX_TOP_K];
    unsigned taken = 0;  // bit i: expert lane + 32 i is chosen
#pragma unroll
    for (int j = 0; j < MOE_MAX_TOP_K; ++j) {
        chosen[j] = 0;
        prob[j] = 0.f;
        if (j >= k) continue;
        float best = -INFINITY;
        int best_e = NOT_FOUND;
#pragma unroll
        for (int i = 0; i < EXPERTS_PER_LANE; ++i) {
            const int e = lane + 32 * i;
            if (e < E && !((taken >> i) & 1u) && (best_e == NOT_FOUND || p[i] > best)) {
                best = p[i];
                best_e = e;
            }
        }
#pragma unroll
        for (int off = 16; off > 0; off /= 2) {
            const float other = __shfl_xor_sync(0xffffffff, best, off);
            const int other_e = __shfl_xor_sync(0xffffffff, best_e, off);
            if (other_e != NOT_FOUND &&
                (best_e == NOT_FOUND || other > best || (other == best && other_e < best_e))) {
                best = other;
                best_e = other_e;
            }
        }
        if (best_e % 32 == lane) taken |= 1u << (best_e / 32);
        chosen[j] = best_e;
        prob[j] = best;
    }
    float total = 0.f;
#pragma unroll
    for (int j = 0; j < MOE_MAX_TOP_K; ++j)
        if (j < k) total += prob[j];
    Route route;
#pragma unroll
    for (int j = 0; j < MOE_MAX_TOP_K; ++j) {
        route.expert[j] = 0;
        route.weight[j] = 0.f;
    }
    // ascending expert order: chosen[j] goes to the place of its rank among the chosen
#pragma unroll
    for (int j = 0; j < MOE_MAX_TOP_K; ++j) {
        if (j >= k) continue;
        int place = 0;
#pragma unroll
        for (int i = 0; i < MOE_MAX_TOP_K; ++i)
            if (i < k && chosen[i] < chosen[j]) ++place;
        route.expert[place] = chosen[j];
        route.weight[place] = normalize ? prob[j] / total : prob[j];
    }
    return route;
}

// ---------------------------------------------------------------------------------------------
// Prefill

// One warp per token t of logits (L, E): pair t k + j is the token's j-th expert (ascending),
// with its weight and its rank among the rows of that expert (counts (E) zeroed before).
template <typename T>
__device__ void moe_route(const T* __restrict__ logits, long L, int E, int k, int normalize,
                          int* __restrict__ pair_expert, int* __restrict__ pair_rank, float* __restrict__ pair_weight,
                          unsigned* __restrict__ counts) {
    const long t = (long)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (t >= L) return;  // the whole warp
    const Route route = route_warp(logits + t * E, E, k, normalize != 0);
    const int lane = threadIdx.x % 32;
#pragma unroll
    for (int j = 0; j < MOE_MAX_TOP_K; ++j) {
        if (j < k && lane == j) {
            const long pair = t * k + j;
            pair_expert[pair] = route.expert[j];
            pair_weight[pair] = route.weight[j];
            pair_rank[pair] = (int)atomicAdd(counts + route.expert[j], 1u);
        }
    }
}

// One block per pair p = (token p / k, its expert): gathered (rows, H) row base[e] + rank = x
// (L, H) row p / k. H % 8 == 0.
template <typename T>
__device__ void moe_gather(const T* __restrict__ x, const int* __restrict__ pair_expert,
                           const int* __restrict__ pair_rank, const int* __restrict__ base, int k, int H,
                           T* __restrict__ gathered) {
    const long pair = blockIdx.x;
    const long token = pair / k;
    const long row = (long)base[pair_expert[pair]] + pair_rank[pair];
    for (int v = threadIdx.x; v < H / 8; v += blockDim.x)
        store8(gathered + row * H + (long)v * 8, load8(x + token * H + (long)v * 8));
}

// One block per token t: x (L, H) row t = T(x + T(sum over its k pairs, ascending expert, of
// T(y[base[e] + rank] * T(w)))), y (rows, H) the experts' outputs. H % 8 == 0.
template <typename T>
__device__ void moe_combine(T* __restrict__ x, const T* __restrict__ y, const int* __restrict__ pair_expert,
                            const int* __restrict__ pair_rank, const float* __restrict__ pair_weight,
                            const int* __restrict__ base, int k, int H) {
    const long token = blockIdx.x;
    for (int v = threadIdx.x; v < H / 8; v += blockDim.x) {
        float acc[8] = {};
        for (int j = 0; j < k; ++j) {
            const long pair = token * k + j;
            const long row = (long)base[pair_expert[pair]] + pair_rank[pair];
            const float w = round_to<T>(pair_weight[pair]);
            const Vec8<T> yv = load8(y + row * H + (long)v * 8);
#pragma unroll
            for (int i = 0; i < 8; ++i) acc[i] += round_to<T>(to_f32(yv.v[i]) * w);
        }
        T* at = x + token * H + (long)v * 8;
        const Vec8<T> xv = load8(at);
        Vec8<T> out;
#pragma unroll
        for (int i = 0; i < 8; ++i) out.v[i] = from_f32<T>(to_f32(xv.v[i]) + round_to<T>(acc[i]));
        store8(at, out);
    }
}

// ---------------------------------------------------------------------------------------------
// Decode

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
__device__ void moe_router(const T* __restrict__ W, int E, int K, const T* __restrict__ x,
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
__device__ void moe_gate_up(const T* __restrict__ W, const float* __restrict__ logits, int E, int k, int normalize,
                            int I, int K, const T* __restrict__ x, const T* __restrict__ norm_w, float eps,
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

// The down kernels' start: lets the next kernel launch, waits for moe_gate_up, then takes the
// route (experts[k], weights[k] as T) and act (k, I) into shared memory, visible to the block.
template <typename T>
__device__ __forceinline__ void moe_down_inputs(const int* __restrict__ route, int k, int I,
                                                const T* __restrict__ act, T* act_s, int* experts, float* weights) {
    allow_next_kernel_launch();
    wait_for_previous_kernel();
    if (threadIdx.x < k) {
        experts[threadIdx.x] = route[threadIdx.x];
        weights[threadIdx.x] = round_to<T>(reinterpret_cast<const float*>(route)[k + threadIdx.x]);
    }
    for (int v = threadIdx.x; v < k * I / 8; v += MOE_THREADS)
        *reinterpret_cast<Vec8<T>*>(act_s + v * 8) = load8(act + (size_t)v * 8);
    __syncthreads();
}

// x[n] = T(x[n] + T(sum over the k chosen experts j (ascending) of T(T(W[e_j][n] . act_j) * T(w_j))))
// for W (E, H, I), act (k, I), the route as moe_gate_up wrote it. A persistent grid: warp w of
// block b takes rows 2 (b MOE_WARPS + w) + [0, 2), then + 2 gridDim.x MOE_WARPS, ...; a row pair's
// batches (expert j, pass p over I) are streamed with the next one in flight. act is copied into
// shared memory first (k I sizeof(T) bytes of dynamic shared memory).
template <typename T>
__device__ void moe_down_residual(const T* __restrict__ W, const int* __restrict__ route, int k, int I, int H,
                                  const T* __restrict__ act, T* x) {
    extern __shared__ __align__(16) unsigned char moe_smem[];
    T* act_s = reinterpret_cast<T*>(moe_smem);
    __shared__ int experts[MOE_MAX_TOP_K];
    __shared__ float weights[MOE_MAX_TOP_K];
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    moe_down_inputs(route, k, I, act, act_s, experts, weights);

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
                if (n0 + r < H) x[n0 + r] = from_f32<T>(to_f32(x[n0 + r]) + round_to<T>(total[r]));
        }
    }
}

// The same x as moe_down_residual (bit for bit), with the k experts of a row pair spread over the
// block's warps instead of one warp taking all of them: block b takes row pairs b, b + gridDim.x,
// ...; warp w takes the experts j = w, w + MOE_WARPS, ... of each (every pass over I of that
// expert's two rows), with its next batch in flight while one is multiplied, across row pairs
// too; it leaves T(its product) in shared memory, and after a barrier two threads add the k
// weighted products in ascending expert order, as moe_down_residual does
// (QWEN3_MPI_MOE_DECODE_DOWN=experts). Every warp of every block streams weights (k = 8: the
// 30B-A3B shape's 8 x 1,024 (expert, row pair) items over all 2,112 warps of the grid, where
// moe_down_residual keeps 1,024 warps busy). act in shared memory first (k I sizeof(T) bytes of
// dynamic shared memory).
template <typename T>
__device__ void moe_down_experts(const T* __restrict__ W, const int* __restrict__ route, int k, int I, int H,
                                 const T* __restrict__ act, T* x) {
    extern __shared__ __align__(16) unsigned char moe_smem[];
    T* act_s = reinterpret_cast<T*>(moe_smem);
    __shared__ int experts[MOE_MAX_TOP_K];
    __shared__ float weights[MOE_MAX_TOP_K];
    __shared__ float products[2][MOE_MAX_TOP_K][DOWN_ROWS];  // T(W[e_j][n] . act_j), by row pair parity
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    moe_down_inputs(route, k, I, act, act_s, experts, weights);

    const int groups = (H + DOWN_ROWS - 1) / DOWN_ROWS;
    const int passes = (I / 8 + 32 * MU - 1) / (32 * MU);
    const int mine = warp < k ? (k - 1 - warp) / MOE_WARPS + 1 : 0;  // this warp's experts
    const int batches = mine * passes;                                 // a row pair
    // batch b of row pair `group`: expert j = warp + (b / passes) MOE_WARPS, pass b % passes
    auto load = [&](Vec8<T> (&w)[DOWN_ROWS][MU], int group, int b) {
        const int j = warp + (b / passes) * MOE_WARPS, p = b % passes, n0 = group * DOWN_ROWS;
#pragma unroll
        for (int r = 0; r < DOWN_ROWS; ++r) {
            const int n = n0 + r < H ? n0 + r : H - 1;
            load_row(w[r], W + ((size_t)experts[j] * H + n) * I, I, p);
        }
    };
    Vec8<T> w[DOWN_ROWS][MU], next[DOWN_ROWS][MU];
    int group = blockIdx.x;
    if (batches > 0 && group < groups) load(w, group, 0);
    for (int parity = 0; group < groups; group += gridDim.x, parity ^= 1) {
        // the residual rows, read early (only this block touches them)
        const int n = group * DOWN_ROWS + threadIdx.x;
        const float residual = threadIdx.x < DOWN_ROWS && n < H ? to_f32(x[n]) : 0.f;
        float acc[DOWN_ROWS] = {};
        for (int b = 0; b < batches; ++b) {
            const int j = warp + (b / passes) * MOE_WARPS, p = b % passes;
            if (b + 1 < batches) load(next, group, b + 1);
            else if (group + (int)gridDim.x < groups) load(next, group + gridDim.x, 0);
#pragma unroll
            for (int r = 0; r < DOWN_ROWS; ++r) acc[r] = dot_batch(w[r], act_s + (size_t)j * I, I, p, acc[r]);
#pragma unroll
            for (int r = 0; r < DOWN_ROWS; ++r)
#pragma unroll
                for (int u = 0; u < MU; ++u) w[r][u] = next[r][u];
            if (p + 1 == passes) {  // expert j done: its rounded product
#pragma unroll
                for (int r = 0; r < DOWN_ROWS; ++r) {
                    const float sum = warp_sum(acc[r]);
                    if (lane == 0) products[parity][j][r] = round_to<T>(sum);
                    acc[r] = 0.f;
                }
            }
        }
        __syncthreads();  // every expert's product of this row pair is in products[parity]
        // (products[parity] is written again two row pairs on: after the next barrier, which
        // these threads reach only once they have read it)
        if (threadIdx.x < DOWN_ROWS && n < H) {
            float total = 0.f;
            for (int j = 0; j < k; ++j) total += round_to<T>(products[parity][j][threadIdx.x] * weights[j]);
            x[n] = from_f32<T>(residual + round_to<T>(total));
        }
    }
}

}  // namespace

#define MOE_OPS(T, SUFFIX)                                                                                          \
    extern "C" __global__ void moe_route_##SUFFIX(const T* logits, long L, int E, int k, int normalize,             \
                                                  int* pair_expert, int* pair_rank, float* pair_weight,             \
                                                  unsigned* counts) {                                               \
        moe_route<T>(logits, L, E, k, normalize, pair_expert, pair_rank, pair_weight, counts);                      \
    }                                                                                                               \
    extern "C" __global__ void moe_gather_##SUFFIX(const T* x, const int* pair_expert, const int* pair_rank,        \
                                                   const int* base, int k, int H, T* gathered) {                    \
        moe_gather<T>(x, pair_expert, pair_rank, base, k, H, gathered);                                             \
    }                                                                                                               \
    extern "C" __global__ void moe_combine_##SUFFIX(T* x, const T* y, const int* pair_expert, const int* pair_rank, \
                                                    const float* pair_weight, const int* base, int k, int H) {      \
        moe_combine<T>(x, y, pair_expert, pair_rank, pair_weight, base, k, H);                                      \
    }                                                                                                               \
    extern "C" __global__ void __launch_bounds__(MOE_THREADS)                                                       \
        moe_router_f32_##SUFFIX(const T* W, int E, int K, const T* x, const T* norm_w, float eps, float* logits) {  \
        moe_router<T>(W, E, K, x, norm_w, eps, logits);                                                             \
    }                                                                                                               \
    extern "C" __global__ void __launch_bounds__(MOE_THREADS, 2)                                                    \
        moe_gate_up_##SUFFIX(const T* W, const float* logits, int E, int k, int normalize, int I, int K,           \
                             const T* x, const T* norm_w, float eps, T* act, int* route_out) {                      \
        moe_gate_up<T>(W, logits, E, k, normalize, I, K, x, norm_w, eps, act, route_out);                           \
    }                                                                                                               \
    extern "C" __global__ void __launch_bounds__(MOE_THREADS, 2)                                                    \
        moe_down_residual_##SUFFIX(const T* W, const int* route, int k, int I, int H, const T* act, T* x) {         \
        moe_down_residual<T>(W, route, k, I, H, act, x);                                                            \
    }                                                                                                               \
    extern "C" __global__ void __launch_bounds__(MOE_THREADS, 2)                                                    \
        moe_down_experts_##SUFFIX(const T* W, const int* route, int k, int I, int H, const T* act, T* x) {          \
        moe_down_experts<T>(W, route, k, I, H, act, x);                                                             \
    }

MOE_OPS(__nv_bfloat16, bf16)
MOE_OPS(__half, f16)
