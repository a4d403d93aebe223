#include "model/transformer.h"

#include <ATen/ATen.h>

#include <cmath>

namespace st {

RMSNormImpl::RMSNormImpl(int64_t dim, double eps) : eps_(eps) {
  weight = register_parameter("weight", torch::ones({dim}));
}

torch::Tensor RMSNormImpl::forward(const torch::Tensor& x) {
  // ATen's rms_norm: one fused kernel each way on CUDA, the composite math on CPU. The
  // residual stream is fp32 (autocast leaves additions alone), so this normalises in fp32.
  return at::rms_norm(x, {weight.size(0)}, weight, eps_);
}

SelfAttentionImpl::SelfAttentionImpl(const ModelConfig& cfg)
    : n_heads_(cfg.n_heads), n_kv_heads_(cfg.n_kv_heads), head_dim_(cfg.head_dim_or_default()) {
  auto linear = [&](int64_t in, int64_t out) { return torch::nn::Linear(torch::nn::LinearOptions(in, out).bias(false)); };
  q_proj = register_module("q_proj", linear(cfg.dim, n_heads_ * head_dim_));
  k_proj = register_module("k_proj", linear(cfg.dim, n_kv_heads_ * head_dim_));
  v_proj = register_module("v_proj", linear(cfg.dim, n_kv_heads_ * head_dim_));
  o_proj = register_module("o_proj", linear(n_heads_ * head_dim_, cfg.dim));
  variant = register_module("variant", make_attention(cfg));
}

torch::Tensor SelfAttentionImpl::forward(const torch::Tensor& x, const RopeTables& rope) {
  const int64_t B = x.size(0), T = x.size(1);
  auto heads = [&](const torch::Tensor& t, int64_t h) { return t.view({B, T, h, head_dim_}).transpose(1, 2); };
  auto q = apply_rope(heads(q_proj(x), n_heads_), rope);
  auto k = apply_rope(heads(k_proj(x), n_kv_heads_), rope);
  auto v = heads(v_proj(x), n_kv_heads_);
  auto o = variant->forward({q, k, v, x, rope.cos, rope.sin});  // [B, Hq, T, d]
  return o_proj(o.transpose(1, 2).reshape({B, T, n_heads_ * head_dim_}));
}

SwiGLUImpl::SwiGLUImpl(int64_t dim, int64_t hidden) {
  auto linear = [](int64_t in, int64_t out) { return torch::nn::Linear(torch::nn::LinearOptions(in, out).bias(false)); };
  gate_proj = register_module("gate_proj", linear(dim, hidden));
  up_proj = register_module("up_proj", linear(dim, hidden));
  down_proj = register_module("down_proj", linear(hidden, dim));
}

torch::Tensor SwiGLUImpl::forward(const torch::Tensor& x) {
  return down_proj(torch::silu(gate_proj(x)) * up_proj(x));
}

BlockImpl::BlockImpl(const ModelConfig& cfg) {
  input_layernorm = register_module("input_layernorm", RMSNorm(cfg.dim, cfg.norm_eps));
  self_attn = register_module("self_attn", SelfAttention(cfg));
  post_attention_layernorm = register_module("post_attention_layernorm", RMSNorm(cfg.dim, cfg.norm_eps));
  mlp = register_module("mlp", SwiGLU(cfg.dim, cfg.ffn_dim_or_default()));
}

torch::Tensor BlockImpl::forward(const torch::Tensor& x, const RopeTables& rope) {
  auto h = x + self_attn(input_layernorm(x), rope);
  return h + mlp(post_attention_layernorm(h));
}

TransformerImpl::TransformerImpl(const ModelConfig& cfg) : cfg_(cfg) {
  embed_tokens = register_module("embed_tokens", torch::nn::Embedding(cfg.vocab_size, cfg.dim));
  layers = register_module("layers", torch::nn::ModuleList());
  for (int64_t i = 0; i < cfg.n_layers; ++i) layers->push_back(Block(cfg));
  norm = register_module("norm", RMSNorm(cfg.dim, cfg.norm_eps));
  if (!cfg.tie_embeddings)
    lm_head = register_module("lm_head", torch::nn::Linear(torch::nn::LinearOptions(cfg.dim, cfg.vocab_size).bias(false)));
}

torch::Tensor TransformerImpl::forward(const torch::Tensor& tokens, const BlockRunner& run_block) {
  auto rope = rope_tables(cfg_, tokens.size(1), tokens.device());
  auto x = embed_tokens(tokens);
  for (auto& layer : *layers) {
    Block block(std::dynamic_pointer_cast<BlockImpl>(layer));
    x = run_block ? run_block(block, x, rope) : block(x, rope);
  }
  x = norm(x);
  return lm_head ? lm_head(x) : torch::nn::functional::linear(x, embed_tokens->weight);
}

void TransformerImpl::init_weights(uint64_t seed) {
  torch::NoGradGuard no_grad;
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  const double residual_std = cfg_.init_std / std::sqrt(2.0 * cfg_.n_layers);
  auto normal = [&](torch::Tensor& w, double std) {
    w.copy_(at::normal(0.0, std, w.sizes(), gen, torch::TensorOptions().dtype(torch::kFloat32)));
  };
  normal(embed_tokens->weight, cfg_.init_std);
  if (lm_head) normal(lm_head->weight, cfg_.init_std);
  for (auto& layer : *layers) {
    auto b = std::dynamic_pointer_cast<BlockImpl>(layer);
    normal(b->self_attn->q_proj->weight, cfg_.init_std);
    normal(b->self_attn->k_proj->weight, cfg_.init_std);
    normal(b->self_attn->v_proj->weight, cfg_.init_std);
    normal(b->self_attn->o_proj->weight, residual_std);
    normal(b->mlp->gate_proj->weight, cfg_.init_std);
    normal(b->mlp->up_proj->weight, cfg_.init_std);
    normal(b->mlp->down_proj->weight, residual_std);
  }
}

std::vector<std::shared_ptr<AttentionVariant>> TransformerImpl::attention_variants() const {
  std::vector<std::shared_ptr<AttentionVariant>> out;
  for (const auto& layer : *layers) out.push_back(std::dynamic_pointer_cast<BlockImpl>(layer)->self_attn->variant);
  return out;
}

}  // namespace st
