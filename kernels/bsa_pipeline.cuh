// Hopper warp specialization: mbarriers that hand shared-memory stages from producer warps
// (filled by cp.async) to consumer warpgroups and back, named barriers for one warpgroup, and
// register reallocation between warpgroups (setmaxnreg). sm_90a only, like bsa_wgmma.cuh.
#pragma once
#include <cstdint>

#include "bsa_wgmma.cuh"

namespace st::kernels::dev {

// count: the arrivals that complete one phase.
__device__ __forceinline__ void mbar_init(uint32_t bar, int count) {
  ST_SM90_ASM("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
// One arrival, releasing this thread's earlier shared-memory writes to the waiters.
__device__ __forceinline__ void mbar_arrive(uint32_t bar) {
  ST_SM90_ASM("mbarrier.arrive.release.cta.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
// One arrival, made when this thread's earlier cp.async copies have landed.
__device__ __forceinline__ void mbar_arrive_cp_async(uint32_t bar) {
  ST_SM90_ASM("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"(bar) : "memory");
}
// Waits until the phase of the given parity (0 for the first, 1 for the second, ...) completed.
__device__ __forceinline__ void mbar_wait(uint32_t bar, int parity) {
  uint32_t done = 0;
  while (!done)
    ST_SM90_ASM("{\n.reg .pred p;\nmbarrier.try_wait.parity.acquire.cta.shared::cta.b64 p, [%1], %2;\n"
                "selp.u32 %0, 1, 0, p;\n}\n"
                : "=r"(done)
                : "r"(bar), "r"(parity)
                : "memory");
}
// A barrier for `threads` threads (whole warps) under hardware barrier `id` (0 is __syncthreads').
__device__ __forceinline__ void named_barrier(int id, int threads) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}
// Every warp of the warpgroup runs these together; a warpgroup that gives registers up lets
// another take them (the CTA's total stays what the launch allocated).
template <int kRegs>
__device__ __forceinline__ void warpgroup_regs_down() {
  ST_SM90_ASM("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(kRegs));
}
template <int kRegs>
__device__ __forceinline__ void warpgroup_regs_up() {
  ST_SM90_ASM("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(kRegs));
}

}  // namespace st::kernels::dev
