#include <cuda_runtime.h>

#include <cmath>

#include "entmax15.cuh"
#include "entmax15.h"

namespace st::kernels {
namespace {

constexpr int kWarps = 8;  // rows per 256-thread block

__global__ void __launch_bounds__(32 * kWarps) entmax15_fwd_kernel(const float* z, float* p, int64_t rows, int64_t n) {
  const int lane = threadIdx.x & 31;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  if (row >= rows) return;
  const float* zr = z + row * n;
  float* pr = p + row * n;
  const auto th = entmax15_threshold([&](int64_t i) { return zr[i]; }, 0, n);
  for (int64_t i = lane; i < n; i += 32) pr[i] = th.prob(zr[i]);
}

__global__ void __launch_bounds__(32 * kWarps) entmax15_bwd_kernel(const float* p, const float* dp, float* dz,
                                                                   int64_t rows, int64_t n) {
  const int lane = threadIdx.x & 31;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  if (row >= rows) return;
  const float* pr = p + row * n;
  const float* dpr = dp + row * n;
  float* dzr = dz + row * n;
  const float mean = entmax15_jvp_mean([&](int64_t i) { return pr[i]; }, [&](int64_t i) { return dpr[i]; }, n);
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
