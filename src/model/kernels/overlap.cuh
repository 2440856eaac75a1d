// How a kernel overlaps with its neighbours and with its own loads (sm_90 and later; below that,
// or on a launch without the attribute, the first two are no-ops).
//
// Programmatic dependent launch: a kernel launched with
// CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION (gpu_tensors.rs, `launch_kernel!(overlapped: ...)`)
// may start while the kernel before it on the stream is still running. Rules for such a kernel:
//   - before wait_for_previous_kernel() it may only read memory no kernel of the chain writes
//     (weights), or what the chain's kernels wrote in an earlier decode step: a step's inputs are
//     copied (a memcpy, never a programmatic predecessor) before its first kernel, so every
//     earlier step is complete by then (decode_step.rs keeps that copy; the fused attention's
//     early copy of earlier keys relies on it);
//   - every thread calls wait_for_previous_kernel() before it reads anything an earlier kernel
//     of the step wrote, and before it writes any global memory (its own block's shared memory
//     it may); a block with nothing to do may return without waiting, but some block of every
//     kernel waits. So "this kernel is complete" implies "every kernel before it is complete",
//     and a kernel may read the output of any earlier one, not only of the one just before it;
//   - allow_next_kernel_launch() lets the next kernel be scheduled (its blocks then take SM slots
//     as this kernel's blocks leave them).
// cp.async: 16-byte copies from global to shared memory that run while the thread computes;
// `valid == false` writes 16 zero bytes instead of reading.
#pragma once

namespace {

__device__ __forceinline__ void wait_for_previous_kernel() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

__device__ __forceinline__ void allow_next_kernel_launch() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool valid) {
    const unsigned to = static_cast<unsigned>(__cvta_generic_to_shared(smem));
    const int bytes = valid ? 16 : 0;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(to), "l"(gmem), "r"(bytes) : "memory");
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }

// Waits until at most `Pending` committed groups of this thread are still in flight.
template <int Pending> __device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(Pending) : "memory");
}

}  // namespace
