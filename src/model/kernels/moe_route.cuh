// Qwen3-MoE's routing of one token (moe_ops.cu has the whole table): shared by the prefill kernels
// of moe_ops.cu and the decode phases (moe_decode.cuh).
#pragma once
#include "elementwise.cuh"

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
__device__ Route route_warp(const L* logits, int E, int k, bool normalize) {
    const int lane = threadIdx.x % 32;
    float p[EXPERTS_PER_LANE];
    float top = -INFINITY;
#pragma unroll
    for (int i = 0; i < EXPERTS_PER_LANE; ++i) {
        const int e = lane + 32 * i;
        p[i] = e < E ? to_f32(__ldcg(logits + e)) : -INFINITY;
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

}  // namespace
