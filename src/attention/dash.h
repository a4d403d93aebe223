// DashAttention (DESIGN §2.2): differentiable adaptive sparse hierarchical attention.
// Chunk summaries from a learned pooling query, alpha-entmax routing over past chunks, and a
// softmax over the routed chunks biased by the log routing prior, differentiable end to end.
#pragma once
#include "model/attention.h"

namespace st {

class DashAttention : public AttentionVariant {
 public:
  explicit DashAttention(const ModelConfig& cfg);
  torch::Tensor forward(const AttentionInputs& in) override;

  // kbar [B, Hkv, T / C, d]: per complete chunk, the keys pooled by softmax(pool_query . k / sqrt(d)).
  torch::Tensor chunk_summaries(const torch::Tensor& k) const;
  // The per-(query, chunk) bias of the final softmax, [B, Hkv, T, ceil(T / C)], shared by a
  // KV group: the normalised (or raw) log prior / sigma on routed chunks, 0 on the diagonal
  // and forced chunks, -inf on chunks the query does not read.
  torch::Tensor chunk_bias(const torch::Tensor& q, const torch::Tensor& k) const;

  torch::Tensor pool_query;  // h [Hkv, d], zero-initialised

 private:
  DashConfig cfg_;
  std::string impl_;  // model.attention.impl
  int64_t sparsity_offset_;
};

}  // namespace st
