// Dense causal softmax attention (DESIGN §2.0): the baseline every sparse variant must
// reduce to when it selects everything.
#pragma once
#include "model/attention.h"

namespace st {

class DenseAttention : public AttentionVariant {
 public:
  explicit DenseAttention(const ModelConfig& cfg) : sparsity_offset_(cfg.attention.sparsity_offset) {}
  torch::Tensor forward(const AttentionInputs& in) override;

 private:
  int64_t sparsity_offset_;
};

// Causal attention of q [B, Hq, T, d] over k, v [B, Hkv, T, d] (GQA by head groups), through
// LibTorch's scaled_dot_product_attention (flash/cuDNN on GPU).
torch::Tensor dense_causal_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v);

}  // namespace st
