// LibTorch face of DashAttention's fused routing kernels (kernels/dash_route.h), for one
// routing tile: query rows t0 .. t0 + n of one KV group. Compiled only with SPARSETRAIN_CUDA.
#pragma once
#ifdef SPARSETRAIN_CUDA
#include <torch/types.h>

#include "config/recipe.h"
#include "dash_route.h"  // DashQType

namespace st::cuda {

// Whether the kernels take the routing of these queries q [B, Hq, T, d] in KV groups of
// `group` heads: alpha = 1.5, CUDA, scores in fp32 (q in any type but fp64), group times
// route_positions <= 64, at most 6144 complete chunks (T <= 384K at chunk 64).
bool dash_routing_runs(const DashConfig& cfg, const torch::Tensor& q, int64_t group);

// The Dash kernels' element type of t (bf16, fp16 or fp32); throws "WHAT must be ..." for others.
kernels::DashQType dash_q_type(const torch::Tensor& t, const char* what);

// Whether dash_scores takes these query rows: bf16 CUDA, head dim 64 or 128, an sm_90 device.
bool dash_scores_run(const torch::Tensor& q_rows);

// kbar [..., n, d] fp32 -> [..., 3, n, d] bf16: dash_scores's operand (kbar = hi + mid + lo,
// rounding_parts.h), made once per forward for all of a sequence's tiles.
torch::Tensor dash_score_parts(const torch::Tensor& kbar);

// A routing tile's scores [G, n, n_seen] fp32 (q . kbar, before the temperature) and their
// tile maxima [G, n, ceil(n_seen / 64)]: each row's max over its routing candidates in each 64
// chunks (kernels/dash_route.h's DashRoutingArgs::tile_max), undefined where the scores did not
// come from dash_scores (dash_routing_prior then finds them).
struct RoutingScores {
  torch::Tensor scores, tile_max;
};

// q_rows [1, G, n, d] bf16 (rows t0 .. t0 + n of one KV group, a view with unit stride over d)
// and kbar_parts [3, rows, d] (dash_score_parts of the group's chunk summaries, rows >= n_seen)
// -> scores = q . kbar in fp32 accuracy on tensor cores (kernels/dash_scores.h) with their tile
// maxima; entries past a query tile's last own chunk are unspecified (no routing reads them).
RoutingScores dash_scores(const torch::Tensor& q_rows, const torch::Tensor& kbar_parts, const DashConfig& cfg,
                          int64_t n_seen, int64_t t0);

// A routing tile's entmax and prior, the first of the fused routing's two kernels: its scores
// (n_seen as DashAttention's tile routing; t0 a multiple of route_positions; scale > 0) -> each
// routing's mean probabilities and prior shift (kept for dash_routing_lists), with each entmax
// row's threshold (for the backward) written into thresholds [G, n, 2] fp32 and each row's list
// length into counts [n] int64.
// The lists' sizes stay on the device: the caller sums many tiles' before one host round trip.
struct RoutingPrior {
  torch::Tensor pbar, shift;
  int64_t G, n, t0;
  double scale;  // z = scale * scores
};
RoutingPrior dash_routing_prior(const RoutingScores& scores, const DashConfig& cfg, double scale, int64_t t0,
                                const torch::Tensor& thresholds, const torch::Tensor& counts);

// The second: the tile's lists (block_sparse_dispatch.h's BlockRows for its n rows) from its
// prior. row_ptr [n + 1]: where each row's entries start in the lists these rows are part of
// (the running sum of counts); blocks (int32: each row's chunks before its own, ascending),
// entries (fp32: their bias, dash.h's chunk_bias) and entry_pbar (fp32: each entry's pbar, the
// group's mean probability, for the backward) receive this tile's entries, from row_ptr[0] on.
void dash_routing_lists(const RoutingPrior& prior, const DashConfig& cfg, const torch::Tensor& row_ptr,
                        const torch::Tensor& blocks, const torch::Tensor& entries, const torch::Tensor& entry_pbar);

// One routing tile's backward (kernels/dash_route.h): the gradient of its entries -> d q rows,
// written into dq_rows (same shape, type and strides as q_rows [1, G, n, d], the tile's rows of
// one KV group), and d kbar, added into dkbar (fp32 [n_seen, d] like kbar: the group's chunk
// summaries that the tile's rows may route to, as in the forward), with the forward's
// thresholds and entry_pbar. row_ptr [n + 1]: where each row's entries start in the lists these
// rows are part of; blocks, entry_pbar and d_entries: this tile's entries (from row_ptr[0] on).
// kbar_parts: for bf16 q, dash_score_parts of the group's summaries ([3, rows >= n_seen, d]).
void dash_routing_backward(const torch::Tensor& q_rows, const torch::Tensor& kbar, const torch::Tensor& kbar_parts,
                           const torch::Tensor& thresholds, const torch::Tensor& row_ptr, const torch::Tensor& blocks,
                           const torch::Tensor& entry_pbar, const torch::Tensor& d_entries, const DashConfig& cfg,
                           double scale, int64_t t0, const torch::Tensor& dq_rows, const torch::Tensor& dkbar);

}  // namespace st::cuda
#endif  // SPARSETRAIN_CUDA
