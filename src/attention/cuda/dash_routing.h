// LibTorch face of DashAttention's fused routing kernels (kernels/dash_route.h), for one
// routing tile: query rows t0 .. t0 + n of one KV group. Compiled only with SPARSETRAIN_CUDA.
#pragma once
#ifdef SPARSETRAIN_CUDA
#include <torch/types.h>

#include "config/recipe.h"

namespace st::cuda {

// Whether the kernels take the routing of these queries q [B, Hq, T, d] in KV groups of
// `group` heads: alpha = 1.5, CUDA, scores in fp32 (q in any type but fp64), group times
// route_positions <= 64, at most 6144 complete chunks (T <= 384K at chunk 64).
bool dash_routing_runs(const DashConfig& cfg, const torch::Tensor& q, int64_t group);

// scores [G, n, n_seen] fp32 (q . kbar, before the temperature; n_seen as DashAttention's
// tile routing; t0 a multiple of route_positions) -> the rows' bias [n, n_chunks] (dash.h's
// chunk_bias, rows t0 .. t0 + n).
torch::Tensor dash_routing_bias(const torch::Tensor& scores, const DashConfig& cfg, double scale, int64_t t0,
                                int64_t n_chunks);

// d_bias [n, n_chunks] -> d scores [G, n, n_seen].
torch::Tensor dash_routing_backward(const torch::Tensor& scores, const torch::Tensor& d_bias, const DashConfig& cfg,
                                    double scale, int64_t t0);

}  // namespace st::cuda
#endif  // SPARSETRAIN_CUDA
