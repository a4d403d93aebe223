#include "attention/infllmv2.h"

#include <fmt/format.h>

#include "attention/block_selection.h"
#include "attention/block_sparse.h"
#include "attention/dense.h"

namespace st {

using torch::Tensor;

InfllmV2Attention::InfllmV2Attention(const ModelConfig& cfg)
    : cfg_(cfg.attention.infllmv2), impl_(cfg.attention.impl), sparsity_offset_(cfg.attention.sparsity_offset) {
  // The selection travels as per-row lists whose readers (the kernels and the reference alike)
  // always read the query's own block: a forced local block or a window of a block or more
  // must guarantee it. (The recipe already requires top_k >= init_blocks + local_blocks.)
  if (cfg_.window < cfg_.block && (cfg_.local_blocks < 1 || cfg_.top_k < cfg_.init_blocks + cfg_.local_blocks))
    throw ConfigError(fmt::format(
        "model.attention.infllmv2.local_blocks: expected >= 1 (within top_k) when infllmv2.window ({}) is shorter "
        "than a block ({}): every query must read its own block",
        cfg_.window, cfg_.block));
}

BlockRows InfllmV2Attention::selection(const Tensor& q, const Tensor& k) const {
  torch::NoGradGuard no_grad;  // selection is a discrete choice; no gradient flows through it
  // Block scores: the group-summed softmax over mean-pooled keys, max-pooled onto selection
  // blocks, one query tile at a time.
  auto k_cmp = compression_blocks(k.to(reference_dtype(k)), cfg_.pool_kernel, cfg_.pool_stride).mean(-2);
  return select_rows(
      q, k_cmp,
      {cfg_.pool_kernel, cfg_.pool_stride, cfg_.block, cfg_.top_k, cfg_.init_blocks, cfg_.local_blocks, Pool::Max},
      impl_);
}

Tensor InfllmV2Attention::forward(const AttentionInputs& in) {
  const int64_t B = in.q.size(0), Hq = in.q.size(1), T = in.q.size(2);
  const int64_t causal = B * Hq * causal_pairs(T, sparsity_offset_);
  if (T < cfg_.dense_len) {
    if (record_stats) stats = {causal, causal};
    return dense_causal_attention(in.q, in.k, in.v);
  }
  // One softmax over the union of the selected blocks and the sliding window.
  auto rows = selection(in.q, in.k);
  if (record_stats)
    stats = {attended_pairs(rows, T, cfg_.block, cfg_.window, sparsity_offset_, Hq / in.k.size(1)), causal};
  return attend_rows(in.q, in.k, in.v, rows, cfg_.block, cfg_.window, impl_);
}

}  // namespace st
