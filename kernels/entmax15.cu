#include <cuda_runtime.h>

#include <cmath>

#include "entmax15.h"

namespace st::kernels {
namespace {

constexpr int kWarps = 8;  // rows per 256-thread block

__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}
__device__ __forceinline__ float warp_max(float x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
  return x;
}

__global__ void __launch_bounds__(32 * kWarps) entmax15_fwd_kernel(const float* z, float* p, int64_t rows, int64_t n) {
  const int lane = threadIdx.x & 31;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  if (row >= rows) return;
  const float* zr = z + row * n;
  float* pr = p + row * n;
  float mx = -INFINITY;
  for (int64_t i = lane; i < n; i += 32) mx = fmaxf(mx, zr[i]);
  mx = warp_max(mx);
  if (mx == -INFINITY) {
    for (int64_t i = lane; i < n; i += 32) pr[i] = 0.f;
    return;
  }
  float tau = -1.f;
  for (int it = 0; it < 64; ++it) {
    float s1 = 0.f, s2 = 0.f;
    for (int64_t i = lane; i < n; i += 32) {
      const float d = 0.5f * (zr[i] - mx) - tau;
      if (d > 0.f) {
        s1 += d;
        s2 += d * d;
      }
    }
    s1 = warp_sum(s1);
    s2 = warp_sum(s2);
    const float next = tau + (s2 - 1.f) / (2.f * s1);
    if (!(next > tau)) break;  // at the root up to rounding (or past it by rounding)
    tau = next;
  }
  for (int64_t i = lane; i < n; i += 32) {
    const float d = fmaxf(0.5f * (zr[i] - mx) - tau, 0.f);
    pr[i] = d * d;
  }
}

__global__ void __launch_bounds__(32 * kWarps) entmax15_bwd_kernel(const float* p, const float* dp, float* dz,
                                                                   int64_t rows, int64_t n) {
  const int lane = threadIdx.x & 31;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  if (row >= rows) return;
  const float* pr = p + row * n;
  const float* dpr = dp + row * n;
  float* dzr = dz + row * n;
  float s_sum = 0.f, s_dot = 0.f;
  for (int64_t i = lane; i < n; i += 32) {
    const float s = pr[i] > 0.f ? sqrtf(pr[i]) : 0.f;
    s_sum += s;
    s_dot += s * dpr[i];
  }
  s_sum = warp_sum(s_sum);
  s_dot = warp_sum(s_dot);
  const float mean = s_sum > 0.f ? s_dot / s_sum : 0.f;  // an all-masked row has no gradient
  for (int64_t i = lane; i < n; i += 32) {
    const float s = pr[i] > 0.f ? sqrtf(pr[i]) : 0.f;
    dzr[i] = s * (dpr[i] - mean);
  }
}

unsigned blocks_for(int64_t rows) { return static_cast<unsigned>((rows + kWarps - 1) / kWarps); }

}  // namespace

int entmax15_forward(const float* z, float* p, int64_t rows, int64_t n, cudaStream_t stream) {
  if (rows == 0 || n == 0) return 0;
  entmax15_fwd_kernel<<<blocks_for(rows), 32 * kWarps, 0, stream>>>(z, p, rows, n);
  return cudaGetLastError();
}

int entmax15_backward(const float* p, const float* dp, float* dz, int64_t rows, int64_t n, cudaStream_t stream) {
  if (rows == 0 || n == 0) return 0;
  entmax15_bwd_kernel<<<blocks_for(rows), 32 * kWarps, 0, stream>>>(p, dp, dz, rows, n);
  return cudaGetLastError();
}

}  // namespace st::kernels
