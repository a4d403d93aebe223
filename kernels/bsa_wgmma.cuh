// Hopper (sm_90a) warpgroup MMA for the attention and selection kernels: wgmma.mma_async
// m64nNk16 with fp32 accumulators, operands read from shared memory through 64-bit descriptors
// (A may come from registers instead). Where the sm_80 path has each of 4 warps ldmatrix the
// whole B tile for its own 16 rows, one wgmma reads B once for the warpgroup's 64 rows.
//
// The tiles are bsa_device.cuh's swizzled layout, which is the canonical 128-byte-swizzle
// layout when each tile starts on a 1024-byte boundary: 64-column slabs of 64 rows x 128 bytes,
// 16-byte chunks XOR-ed with (row % 8). A tile stored [row][col] serves as
//   K-major   when rows are M (or N) and cols are K: k-step kk starts 32 bytes further within a
//             slab (the swizzle follows the address bits), the next slab after four; SBO =
//             1024 bytes from one 8-row group to the next, LBO unused;
//   MN-major  when rows are K and cols are M (or N): k-step kk starts 16 rows (2048 bytes)
//             further; SBO = 1024 bytes per 8 rows of K, LBO = one slab, the next 64 columns.
// Accumulator fragments: warp w of the warpgroup holds rows 16w.. of the 64 x N result, as
// float[N / 8][4] laid out like mma.sync's C per 8 columns; a register A operand is the
// mma.sync A fragment of the warp's 16 rows. So the sm_80 and sm_90 paths share all the
// element-wise code between the matmuls.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <cstdint>
#include <type_traits>

#include "bsa_device.cuh"

namespace st::kernels::dev {

// Host side: whether a kernel's sm_90 form runs here, i.e. the device is a Hopper and this
// build carries sm_90a code for the kernel (a build for sm_80 only runs the portable path).
template <typename Kernel>
bool wgmma_runs_here(Kernel kernel) {
  int device = 0, major = 0;
  cudaFuncAttributes attr{};
  if (cudaGetDevice(&device) || cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) ||
      cudaFuncGetAttributes(&attr, kernel))
    return false;
  return major == 9 && attr.binaryVersion == 90;
}

constexpr uint32_t kSlabBytes = 64 * 128;  // one 64-column slab of a 64-row tile

__device__ __forceinline__ uint64_t wgmma_desc(uint32_t addr, uint32_t lbo, uint32_t sbo) {
  return static_cast<uint64_t>((addr & 0x3FFFF) >> 4) | static_cast<uint64_t>(lbo >> 4) << 16 |
         static_cast<uint64_t>(sbo >> 4) << 32 | 1ull << 62;  // 62: 128-byte swizzle
}
__device__ __forceinline__ uint64_t desc_k_major(uint32_t tile, int kk) {
  return wgmma_desc(tile + (kk >> 2) * kSlabBytes + (kk & 3) * 32, 16, 1024);
}
__device__ __forceinline__ uint64_t desc_mn_major(uint32_t tile, int kk) {
  return wgmma_desc(tile + kk * 2048, kSlabBytes, 1024);
}

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define ST_SM90_ASM(...) asm volatile(__VA_ARGS__)
#else
// Compiled for another architecture: the host never launches the sm_90 path there.
#define ST_SM90_ASM(...) __trap()
#endif

// Orders this thread's register writes (zeroed accumulators, A fragments) before the
// warpgroup's next wgmma.
__device__ __forceinline__ void wgmma_fence() { ST_SM90_ASM("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { ST_SM90_ASM("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
// Waits until at most kPending of this warpgroup's committed groups are still running (groups
// complete in order).
template <int kPending>
__device__ __forceinline__ void wgmma_wait() {
  ST_SM90_ASM("wgmma.wait_group.sync.aligned %0;\n" ::"n"(kPending) : "memory");
}
// Generic-proxy writes to shared memory (st.shared, cp.async) become visible to wgmma's reads.
__device__ __forceinline__ void fence_proxy_async() { ST_SM90_ASM("fence.proxy.async.shared::cta;\n" ::: "memory"); }

// Pins values to their registers across an asynchronous wgmma: the compiler must neither read
// an accumulator before the wait nor reuse an A operand's registers while the MMA reads them.
template <int N>
__device__ __forceinline__ void fence_operands(float (&d)[N][4]) {
#pragma unroll
  for (int i = 0; i < N; ++i)
#pragma unroll
    for (int e = 0; e < 4; ++e) asm volatile("" : "+f"(d[i][e])::"memory");
}
template <int N>
__device__ __forceinline__ void fence_operands(uint32_t (&a)[N][4]) {
#pragma unroll
  for (int i = 0; i < N; ++i)
#pragma unroll
    for (int e = 0; e < 4; ++e) asm volatile("" : "+r"(a[i][e])::"memory");
}

#define ST_ACC8(i) "+f"(d[i][0]), "+f"(d[i][1]), "+f"(d[i][2]), "+f"(d[i][3])
#define ST_ACC64 ST_ACC8(0), ST_ACC8(1), ST_ACC8(2), ST_ACC8(3), ST_ACC8(4), ST_ACC8(5), ST_ACC8(6), ST_ACC8(7)
#define ST_ACC128 ST_ACC64, ST_ACC8(8), ST_ACC8(9), ST_ACC8(10), ST_ACC8(11), ST_ACC8(12), ST_ACC8(13), ST_ACC8(14), ST_ACC8(15)
#define ST_REGS32                                                                                  \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, " \
  "%21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}"
#define ST_REGS64                                                                                  \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, " \
  "%21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, "  \
  "%40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, "  \
  "%59, %60, %61, %62, %63}"

// One wgmma instruction, 64 x N x 16 with fp32 accumulators: SHAPE is "m64n64k16" or
// "m64n128k16", TY the inputs' type ("bf16" or "f16"), REGS the accumulators' operand list and
// ARGS the rest of the instruction's operands. Inline asm takes only literal text, so the
// templates below pick among literal instantiations of this one pattern.
#define ST_WGMMA(SHAPE, TY, REGS, ARGS, ...) \
  ST_SM90_ASM("{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n" \
              "wgmma.mma_async.sync.aligned." SHAPE ".f32." TY "." TY " " REGS ", " ARGS ";\n}\n" : __VA_ARGS__)

// d (64 x 64) += A (64 x 16) * B (16 x 64), both K-major in shared memory.
template <typename T>
__device__ __forceinline__ void wgmma_ss(float (&d)[8][4], uint64_t a, uint64_t b) {
#define ST_SS(TY) ST_WGMMA("m64n64k16", TY, ST_REGS32, "%32, %33, p, 1, 1, 0, 0", ST_ACC64 : "l"(a), "l"(b))
  if constexpr (std::is_same_v<T, __nv_bfloat16>)
    ST_SS("bf16");
  else
    ST_SS("f16");
#undef ST_SS
}

// d (64 x N) += A (64 x 16, registers: the warp's mma.sync A fragment) * B (shared memory).
template <typename T, int N, int kTransB>
__device__ __forceinline__ void wgmma_rs(float (&d)[N / 8][4], const uint32_t (&a)[4], uint64_t b) {
  static_assert(N == 64 || N == 128, "N is 64 or 128");
#define ST_A_B "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "n"(kTransB)
#define ST_RS64(TY) ST_WGMMA("m64n64k16", TY, ST_REGS32, "{%32, %33, %34, %35}, %36, p, 1, 1, %37", ST_ACC64 : ST_A_B)
#define ST_RS128(TY) ST_WGMMA("m64n128k16", TY, ST_REGS64, "{%64, %65, %66, %67}, %68, p, 1, 1, %69", ST_ACC128 : ST_A_B)
  constexpr bool kBf16 = std::is_same_v<T, __nv_bfloat16>;
  if constexpr (N == 64) {
    if constexpr (kBf16)
      ST_RS64("bf16");
    else
      ST_RS64("f16");
  } else {
    if constexpr (kBf16)
      ST_RS128("bf16");
    else
      ST_RS128("f16");
  }
#undef ST_RS128
#undef ST_RS64
#undef ST_A_B
}

#undef ST_ACC8
#undef ST_ACC64
#undef ST_ACC128
#undef ST_REGS32
#undef ST_REGS64

// acc (64 x 64) += A B^T for two 64 x D tiles stored row-major in shared memory (S = Q K^T,
// dP = dO V^T and their transposes in the backward): D / 16 warpgroup MMAs, issued only.
template <typename T, int D>
__device__ __forceinline__ void wgmma_tile_by_tile_t(float (&acc)[8][4], uint32_t a_tile, uint32_t b_tile) {
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) wgmma_ss<T>(acc, desc_k_major(a_tile, kk), desc_k_major(b_tile, kk));
}

// acc (64 x 64) += A B^T with A from registers (the warp's 16 rows as D / 16 k-step fragments)
// and B a 64 x D tile stored row-major in shared memory (S = Q K^T with Q in registers).
template <typename T, int D>
__device__ __forceinline__ void wgmma_regs_by_tile_t(float (&acc)[8][4], const uint32_t (&a)[D / 16][4],
                                                     uint32_t b_tile) {
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) wgmma_rs<T, 64, 0>(acc, a[kk], desc_k_major(b_tile, kk));
}

// The product the kernels take four times (P V, P^T dO, dS^T Q, dS K): acc (64 x D) += A (64 x
// 64, from registers: the warp's 16 rows as 4 k-step A fragments) * B, B a 64 x D tile stored
// row-major with rows = k. kWgmma: 4 warpgroup MMAs, issued only (the caller fences before,
// commits and waits after); else mma.sync per warp with B fragments by ldmatrix.
template <typename T, int D, bool kWgmma>
__device__ __forceinline__ void mma_regs_by_tile(float (&acc)[D / 8][4], const uint32_t (&a)[4][4], uint32_t b_tile,
                                                 int lane) {
  if constexpr (kWgmma) {
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) wgmma_rs<T, D, 1>(acc, a[kk], desc_mn_major(b_tile, kk));
  } else {
#pragma unroll
    for (int kk = 0; kk < 4; ++kk)
#pragma unroll
      for (int nd = 0; nd < D / 16; ++nd) {
        uint32_t b[4];
        load_b_kn(b, b_tile, kk * 16, nd * 16, lane);
        mma<T>(acc[2 * nd], a[kk], b[0], b[1]);
        mma<T>(acc[2 * nd + 1], a[kk], b[2], b[3]);
      }
  }
}

}  // namespace st::kernels::dev
