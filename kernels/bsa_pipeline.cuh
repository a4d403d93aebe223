// Hopper warp specialization: mbarriers that hand shared-memory stages from producer warps
// to consumer warpgroups and back, tensor-memory-accelerator (TMA) copies that fill a stage and
// complete on its mbarrier, named barriers for one warpgroup, and register reallocation between
// warpgroups (setmaxnreg). sm_90a only, like bsa_wgmma.cuh.
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
// One arrival that also tells the phase to wait for `bytes` more from TMA copies.
__device__ __forceinline__ void mbar_arrive_expect_bytes(uint32_t bar, uint32_t bytes) {
  ST_SM90_ASM("mbarrier.arrive.expect_tx.release.cta.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}
// TMA: the box at coordinates (c0, c1, c2, c3) of the tensor map `map` (a CUtensorMap in
// parameter or global memory) into shared memory at dst; its bytes count toward bar's phase.
__device__ __forceinline__ void tma_load_4d(uint32_t dst, const void* map, uint32_t bar, int c0, int c1, int c2,
                                            int c3) {
  ST_SM90_ASM(
      "cp.async.bulk.tensor.4d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%3, %4, %5, %6}], "
      "[%2];\n" ::"r"(dst),
      "l"(map), "r"(bar), "r"(c0), "r"(c1), "r"(c2), "r"(c3)
      : "memory");
}
// Two 64-row x D tiles at the same coordinates of two maps (K and V, Q and dO) by TMA, one box
// per 64-column slab (bsa_wgmma.cuh's layout): from row `row` of head `head` of batch b.
template <int D>
__device__ __forceinline__ void tma_load_tile_pair(uint32_t dst_a, const void* map_a, uint32_t dst_b, const void* map_b,
                                                   uint32_t bar, int row, int head, int b) {
#pragma unroll
  for (int slab = 0; slab < D / 64; ++slab) {
    tma_load_4d(dst_a + slab * kSlabBytes, map_a, bar, slab * 64, row, head, b);
    tma_load_4d(dst_b + slab * kSlabBytes, map_b, bar, slab * 64, row, head, b);
  }
}
// Waits until the phase of the given parity (0 for the first, 1 for the second, ...) completed.
__device__ __forceinline__ void mbar_wait(uint32_t bar, int parity) {
  uint32_t done = 0;
  while (!done)
    ST_SM90_ASM(
        "{\n.reg .pred p;\nmbarrier.try_wait.parity.acquire.cta.shared::cta.b64 p, [%1], %2;\n"
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
