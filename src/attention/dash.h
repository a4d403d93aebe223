// DashAttention (DESIGN §2.2): differentiable adaptive sparse hierarchical attention.
// Chunk summaries from a learned pooling query, alpha-entmax routing over past chunks, and a
// softmax over the routed chunks biased by the log routing prior, differentiable end to end.
#pragma once
#include "attention/block_sparse_dispatch.h"
#include "model/attention.h"

namespace st {

class DashAttention : public AttentionVariant {
 public:
  explicit DashAttention(const ModelConfig& cfg);
  torch::Tensor forward(const AttentionInputs& in) override;

  // kbar [B, Hkv, T / C, d]: per complete chunk, the keys pooled by softmax(pool_query . k / sqrt(d)),
  // in fp32 (fp64 for fp64 k). On the fused kernels (attention/cuda/dash_pooling.h) unless impl
  // is reference or they cannot (CPU, fp64, d other than 64 or 128, k strided over d): then in ATen.
  torch::Tensor chunk_summaries(const torch::Tensor& k) const;
  // The per-(query, chunk) bias of the final softmax, [B, Hkv, T, ceil(T / C)], shared by a
  // KV group: the normalised (or raw) log prior / sigma on routed chunks, 0 on the diagonal
  // and forced chunks, -inf on chunks the query does not read.
  torch::Tensor chunk_bias(const torch::Tensor& q, const torch::Tensor& k) const;
  // Rows [t0, t0 + n) of chunk_bias from those queries' rows q_rows [B, Hq, n, d] and kbar, for a
  // sequence of length T: [B, Hkv, n, ceil(T / C)].
  torch::Tensor bias_rows(const torch::Tensor& q_rows, const torch::Tensor& kbar, int64_t t0, int64_t T) const;
  // The same routing as per-row lists (block_sparse_dispatch.h), built one tile of queries of
  // one KV group at a time, so the per-head scores over all chunks exist for one tile only;
  // the backward recomputes each tile. Differentiable in q and kbar through rows.bias. The
  // entmax, group mean and prior run on the fused kernels (attention/cuda/dash_routing.h)
  // unless impl is reference or they cannot (alpha != 1.5, CPU, fp64, G x route_positions >
  // 64, over 6144 chunks): then in ATen.
  BlockRows routing(const torch::Tensor& q, const torch::Tensor& kbar) const;

  // Query rows per routing tile, rounded up to whole routings (route_positions); 0 sizes tiles
  // to ~2^28 fp32 scores on the fused kernels, 2^27 in ATen (tests set it small).
  int64_t routing_tile_rows = 0;

  torch::Tensor pool_query;  // h [Hkv, d], zero-initialised

 private:
  DashConfig cfg_;
  std::string impl_;  // model.attention.impl
  int64_t sparsity_offset_;
};

}  // namespace st
