#include "dash_route.h"

#include <cuda_runtime.h>

#include <cmath>

#include "entmax15.cuh"

namespace st::kernels {
namespace {

constexpr int kWarps = 8;  // one block per routing (R query rows); warps take its entmax rows in turn

// One routing's rows (the R positions of block g, fewer at the tile's end) and its pbar, by the
// whole block: each (head, position)'s threshold, then pbar over chunks [0, n_seen) into
// shared memory (0 off the candidates). z = scale * scores is rounded before use (__fmul_rn:
// no fused multiply-add), as the ATen path rounds it, so both find the same thresholds:
// p = (z/2 - tau)^2 near the support's edge is a difference of nearly equal numbers, where
// one rounding moves p by percents.
struct Routing {
  const DashRoutingArgs& a;
  int64_t r0, rows, own, lo, hi;  // rows r0 .. r0 + rows, their own chunk, candidates [lo, hi)
  __device__ Routing(const DashRoutingArgs& args, int64_t g) : a(args) {
    r0 = g * a.route_positions;
    rows = a.n - r0 < a.route_positions ? a.n - r0 : a.route_positions;
    own = (a.t0 + r0) / a.chunk;  // the same for all R rows: R divides chunk and t0
    lo = a.sink_chunks;
    hi = own - a.local_chunks;
    if (hi < lo) hi = lo;
  }
  __device__ int64_t entmax_rows() const { return a.G * rows; }
  // Entmax row k: head k % G of row r0 + k / G.
  __device__ const float* scores(int64_t k) const { return a.scores + ((k % a.G) * a.n + r0 + k / a.G) * a.n_seen; }
  __device__ float z(const float* row, int64_t c) const { return __fmul_rn(a.scale, row[c]); }
  __device__ bool candidate(int64_t c) const { return c >= lo && c < hi; }
  __device__ bool forced(int64_t c) const { return c == own || (c < own && !candidate(c)); }

  // Entmax row k's threshold in global memory: [G, n, 2] like the scores' rows.
  __device__ int64_t threshold_index(int64_t k) const { return 2 * ((k % a.G) * a.n + r0 + k / a.G); }

  __device__ void find_thresholds(Entmax15Threshold* th, float* thresholds) const {
    for (int64_t k = threadIdx.x >> 5; k < entmax_rows(); k += kWarps) {
      const float* row = scores(k);
      const auto t = entmax15_threshold([&](int64_t c) { return z(row, c); }, lo, hi);
      if ((threadIdx.x & 31) == 0) {
        th[k] = t;
        thresholds[threshold_index(k)] = t.max;
        thresholds[threshold_index(k) + 1] = t.tau;
      }
    }
    __syncthreads();
  }
  __device__ void load_thresholds(Entmax15Threshold* th, const float* thresholds) const {
    for (int64_t k = threadIdx.x; k < entmax_rows(); k += blockDim.x)
      th[k] = {thresholds[threshold_index(k)], thresholds[threshold_index(k) + 1]};
    __syncthreads();
  }
  __device__ void mean_probs(const Entmax15Threshold* th, float* pbar) const {
    const float inv_count = 1.f / float(entmax_rows());
    for (int64_t c = threadIdx.x; c < a.n_seen; c += blockDim.x) {
      float sum = 0.f;
      if (candidate(c))
        for (int64_t k = 0; k < entmax_rows(); ++k) sum += th[k].prob(z(scores(k), c));
      pbar[c] = sum * inv_count;
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

__global__ void __launch_bounds__(32 * kWarps)
    routing_bias_kernel(DashRoutingArgs a, float* bias, float* thresholds, int64_t* counts) {
  extern __shared__ float pbar[];  // [n_seen]
  __shared__ Entmax15Threshold th[kDashMaxRows];
  const Routing rt(a, blockIdx.x);
  rt.find_thresholds(th, thresholds);
  rt.mean_probs(th, pbar);
  // normalized: the mean of the routed log pbar, subtracted from each.
  float shift = 0.f;
  if (a.normalized) {
    float2 part{0.f, 0.f};
    for (int64_t c = threadIdx.x; c < a.n_seen; c += blockDim.x)
      if (pbar[c] > 0.f) part.x += logf(pbar[c]), part.y += 1.f;
    const float2 total = block_sum(part);
    shift = total.x / fmaxf(total.y, 1.f);
  }
  int64_t listed = 0;  // the finite entries before the own chunk: each row's list length
  for (int64_t c0 = 0; c0 < a.n_chunks; c0 += blockDim.x) {
    const int64_t c = c0 + threadIdx.x;
    float b = -INFINITY;
    if (c < a.n_chunks) {
      if (rt.forced(c))
        b = 0.f;
      else if (c < a.n_seen && pbar[c] > 0.f)
        b = (logf(pbar[c]) - shift) / a.sigma;
      for (int64_t i = 0; i < rt.rows; ++i) bias[(rt.r0 + i) * a.n_chunks + c] = b;
    }
    listed += __syncthreads_count(c < rt.own && isfinite(b));
  }
  if (threadIdx.x < rt.rows) counts[rt.r0 + threadIdx.x] = listed;
}

// One warp per row: its finite entries before the own chunk, in order, by ballot.
__global__ void __launch_bounds__(32 * kWarps) routing_lists_kernel(DashRoutingArgs a, const float* bias,
                                                                     const int64_t* row_ptr, int32_t* blocks,
                                                                     float* entries) {
  const int64_t r = blockIdx.x * int64_t(kWarps) + (threadIdx.x >> 5);
  if (r >= a.n) return;
  const int lane = threadIdx.x & 31;
  const int64_t own = (a.t0 + r) / a.chunk;
  const float* row = bias + r * a.n_chunks;
  int64_t at = row_ptr[r] - row_ptr[0];
  for (int64_t c0 = 0; c0 < own; c0 += 32) {
    const int64_t c = c0 + lane;
    const float b = c < own ? row[c] : -INFINITY;
    const unsigned listed = __ballot_sync(0xffffffffu, isfinite(b));
    if (isfinite(b)) {
      const int64_t i = at + __popc(listed & ((1u << lane) - 1u));
      blocks[i] = static_cast<int32_t>(c);
      entries[i] = b;
    }
    at += __popc(listed);
  }
}

__global__ void __launch_bounds__(32 * kWarps)
    routing_backward_kernel(DashRoutingArgs a, const float* thresholds, const int64_t* row_ptr, const int32_t* blocks,
                            const float* d_entries, float* d_scores) {
  extern __shared__ float smem[];
  float* pbar = smem;           // [n_seen]
  float* dp = smem + a.n_seen;  // [n_seen]: d loss / d p of every entmax row
  __shared__ Entmax15Threshold th[kDashMaxRows];
  const Routing rt(a, blockIdx.x);
  rt.load_thresholds(th, thresholds);
  rt.mean_probs(th, pbar);
  // d prior on routed chunks, summed over the rows sharing the routing, from their lists
  // (forced entries, at bias 0, have no path back). A row lists a chunk once, so its entries
  // add without atomics; the rows take turns.
  for (int64_t c = threadIdx.x; c < a.n_seen; c += blockDim.x) dp[c] = 0.f;
  __syncthreads();
  for (int64_t i = 0; i < rt.rows; ++i) {
    const int64_t r = rt.r0 + i, end = row_ptr[r + 1] - row_ptr[0];
    for (int64_t e = row_ptr[r] - row_ptr[0] + threadIdx.x; e < end; e += blockDim.x)
      if (rt.candidate(blocks[e])) dp[blocks[e]] += d_entries[e];
    __syncthreads();
  }
  float2 part{0.f, 0.f};
  for (int64_t c = threadIdx.x; c < a.n_seen; c += blockDim.x) {
    float g = 0.f;
    if (pbar[c] > 0.f) {
      g = dp[c] / a.sigma;
      part.y += float(rt.rows);
    }
    dp[c] = g;
    part.x += g;
  }
  float shift = 0.f;
  if (a.normalized) {
    const float2 total = block_sum(part);  // y counts each routed chunk once per row
    shift = total.x / fmaxf(total.y / float(rt.rows), 1.f);
  }
  const float inv_count = 1.f / float(rt.entmax_rows());
  for (int64_t c = threadIdx.x; c < a.n_seen; c += blockDim.x)  // through log and the mean
    dp[c] = pbar[c] > 0.f ? (dp[c] - shift) / pbar[c] * inv_count : 0.f;
  __syncthreads();
  // Each entmax row through entmax's Jacobian, then z = scale * scores.
  const int lane = threadIdx.x & 31;
  for (int64_t k = threadIdx.x >> 5; k < rt.entmax_rows(); k += kWarps) {
    const float* row = rt.scores(k);
    const Entmax15Threshold t = th[k];
    const auto p = [&](int64_t c) { return rt.candidate(c) ? t.prob(rt.z(row, c)) : 0.f; };
    const float mean = entmax15_jvp_mean(p, [&](int64_t c) { return dp[c]; }, a.n_seen);
    float* out = d_scores + (row - a.scores);
    for (int64_t c = lane; c < a.n_seen; c += 32) {
      const float pc = p(c);
      const float s = pc > 0.f ? sqrtf(pc) : 0.f;
      out[c] = s * (dp[c] - mean) * a.scale;
    }
  }
}

int64_t routings(const DashRoutingArgs& a) { return (a.n + a.route_positions - 1) / a.route_positions; }

// The backward keeps two [n_seen] vectors in shared memory: 48 KB at kDashMaxSeen.
bool shape_ok(const DashRoutingArgs& a, size_t smem) {
  return a.G >= 1 && a.route_positions >= 1 && a.G * a.route_positions <= kDashMaxRows && a.chunk > 0 &&
         a.chunk % a.route_positions == 0 && a.t0 % a.route_positions == 0 && a.n_seen <= kDashMaxSeen &&
         smem <= 48 * 1024 && routings(a) < (int64_t(1) << 31);
}

}  // namespace

int dash_routing_bias(const DashRoutingArgs& a, float* bias, float* thresholds, int64_t* counts, cudaStream_t stream) {
  const size_t smem = a.n_seen * sizeof(float);
  if (!shape_ok(a, smem)) return kBsaBadShape;
  if (a.n == 0) return 0;
  routing_bias_kernel<<<static_cast<unsigned>(routings(a)), 32 * kWarps, smem, stream>>>(a, bias, thresholds, counts);
  return cudaGetLastError();
}

int dash_routing_lists(const DashRoutingArgs& a, const float* bias, const int64_t* row_ptr, int32_t* blocks,
                       float* entries, cudaStream_t stream) {
  if (!shape_ok(a, 0)) return kBsaBadShape;
  if (a.n == 0) return 0;
  routing_lists_kernel<<<static_cast<unsigned>((a.n + kWarps - 1) / kWarps), 32 * kWarps, 0, stream>>>(
      a, bias, row_ptr, blocks, entries);
  return cudaGetLastError();
}

int dash_routing_backward(const DashRoutingArgs& a, const float* thresholds, const int64_t* row_ptr,
                          const int32_t* blocks, const float* d_entries, float* d_scores, cudaStream_t stream) {
  const size_t smem = 2 * a.n_seen * sizeof(float);
  if (!shape_ok(a, smem)) return kBsaBadShape;
  if (a.n == 0) return 0;
  routing_backward_kernel<<<static_cast<unsigned>(routings(a)), 32 * kWarps, smem, stream>>>(
      a, thresholds, row_ptr, blocks, d_entries, d_scores);
  return cudaGetLastError();
}

}  // namespace st::kernels
