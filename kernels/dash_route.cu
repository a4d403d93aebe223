#include "dash_route.h"

#include <cuda_runtime.h>

#include <cmath>

#include "entmax15.cuh"

namespace st::kernels {
namespace {

constexpr int kMaxWarps = 8;               // routings per block, one warp each
constexpr size_t kSmemBudget = 96 * 1024;  // per block: a [n_seen] float array per warp

// One routing's rows (the R positions of routing g, fewer at the tile's end), by one warp, with
// a [n_seen] float array of its own in shared memory (pbar in the forward, d p in the
// backward). Lane l owns chunks l, l + 32, ... of it, so the warp never races on it. z = scale * scores
// is rounded before use (__fmul_rn: no fused multiply-add), as the ATen path rounds it, so
// both find the same thresholds: p = (z/2 - tau)^2 near the support's edge is a difference of
// nearly equal numbers, where one rounding moves p by percents.
struct Routing {
  const DashRoutingArgs& a;
  int lane;
  int64_t r0, rows, own, lo, hi;  // rows r0 .. r0 + rows, their own chunk, candidates [lo, hi)
  __device__ Routing(const DashRoutingArgs& args, int64_t g) : a(args), lane(threadIdx.x & 31) {
    r0 = g * a.route_positions;
    rows = a.n - r0 < a.route_positions ? a.n - r0 : a.route_positions;
    own = (a.t0 + r0) / a.chunk;  // the same for all R rows: R divides chunk and t0
    lo = a.sink_chunks;
    hi = own - a.local_chunks;
    if (hi < lo) hi = lo;
  }
  __device__ int64_t entmax_rows() const { return a.G * rows; }
  // Entmax row k: head k % G of row r0 + k / G.
  __device__ const float* scores(int64_t k) const { return a.scores + ((k % a.G) * a.n + r0 + k / a.G) * a.scores_ld; }
  __device__ float z(const float* row, int64_t c) const { return __fmul_rn(a.scale, row[c]); }
  __device__ bool candidate(int64_t c) const { return c >= lo && c < hi; }
  // Whether chunk c < own, with the routing's pbar p there, is in the rows' lists: forced
  // (sink/local) chunks always, candidates where entmax gave them mass.
  __device__ bool listed(int64_t c, float p) const { return !candidate(c) || p > 0.f; }

  // Entmax row k's threshold in global memory: [G, n, 2] like the scores' rows.
  __device__ int64_t threshold_index(int64_t k) const { return 2 * ((k % a.G) * a.n + r0 + k / a.G); }
};

// Entmax row k's z on this lane's chunks c = lane + 32 j, -inf off the candidates, for the
// passes over the row (the threshold's ~3-6, the backward's two): with kPerLane > 0 read once
// into registers (kPerLane * 32 >= n_seen), with 0 read from memory at every pass.
template <int kPerLane>
struct RowZ {
  const Routing& rt;
  const float* row;
  float v[kPerLane > 0 ? kPerLane : 1];
  __device__ RowZ(const Routing& routing, int64_t k) : rt(routing), row(routing.scores(k)) {
#pragma unroll
    for (int j = 0; j < kPerLane; ++j) {
      const int64_t c = rt.lane + 32 * j;
      v[j] = rt.candidate(c) ? rt.z(row, c) : -INFINITY;
    }
  }
  // f(c, z) over the lane's candidates, ascending.
  template <class F>
  __device__ void each_candidate(const F& f) const {
    if constexpr (kPerLane > 0) {
#pragma unroll
      for (int j = 0; j < kPerLane; ++j)
        if (rt.candidate(rt.lane + 32 * j)) f(rt.lane + 32 * j, v[j]);
    } else {
      for (int64_t c = rt.lane; c < rt.hi; c += 32)
        if (c >= rt.lo) f(c, rt.z(row, c));
    }
  }
  // f(c, z) over the lane's chunks below n_seen, z = -inf off the candidates.
  template <class F>
  __device__ void each_seen(const F& f) const {
    if constexpr (kPerLane > 0) {
#pragma unroll
      for (int j = 0; j < kPerLane; ++j)
        if (rt.lane + 32 * j < rt.a.n_seen) f(rt.lane + 32 * j, v[j]);
    } else {
      for (int64_t c = rt.lane; c < rt.a.n_seen; c += 32) f(c, rt.candidate(c) ? rt.z(row, c) : -INFINITY);
    }
  }
  __device__ Entmax15Threshold threshold() const {
    return entmax15_threshold_of([&](const auto& f) { each_candidate([&](int64_t, float z) { f(z); }); });
  }
};

template <int kPerLane>
__global__ void __launch_bounds__(32 * kMaxWarps)
    routing_bias_kernel(DashRoutingArgs a, int64_t n_routings, float* pbar_out, float* shift_out, float* thresholds,
                        int64_t* counts) {
  extern __shared__ float smem[];
  const int64_t g = blockIdx.x * int64_t(blockDim.x >> 5) + (threadIdx.x >> 5);
  if (g >= n_routings) return;
  float* pbar = smem + (threadIdx.x >> 5) * a.n_seen;
  const Routing rt(a, g);
  // pbar[c] = the mean over the routing's entmax rows of p_k(c), each lane its own chunks.
  for (int64_t c = rt.lane; c < a.n_seen; c += 32) pbar[c] = 0.f;
  for (int64_t k = 0; k < rt.entmax_rows(); ++k) {
    const RowZ<kPerLane> row(rt, k);
    const Entmax15Threshold t = row.threshold();
    if (rt.lane == 0) {
      thresholds[rt.threshold_index(k)] = t.max;
      thresholds[rt.threshold_index(k) + 1] = t.tau;
    }
    row.each_candidate([&](int64_t c, float z) {
      const float pc = t.prob(z);
      if (pc > 0.f) pbar[c] += pc;
    });
  }
  const float inv_count = 1.f / float(rt.entmax_rows());
  for (int64_t c = rt.lane; c < a.n_seen; c += 32) pbar_out[g * a.n_seen + c] = pbar[c] *= inv_count;
  __syncwarp();
  // normalized: the mean of the routed log pbar, subtracted from each.
  float shift = 0.f;
  if (a.normalized) {
    float sum = 0.f, count = 0.f;
    for (int64_t c = rt.lane; c < a.n_seen; c += 32)
      if (pbar[c] > 0.f) sum += logf(pbar[c]), count += 1.f;
    shift = warp_sum(sum) / fmaxf(warp_sum(count), 1.f);
  }
  if (rt.lane == 0) shift_out[g] = shift;
  int64_t listed = 0;  // each row's list length: its routing's entries (own <= n_seen)
  for (int64_t c0 = 0; c0 < rt.own; c0 += 32) {
    const int64_t c = c0 + rt.lane;
    listed += __popc(__ballot_sync(0xffffffffu, c < rt.own && rt.listed(c, pbar[c])));
  }
  if (rt.lane < rt.rows) counts[rt.r0 + rt.lane] = listed;
}

// One warp per row: its routing's entries before the own chunk, in order, by ballot, with
// their bias (the chunk bias of dash.h: 0 on forced chunks, (log pbar - shift) / sigma on
// routed ones) and pbar.
__global__ void __launch_bounds__(32 * kMaxWarps)
    routing_lists_kernel(DashRoutingArgs a, const float* pbar, const float* shift, const int64_t* row_ptr,
                         int32_t* blocks, float* entries, float* entry_pbar) {
  const int64_t r = blockIdx.x * int64_t(kMaxWarps) + (threadIdx.x >> 5);
  if (r >= a.n) return;
  const int64_t g = r / a.route_positions;
  const Routing rt(a, g);
  const float* routing_pbar = pbar + g * a.n_seen;
  int64_t at = row_ptr[r] - row_ptr[0];
  for (int64_t c0 = 0; c0 < rt.own; c0 += 32) {
    const int64_t c = c0 + rt.lane;
    const float p = c < rt.own ? routing_pbar[c] : 0.f;
    const bool is_listed = c < rt.own && rt.listed(c, p);
    const unsigned listed = __ballot_sync(0xffffffffu, is_listed);
    if (is_listed) {
      const int64_t i = at + __popc(listed & ((1u << rt.lane) - 1u));
      blocks[i] = static_cast<int32_t>(c);
      entries[i] = rt.candidate(c) ? (logf(p) - shift[g]) / a.sigma : 0.f;
      entry_pbar[i] = p;
    }
    at += __popc(listed);
  }
}

template <int kPerLane>
__global__ void __launch_bounds__(32 * kMaxWarps)
    routing_backward_kernel(DashRoutingArgs a, int64_t n_routings, const float* thresholds, const int64_t* row_ptr,
                            const int32_t* blocks, const float* entry_pbar, const float* d_entries, float* d_scores) {
  extern __shared__ float smem[];
  const int64_t g = blockIdx.x * int64_t(blockDim.x >> 5) + (threadIdx.x >> 5);
  if (g >= n_routings) return;
  float* dp = smem + (threadIdx.x >> 5) * a.n_seen;  // d loss / d p, shared by the routing's rows
  const Routing rt(a, g);
  for (int64_t c = rt.lane; c < a.n_seen; c += 32) dp[c] = 0.f;
  // The R rows share the routing, so their lists are the same chunks in the same order: entry
  // j's d prior is the sum of the rows' entry j. Forced entries (bias 0) have no path back;
  // the routed ones are the candidates, with the forward's pbar > 0 kept.
  const int64_t base = row_ptr[0], first = row_ptr[rt.r0] - base, length = row_ptr[rt.r0 + 1] - row_ptr[rt.r0];
  auto d_prior = [&](int64_t j) {
    float sum = 0.f;
    for (int64_t i = 0; i < rt.rows; ++i) sum += d_entries[row_ptr[rt.r0 + i] - base + j];
    return sum / a.sigma;
  };
  float shift = 0.f;  // normalized: the routed entries' mean d prior, through the mean log pbar
  if (a.normalized) {
    float sum = 0.f, count = 0.f;
    for (int64_t j = rt.lane; j < length; j += 32)
      if (rt.candidate(blocks[first + j])) sum += d_prior(j), count += 1.f;
    shift = warp_sum(sum) / fmaxf(warp_sum(count), 1.f);
  }
  __syncwarp();  // dp zeroed, each lane its own chunks, before the entries' lanes write it
  // Through log and the mean over the rows.
  const float inv_count = 1.f / float(rt.entmax_rows());
  for (int64_t j = rt.lane; j < length; j += 32) {
    const int64_t c = blocks[first + j];
    if (rt.candidate(c)) dp[c] = (d_prior(j) - shift) / entry_pbar[first + j] * inv_count;
  }
  __syncwarp();
  // Each entmax row through entmax's Jacobian, then z = scale * scores.
  for (int64_t k = 0; k < rt.entmax_rows(); ++k) {
    const RowZ<kPerLane> row(rt, k);
    const Entmax15Threshold t{thresholds[rt.threshold_index(k)], thresholds[rt.threshold_index(k) + 1]};
    const float mean = entmax15_jvp_mean_of(
        [&](const auto& f) { row.each_candidate([&](int64_t c, float z) { f(t.prob(z), dp[c]); }); });
    float* out = d_scores + (row.row - a.scores);
    row.each_seen([&](int64_t c, float z) {
      const float pc = t.prob(z);
      const float s = pc > 0.f ? sqrtf(pc) : 0.f;
      out[c] = s * (dp[c] - mean) * a.scale;
    });
    for (int64_t c = a.n_seen + rt.lane; c < a.scores_ld; c += 32) out[c] = 0.f;  // whole rows: 0 past n_seen
  }
}

int64_t routings(const DashRoutingArgs& a) { return (a.n + a.route_positions - 1) / a.route_positions; }

bool shape_ok(const DashRoutingArgs& a) {
  return a.G >= 1 && a.route_positions >= 1 && a.G * a.route_positions <= kDashMaxRows && a.chunk > 0 &&
         a.chunk % a.route_positions == 0 && a.t0 % a.route_positions == 0 && a.n_seen >= 0 &&
         (a.t0 + a.n - 1) / a.chunk <= a.n_seen && a.scores_ld >= a.n_seen && a.n_seen <= kDashMaxSeen &&
         routings(a) < (int64_t(1) << 31);
}

// Warps per block for the routing kernels: as many [n_seen] arrays as kSmemBudget holds (8 at
// 64K tokens, 4 at kDashMaxSeen).
struct RoutingLaunch {
  int warps;
  size_t smem;
  unsigned blocks;
  explicit RoutingLaunch(const DashRoutingArgs& a) {
    const size_t per_warp = (a.n_seen > 0 ? a.n_seen : 1) * sizeof(float);
    warps = static_cast<int>(per_warp * kMaxWarps <= kSmemBudget ? kMaxWarps : kSmemBudget / per_warp);
    smem = warps * per_warp;
    blocks = static_cast<unsigned>((routings(a) + warps - 1) / warps);
  }
};

// Runs kernel<kPerLane> with the smallest register row cache that holds n_seen chunks (none
// past 2048: the registers would cost more occupancy than the re-reads).
template <template <int> class Launch, class... Args>
int with_row_cache(const DashRoutingArgs& a, Args&&... args) {
  if (a.n_seen <= 8 * 32) return Launch<8>::run(a, args...);
  if (a.n_seen <= 32 * 32) return Launch<32>::run(a, args...);
  if (a.n_seen <= 64 * 32) return Launch<64>::run(a, args...);
  return Launch<0>::run(a, args...);
}

template <class Kernel, class... Args>
int launch_routing(Kernel kernel, const DashRoutingArgs& a, cudaStream_t stream, Args... args) {
  if (const cudaError_t e =
          cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(kSmemBudget));
      e != cudaSuccess)
    return e;
  const RoutingLaunch l(a);
  kernel<<<l.blocks, 32 * l.warps, l.smem, stream>>>(a, routings(a), args...);
  return cudaGetLastError();
}

template <int kPerLane>
struct BiasLaunch {
  static int run(const DashRoutingArgs& a, float* pbar, float* shift, float* thresholds, int64_t* counts,
                 cudaStream_t stream) {
    return launch_routing(routing_bias_kernel<kPerLane>, a, stream, pbar, shift, thresholds, counts);
  }
};

template <int kPerLane>
struct BackwardLaunch {
  static int run(const DashRoutingArgs& a, const float* thresholds, const int64_t* row_ptr, const int32_t* blocks,
                 const float* entry_pbar, const float* d_entries, float* d_scores, cudaStream_t stream) {
    return launch_routing(routing_backward_kernel<kPerLane>, a, stream, thresholds, row_ptr, blocks, entry_pbar,
                          d_entries, d_scores);
  }
};

}  // namespace

int dash_routing_prior(const DashRoutingArgs& a, float* pbar, float* shift, float* thresholds, int64_t* counts,
                       cudaStream_t stream) {
  if (!shape_ok(a)) return kBsaBadShape;
  if (a.n == 0) return 0;
  return with_row_cache<BiasLaunch>(a, pbar, shift, thresholds, counts, stream);
}

int dash_routing_lists(const DashRoutingArgs& a, const float* pbar, const float* shift, const int64_t* row_ptr,
                       int32_t* blocks, float* entries, float* entry_pbar, cudaStream_t stream) {
  if (!shape_ok(a)) return kBsaBadShape;
  if (a.n == 0) return 0;
  routing_lists_kernel<<<static_cast<unsigned>((a.n + kMaxWarps - 1) / kMaxWarps), 32 * kMaxWarps, 0, stream>>>(
      a, pbar, shift, row_ptr, blocks, entries, entry_pbar);
  return cudaGetLastError();
}

int dash_routing_backward(const DashRoutingArgs& a, const float* thresholds, const int64_t* row_ptr,
                          const int32_t* blocks, const float* entry_pbar, const float* d_entries, float* d_scores,
                          cudaStream_t stream) {
  if (!shape_ok(a)) return kBsaBadShape;
  if (a.n == 0) return 0;
  return with_row_cache<BackwardLaunch>(a, thresholds, row_ptr, blocks, entry_pbar, d_entries, d_scores, stream);
}

}  // namespace st::kernels
