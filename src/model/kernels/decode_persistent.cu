// The decode step (decode_ops.cu has its table) as one persistent kernel: every block stays on
// the GPU for the whole step and moves from phase to phase (a layer's products, its q/k norms,
// its attention, ...) behind a grid-wide barrier instead of a kernel boundary. A product's
// first weights are in flight before its barrier (weights: no phase writes them), so one phase's
// tail overlaps the next one's weight stream. Activations written by one phase are read by the
// next through L2 (load8_l2, __ldcg), past the L1 of an SM that may hold an older copy.
//
//   decode_persistent_g<G>_<T>(step)   grid: one block of PERSISTENT_THREADS a multiprocessor
//                                      (all resident: the barrier waits for every one),
//                                      dynamic shared memory: the largest phase's (the attention's
//                                      tiles, or a product's input vector)
//
// The step's buffers and weights come in one table (PersistentStep, written by
// decode_persistent.rs) of 8-byte words. The barrier counts arrivals in `barrier`, zeroed
// before each launch; a block that waits longer than BARRIER_TIMEOUT_NS traps, so a grid that
// is not all resident (another process on the GPU holds some of its room) fails with a launch
// error instead of hanging the job.
#include "elementwise.cuh"
#include "overlap.cuh"
#include "decode_gemv.cuh"
#include "decode_step_attention.cuh"
#include "qk_norm_rope.cuh"
#include "moe_decode.cuh"

namespace {

constexpr int PERSISTENT_THREADS = 256;  // PERSISTENT_THREADS in decode_persistent.rs
static_assert(PERSISTENT_THREADS == GEMV_THREADS && PERSISTENT_THREADS == MOE_THREADS, "one block size for every phase");
constexpr unsigned long long BARRIER_TIMEOUT_NS = 2000000000ull;  // 2 s

typedef unsigned long long Word;

// One layer's weights and cache (addresses). A dense layer has router == 0.
struct PersistentLayer {
    Word qkv, o, input_norm, post_norm, q_norm, k_norm;
    Word kv;       // (capacity, 2, KVH, D)
    Word gate_up;  // dense (2 I, hidden); sparse: the experts' (E, 2 I, hidden)
    Word down;     // dense (hidden, I); sparse: the experts' (E, hidden, I)
    Word router;   // sparse: (E, hidden)
};

// The step: addresses, then sizes, then two f32 (their bits). The order of decode_persistent.rs.
struct PersistentStep {
    Word layers, layer_count;
    Word embed, token_at;             // embed == 0: the step starts from x
    Word final_norm, lm_head, logits;  // lm_head == 0: the step ends with x
    Word cos, sin, position_at;       // position_at: (position, keys) as i32
    Word x, qkv_out, q, attn, gate_up_out, part_o, part_ml, ranges_done, barrier;
    Word moe_logits, moe_act, moe_route;
    Word hidden, heads, kv_heads, inter, vocab, split_keys, splits, experts, top_k, normalize, moe_inter;
    Word eps, scale_log2;
};

__device__ __forceinline__ unsigned load_acquire(const unsigned* p) {
    unsigned v;
    asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
    return v;
}

__device__ __forceinline__ unsigned long long global_ns() {
    unsigned long long t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return t;
}

// Every block of the grid reaches this before any leaves it; what any block wrote before it is
// visible to every block after it. `epoch`: barriers this thread has passed in this launch.
__device__ __forceinline__ void grid_barrier(unsigned* count, unsigned& epoch) {
    __syncthreads();
    ++epoch;
    if (threadIdx.x == 0) {
        __threadfence();
        atomicAdd(count, 1u);
        const unsigned target = epoch * gridDim.x;
        const unsigned long long began = global_ns();
        while (load_acquire(count) < target) {
            if (global_ns() - began > BARRIER_TIMEOUT_NS) __trap();
        }
        __threadfence();
    }
    __syncthreads();
}

// `wait` of a product inside the persistent step (decode_gemv.cuh).
struct GridBarrier {
    unsigned* count;
    unsigned* epoch;
    __device__ void operator()() const { grid_barrier(count, *epoch); }
};

// The phases, each a call of its own: inlined into one function, ptxas kept the step's values live
// across every phase and spilled the products' weight batches. One block a multiprocessor, up to
// 255 registers a thread (two blocks of 128 registers spilled them too, the pointers of a call's
// arguments taking the room a kernel's parameters do not). 8 vectors in flight a lane spilled.
constexpr int PERSISTENT_VECS = 4;
template <typename T, int PRO, int EPI>
__device__ __noinline__ void product_phase(const T* W, int N, int K, const T* x, const T* norm_w, float eps,
                                           const T* residual, void* out, GridBarrier barrier) {
    gemv<T, PRO, EPI, GridBarrier, PERSISTENT_VECS>(W, N, K, x, norm_w, eps, residual, out, barrier);
}

template <typename T>
__device__ __noinline__ void qk_phase(const T* qkv, const T* q_w, const T* k_w, const T* cos, const T* sin, T* q,
                                      T* kv, int H, int KVH, const int* position_at, float eps) {
    qk_norm_rope_cache<T>(qkv, q_w, k_w, cos, sin, q, kv, 1, H, KVH, 0, position_at, eps);
}

template <typename T, int G>
__device__ __noinline__ void attention_phase(const T* q, const T* kv, float* part_o, float* part_ml, int* ranges_done,
                                             T* attn, const int* keys_at, int split_keys, int units, int H, int KVH,
                                             float scale_log2) {
    for (int u = blockIdx.x; u < units; u += gridDim.x) {
        __syncthreads();  // the block's previous range is done with shared memory
        decode_attention_range<T, G, PERSISTENT_THREADS>(u % KVH, u / KVH, q, kv, part_o, part_ml, ranges_done, attn,
                                                         keys_at, split_keys, H, KVH, scale_log2);
    }
}

template <typename T>
__device__ __noinline__ void router_phase(const T* W, int E, int K, const T* x, const T* norm_w, float eps,
                                          float* logits) {
    if ((int)blockIdx.x < (E + MOE_WARPS - 1) / MOE_WARPS) moe_router<T>(W, E, K, x, norm_w, eps, logits);  // a row a warp
}

template <typename T>
__device__ __noinline__ void experts_gate_up_phase(const T* W, const float* logits, int E, int k, int normalize, int I,
                                                   int K, const T* x, const T* norm_w, float eps, T* act, int* route) {
    moe_gate_up<T>(W, logits, E, k, normalize, I, K, x, norm_w, eps, act, route);
}

template <typename T>
__device__ __noinline__ void experts_down_phase(const T* W, const int* route, int k, int I, int H, const T* act, T* x) {
    moe_down_residual<T>(W, route, k, I, H, act, x);
}

template <typename T> __device__ __forceinline__ T* at(Word address) { return reinterpret_cast<T*>(address); }

template <typename T, int G>
__device__ void decode_persistent(const PersistentStep* __restrict__ p) {
    unsigned epoch = 0;
    const GridBarrier barrier{at<unsigned>(p->barrier), &epoch};
    const int hidden = (int)p->hidden, H = (int)p->heads, KVH = (int)p->kv_heads, inter = (int)p->inter;
    const int qkv_rows = (H + 2 * KVH) * HEAD_DIM, units = KVH * (int)p->splits, split_keys = (int)p->split_keys;
    const float eps = __uint_as_float((unsigned)p->eps), scale_log2 = __uint_as_float((unsigned)p->scale_log2);
    T* x = at<T>(p->x);
    T* qkv_out = at<T>(p->qkv_out);
    T* q = at<T>(p->q);
    T* attn = at<T>(p->attn);
    const int* position_at = at<const int>(p->position_at);

    if (p->embed != 0) {  // x = embed[token]; the first product's barrier orders it
        const size_t row = *at<const unsigned>(p->token_at);
        const T* table = at<const T>(p->embed);
        for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < hidden; i += gridDim.x * blockDim.x)
            x[i] = table[row * hidden + i];
    }
    const PersistentLayer* layers = at<const PersistentLayer>(p->layers);
    for (int l = 0; l < (int)p->layer_count; ++l) {
        const PersistentLayer& L = layers[l];
        // qkv = W_qkv . RMSNorm(x)
        product_phase<T, PRO_RMSNORM, EPI_STORE>(at<const T>(L.qkv), qkv_rows, hidden, x, at<const T>(L.input_norm),
                                                 eps, nullptr, qkv_out, barrier);
        // q, cache[position] = q/k norms, RoPE, K/V
        barrier();
        qk_phase<T>(qkv_out, at<const T>(L.q_norm), at<const T>(L.k_norm), at<const T>(p->cos), at<const T>(p->sin),
                    q, at<T>(L.kv), H, KVH, position_at, eps);
        // attn = softmax(q K^T) V over the cache, key ranges merged by the last of each head
        barrier();
        attention_phase<T, G>(q, at<const T>(L.kv), at<float>(p->part_o), at<float>(p->part_ml),
                              at<int>(p->ranges_done), attn, position_at + 1, split_keys, units, H, KVH, scale_log2);
        // x = x + W_o . attn
        product_phase<T, PRO_COPY, EPI_RESIDUAL>(at<const T>(L.o), hidden, H * HEAD_DIM, attn, nullptr, eps, x, x,
                                                 barrier);
        if (L.router == 0) {
            // gu = W_gu . RMSNorm(x); x = x + W_down . SwiGLU(gu)
            T* gate_up_out = at<T>(p->gate_up_out);
            product_phase<T, PRO_RMSNORM, EPI_STORE>(at<const T>(L.gate_up), 2 * inter, hidden, x,
                                                     at<const T>(L.post_norm), eps, nullptr, gate_up_out, barrier);
            product_phase<T, PRO_SWIGLU, EPI_RESIDUAL>(at<const T>(L.down), hidden, inter, gate_up_out, nullptr, eps,
                                                       x, x, barrier);
        } else {
            // the router, the k chosen experts' gate/up, their down (moe_decode.cuh)
            const int E = (int)p->experts, k = (int)p->top_k, I = (int)p->moe_inter;
            barrier();
            router_phase<T>(at<const T>(L.router), E, hidden, x, at<const T>(L.post_norm), eps, at<float>(p->moe_logits));
            barrier();
            experts_gate_up_phase<T>(at<const T>(L.gate_up), at<const float>(p->moe_logits), E, k, (int)p->normalize, I,
                                     hidden, x, at<const T>(L.post_norm), eps, at<T>(p->moe_act), at<int>(p->moe_route));
            barrier();
            experts_down_phase<T>(at<const T>(L.down), at<const int>(p->moe_route), k, I, hidden, at<const T>(p->moe_act),
                                  x);
        }
    }
    if (p->lm_head != 0)  // logits = float(W_lm . RMSNorm(x))
        product_phase<T, PRO_RMSNORM, EPI_F32>(at<const T>(p->lm_head), (int)p->vocab, hidden, x,
                                               at<const T>(p->final_norm), eps, nullptr, at<float>(p->logits), barrier);
}

}  // namespace

#define PERSISTENT(T, SUFFIX, G)                                                                       \
    extern "C" __global__ void __launch_bounds__(PERSISTENT_THREADS, 1)                                \
        decode_persistent_g##G##_##SUFFIX(const PersistentStep* step) {                                \
        decode_persistent<T, G>(step);                                                                 \
    }

#define PERSISTENT_ALL(T, SUFFIX) \
    PERSISTENT(T, SUFFIX, 1)      \
    PERSISTENT(T, SUFFIX, 2)      \
    PERSISTENT(T, SUFFIX, 3)      \
    PERSISTENT(T, SUFFIX, 4)      \
    PERSISTENT(T, SUFFIX, 5)      \
    PERSISTENT(T, SUFFIX, 6)      \
    PERSISTENT(T, SUFFIX, 7)      \
    PERSISTENT(T, SUFFIX, 8)

PERSISTENT_ALL(__nv_bfloat16, bf16)
PERSISTENT_ALL(__half, f16)
