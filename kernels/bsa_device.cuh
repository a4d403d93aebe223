// Device building blocks shared by the block-sparse attention kernels: the sm_80 tensor-core
// instruction (mma.sync m16n8k16, fp32 accumulate), ldmatrix, cp.async and the swizzled
// shared-memory tile layout. These run on sm_80 and later, Hopper included.
//
// Fragment layout of mma.m16n8k16 (g = lane / 4, c = lane % 4):
//   A 16x16 (4 regs of 2 halves): a0 (g, 2c..), a1 (g+8, 2c..), a2 (g, 2c+8..), a3 (g+8, 2c+8..)
//   B 16x8  (2 regs):             b0 (k = 2c.., n = g), b1 (k = 2c+8.., n = g)
//   C 16x8  (4 floats):           c0,c1 (g, 2c..2c+1), c2,c3 (g+8, 2c..2c+1)
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cstdint>

namespace st::kernels::dev {

// ---- element types --------------------------------------------------------------------
template <typename T> struct Elem;
template <> struct Elem<__nv_bfloat16> {
  static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
    __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&h);
  }
  static __device__ __forceinline__ float2 unpack(uint32_t u) {
    return __bfloat1622float2(*reinterpret_cast<__nv_bfloat162*>(&u));
  }
};
template <> struct Elem<__half> {
  static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
    __half2 h = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&h);
  }
  static __device__ __forceinline__ float2 unpack(uint32_t u) {
    return __half22float2(*reinterpret_cast<__half2*>(&u));
  }
};

// D = A * B + D for one 16x8x16 tile.
template <typename T>
__device__ __forceinline__ void mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                    uint32_t b1);
template <>
__device__ __forceinline__ void mma<__nv_bfloat16>(float (&d)[4], const uint32_t (&a)[4],
                                                   uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
template <>
__device__ __forceinline__ void mma<__half>(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                            uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
__device__ __forceinline__ void ldmatrix_x2_trans(uint32_t (&r)[2], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n"
               : "=r"(r[0]), "=r"(r[1])
               : "r"(addr));
}

// 16-byte global -> shared copy; src_bytes = 0 writes zeros (rows past T), so that no
// garbage (possibly NaN/Inf) enters an MMA where a zero probability multiplies it.
__device__ __forceinline__ void cp_async_16(uint32_t dst, const void* src, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src),
               "r"(src_bytes));
}
// The same for 4 bytes (through L1: cp.async.cg takes 16 only).
__device__ __forceinline__ void cp_async_4(uint32_t dst, const void* src, int src_bytes) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(dst), "l"(src), "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n"); }
__device__ __forceinline__ void cp_async_wait_all() {
  asm volatile("cp.async.wait_group 0;\n" ::: "memory");
}

// ---- swizzled tile: 64 rows x D halves in 64-column slabs ------------------------------
// Each slab holds 64 rows x 128 bytes; a row's 16-byte chunks are XOR-ed with (row % 8). An 8x8
// ldmatrix reads one chunk from each of 8 consecutive rows; the XOR spreads those 8 chunks over
// the 8 distinct 16-byte bank groups, so the read is conflict-free although the 128-byte row
// stride maps every row to the same banks. With the tile on a 1024-byte boundary this is also
// the 128-byte-swizzle layout that wgmma reads (bsa_wgmma.cuh).
__device__ __forceinline__ uint32_t tile_offset(int row, int col) {  // bytes; col % 8 == 0
  const int chunk = ((col >> 3) & 7) ^ (row & 7);
  return static_cast<uint32_t>((col >> 6) * (64 * 128) + row * 128 + chunk * 16);
}

// A fragment (16x16 at rows r0.., cols k0..) of a row-major tile: a0..a3 as in the header.
__device__ __forceinline__ void load_a(uint32_t (&a)[4], uint32_t tile, int r0, int k0,
                                       int lane) {
  ldmatrix_x4(a, tile + tile_offset(r0 + (lane & 15), k0 + ((lane >> 4) << 3)));
}
// B fragments for two n-tiles (n0.., n0+8..) x 16 k at k0, where the tile stores B^T
// row-major (rows = n): K in Q K^T. b[0],b[1] serve n-tile n0; b[2],b[3] serve n0+8.
__device__ __forceinline__ void load_b_nk(uint32_t (&b)[4], uint32_t tile, int n0, int k0,
                                          int lane) {
  const int m = lane >> 3;
  ldmatrix_x4(b, tile + tile_offset(n0 + (lane & 7) + ((m >> 1) << 3), k0 + ((m & 1) << 3)));
}
// B fragments for two n-tiles where the tile stores B row-major (rows = k): V in P V.
__device__ __forceinline__ void load_b_kn(uint32_t (&b)[4], uint32_t tile, int k0, int n0,
                                          int lane) {
  const int m = lane >> 3;
  ldmatrix_x4_trans(b,
                    tile + tile_offset(k0 + (lane & 7) + ((m & 1) << 3), n0 + ((m >> 1) << 3)));
}

// Accumulator pair (n-tiles 2kk, 2kk+1 of a 16 x 64 C) -> A fragment for k-step kk.
template <typename T>
__device__ __forceinline__ void c_to_a(uint32_t (&a)[4], const float (&c0)[4],
                                       const float (&c1)[4]) {
  a[0] = Elem<T>::pack(c0[0], c0[1]);
  a[1] = Elem<T>::pack(c0[2], c0[3]);
  a[2] = Elem<T>::pack(c1[0], c1[1]);
  a[3] = Elem<T>::pack(c1[2], c1[3]);
}

// 128 threads copy a 64-row x D tile into the swizzled layout. row_src(row) returns the row's
// global address, or nullptr to zero-fill the row; `any` is any valid global address (a
// zero-byte cp.async still needs one).
template <int D, typename T, typename RowFn>
__device__ __forceinline__ void load_tile_async(uint32_t tile, RowFn row_src, const T* any,
                                                int tid) {
  constexpr int kChunks = D / 8;
#pragma unroll
  for (int it = 0; it < 64 * kChunks / 128; ++it) {
    const int i = it * 128 + tid;
    const int row = i / kChunks, ch = i % kChunks;
    const T* src = row_src(row);
    cp_async_16(tile + tile_offset(row, ch * 8), src ? src + ch * 8 : any, src ? 16 : 0);
  }
}

__device__ __forceinline__ float quad_max(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
  return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}
__device__ __forceinline__ float quad_sum(float x) {
  x += __shfl_xor_sync(0xffffffffu, x, 1);
  return x + __shfl_xor_sync(0xffffffffu, x, 2);
}

// *p += (x, y) in fp32 with device-scope atomics (no return value: a reduction in L2). sm_90
// has a two-float form, one instruction and one L2 transaction instead of two.
__device__ __forceinline__ void atomic_add2(float* p, float x, float y) {
#if __CUDA_ARCH__ >= 900
  atomicAdd(reinterpret_cast<float2*>(p), make_float2(x, y));
#else
  atomicAdd(p, x);
  atomicAdd(p + 1, y);
#endif
}

constexpr float kLog2e = 1.4426950408889634f;

// 2^x as the single MUFU instruction (flush-to-zero, ~2 ulp; exp2(-inf) = 0). exp2f without
// fast-math adds denormal handling on the ALU pipe, which ncu showed as the busiest pipe of
// the forward.
__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

}  // namespace st::kernels::dev
