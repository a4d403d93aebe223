#include "attention/infllmv2.h"

#include <limits>

#include "attention/block_selection.h"
#include "attention/block_sparse.h"
#include "attention/block_sparse_dispatch.h"
#include "attention/dense.h"

namespace st {

using torch::Tensor;

InfllmV2Attention::InfllmV2Attention(const ModelConfig& cfg)
    : cfg_(cfg.attention.infllmv2), impl_(cfg.attention.impl), sparsity_offset_(cfg.attention.sparsity_offset) {}

Tensor InfllmV2Attention::selection(const Tensor& q, const Tensor& k) const {
  torch::NoGradGuard no_grad;  // selection is a discrete choice; no gradient flows through it
  // Block scores: the group-summed softmax over mean-pooled keys, max-pooled onto selection
  // blocks, one query tile at a time.
  auto k_cmp = compression_blocks(k.to(reference_dtype(k)), cfg_.pool_kernel, cfg_.pool_stride).mean(-2);
  return select_from_compressed(
      q, k_cmp,
      {cfg_.pool_kernel, cfg_.pool_stride, cfg_.block, cfg_.top_k, cfg_.init_blocks, cfg_.local_blocks, Pool::Max});
}

Tensor InfllmV2Attention::forward(const AttentionInputs& in) {
  const int64_t B = in.q.size(0), Hq = in.q.size(1), T = in.q.size(2);
  const int64_t causal = B * Hq * causal_pairs(T, sparsity_offset_);
  if (T < cfg_.dense_len) {
    if (record_stats) stats = {causal, causal};
    return dense_causal_attention(in.q, in.k, in.v);
  }
  // One softmax over the union of the selected blocks and the sliding window. The kernels
  // cannot express that union yet (their window masks listed blocks too): impl auto runs the
  // reference here, impl cuda says so.
  auto selected = selection(in.q, in.k);
  if (record_stats)
    stats = {attended_pairs(selected, cfg_.block, cfg_.window, sparsity_offset_, Hq / in.k.size(1)), causal};
  auto bias = torch::where(selected, 0.0, -std::numeric_limits<double>::infinity()).to(reference_dtype(in.q));
  return attend_blocks(in.q, in.k, in.v, bias, cfg_.block, cfg_.window, impl_);
}

}  // namespace st
