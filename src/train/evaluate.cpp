#include "train/evaluate.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "data/loader.h"

namespace st {

double sparsity_of_all(const std::vector<AttentionStats>& layers) {
  AttentionStats total;
  for (const auto& l : layers) total += l;
  return total.sparsity();
}

std::vector<double> sparsity_per_layer(const std::vector<AttentionStats>& layers) {
  std::vector<double> out;
  for (const auto& l : layers) out.push_back(l.sparsity());
  return out;
}

torch::Tensor next_token_loss(const torch::Tensor& logits, const torch::Tensor& targets) {
  return torch::nn::functional::cross_entropy(logits.reshape({-1, logits.size(-1)}).to(torch::kFloat32),
                                              targets.reshape({-1}));
}

EvalResult evaluate(Transformer& model, const TokenShard& shard, const Runtime& rt, int64_t seq_len,
                    int64_t micro_batch, int64_t batches) {
  torch::NoGradGuard no_grad;
  model->eval();
  auto variants = model->attention_variants();
  for (auto& v : variants) v->record_stats = true;
  EvalResult r;
  r.layers.resize(variants.size());
  const int64_t available = int64_t(shard.size() / uint64_t(seq_len + 1)) / micro_batch;
  if (available == 0)
    throw DataError(fmt::format("{}: {} tokens is too few for one eval batch of {} x {} tokens", shard.path(),
                                shard.size(), micro_batch, seq_len + 1));
  const int64_t n = std::min(batches, available);
  double loss_sum = 0;
  for (int64_t i = 0; i < n; ++i) {
    Batch b = eval_batch(shard, seq_len, micro_batch, i);
    AutocastScope autocast(rt);
    auto logits = model(b.inputs.to(rt.device));
    loss_sum += next_token_loss(logits, b.targets.to(rt.device)).item<double>();
    for (size_t l = 0; l < variants.size(); ++l) r.layers[l] += variants[l]->stats;
  }
  for (auto& v : variants) v->record_stats = false;
  model->train();
  r.tokens = n * micro_batch * seq_len;
  r.loss = loss_sum / double(n);
  return r;
}

}  // namespace st
