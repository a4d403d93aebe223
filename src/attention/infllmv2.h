// InfLLMv2 (DESIGN §2.4): block-sparse attention whose blocks are chosen from attention over
// mean-pooled keys; no parameters of its own, dense below dense_len.
#pragma once
#include "model/attention.h"

namespace st {

class InfllmV2Attention : public AttentionVariant {
 public:
  explicit InfllmV2Attention(const ModelConfig& cfg);
  torch::Tensor forward(const AttentionInputs& in) override;

  // Block scores [B, Hkv, T, ceil(T / block)]: the group-summed softmax over mean-pooled keys,
  // max-pooled onto selection blocks.
  torch::Tensor block_scores(const torch::Tensor& q, const torch::Tensor& k) const;
  // Which blocks each query reads (the window comes on top): bool, same shape.
  torch::Tensor selection(const torch::Tensor& q, const torch::Tensor& k) const;

 private:
  InfllmConfig cfg_;
  std::string impl_;  // model.attention.impl
  int64_t sparsity_offset_;
};

}  // namespace st
