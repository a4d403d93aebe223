// Llama-style decoder: embedding, blocks of (RMSNorm, attention, RMSNorm, SwiGLU), final
// norm, head. Parameter names follow Hugging Face Llama without the "model." prefix.
// The model knows nothing of devices, precision, sharding or checkpoints.
#pragma once
#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/linear.h>
#include <torch/types.h>

#include <functional>

#include "config/recipe.h"
#include "model/attention.h"
#include "model/rope.h"

namespace st {

class RMSNormImpl : public torch::nn::Module {
 public:
  RMSNormImpl(int64_t dim, double eps);
  torch::Tensor forward(const torch::Tensor& x);
  torch::Tensor weight;

 private:
  double eps_;
};
TORCH_MODULE(RMSNorm);

class SelfAttentionImpl : public torch::nn::Module {
 public:
  explicit SelfAttentionImpl(const ModelConfig& cfg);
  torch::Tensor forward(const torch::Tensor& x, const RopeTables& rope);
  torch::nn::Linear q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, o_proj{nullptr};
  std::shared_ptr<AttentionVariant> variant;

 private:
  int64_t n_heads_, n_kv_heads_, head_dim_;
};
TORCH_MODULE(SelfAttention);

class SwiGLUImpl : public torch::nn::Module {
 public:
  SwiGLUImpl(int64_t dim, int64_t hidden);
  torch::Tensor forward(const torch::Tensor& x);
  torch::nn::Linear gate_proj{nullptr}, up_proj{nullptr}, down_proj{nullptr};
};
TORCH_MODULE(SwiGLU);

class BlockImpl : public torch::nn::Module {
 public:
  explicit BlockImpl(const ModelConfig& cfg);
  torch::Tensor forward(const torch::Tensor& x, const RopeTables& rope);
  RMSNorm input_layernorm{nullptr}, post_attention_layernorm{nullptr};
  SelfAttention self_attn{nullptr};
  SwiGLU mlp{nullptr};
};
TORCH_MODULE(Block);

// How the trainer runs a block: directly, or under activation checkpointing.
using BlockRunner = std::function<torch::Tensor(Block&, const torch::Tensor&, const RopeTables&)>;

class TransformerImpl : public torch::nn::Module {
 public:
  explicit TransformerImpl(const ModelConfig& cfg);
  // tokens [B, T] int64 -> logits [B, T, vocab]
  torch::Tensor forward(const torch::Tensor& tokens, const BlockRunner& run_block = {});
  // Deterministic initialisation from a seed (normal(0, init_std); residual outputs scaled
  // by 1/sqrt(2 n_layers); norms one; variant parameters as their constructors set them).
  void init_weights(uint64_t seed);
  const ModelConfig& config() const { return cfg_; }
  std::vector<std::shared_ptr<AttentionVariant>> attention_variants() const;

  torch::nn::Embedding embed_tokens{nullptr};
  torch::nn::ModuleList layers;
  RMSNorm norm{nullptr};
  torch::nn::Linear lm_head{nullptr};  // null when tie_embeddings

 private:
  ModelConfig cfg_;
};
TORCH_MODULE(Transformer);

}  // namespace st
