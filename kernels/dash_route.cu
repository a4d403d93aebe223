#include "dash_route.h"

#include <cuda_runtime.h>

#include <cmath>

#include "entmax15.cuh"

namespace st::kernels {
namespace {

constexpr int kWarps = 8;  // one block per query row; warps take the group's heads in turn

// One row's routing, by the whole block: the heads' thresholds, then the group-mean pbar
// over chunks [0, n_seen) into pbar (0 off the candidates). Returns nothing; th and pbar are
// shared memory.
struct RowRouting {
  const DashRoutingArgs& a;
  int64_t r, own, lo, hi;  // the row, its own chunk, its candidates [lo, hi)
  __device__ RowRouting(const DashRoutingArgs& args, int64_t row) : a(args), r(row) {
    own = (a.t0 + r) / a.chunk;
    lo = a.sink_chunks;
    hi = own - a.local_chunks;
    if (hi < lo) hi = lo;
  }
  __device__ const float* scores(int64_t h) const { return a.scores + (h * a.n + r) * a.n_seen; }
  __device__ bool candidate(int64_t c) const { return c >= lo && c < hi; }
  __device__ bool forced(int64_t c) const { return c == own || (c < own && !candidate(c)); }

  __device__ void route(Entmax15Threshold* th, float* pbar) const {
    const int warp = threadIdx.x >> 5;
    for (int64_t h = warp; h < a.G; h += kWarps) {
      const float* z = scores(h);
      const float scale = a.scale;
      const auto t = entmax15_threshold([&](int64_t i) { return scale * z[i]; }, lo, hi);
      if ((threadIdx.x & 31) == 0) th[h] = t;
    }
    __syncthreads();
    for (int64_t c = threadIdx.x; c < a.n_seen; c += blockDim.x) {
      float sum = 0.f;
      if (candidate(c))
        for (int64_t h = 0; h < a.G; ++h) sum += th[h].prob(a.scale * scores(h)[c]);
      pbar[c] = sum * (1.f / float(a.G));
    }
    __syncthreads();
  }
};

// Block-wide sum of (x, count) by every thread.
__device__ float2 block_sum(float2 v) {
  __shared__ float2 parts[kWarps];
  v.x = warp_sum(v.x);
  v.y = warp_sum(v.y);
  if ((threadIdx.x & 31) == 0) parts[threadIdx.x >> 5] = v;
  __syncthreads();
  float2 total{0.f, 0.f};
  for (int w = 0; w < kWarps; ++w) total.x += parts[w].x, total.y += parts[w].y;
  __syncthreads();
  return total;
}

__global__ void __launch_bounds__(32 * kWarps) routing_bias_kernel(DashRoutingArgs a, float* bias) {
  extern __shared__ float pbar[];  // [n_seen]
  __shared__ Entmax15Threshold th[kDashMaxGroup];
  const RowRouting row(a, blockIdx.x);
  row.route(th, pbar);
  // normalized: the mean of the row's routed log pbar, subtracted from each.
  float shift = 0.f;
  if (a.normalized) {
    float2 part{0.f, 0.f};
    for (int64_t c = threadIdx.x; c < a.n_seen; c += blockDim.x)
      if (pbar[c] > 0.f) part.x += logf(pbar[c]), part.y += 1.f;
    const float2 total = block_sum(part);
    shift = total.x / fmaxf(total.y, 1.f);
  }
  float* out = bias + row.r * a.n_chunks;
  for (int64_t c = threadIdx.x; c < a.n_chunks; c += blockDim.x) {
    float b = -INFINITY;
    if (row.forced(c))
      b = 0.f;
    else if (c < a.n_seen && pbar[c] > 0.f)
      b = (logf(pbar[c]) - shift) / a.sigma;
    out[c] = b;
  }
}

__global__ void __launch_bounds__(32 * kWarps) routing_backward_kernel(DashRoutingArgs a, const float* d_bias,
                                                                       float* d_scores) {
  extern __shared__ float smem[];
  float* pbar = smem;            // [n_seen]
  float* dp = smem + a.n_seen;   // [n_seen]: d loss / d p_h, the same for every head
  __shared__ Entmax15Threshold th[kDashMaxGroup];
  const RowRouting row(a, blockIdx.x);
  row.route(th, pbar);
  // d prior on routed chunks (bias 0 and -inf entries have no path back).
  const float* db = d_bias + row.r * a.n_chunks;
  float2 part{0.f, 0.f};
  for (int64_t c = threadIdx.x; c < a.n_seen; c += blockDim.x) {
    const float g = pbar[c] > 0.f ? db[c] / a.sigma : 0.f;
    dp[c] = g;
    part.x += g, part.y += pbar[c] > 0.f ? 1.f : 0.f;
  }
  float shift = 0.f;
  if (a.normalized) {
    const float2 total = block_sum(part);
    shift = total.x / fmaxf(total.y, 1.f);
  }
  for (int64_t c = threadIdx.x; c < a.n_seen; c += blockDim.x)
    dp[c] = pbar[c] > 0.f ? (dp[c] - shift) / pbar[c] / float(a.G) : 0.f;  // through log and the mean
  __syncthreads();
  // Each head through entmax's Jacobian, then z = scale * scores.
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  for (int64_t h = warp; h < a.G; h += kWarps) {
    const float* z = row.scores(h);
    const Entmax15Threshold t = th[h];
    const float scale = a.scale;
    const auto p = [&](int64_t c) { return row.candidate(c) ? t.prob(scale * z[c]) : 0.f; };
    const float mean = entmax15_jvp_mean(p, [&](int64_t c) { return dp[c]; }, a.n_seen);
    float* out = d_scores + (h * a.n + row.r) * a.n_seen;
    for (int64_t c = lane; c < a.n_seen; c += 32) {
      const float pc = p(c);
      const float s = pc > 0.f ? sqrtf(pc) : 0.f;
      out[c] = s * (dp[c] - mean) * scale;
    }
  }
}

bool shape_ok(const DashRoutingArgs& a, size_t smem) {
  return a.G >= 1 && a.G <= kDashMaxGroup && a.chunk > 0 && smem <= 48 * 1024 && a.n < (int64_t(1) << 31);
}

}  // namespace

int dash_routing_bias(const DashRoutingArgs& a, float* bias, cudaStream_t stream) {
  const size_t smem = a.n_seen * sizeof(float);
  if (!shape_ok(a, smem)) return kDashBadShape;
  if (a.n == 0) return 0;
  routing_bias_kernel<<<static_cast<unsigned>(a.n), 32 * kWarps, smem, stream>>>(a, bias);
  return cudaGetLastError();
}

int dash_routing_backward(const DashRoutingArgs& a, const float* d_bias, float* d_scores, cudaStream_t stream) {
  const size_t smem = 2 * a.n_seen * sizeof(float);
  if (!shape_ok(a, smem)) return kDashBadShape;
  if (a.n == 0) return 0;
  routing_backward_kernel<<<static_cast<unsigned>(a.n), 32 * kWarps, smem, stream>>>(a, d_bias, d_scores);
  return cudaGetLastError();
}

}  // namespace st::kernels
