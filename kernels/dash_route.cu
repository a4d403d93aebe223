#include "dash_route.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <type_traits>

#include "bsa_device.cuh"  // cp.async
#include "dash_scores.h"   // kDashScoreParts
#include "entmax15.cuh"

namespace st::kernels {
namespace {

using namespace dev;

constexpr int kMaxWarps = 8;               // routings per block, one warp each
constexpr size_t kSmemBudget = 96 * 1024;  // per block: a [n_seen] float array per warp

// One routing's rows (the R positions of routing g, fewer at the tile's end). In the forward
// one warp takes it, with a [n_seen] float array (pbar) of its own in shared memory; lane l
// owns chunks l, l + 32, ... of it, so the warp never races on it. z = scale * scores is
// rounded before use (__fmul_rn: no fused multiply-add), as the ATen path rounds it, so both
// find the same thresholds: p = (z/2 - tau)^2 near the support's edge is a difference of nearly
// equal numbers, where one rounding moves p by percents.
struct Routing {
  const DashRoutingArgs& a;
  int lane;
  int64_t r0, rows, own, lo, hi;  // rows r0 .. r0 + rows, their own chunk, candidates [lo, hi)
  int64_t first_tile, end_tile;   // the tiles of kDashTile chunks that hold candidates
  __device__ Routing(const DashRoutingArgs& args, int64_t g) : a(args), lane(threadIdx.x & 31) {
    r0 = g * a.route_positions;
    rows = a.n - r0 < a.route_positions ? a.n - r0 : a.route_positions;
    own = (a.t0 + r0) / a.chunk;  // the same for all R rows: R divides chunk and t0
    lo = a.sink_chunks;
    hi = dash_candidates_end(a.t0 + r0, a.chunk, a.sink_chunks, a.local_chunks);
    first_tile = lo / kDashTile;
    end_tile = hi > lo ? (hi + kDashTile - 1) / kDashTile : first_tile;
  }
  __device__ int64_t entmax_rows() const { return a.G * rows; }
  // Entmax row k is head k % G of row r0 + k / G: score row (k % G) n + r0 + k / G (in 32 bits:
  // k < kDashMaxRows; a 64-bit division costs ~100 instructions, a row's passes few hundred).
  __device__ int64_t score_row(int64_t k) const {
    const int kk = static_cast<int>(k), G = static_cast<int>(a.G);
    return (kk % G) * a.n + r0 + kk / G;
  }
  __device__ const float* scores(int64_t k) const { return a.scores + score_row(k) * a.scores_ld; }
  __device__ const float* tile_max(int64_t k) const { return a.tile_max + score_row(k) * a.tile_max_ld; }
  __device__ float z(float score) const { return __fmul_rn(a.scale, score); }
  __device__ float z(const float* row, int64_t c) const { return z(row[c]); }
  __device__ bool candidate(int64_t c) const { return c >= lo && c < hi; }
  // Whether chunk c < own, with the routing's pbar p there, is in the rows' lists: forced
  // (sink/local) chunks always, candidates where entmax gave them mass.
  __device__ bool listed(int64_t c, float p) const { return !candidate(c) || p > 0.f; }

  // Entmax row k's threshold in global memory: [G, n, 2] like the scores' rows.
  __device__ int64_t threshold_index(int64_t k) const { return 2 * score_row(k); }
};

// One entmax row of a routing, for the passes over it (the threshold's max and Newton passes,
// then p) on this lane's chunks c = lane + 32 j. Newton climbs from tau = -1, so an entry with
// x = (z - max) / 2 <= -1 adds exact zeros to every pass's sums and has p = 0: only the entries
// within 2 of the row's max z matter, a handful per row at route_positions 4's temperatures
// (tens at 1's, whose temperatures are lower). scan() takes the row's max from its tile maxima
// (scale > 0 and rounding is monotonic, so scale times a tile's max score is its max z) and
// reads only the tiles whose max comes within 2 of it, kLoads at once; each lane keeps its
// first kKept entries with x > -1 of each i / 32 parity in registers, in order. A row where
// some lane finds more reads the whole row from memory at every pass instead. Either way each
// chain adds the same nonzero terms in the same order as entmax15_threshold_of over the whole
// row: the same bits. The kernel is latency-bound: occupancy decides (64 registers, four 8-warp
// blocks per SM; 8 tiles at once, 80 registers, ran 1.6 -> 2.5 ms at 64K / route_positions 4).
struct RowEntries {
  static constexpr int kKept = 4;   // per lane and parity
  static constexpr int kLoads = 4;  // tiles read at once
  const Routing& rt;
  int lo, hi, first_tile, end_tile;  // rt's, in 32 bits (n_seen <= kDashMaxSeen)
  const float* row = nullptr;
  float mx = -INFINITY;  // the row's max z
  // The kept entries' x by parity, newest first (-inf in unused slots), their j a byte each
  // (newest in the low byte; j < 256 as n_seen <= kDashMaxSeen), and whether every lane's fit.
  float kept_x[2][kKept];
  uint32_t kept_j[2];
  bool all_kept = true;
  __device__ explicit RowEntries(const Routing& routing)
      : rt(routing),
        lo(static_cast<int>(routing.lo)),
        hi(static_cast<int>(routing.hi)),
        first_tile(static_cast<int>(routing.first_tile)),
        end_tile(static_cast<int>(routing.end_tile)) {}
  __device__ bool candidate(int c) const { return c >= lo && c < hi; }

  // Keeps chunk c = lane + 32 j (j of parity odd) if t = z - max > -2, i.e. x = t / 2 > -1.
  __device__ void keep(int odd, int c, float t, int& count) {
    if (!(t > -2.f)) return;
#pragma unroll
    for (int i = kKept - 1; i > 0; --i) kept_x[odd][i] = kept_x[odd][i - 1];
    kept_x[odd][0] = 0.5f * t;
    kept_j[odd] = kept_j[odd] << 8 | static_cast<uint32_t>(c >> 5);
    ++count;
  }
  // Entmax row k's max score in tile first_tile + lane (-inf past its tiles): read a row ahead,
  // so that it arrives during the passes over the row before.
  __device__ float first_max(int64_t k) const {
    return first_tile + rt.lane < end_tile ? rt.tile_max(k)[first_tile + rt.lane] : -INFINITY;
  }
  // Entmax row k, given its first_max: its max and kept entries.
  __device__ void scan(int64_t k, float first) {
    row = rt.scores(k);
    const float* maxima = rt.tile_max(k);
#pragma unroll
    for (int i = 0; i < kKept; ++i) kept_x[0][i] = kept_x[1][i] = -INFINITY;
    kept_j[0] = kept_j[1] = 0u;
    float m = rt.z(first);
    for (int u = first_tile + 32 + rt.lane; u < end_tile; u += 32) m = fmaxf(m, rt.z(maxima, u));
    mx = warp_max(m);
    int count[2] = {0, 0};
    for (int u0 = first_tile; u0 < end_tile && mx != -INFINITY; u0 += 32) {
      const int u = u0 + rt.lane;
      const float zu = u0 == first_tile ? rt.z(first) : u < end_tile ? rt.z(maxima, u) : -INFINITY;
      unsigned near = __ballot_sync(0xffffffffu, zu - mx > -2.f);
      while (near) {  // kLoads tiles' reads in flight at once
        int c0[kLoads];
        float score[kLoads][2];
#pragma unroll
        for (int l = 0; l < kLoads; ++l) {
          c0[l] = -1;
          if (near == 0u) continue;
          c0[l] = (u0 + __ffs(near) - 1) * kDashTile + rt.lane;
          near &= near - 1;
#pragma unroll
          for (int odd = 0; odd < 2; ++odd)
            score[l][odd] = candidate(c0[l] + 32 * odd) ? row[c0[l] + 32 * odd] : -INFINITY;
        }
        // Scaled only here: with z = scale * score taken at each load, the compiler placed each
        // tile's multiply before the next tile's load, so every load waited for the one before
        // (ncu: 10% of the kernel's stall samples on the second to fourth tiles' multiplies);
        // loads first, 4.9 -> 4.3 ms at route_positions 1 / 75%, 1.61 -> 1.56 at 4 / 87.5%.
#pragma unroll
        for (int l = 0; l < kLoads; ++l)
          if (c0[l] >= 0)
#pragma unroll
            for (int odd = 0; odd < 2; ++odd) keep(odd, c0[l] + 32 * odd, rt.z(score[l][odd]) - mx, count[odd]);
      }
    }
    all_kept = !__any_sync(0xffffffffu, count[0] > kKept || count[1] > kKept);
  }
  // After scan().
  __device__ Entmax15Threshold threshold() const {
    if (mx == -INFINITY) return {mx, -1.f};
    if (!all_kept) return entmax15_threshold([&](int64_t c) { return rt.z(row, c); }, lo, hi);
    // As entmax15_tau_of's each_x: the kept entries, oldest first after the unused slots' zeros.
    return {mx, entmax15_tau_of([&](const auto& f) {
#pragma unroll
              for (int odd = 0; odd < 2; ++odd)
#pragma unroll
                for (int i = kKept - 1; i >= 0; --i) f(odd != 0, kept_x[odd][i]);
            })};
  }
  // After threshold(): f(c, p_c) over the lane's candidates that may have p > 0 (all of those
  // with it), p = [x - tau]_+^2.
  template <class F>
  __device__ void each_prob(float tau, const F& f) const {
    if (all_kept) {
#pragma unroll
      for (int odd = 0; odd < 2; ++odd)
#pragma unroll
        for (int i = 0; i < kKept; ++i)
          f(rt.lane + 32 * static_cast<int>(kept_j[odd] >> 8 * i & 0xffu), entmax15_p(kept_x[odd][i], tau));
    } else {
      for (int c = rt.lane; c < hi; c += 32)
        if (c >= lo) f(c, entmax15_p(0.5f * (rt.z(row, c) - mx), tau));
    }
  }
};

// One warp's ordered compaction (the rows' lists, the backward's routed entries): over i = 0
// .. n - 1 (lane l takes i = l, l + 32, ...), keep(i) picks entries and put(i, at) gets each
// kept one with its place among the kept, in order. Returns how many were kept, on every lane.
template <class Keep, class Put>
__device__ int64_t warp_compact(int64_t n, const Keep& keep, const Put& put) {
  const int lane = threadIdx.x & 31;
  int64_t kept = 0;
  for (int64_t i0 = 0; i0 < n; i0 += 32) {
    const int64_t i = i0 + lane;
    const bool is_kept = i < n && keep(i);
    const unsigned mask = __ballot_sync(0xffffffffu, is_kept);
    if (is_kept) put(i, kept + __popc(mask & ((1u << lane) - 1u)));
    kept += __popc(mask);
  }
  return kept;
}

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
  RowEntries row(rt);
  float first = row.first_max(0);
  const int rows = static_cast<int>(rt.entmax_rows());  // <= kDashMaxRows
  for (int k = 0; k < rows; ++k) {
    row.scan(k, first);
    if (k + 1 < rows) first = row.first_max(k + 1);
    const Entmax15Threshold t = row.threshold();
    if (rt.lane == 0) {
      thresholds[rt.threshold_index(k)] = t.max;
      thresholds[rt.threshold_index(k) + 1] = t.tau;
    }
    row.each_prob(t.tau, [&](int c, float pc) {
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
  // Each row's list length: its routing's entries (own <= n_seen). Counted here, not through
  // warp_compact: ef0cc9b did that (and moved threshold()'s if constexpr) and ran this kernel 5%
  // slower (tools/kernel_dev/NOTES.md).
  int64_t listed = 0;
  for (int64_t c0 = 0; c0 < rt.own; c0 += 32) {
    const int64_t c = c0 + rt.lane;
    listed += __popc(__ballot_sync(0xffffffffu, c < rt.own && rt.listed(c, pbar[c])));
  }
  if (rt.lane < rt.rows) counts[rt.r0 + rt.lane] = listed;
}

// dash_routing_tile_max: one warp per routing, its rows' tile maxima one tile at a time.
__global__ void __launch_bounds__(32 * kMaxWarps)
    routing_tile_max_kernel(DashRoutingArgs a, int64_t n_routings, float* tile_max) {
  const int64_t g = blockIdx.x * int64_t(kMaxWarps) + (threadIdx.x >> 5);
  if (g >= n_routings) return;
  const Routing rt(a, g);
  for (int64_t k = 0; k < rt.entmax_rows(); ++k) {
    const float* row = rt.scores(k);
    for (int64_t u = rt.first_tile; u < rt.end_tile; ++u) {
      float m = -INFINITY;
      for (int64_t c = u * kDashTile + rt.lane; c < (u + 1) * kDashTile; c += 32)
        if (rt.candidate(c)) m = fmaxf(m, row[c]);
      m = warp_max(m);
      if (rt.lane == 0) tile_max[rt.score_row(k) * a.tile_max_ld + u] = m;
    }
  }
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
  const int64_t at = row_ptr[r] - row_ptr[0];
  warp_compact(
      rt.own, [&](int64_t c) { return rt.listed(c, routing_pbar[c]); },
      [&](int64_t c, int64_t i) {
        const float p = routing_pbar[c];
        blocks[at + i] = static_cast<int32_t>(c);
        entries[at + i] = rt.candidate(c) ? (logf(p) - shift[g]) / a.sigma : 0.f;
        entry_pbar[at + i] = p;
      });
}

// The backward in two kernels. routing_grad_inputs_kernel, one warp per routing, turns the
// rows' entry gradients into each routing's routed entries alone (forced ones have d z = 0),
// compacted, with d loss / d p of each: through log pbar (and the normalized prior's mean)
// and the mean over the routing's rows. routing_grad_kernel, one routing per CTA, takes its
// entmax rows (k = 0 .. G R - 1, head k % G of position r0 + k / G) against those chunks only:
// entmax's Jacobian is zero off each row's support, and every support lies in the routing's
// list, so d z, d q and d kbar need only the routed chunks: no dense [G, n, n_seen] scores or
// gradient. The chunks go by in batches of kBatch entries, twice. Pass 1 recomputes z = scale
// q . kbar fp32-accurate the way the forward scored it (bf16 q: tensor cores on kbar's bf16
// parts; other q: fp32 on CUDA cores), s = sqrt p from the forward's thresholds (kept in the
// scratch) and each row's s . dp / sum s; pass 2 forms d z = s (dp - that) * scale and the two
// products d q += d z kbar, d kbar += d z^T q on TF32 tensor cores (10-bit mantissas, ~5e-4
// relative, as the ATen GEMMs these replace ran them; the gradients join the core's, whose
// products round to bf16). d q rows are this CTA's alone (plain stores); d kbar rows are
// shared with other routings (fp32 atomics). The q rows and each batch's inputs come by
// cp.async ahead of their use (a batch's kbar rows one step, its chunks and d p two), so the
// gathers overlap the math; the q rows (with batch 0's chunks) are the one wait of the CTA on
// them. Pass 2's s and the thresholds stay plain loads.
//
// z is recomputed, not the forward's bit for bit: p near the support's edge moves with z's
// last bits, which a gradient of O(1) per entry divided by pbar ~ 0 there would amplify
// without bound; through attention the entries' gradient scales with the chunk's attention
// mass, i.e. with pbar, and stays bounded (tests/gpu_dash_routing_test.cpp).
constexpr int kBatch = 32;
constexpr int kStages = 3;  // the batches' chunks and d p: two steps ahead of the one in use

// The scratch's parts (dash_routing_backward_scratch): per routing, from slot first / R on
// (first: its first row's first list entry; the routings before it all have R rows), its routed
// entries' chunk and d p, then between the passes each entmax row's s on them.
struct GradScratch {
  int32_t* count;  // [routings]: routed entries
  int32_t* chunk;  // [slots]
  float* dp;       // [slots]
  float* s;        // per routing [G R][its routed entries], from its first slot's s on
  GradScratch(const DashRoutingArgs& a, int64_t entries, float* scratch) {
    const int64_t slots = dash_routing_backward_slots(a, entries);
    count = reinterpret_cast<int32_t*>(scratch);
    chunk = count + dash_routings(a);
    dp = reinterpret_cast<float*>(chunk + slots);
    s = dp + slots;
  }
};

__global__ void __launch_bounds__(32 * kMaxWarps)
    routing_grad_inputs_kernel(DashRoutingArgs a, int64_t n_routings, const int64_t* row_ptr, const int32_t* blocks,
                               const float* entry_pbar, const float* d_entries, GradScratch sc) {
  const int64_t g = blockIdx.x * int64_t(kMaxWarps) + (threadIdx.x >> 5);
  if (g >= n_routings) return;
  const Routing rt(a, g);
  // The R rows share the routing, so their lists are the same chunks in the same order: entry
  // j's d prior is the sum of the rows' entry j.
  const int64_t base = row_ptr[0], first = row_ptr[rt.r0] - base, length = row_ptr[rt.r0 + 1] - row_ptr[rt.r0];
  auto d_prior = [&](int64_t j) {
    float sum = 0.f;
    for (int64_t i = 0; i < rt.rows; ++i) sum += d_entries[row_ptr[rt.r0 + i] - base + j];
    return sum / a.sigma;
  };
  // normalized: the routed entries' mean d prior, through the mean log pbar.
  float shift = 0.f;
  if (a.normalized) {
    float sum = 0.f, count = 0.f;
    for (int64_t j = rt.lane; j < length; j += 32)
      if (rt.candidate(blocks[first + j])) sum += d_prior(j), count += 1.f;
    shift = warp_sum(sum) / fmaxf(warp_sum(count), 1.f);
  }
  const float inv_count = 1.f / float(rt.entmax_rows());
  const int64_t slot0 = first / a.route_positions;
  const int64_t routed = warp_compact(
      length, [&](int64_t j) { return rt.candidate(blocks[first + j]); },
      [&](int64_t j, int64_t i) {
        sc.chunk[slot0 + i] = blocks[first + j];
        sc.dp[slot0 + i] = (d_prior(j) - shift) / entry_pbar[first + j] * inv_count;
      });
  if (rt.lane == 0) sc.count[g] = static_cast<int32_t>(routed);
}

// z of bf16 q comes from tensor cores (as the forward's scores do), other q types' from CUDA cores.
template <typename T>
constexpr bool kTensorZ = std::is_same_v<T, __nv_bfloat16>;

// Warps of routing_grad_kernel: one per 8 entmax rows; with bf16 q at 16 rows four, not two
// (pass 1's entries and pass 2's columns split further), which halves each warp's accumulators
// and doubles the warps an SM holds (the CTAs it holds are as many: shared memory limits them).
template <typename T, int kRows>
constexpr int kGradWarps = (kTensorZ<T> && kRows == 16) ? 4 : kRows / 8;
// Warps of a CTA that add a row's sums in pass 1: the bf16 path splits a batch's entries among
// them, the CUDA-core path gives each row to one.
template <typename T, int kRows>
constexpr int kGradSums = kTensorZ<T> ? kGradWarps<T, kRows> / (kRows / 16) : 1;

// kRows: the routing's entmax rows G R rounded up to 16, 32 or 64, so that small groups (G 16,
// R 1) do not pay for 64. Q: the q rows' type in shared memory, bf16 as given where z comes from
// tensor cores (its bits are TF32 already), else fp32. kPad: the q and kbar rows' padding in
// elements; 4 spreads the CUDA-core z's 16-byte reads of 8 rows over the banks, 8 the MMA
// fragments' reads (fp32: 4 rows x 8 columns, and 8 rows x 4 columns of float2; bf16 parts and
// q: ldmatrix's 8 rows of 16 bytes). kParts: kbar's bf16 parts that pass 1 reads (0: it reads
// kbar). kSums: the warps that add a row's sums in pass 1 (kGradSums).
template <typename Q, int D, int kRows, int kPad, int Parts, int Sums>
struct GradSmem {
  static constexpr int kParts = Parts, kSums = Sums;
  static constexpr int kLd = D + kPad;  // q and kbar row stride in elements (parts: bf16)
  static constexpr int kRowsFloats = kBatch * kLd, kDzFloats = kRows * kBatch;
  static constexpr int kPartsFloats = kParts * kBatch * kLd / 2;
  static constexpr int kStep = std::max(kPartsFloats, kRowsFloats + kDzFloats);
  Q q[kRows * kLd];  // the entmax rows' q, zero past G R
  // Step i's chunk summaries in kbar[i % 2], zero past the routed: in pass 1 their kParts parts
  // ([part][entry][kLd] bf16) where kParts > 0, else (and in pass 2) [entry][kLd] fp32, followed
  // in pass 2 by d z [row][entry] (dz_at): it fits in what the parts leave free.
  float kbar[2][kStep];
  float dp[kStages][kBatch];  // step i's d loss / d p in [i % kStages], zero past the routed
  int chunk[kStages][kBatch];  // and their chunks
  float max[kRows], tau[kRows], mean[kRows];
  float s_sum[kSums][kRows], s_dot[kSums][kRows];  // pass 1's sums over the entries, per adding warp
};
template <typename T, int D, int kRows>
using GradSmemOf = GradSmem<std::conditional_t<kTensorZ<T>, T, float>, D, kRows, kTensorZ<T> ? 8 : 4,
                            kTensorZ<T> && kRows >= 32 ? kDashScoreParts : 0, kGradSums<T, kRows>>;

// d z's (row k, entry e) in a step's kbar buffer past its rows: 32 floats a row, entries XOR-ed
// so that both MMAs' fragment reads hit 32 banks: d q's rows g and entries c (8 rows of distinct
// k % 8: bits 2-4 of the XOR differ), d kbar's rows 2 c (+ 1) and entries g (bits 3-4 differ).
__device__ __forceinline__ int dz_at(int k, int e) { return k * kBatch + (e ^ (8 * ((k >> 1) & 3) + 4 * (k & 1))); }

// CTAs of routing_grad_kernel per SM: as many as shared memory holds (228 KB an SM, 1 KB of it
// reserved per CTA), and registers are held to leave room for as many, up to 24 warps an SM
// (more held the d 64 kernels to 64 registers, spilling). The bf16 kernel at 64 rows (G 16 at
// route_positions 4) took 128 registers, two CTAs per SM; at 80 (a few spilled) it runs three.
template <typename T, int D, int kRows>
constexpr int kGradSmemCtas = (228 * 1024) / (sizeof(GradSmemOf<T, D, kRows>) + 1024);
template <typename T, int D, int kRows>
constexpr int kGradMinCtas = std::min(kGradSmemCtas<T, D, kRows>, 24 / kGradWarps<T, kRows>);
static_assert(kGradSmemCtas<__nv_bfloat16, 128, 64> >= 3, "three 64-row bf16 CTAs fit an SM");
static_assert(kGradSmemCtas<__nv_bfloat16, 128, 16> >= 5, "five 16-row bf16 CTAs fit an SM");

// x rounded to TF32 (10 mantissa bits), kept as an fp32; the MMA takes its bits as they are.
__device__ __forceinline__ float tf32_round(float x) {
  uint32_t r;
  asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(r) : "f"(x));
  return __uint_as_float(r);
}
// d += A (16 x 8, row-major fragment) B (8 x 8): mma.sync m16n8k8 on TF32, fp32 accumulators.
// Lane (g = lane / 4, c = lane % 4): a0 (g, c), a1 (g + 8, c), a2 (g, c + 4), a3 (g + 8, c + 4);
// b0 (k c, n g), b1 (k c + 4, n g); d0, d1 (g, 2c, 2c + 1), d2, d3 (g + 8, ...).
__device__ __forceinline__ void mma_tf32(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// x summed over the kLanes lanes (a power of two) that share lane / kLanes, in every one of them.
template <int kLanes>
__device__ __forceinline__ float lane_group_sum(float x) {
#pragma unroll
  for (int o = kLanes / 2; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

// at[0], at[1] = x, y in T, one store (at: aligned to two T).
template <typename T>
__device__ __forceinline__ void store_pair(T* at, float x, float y) {
  if constexpr (sizeof(T) == 4)
    *reinterpret_cast<float2*>(at) = make_float2(x, y);
  else
    *reinterpret_cast<uint32_t*>(at) = Elem<T>::pack(x, y);
}

// *at += v, atomically per element (one 16-byte reduction on Hopper). at: 16-byte aligned.
__device__ __forceinline__ void add_float4(float* at, float4 v) {
#if __CUDA_ARCH__ >= 900
  atomicAdd(reinterpret_cast<float4*>(at), v);
#else
  atomicAdd(at, v.x), atomicAdd(at + 1, v.y), atomicAdd(at + 2, v.z), atomicAdd(at + 3, v.w);
#endif
}

// Steps 0 .. batches - 1 are pass 1 over the batches, the next batches steps pass 2.
template <typename T, int D, int kRows>
__global__ void __launch_bounds__(32 * kGradWarps<T, kRows>, (kGradMinCtas<T, D, kRows>))
    routing_grad_kernel(DashRoutingArgs a, DashRoutingGrad gr, const float* thresholds, const int64_t* row_ptr,
                        GradScratch sc) {
  extern __shared__ float4 smem_raw[];
  using Smem = GradSmemOf<T, D, kRows>;
  Smem& sm = *reinterpret_cast<Smem*>(smem_raw);
  constexpr bool kPartsIn = Smem::kParts > 0;  // pass 1 gathers kbar's parts
  constexpr int kLd = Smem::kLd, kWarps = kGradWarps<T, kRows>, kThreads = 32 * kWarps;
  constexpr bool kWiden = sizeof(T) != sizeof(sm.q[0]);  // q comes as 16 bits, kept as fp32
  static_assert(!kWiden || kRows * D * sizeof(T) <= sizeof(sm.kbar[1]), "the raw q rows fit kbar[1]");
  const Routing rt(a, blockIdx.x);
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, c4 = lane & 3;
  const int K = static_cast<int>(rt.entmax_rows());
  auto q_row = [&](int k) { return (k % a.G) * gr.head_stride + (rt.r0 + k / a.G) * gr.row_stride; };
  const int64_t slot0 = (row_ptr[rt.r0] - row_ptr[0]) / a.route_positions;
  const int count = sc.count[blockIdx.x], batches = (count + kBatch - 1) / kBatch, steps = 2 * batches;
  float* s_routing = sc.s + slot0 * a.G * a.route_positions;  // [G R][count]

  auto fetch_chunks = [&](int i) {  // step i's chunks and d p
    if (i >= steps || tid >= 2 * kBatch) return;
    const int e = tid % kBatch;
    const int64_t j = int64_t(i % batches) * kBatch + e, at = slot0 + (j < count ? j : 0);
    if (tid < kBatch)
      cp_async_4(smem_addr(&sm.chunk[i % kStages][e]), sc.chunk + at, j < count ? 4 : 0);
    else
      cp_async_4(smem_addr(&sm.dp[i % kStages][e]), sc.dp + at, j < count ? 4 : 0);
  };
  auto fetch_kbar = [&](int i) {  // step i's chunk summaries; its chunks have landed
    if (i >= steps) return;
    const int b = i % batches;
    if (kPartsIn && i < batches) {  // pass 1: kbar's bf16 parts
      const auto* parts = static_cast<const __nv_bfloat16*>(gr.kbar_parts);
      auto* dst = reinterpret_cast<__nv_bfloat16*>(sm.kbar[i % 2]);
      for (int v = tid; v < Smem::kParts * kBatch * D / 8; v += kThreads) {
        const int part = v / (kBatch * D / 8), e = v / (D / 8) % kBatch, col = v % (D / 8) * 8;
        const bool valid = b * kBatch + e < count;
        const __nv_bfloat16* src =
            valid ? parts + (part * gr.parts_rows + sm.chunk[i % kStages][e]) * int64_t(D) + col : parts;
        cp_async_16(smem_addr(&dst[(part * kBatch + e) * kLd + col]), src, valid ? 16 : 0);
      }
      return;
    }
    for (int v = tid; v < kBatch * D / 4; v += kThreads) {
      const int e = v / (D / 4), col = v % (D / 4) * 4;
      const bool valid = b * kBatch + e < count;
      const float* src = valid ? gr.kbar + sm.chunk[i % kStages][e] * int64_t(D) + col : gr.kbar;
      cp_async_16(smem_addr(&sm.kbar[i % 2][e * kLd + col]), src, valid ? 16 : 0);
    }
  };
  // Each step begins with the data it reads landed for all threads and the last step's
  // readers done, then sets off the next step's copies.
  auto begin_step = [&](int i) {
    cp_async_wait_all();
    __syncthreads();
    fetch_kbar(i + 1);
    fetch_chunks(i + 2);
    cp_async_commit();
  };

  // q rows: kept as given straight into sm.q, widened ones raw into kbar[1] (free until step 1's
  // copy) and widened from there while step 0's kbar is on its way.
  const T* q = static_cast<const T*>(gr.q);
  constexpr int kPerRow = D * sizeof(T) / 16;  // 16-byte copies per q row
  for (int v = tid; v < kRows * kPerRow; v += kThreads) {
    const int k = v / kPerRow, col = v % kPerRow * (16 / sizeof(T));
    const uint32_t dst = kWiden ? smem_addr(sm.kbar[1]) + 16 * v : smem_addr(&sm.q[k * kLd + col]);
    cp_async_16(dst, k < K ? q + q_row(k) + col : q, k < K ? 16 : 0);
  }
  fetch_chunks(0);
  cp_async_commit();
  cp_async_wait_all();
  __syncthreads();
  fetch_kbar(0);
  fetch_chunks(1);
  cp_async_commit();
  if constexpr (kWiden) {
    for (int v = tid; v < kRows * kPerRow; v += kThreads) {  // 8 entries of a row each
      const uint4 raw = reinterpret_cast<const uint4*>(sm.kbar[1])[v];
      const float2 x0 = Elem<T>::unpack(raw.x), x1 = Elem<T>::unpack(raw.y), x2 = Elem<T>::unpack(raw.z),
                   x3 = Elem<T>::unpack(raw.w);
      float4* dst = reinterpret_cast<float4*>(&sm.q[v / kPerRow * kLd + v % kPerRow * 8]);
      dst[0] = make_float4(x0.x, x0.y, x1.x, x1.y);
      dst[1] = make_float4(x2.x, x2.y, x3.x, x3.y);
    }
  }
  if (tid < kRows) {
    sm.max[tid] = tid < K ? thresholds[rt.threshold_index(tid)] : 0.f;
    sm.tau[tid] = tid < K ? thresholds[rt.threshold_index(tid) + 1] : 0.f;
  }

  // Pass 1: z of batch i's entries, s = sqrt p of each, and each row's sums of s and s . dp.
  // take(i, dp, k, j, z): batch i's entry j (d p in dp[j]) for entmax row k, summed into the
  // thread's s_sum / s_dot.
  auto take = [&](int i, const float* dp, int k, int j, float z, float& s_sum, float& s_dot) {
    const int64_t at = int64_t(i) * kBatch + j;
    const bool valid = k < K && at < count;
    const float s = valid ? Entmax15Threshold{sm.max[k], sm.tau[k]}.sqrt_prob(__fmul_rn(a.scale, z)) : 0.f;
    s_sum += s;
    s_dot += s * dp[j];
    if (valid) s_routing[k * count + at] = s;
  };
  if constexpr (kTensorZ<T>) {
    // bf16 q: z as the forward's scores kernel forms it, q times kbar's three bf16 parts on
    // tensor cores, k-step by k-step, parts in order. Warp w: rows 16 (w / kSplits) .. + 15,
    // entries kEntries (w % kSplits) .. of each batch (16 or, at 16 rows, 8), fragments by
    // ldmatrix. With 32 or 64 rows the parts come from memory (split here, every row block's warp
    // would repeat the split: <64> 3.29 -> 3.14 ms at 64K / route_positions 4); with 16 the warps
    // split fp32 kbar per fragment, each entry once (the parts' 17 KB more of shared memory cost a
    // CTA per SM: 9.3 -> 11.9 ms at route_positions 1).
    constexpr int kSplits = Smem::kSums, kEntries = kBatch / kSplits, kTiles = kEntries / 8;
    static_assert(!kPartsIn || kTiles == 2, "a part's ldmatrix takes two n tiles");
    const int split = warp % kSplits, row0 = 16 * (warp / kSplits), entry0 = kEntries * split;
    // The lane's ldmatrix rows: of q (a0 .. a3), of a part's entries (b0, b1 of both n tiles).
    const uint32_t q_frag = smem_addr(&sm.q[(row0 + (lane & 15)) * kLd + (lane >> 4) * 8]);
    const int parts_frag = ((entry0 + (lane & 7) + (lane >> 4) * 8) * kLd + ((lane >> 3) & 1) * 8) * 2;  // bytes
    float s_sum[2] = {}, s_dot[2] = {};
    for (int i = 0; i < batches; ++i) {
      begin_step(i);
      float z[kTiles][4] = {};
#pragma unroll
      for (int ks = 0; ks < D / 16; ++ks) {
        uint32_t qa[4];
        ldmatrix_x4(qa, q_frag + ks * 16 * sizeof(T));
        if constexpr (kPartsIn) {
#pragma unroll
          for (int part = 0; part < kDashScoreParts; ++part) {
            uint32_t b[4];
            ldmatrix_x4(b, smem_addr(sm.kbar[i % 2]) + parts_frag + (part * kBatch * kLd + ks * 16) * 2);
            mma<T>(z[0], qa, b[0], b[1]);
            mma<T>(z[1], qa, b[2], b[3]);
          }
        } else {
#pragma unroll
          for (int nt = 0; nt < kTiles; ++nt) {
            const int at = (entry0 + 8 * nt + g) * kLd + ks * 16 + 2 * c4;  // the fragment's pair (b0; b1 at + 8)
            float2 lo = *reinterpret_cast<const float2*>(&sm.kbar[i % 2][at]),
                   hi = *reinterpret_cast<const float2*>(&sm.kbar[i % 2][at + 8]);
#pragma unroll
            for (int part = 0; part < kDashScoreParts; ++part) {  // each the rounding of what the earlier leave
              const uint32_t b0 = Elem<T>::pack(lo.x, lo.y), b1 = Elem<T>::pack(hi.x, hi.y);
              mma<T>(z[nt], qa, b0, b1);
              const float2 r0 = Elem<T>::unpack(b0), r1 = Elem<T>::unpack(b1);
              lo = make_float2(lo.x - r0.x, lo.y - r0.y);
              hi = make_float2(hi.x - r1.x, hi.y - r1.y);
            }
          }
        }
      }
#pragma unroll
      for (int nt = 0; nt < kTiles; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e)
          take(i, sm.dp[i % kStages], row0 + g + 8 * (e >> 1), entry0 + 8 * nt + 2 * c4 + (e & 1), z[nt][e],
               s_sum[e >> 1], s_dot[e >> 1]);
    }
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      s_sum[h] = lane_group_sum<4>(s_sum[h]);
      s_dot[h] = lane_group_sum<4>(s_dot[h]);
      if (c4 == 0) sm.s_sum[split][row0 + g + 8 * h] = s_sum[h], sm.s_dot[split][row0 + g + 8 * h] = s_dot[h];
    }
  } else {
    // Rows 4 rg .. 4 rg + 3 and entries eg, eg + 16 (a warp's kbar reads: 16 consecutive rows,
    // kLd apart, fill the 32 banks). z is one fma chain over d, as the fp32 GEMM that scores
    // these q types in the forward sums it: close to its bits, which the normalized prior's
    // gradient needs (gpu_dash_routing_test.cpp).
    static_assert(kThreads == 4 * kRows, "16 threads per 4 rows");
    const int rg = tid >> 4, eg = tid & 15;
    float s_sum[4] = {}, s_dot[4] = {};
    for (int i = 0; i < batches; ++i) {
      begin_step(i);
      const float* kbar = sm.kbar[i % 2];
      const float* dp = sm.dp[i % kStages];
      float z[4][2] = {};
      for (int c = 0; c < D; c += 4) {
        float4 kv[2], qv[4];
#pragma unroll
        for (int e = 0; e < 2; ++e) kv[e] = *reinterpret_cast<const float4*>(&kbar[(eg + 16 * e) * kLd + c]);
#pragma unroll
        for (int r = 0; r < 4; ++r) qv[r] = *reinterpret_cast<const float4*>(&sm.q[(4 * rg + r) * kLd + c]);
#pragma unroll
        for (int r = 0; r < 4; ++r)
#pragma unroll
          for (int e = 0; e < 2; ++e)
            z[r][e] = fmaf(qv[r].w, kv[e].w,
                           fmaf(qv[r].z, kv[e].z, fmaf(qv[r].y, kv[e].y, fmaf(qv[r].x, kv[e].x, z[r][e]))));
      }
#pragma unroll
      for (int r = 0; r < 4; ++r)
#pragma unroll
        for (int e = 0; e < 2; ++e) take(i, dp, 4 * rg + r, eg + 16 * e, z[r][e], s_sum[r], s_dot[r]);
    }
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      s_sum[r] = lane_group_sum<16>(s_sum[r]);
      s_dot[r] = lane_group_sum<16>(s_dot[r]);
      if (eg == 0) sm.s_sum[0][4 * rg + r] = s_sum[r], sm.s_dot[0][4 * rg + r] = s_dot[r];
    }
  }
  __syncthreads();
  if (tid < kRows) {  // the warps' sums in a fixed order: the same bits every run
    float sum = 0.f, dot = 0.f;
    for (int w = 0; w < Smem::kSums; ++w) sum += sm.s_sum[w][tid], dot += sm.s_dot[w][tid];
    sm.mean[tid] = sum > 0.f ? dot / sum : 0.f;
  }
  if constexpr (sizeof(T) == 4)  // 16-bit q is TF32 already (widened or not)
    for (int i = tid; i < kRows * D; i += kThreads) sm.q[i / D * kLd + i % D] = tf32_round(sm.q[i / D * kLd + i % D]);

  // Pass 2: d z into shared memory, then on tensor cores d q (warp: 16 rows x D / kDqSplits
  // columns, kept over the batches) and d kbar (warp: 16 entries x D / kDkSplits columns, added
  // per batch). The MMAs' operands are rounded to TF32 once, where they are stored.
  constexpr int kRowBlocks = kRows / 16, kDqSplits = kWarps / kRowBlocks, kDkSplits = kWarps / 2;
  constexpr int kDqTiles = D / 8 / kDqSplits, kDkTiles = D / 8 / kDkSplits;
  const int dq_row0 = 16 * (warp % kRowBlocks), dq_col0 = (warp / kRowBlocks) * (D / kDqSplits);
  const int dk_entry0 = 16 * (warp & 1), dk_col0 = (warp >> 1) * (D / kDkSplits);
  auto bits = [](float x) { return __float_as_uint(x); };
  float dq[kDqTiles][4] = {};
  for (int i = batches; i < steps; ++i) {
    begin_step(i);  // its barrier also orders pass 1's means and s before their reads
    float* kbar = sm.kbar[i % 2];
    float* dz = kbar + Smem::kRowsFloats;
    const float* dp = sm.dp[i % kStages];
    const int* chunk = sm.chunk[i % kStages];
    const int64_t j0 = int64_t(i - batches) * kBatch;
    static_assert(kBatch == 32, "a warp takes one row's batch of d z");
    for (int k = warp; k < kRows; k += kWarps) {
      const int64_t j = j0 + lane;
      const float value = k < K && j < count ? s_routing[k * count + j] * (dp[lane] - sm.mean[k]) * a.scale : 0.f;
      dz[dz_at(k, lane)] = tf32_round(value);
    }
    for (int v = tid; v < kBatch * D / 4; v += kThreads) {
      float4& x = *reinterpret_cast<float4*>(&kbar[v / (D / 4) * kLd + v % (D / 4) * 4]);
      x = make_float4(tf32_round(x.x), tf32_round(x.y), tf32_round(x.z), tf32_round(x.w));
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kBatch; kk += 8) {  // d q += d z [rows x entries] kbar [entries x D]
      const uint32_t af[4] = {
          bits(dz[dz_at(dq_row0 + g, kk + c4)]), bits(dz[dz_at(dq_row0 + g + 8, kk + c4)]),
          bits(dz[dz_at(dq_row0 + g, kk + c4 + 4)]), bits(dz[dz_at(dq_row0 + g + 8, kk + c4 + 4)])};
#pragma unroll
      for (int nt = 0; nt < kDqTiles; ++nt) {
        const int col = dq_col0 + nt * 8 + g;
        mma_tf32(dq[nt], af, bits(kbar[(kk + c4) * kLd + col]), bits(kbar[(kk + c4 + 4) * kLd + col]));
      }
    }
    // d kbar = d z^T [entries x rows] q [rows x D]. The MMA's k slots c and c + 4 take rows 2 c
    // and 2 c + 1 of each 8 (the sum's order is free), so that one ldmatrix .trans register holds
    // both of a lane's bf16 q elements: one ldmatrix per k step and 4 (or 2) n tiles.
    constexpr int kTrans = kDkTiles % 4 == 0 ? 4 : 2;
    float dk[kDkTiles][4] = {};
#pragma unroll
    for (int kk = 0; kk < kRows; kk += 8) {
      const int r = kk + 2 * c4;
      const uint32_t af[4] = {bits(dz[dz_at(r, dk_entry0 + g)]), bits(dz[dz_at(r, dk_entry0 + g + 8)]),
                              bits(dz[dz_at(r + 1, dk_entry0 + g)]), bits(dz[dz_at(r + 1, dk_entry0 + g + 8)])};
#pragma unroll
      for (int nt = 0; nt < kDkTiles; nt += kTrans) {
        uint32_t b[kTrans][2];
        if constexpr (kTensorZ<T>) {  // q in bf16
          uint32_t pairs[kTrans];  // tile nt + t: rows r, r + 1 of column g
          const uint32_t at = smem_addr(&sm.q[(kk + (lane & 7)) * kLd + dk_col0 + (nt + (lane >> 3) % kTrans) * 8]);
          if constexpr (kTrans == 4)
            ldmatrix_x4_trans(pairs, at);
          else
            ldmatrix_x2_trans(pairs, at);
#pragma unroll
          for (int t = 0; t < kTrans; ++t) b[t][0] = pairs[t] << 16, b[t][1] = pairs[t] & 0xffff0000u;
        } else {
#pragma unroll
          for (int t = 0; t < kTrans; ++t) {
            const float* at = &sm.q[r * kLd + dk_col0 + (nt + t) * 8 + g];
            b[t][0] = bits(at[0]), b[t][1] = bits(at[kLd]);
          }
        }
#pragma unroll
        for (int t = 0; t < kTrans; ++t) mma_tf32(dk[nt + t], af, b[t][0], b[t][1]);
      }
    }
    // Lanes c4 and c4 ^ 1 trade halves: the even one adds entry g's 4 columns from 2 c4 on, the
    // odd one entry g + 8's, one 16-byte atomic each.
    const bool odd = c4 & 1;
    const int e = dk_entry0 + g + (odd ? 8 : 0);
    float* out = gr.dkbar + chunk[e] * int64_t(D) + dk_col0 + 2 * (c4 & 2);
#pragma unroll
    for (int nt = 0; nt < kDkTiles; ++nt) {
      const float x = __shfl_xor_sync(0xffffffffu, odd ? dk[nt][0] : dk[nt][2], 1);
      const float y = __shfl_xor_sync(0xffffffffu, odd ? dk[nt][1] : dk[nt][3], 1);
      const float4 v = odd ? make_float4(x, y, dk[nt][2], dk[nt][3]) : make_float4(dk[nt][0], dk[nt][1], x, y);
      if (j0 + e < count) add_float4(out + nt * 8, v);
    }
  }
  T* out = static_cast<T*>(gr.dq);
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int k = dq_row0 + g + 8 * h;
    if (k >= K) continue;
#pragma unroll
    for (int nt = 0; nt < kDqTiles; ++nt)
      store_pair(out + q_row(k) + dq_col0 + nt * 8 + 2 * c4, dq[nt][2 * h], dq[nt][2 * h + 1]);
  }
}

bool shape_ok(const DashRoutingArgs& a) {
  return a.G >= 1 && a.route_positions >= 1 && a.scale > 0.f && a.G * a.route_positions <= kDashMaxRows &&
         a.chunk > 0 && a.chunk % a.route_positions == 0 && a.t0 % a.route_positions == 0 && a.n_seen >= 0 &&
         (a.t0 + a.n - 1) / a.chunk <= a.n_seen && a.n_seen <= kDashMaxSeen && dash_routings(a) < (int64_t(1) << 31);
}

bool tiles_ok(const DashRoutingArgs& a) {
  return a.scores_ld >= a.n_seen && a.tile_max_ld >= (a.n_seen + kDashTile - 1) / kDashTile;
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
    blocks = static_cast<unsigned>((dash_routings(a) + warps - 1) / warps);
  }
};

template <class Kernel, class... Args>
int launch_routing(Kernel kernel, const DashRoutingArgs& a, cudaStream_t stream, Args... args) {
  if (const cudaError_t e =
          cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(kSmemBudget));
      e != cudaSuccess)
    return e;
  const RoutingLaunch l(a);
  kernel<<<l.blocks, 32 * l.warps, l.smem, stream>>>(a, dash_routings(a), args...);
  return cudaGetLastError();
}

template <typename T, int D, int kRows>
int launch_grad(const DashRoutingArgs& a, const DashRoutingGrad& gr, const float* thresholds, const int64_t* row_ptr,
                const GradScratch& sc, cudaStream_t stream) {
  auto kernel = routing_grad_kernel<T, D, kRows>;
  constexpr int kSmem = sizeof(GradSmemOf<T, D, kRows>);
  if (const cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem);
      e != cudaSuccess)
    return e;
  kernel<<<static_cast<unsigned>(dash_routings(a)), 32 * kGradWarps<T, kRows>, kSmem, stream>>>(a, gr, thresholds,
                                                                                                row_ptr, sc);
  return cudaGetLastError();
}

template <typename T, int D>
int launch_grad(const DashRoutingArgs& a, const DashRoutingGrad& gr, const float* thresholds, const int64_t* row_ptr,
                const GradScratch& sc, cudaStream_t stream) {
  const int64_t rows = a.G * a.route_positions;
  if (rows <= 16) return launch_grad<T, D, 16>(a, gr, thresholds, row_ptr, sc, stream);
  if (rows <= 32) return launch_grad<T, D, 32>(a, gr, thresholds, row_ptr, sc, stream);
  return launch_grad<T, D, 64>(a, gr, thresholds, row_ptr, sc, stream);
}

template <typename T>
int launch_grad(const DashRoutingArgs& a, const DashRoutingGrad& gr, const float* thresholds, const int64_t* row_ptr,
                const GradScratch& sc, cudaStream_t stream) {
  return gr.d == 64 ? launch_grad<T, 64>(a, gr, thresholds, row_ptr, sc, stream)
                    : launch_grad<T, 128>(a, gr, thresholds, row_ptr, sc, stream);
}

// cp.async copies q, kbar and parts rows 16 bytes at a time; d kbar takes 16-byte atomics, d q
// pairs.
bool rows_aligned(const DashRoutingGrad& gr) {
  const int64_t bytes = gr.dtype == DashQType::kF32 ? 4 : 2;
  return reinterpret_cast<uintptr_t>(gr.q) % 16 == 0 && gr.head_stride * bytes % 16 == 0 &&
         gr.row_stride * bytes % 16 == 0 && reinterpret_cast<uintptr_t>(gr.kbar) % 16 == 0 &&
         reinterpret_cast<uintptr_t>(gr.dkbar) % 16 == 0 && reinterpret_cast<uintptr_t>(gr.dq) % 16 == 0 &&
         reinterpret_cast<uintptr_t>(gr.kbar_parts) % 16 == 0;
}

}  // namespace

int dash_routing_tile_max(const DashRoutingArgs& a, float* tile_max, cudaStream_t stream) {
  if (!shape_ok(a) || !tiles_ok(a)) return kBsaBadShape;
  if (a.n == 0) return 0;
  routing_tile_max_kernel<<<static_cast<unsigned>((dash_routings(a) + kMaxWarps - 1) / kMaxWarps), 32 * kMaxWarps, 0,
                            stream>>>(a, dash_routings(a), tile_max);
  return cudaGetLastError();
}

int dash_routing_prior(const DashRoutingArgs& a, float* pbar, float* shift, float* thresholds, int64_t* counts,
                       cudaStream_t stream) {
  if (!shape_ok(a) || !tiles_ok(a)) return kBsaBadShape;
  if (a.n == 0) return 0;
  return launch_routing(routing_bias_kernel, a, stream, pbar, shift, thresholds, counts);
}

int dash_routing_lists(const DashRoutingArgs& a, const float* pbar, const float* shift, const int64_t* row_ptr,
                       int32_t* blocks, float* entries, float* entry_pbar, cudaStream_t stream) {
  if (!shape_ok(a)) return kBsaBadShape;
  if (a.n == 0) return 0;
  routing_lists_kernel<<<static_cast<unsigned>((a.n + kMaxWarps - 1) / kMaxWarps), 32 * kMaxWarps, 0, stream>>>(
      a, pbar, shift, row_ptr, blocks, entries, entry_pbar);
  return cudaGetLastError();
}

int dash_routing_backward(const DashRoutingArgs& a, const DashRoutingGrad& gr, const float* thresholds,
                          const int64_t* row_ptr, const int32_t* blocks, const float* entry_pbar,
                          const float* d_entries, int64_t entries, float* scratch, cudaStream_t stream) {
  if (!shape_ok(a) || (gr.d != 64 && gr.d != 128) || !rows_aligned(gr) ||
      (gr.dtype == DashQType::kBf16 && (gr.kbar_parts == nullptr || gr.parts_rows < a.n_seen)))
    return kBsaBadShape;
  if (a.n == 0) return 0;
  const GradScratch sc(a, entries, scratch);
  routing_grad_inputs_kernel<<<static_cast<unsigned>((dash_routings(a) + kMaxWarps - 1) / kMaxWarps), 32 * kMaxWarps, 0,
                               stream>>>(a, dash_routings(a), row_ptr, blocks, entry_pbar, d_entries, sc);
  if (const cudaError_t e = cudaGetLastError(); e != cudaSuccess) return e;
  switch (gr.dtype) {
    case DashQType::kBf16:
      return launch_grad<__nv_bfloat16>(a, gr, thresholds, row_ptr, sc, stream);
    case DashQType::kF16:
      return launch_grad<__half>(a, gr, thresholds, row_ptr, sc, stream);
    case DashQType::kF32:
      return launch_grad<float>(a, gr, thresholds, row_ptr, sc, stream);
  }
  return kBsaBadShape;
}

}  // namespace st::kernels
