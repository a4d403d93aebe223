// InfLLMv2 (DESIGN §2.4): block-sparse attention whose blocks are chosen from attention over
// mean-pooled keys; no parameters of its own, dense below dense_len.
#pragma once
#include "attention/block_sparse_dispatch.h"
#include "model/attention.h"

namespace st {

class InfllmV2Attention : public AttentionVariant {
 public:
  explicit InfllmV2Attention(const ModelConfig& cfg);
  torch::Tensor forward(const AttentionInputs& in) override;

  // Which blocks each query reads besides its own (the window comes on top), as per-row lists.
  BlockRows selection(const torch::Tensor& q, const torch::Tensor& k) const;

 private:
  InfllmConfig cfg_;
  std::string impl_;  // model.attention.impl
  int64_t sparsity_offset_;
};

}  // namespace st
