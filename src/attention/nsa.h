// NSA, native sparse attention (DESIGN §2.3): compressed, selected and sliding-window
// branches mixed by per-head sigmoid gates computed from the layer input.
#pragma once
#include <torch/nn/modules/linear.h>

#include "attention/block_sparse_dispatch.h"
#include "model/attention.h"

namespace st {

// phi: a block of `length` keys (or values) [.., length, d] -> one vector [.., d]. The mean of
// the block plus an MLP over the block with a learned intra-block position encoding.
class BlockCompressorImpl : public torch::nn::Module {
 public:
  BlockCompressorImpl(int64_t length, int64_t head_dim);
  torch::Tensor forward(const torch::Tensor& blocks);
  torch::Tensor position;  // [length, d]
  torch::nn::Linear hidden{nullptr}, out{nullptr};
};
TORCH_MODULE(BlockCompressor);

class NsaAttention : public AttentionVariant {
 public:
  explicit NsaAttention(const ModelConfig& cfg);
  torch::Tensor forward(const AttentionInputs& in) override;

  // Which selection blocks each query reads, as per-row lists (block_sparse_dispatch.h); the
  // query's own block, which the forced local blocks include, is implicit there.
  BlockRows selection(const AttentionInputs& in);

  // Compressors of the compression branch (compressor: mlp); null for compressor: mean.
  BlockCompressor compress_k{nullptr}, compress_v{nullptr};
  // Per-head gates [cmp, slc, win] = sigmoid(gate(x)).
  torch::nn::Linear gate{nullptr};
  // kv: separate. Per-branch K/V on top of the block's shared ones (see the constructor).
  torch::nn::Linear cmp_kv{nullptr}, win_kv{nullptr};

 private:
  struct KV {
    torch::Tensor k, v;
  };
  KV branch_kv(const AttentionInputs& in, torch::nn::Linear& delta) const;
  torch::Tensor compress(const torch::Tensor& x, BlockCompressor& phi) const;
  BlockRows select(const torch::Tensor& q, const torch::Tensor& k_cmp) const;

  NsaConfig cfg_;
  std::string impl_;  // model.attention.impl
  int64_t sparsity_offset_, n_kv_heads_, head_dim_;
};

}  // namespace st
