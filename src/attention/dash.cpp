#include "attention/dash.h"

#include <cmath>
#include <limits>

#include "attention/block_sparse.h"
#include "attention/block_sparse_dispatch.h"
#include "attention/entmax.h"

namespace st {

using torch::Tensor;

DashAttention::DashAttention(const ModelConfig& cfg)
    : cfg_(cfg.attention.dash), impl_(cfg.attention.impl), sparsity_offset_(cfg.attention.sparsity_offset) {
  // Zero makes every chunk summary the plain mean of its keys (DESIGN §2.2): a neutral start
  // for continual pretraining, and the pooling query still gets a gradient there (the
  // derivative of a softmax-weighted mean at uniform weights is the keys' covariance).
  pool_query = register_parameter("pool_query", torch::zeros({cfg.n_kv_heads, cfg.head_dim_or_default()}));
}

Tensor DashAttention::chunk_summaries(const Tensor& k) const {
  const int64_t B = k.size(0), H = k.size(1), d = k.size(3), C = cfg_.chunk, n = k.size(2) / C;
  auto chunks = k.narrow(2, 0, n * C).view({B, H, n, C, d});
  auto h = pool_query.to(k.scalar_type()).view({1, H, 1, 1, d});
  auto weights = torch::softmax((chunks * h).sum(-1) / std::sqrt(double(d)), -1);  // [B, H, n, C]
  return (weights.unsqueeze(-1) * chunks).sum(3);
}

Tensor DashAttention::chunk_bias(const Tensor& q, const Tensor& k) const {
  const int64_t B = q.size(0), Hq = q.size(1), T = q.size(2), d = q.size(3), Hkv = k.size(1);
  const int64_t C = cfg_.chunk, n_full = T / C, n_chunks = (T + C - 1) / C;
  const double inf = std::numeric_limits<double>::infinity();
  const auto dtype = reference_dtype(q);
  const auto ints = torch::TensorOptions().dtype(torch::kInt64).device(q.device());

  auto own = torch::arange(T, ints).div(C, "floor").view({T, 1});
  auto c = torch::arange(n_chunks, ints).view({1, n_chunks});
  // Forced sink and local chunks are read like the diagonal chunk, with b = 0, and left out
  // of the routing: entmax spends its mass only on the chunks it decides about, and a forced
  // chunk's bias does not jump when the router drops it from its support.
  auto forced = (c < own) & ((c < cfg_.sink_chunks) | (c >= own - cfg_.local_chunks));
  auto always = forced | (c == own);
  // Routing candidates: complete chunks strictly before the query's own, not already forced.
  auto candidate = ((c < own) & ~forced).narrow(1, 0, n_full);

  // z = s (q . kbar) / sqrt(d) per query head, alpha-entmax over the candidates.
  auto kbar = chunk_summaries(k.to(dtype));
  auto q_groups = q.to(dtype).view({B, Hkv, Hq / Hkv, T, d});
  auto z = torch::matmul(q_groups, kbar.unsqueeze(2).transpose(-1, -2)) * (cfg_.temperature / std::sqrt(double(d)));
  auto p = entmax(z.masked_fill(~candidate, -inf), cfg_.alpha, -1);
  // GQA: the group reads the union of its heads' supports, weighted by their mean.
  auto pbar = p.mean(2);  // [B, Hkv, T, n_full]
  auto routed = pbar > 0;
  auto log_p = torch::log(torch::where(routed, pbar, torch::ones_like(pbar)));  // 0 off the support
  auto prior = log_p;
  if (cfg_.prior == "normalized") {
    // Subtract the mean log prior of the row's routed chunks (the log of their geometric
    // mean g), so the diagonal chunk at b = 0 sits in the middle of what was routed.
    auto count = routed.sum(-1, /*keepdim=*/true).clamp_min(1);
    prior = log_p - log_p.sum(-1, /*keepdim=*/true) / count;
  }
  auto bias = torch::where(routed, prior / cfg_.sigma, -inf);
  bias = torch::constant_pad_nd(bias, {0, n_chunks - n_full}, -inf);
  return torch::where(always, torch::zeros_like(bias), bias);
}

Tensor DashAttention::forward(const AttentionInputs& in) {
  auto bias = chunk_bias(in.q, in.k);
  if (record_stats) {
    torch::NoGradGuard no_grad;
    const int64_t B = in.q.size(0), Hq = in.q.size(1), T = in.q.size(2);
    stats = {attended_pairs(torch::isfinite(bias), cfg_.chunk, 0, sparsity_offset_, Hq / in.k.size(1)),
             B * Hq * causal_pairs(T, sparsity_offset_)};
  }
  // The diagonal chunk is always read at b = 0, as the kernels do: with C = 64 they run it.
  // `auto` stays on the reference for now: on an H200 the kernel's bf16 d(bias), divided by
  // small routing weights on its way through log(pbar), put dq/dk/pool_query up to 0.6
  // (relative) off the reference under sparse routing (tests/gpu_variants_test.cpp).
  // `impl: cuda` still runs the kernel (forward and dv match to 2e-3).
  return attend_blocks(in.q, in.k, in.v, bias, cfg_.chunk, /*window=*/0, impl_ == "auto" ? "reference" : impl_);
}

}  // namespace st
