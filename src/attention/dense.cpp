#include "attention/dense.h"

#include <ATen/ATen.h>

namespace st {

torch::Tensor dense_causal_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v) {
  return at::scaled_dot_product_attention(q, k, v, /*attn_mask=*/{}, /*dropout_p=*/0.0, /*is_causal=*/true,
                                          /*scale=*/std::nullopt, /*enable_gqa=*/q.size(1) != k.size(1));
}

torch::Tensor DenseAttention::forward(const AttentionInputs& in) {
  if (record_stats) {
    const int64_t pairs = in.q.size(0) * in.q.size(1) * causal_pairs(in.q.size(2), sparsity_offset_);
    stats = {pairs, pairs};
  }
  return dense_causal_attention(in.q, in.k, in.v);
}

}  // namespace st
