// DashAttention's routing (DESIGN §2.2, step 2) after the score GEMM, fused: alpha = 1.5
// entmax per query head over its row's candidate chunks, the mean over the KV group's heads
// (and over route_positions consecutive positions), and the log prior's shift, in one kernel;
// the rows' block lists with their bias from that in a second (no host round trip but the
// lists' total size, and no dense [n, n_chunks] bias in between); the backward (the list
// entries' gradient through log pbar, the group mean and entmax's Jacobian to z, and on to q
// and the chunk summaries) in a third, which takes what the forward kept (each entmax row's
// threshold, 8 bytes, and each list entry's pbar), so it neither runs Newton's method again
// nor sums the group's probabilities, and reads only the listed chunks: entmax's Jacobian is
// zero off the support, so no dense scores or score gradient exist in the backward. In the
// forward a warp reads of each row only the 64-chunk tiles whose max comes within 2 of the row's
// (the scores kernel writes those maxima, or dash_routing_tile_max): the rest add exact zeros to
// entmax's sums. Plain C++ launchers (raw device pointers, a stream);
// src/attention/cuda/dash_routing.h wraps them for LibTorch.
#pragma once
#include <cstdint>

#include <cuda_runtime_api.h>

#include "block_sparse_attention.h"  // kBsaBadShape

namespace st::kernels {

constexpr int kDashMaxRows = 64;   // entmax rows per routing: group heads x route_positions
constexpr int64_t kDashMaxSeen = 6144;  // chunks a row may route among (T <= 384K at chunk 64)
constexpr int kDashTile = 64;           // chunks per tile of the scores' row maxima

// The routing candidates of query position t: chunks sink <= c < dash_candidates_end(t, ..).
__host__ __device__ inline int64_t dash_candidates_end(int64_t t, int64_t chunk, int64_t sink, int64_t local) {
  const int64_t end = t / chunk - local;
  return end < sink ? sink : end;
}

struct DashRoutingArgs {
  // [G, n, n_seen] fp32: q . kbar for query positions t0 .. t0 + n - 1 of the G heads of one KV
  // group against chunks 0 .. n_seen - 1 (n_seen covers every row's past complete chunks).
  const float* scores;
  int64_t scores_ld;  // the row stride of scores, >= n_seen
  // [G, n, tile_max_ld] fp32: each score row's max over its candidates in chunks 64 u .. 64 u + 63
  // (-inf where it has none), for the tiles u that hold candidates; tile_max_ld >= ceil(n_seen / 64).
  const float* tile_max;
  int64_t tile_max_ld;
  int64_t G, n, n_seen, t0;
  int64_t chunk, sink_chunks, local_chunks;  // row t routes among chunks sink <= c < t / chunk - local
  int64_t route_positions;                   // R: rows t0 + R i .. share one pbar (R divides chunk and t0)
  float scale;                               // entmax's input z = scale * scores; > 0
  float sigma;                               // bias = prior / sigma
  bool normalized;                           // prior = log pbar - mean of the row's routed log pbar
};

// The score rows' tile maxima (DashRoutingArgs::tile_max, rows a.tile_max_ld apart) from
// a.scores, for scores that did not come from kernels/dash_scores.h (it writes them itself).
int dash_routing_tile_max(const DashRoutingArgs& a, float* tile_max, cudaStream_t stream);

// From the scores and their tile maxima: pbar [ceil(n / R), n_seen]: each routing's mean
// probabilities. shift [ceil(n / R)]: the normalized prior's mean routed log pbar (0 otherwise).
// thresholds [G, n, 2]: each entmax row's max and tau, for the backward. counts [n]: each row's
// list length, the chunks before its own that it reads (forced sink/local ones, routed ones with
// pbar > 0).
int dash_routing_prior(const DashRoutingArgs& a, float* pbar, float* shift, float* thresholds, int64_t* counts,
                       cudaStream_t stream);

// The rows' lists (block_sparse_dispatch.h's BlockRows, for these n rows) from that: row r's
// chunks before its own, ascending, at blocks / entries[row_ptr[r] - row_ptr[0] ..] with their
// bias (dash.h's chunk_bias: 0 on forced chunks, (log pbar - shift) / sigma on routed ones),
// and their pbar at entry_pbar (for the backward); row_ptr [n + 1] is the running sum of counts.
int dash_routing_lists(const DashRoutingArgs& a, const float* pbar, const float* shift, const int64_t* row_ptr,
                       int32_t* blocks, float* entries, float* entry_pbar, cudaStream_t stream);

enum class DashQType { kBf16, kF16, kF32 };

// The backward's tensors besides the lists: q in, d q out (both [G, n, d] at the same strides),
// the chunk summaries and their gradient (fp32 [n_seen, d], contiguous), and for bf16 q the
// summaries' three bf16 parts as the forward's scores kernel takes them (dash_scores.h:
// [3, parts_rows >= n_seen, d], kbar = hi + mid + lo), on which the backward recomputes z.
struct DashRoutingGrad {
  const void* q;
  void* dq;  // written, every element of the n rows
  int64_t head_stride, row_stride, d;
  DashQType dtype;
  const float* kbar;
  float* dkbar;  // added to (atomics)
  const void* kbar_parts;  // bf16 q only
  int64_t parts_rows;
};

// The backward from the gradient of the rows' list entries (d_entries, laid out as
// dash_routing_lists writes them; entries at bias 0 carry none) through log pbar, the group
// mean and entmax's Jacobian to z = scale q . kbar, and on to d q (written) and d kbar (added),
// with the forward's thresholds and entry_pbar. a.scores is not read: z is recomputed on the
// listed chunks alone. entries: the tile's list entries (row_ptr[n] - row_ptr[0]); scratch:
// dash_routing_backward_scratch(a, entries) floats. q, its strides and the parts 16-byte
// aligned. All three return 0, a cudaError_t, or kBsaBadShape beyond kDashMaxRows /
// kDashMaxSeen (d 64 or 128 here).
int dash_routing_backward(const DashRoutingArgs& a, const DashRoutingGrad& gr, const float* thresholds,
                          const int64_t* row_ptr, const int32_t* blocks, const float* entry_pbar,
                          const float* d_entries, int64_t entries, float* scratch, cudaStream_t stream);

inline int64_t dash_routings(const DashRoutingArgs& a) { return (a.n + a.route_positions - 1) / a.route_positions; }
// Per-routing slots for a tile of m entries: m / R bounds the full routings' lists, n_seen a
// last one of fewer rows.
inline int64_t dash_routing_backward_slots(const DashRoutingArgs& a, int64_t m) {
  return m / a.route_positions + a.n_seen;
}
// The scratch dash_routing_backward needs, in floats: a routed count per routing; per slot a
// chunk, a d p and each entmax row's s.
inline int64_t dash_routing_backward_scratch(const DashRoutingArgs& a, int64_t m) {
  return dash_routings(a) + dash_routing_backward_slots(a, m) * (2 + a.G * a.route_positions);
}

}  // namespace st::kernels
