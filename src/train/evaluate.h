// Validation loss and attention sparsity over the first windows of a shard.
#pragma once
#include <vector>

#include "data/shard.h"
#include "model/transformer.h"
#include "train/runtime.h"

namespace st {

// Sparsity of per-layer stats taken together, and of each layer.
double sparsity_of_all(const std::vector<AttentionStats>& layers);
std::vector<double> sparsity_per_layer(const std::vector<AttentionStats>& layers);

struct EvalResult {
  double loss = 0;
  int64_t tokens = 0;
  std::vector<AttentionStats> layers;  // per layer, summed over the evaluated batches
  double sparsity() const { return sparsity_of_all(layers); }
  std::vector<double> layer_sparsity() const { return sparsity_per_layer(layers); }
};

EvalResult evaluate(Transformer& model, const TokenShard& shard, const Runtime& rt, int64_t seq_len,
                    int64_t micro_batch, int64_t batches);

// Mean next-token cross-entropy of logits [B, T, V] against targets [B, T], in fp32.
torch::Tensor next_token_loss(const torch::Tensor& logits, const torch::Tensor& targets);

}  // namespace st
