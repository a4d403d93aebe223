// The Llama model: parameter names and count, RoPE, causality, GQA, and our AdamW and
// schedules against independent computations.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>

#include "model/rope.h"
#include "model/transformer.h"
#include "train/flops.h"
#include "train/optimizer.h"
#include "train/schedule.h"

namespace st {
namespace {

ModelConfig tiny(bool tie = true) {
  ModelConfig c;
  c.vocab_size = 97;
  c.dim = 32;
  c.n_layers = 2;
  c.n_heads = 4;
  c.n_kv_heads = 2;
  c.ffn_dim = 48;
  c.tie_embeddings = tie;
  return c;
}

TEST(Model, HuggingFaceParameterNamesAndCount) {
  for (bool tie : {true, false}) {
    Transformer m(tiny(tie));
    auto named = m->named_parameters();
    int64_t n = 0;
    for (auto& p : named) n += p.value().numel();
    EXPECT_EQ(n, parameter_count(tiny(tie)));
    EXPECT_TRUE(named.contains("embed_tokens.weight"));
    EXPECT_TRUE(named.contains("layers.1.self_attn.k_proj.weight"));
    EXPECT_TRUE(named.contains("layers.0.mlp.down_proj.weight"));
    EXPECT_TRUE(named.contains("layers.0.post_attention_layernorm.weight"));
    EXPECT_EQ(named.contains("lm_head.weight"), !tie);
    EXPECT_EQ(named["layers.0.self_attn.k_proj.weight"].sizes(), (std::vector<int64_t>{2 * 8, 32}));
  }
}

TEST(Model, RopeRotatesPairsByPositionAngle) {
  ModelConfig c = tiny();
  const int64_t d = c.head_dim_or_default(), T = 5;
  auto x = torch::randn({1, 1, T, d}, torch::kFloat64);
  auto tables = rope_tables(c, T, torch::kCPU);
  auto y = apply_rope(x.to(torch::kFloat32), tables).to(torch::kFloat64);
  // Independent: pair (i, i + d/2) at position t rotates by t / theta^(2i/d).
  for (int64_t t = 0; t < T; ++t)
    for (int64_t i = 0; i < d / 2; ++i) {
      double a = t / std::pow(c.rope_theta, 2.0 * i / d);
      double x1 = x[0][0][t][i].item<double>(), x2 = x[0][0][t][i + d / 2].item<double>();
      EXPECT_NEAR(y[0][0][t][i].item<double>(), x1 * std::cos(a) - x2 * std::sin(a), 1e-5);
      EXPECT_NEAR(y[0][0][t][i + d / 2].item<double>(), x2 * std::cos(a) + x1 * std::sin(a), 1e-5);
    }
  // Relative: q.k after RoPE depends only on the offset between positions.
  auto q = torch::randn({d}), k = torch::randn({d});
  auto rq = apply_rope(q.expand({1, 1, 8, d}).contiguous(), rope_tables(c, 8, torch::kCPU));
  auto rk = apply_rope(k.expand({1, 1, 8, d}).contiguous(), rope_tables(c, 8, torch::kCPU));
  EXPECT_NEAR((rq[0][0][5] * rk[0][0][2]).sum().item<double>(), (rq[0][0][4] * rk[0][0][1]).sum().item<double>(), 1e-4);
}

TEST(Model, Llama3ScalingKeepsHighFrequenciesAndSlowsLowOnes) {
  ModelConfig c = tiny();
  c.head_dim = 64;
  c.rope_theta = 500000;
  auto plain = rope_inv_freq(c);
  c.rope_scaling.type = "llama3";
  c.rope_scaling.factor = 8;
  c.rope_scaling.original_max_position = 64;
  auto scaled = rope_inv_freq(c);
  EXPECT_DOUBLE_EQ(scaled[0].item<double>(), plain[0].item<double>());
  EXPECT_NEAR(scaled[-1].item<double>(), plain[-1].item<double>() / 8, 1e-15);
}

TEST(Model, RMSNormMatchesItsFormula) {
  RMSNorm norm(16, 1e-5);
  torch::NoGradGuard ng;
  norm->weight.uniform_(0.5, 1.5);
  auto x = torch::randn({3, 5, 16}, torch::kFloat64).to(torch::kFloat32);
  auto xd = x.to(torch::kFloat64);
  auto expected = xd / torch::sqrt(xd.pow(2).mean(-1, true) + 1e-5) * norm->weight.to(torch::kFloat64);
  EXPECT_TRUE(torch::allclose(norm(x).to(torch::kFloat64), expected, 1e-5, 1e-6));
}

TEST(Model, CausalAndDeterministicInit) {
  Transformer a(tiny()), b(tiny());
  a->init_weights(3);
  b->init_weights(3);
  auto tokens = torch::randint(0, 97, {2, 12}, torch::kInt64);
  auto la = a(tokens), lb = b(tokens);
  EXPECT_TRUE(torch::equal(la, lb));
  EXPECT_EQ(la.sizes(), (std::vector<int64_t>{2, 12, 97}));
  auto changed = tokens.clone();
  changed.index_put_({torch::indexing::Slice(), 8}, (tokens.index({torch::indexing::Slice(), 8}) + 1) % 97);
  auto lc = a(changed);
  using torch::indexing::Slice;
  EXPECT_TRUE(torch::allclose(la.index({Slice(), Slice(0, 8)}), lc.index({Slice(), Slice(0, 8)})));
  EXPECT_FALSE(torch::allclose(la.index({Slice(), Slice(8, 12)}), lc.index({Slice(), Slice(8, 12)})));
}

TEST(Model, GqaEqualsExplicitlyRepeatedKeys) {
  // A model with 2 KV heads must equal the same model with 4 KV heads whose K/V
  // projections repeat each KV head for its query group.
  ModelConfig g = tiny(), full = tiny();
  full.n_kv_heads = 4;
  Transformer mg(g), mf(full);
  mg->init_weights(1);
  mf->init_weights(1);
  torch::NoGradGuard ng;
  auto pg = mg->named_parameters(), pf = mf->named_parameters();
  for (auto& p : pg) {
    if (p.key().find("k_proj") != std::string::npos || p.key().find("v_proj") != std::string::npos) {
      auto w = p.value().view({2, 8, 32}).repeat_interleave(2, 0).reshape({32, 32});
      pf[p.key()].copy_(w);
    } else {
      pf[p.key()].copy_(p.value());
    }
  }
  auto tokens = torch::randint(0, 97, {1, 10}, torch::kInt64);
  EXPECT_TRUE(torch::allclose(mg(tokens), mf(tokens), 1e-5, 1e-5));
}

TEST(Optimizer, MatchesLibTorchAdamW) {
  OptimConfig cfg;
  cfg.weight_decay = 0.1;
  cfg.decay_norms_and_embeddings = true;  // LibTorch's AdamW decays everything
  auto w1 = torch::randn({4, 3}, torch::requires_grad()), w2 = w1.detach().clone().requires_grad_(true);
  AdamW ours({{"w", w1}}, cfg);
  torch::optim::AdamW theirs({w2}, torch::optim::AdamWOptions(0.01).betas({cfg.beta1, cfg.beta2}).eps(cfg.eps).weight_decay(0.1));
  for (int step = 0; step < 5; ++step) {
    auto g = torch::randn({4, 3});
    w1.mutable_grad() = g.clone();
    w2.mutable_grad() = g.clone();
    ours.step(0.01);
    theirs.step();
  }
  EXPECT_TRUE(torch::allclose(w1, w2, 1e-6, 1e-6));
  // State round trip.
  auto w3 = w1.detach().clone().requires_grad_(true);
  AdamW restored({{"w", w3}}, cfg);
  restored.load_state(ours.state());
  auto g = torch::randn({4, 3});
  w1.mutable_grad() = g.clone();
  w3.mutable_grad() = g.clone();
  ours.step(0.01);
  restored.step(0.01);
  EXPECT_TRUE(torch::equal(w1, w3));
}

TEST(Optimizer, NoDecayOnNormsAndEmbeddingsByDefault) {
  OptimConfig cfg;
  EXPECT_FALSE(AdamW::decays("embed_tokens.weight", torch::zeros({4, 4}), cfg));
  EXPECT_FALSE(AdamW::decays("layers.0.input_layernorm.weight", torch::zeros({4}), cfg));
  EXPECT_TRUE(AdamW::decays("layers.0.mlp.up_proj.weight", torch::zeros({4, 4}), cfg));
}

TEST(Schedule, WarmupCosineAndWsd) {
  ScheduleConfig s;
  s.warmup_steps = 10;
  s.min_lr_ratio = 0.1;
  EXPECT_DOUBLE_EQ(learning_rate(s, 1.0, 0, 100), 0.1);
  EXPECT_DOUBLE_EQ(learning_rate(s, 1.0, 9, 100), 1.0);
  EXPECT_NEAR(learning_rate(s, 1.0, 55, 100), 0.1 + 0.9 * 0.5, 1e-12);  // halfway through the decay
  EXPECT_NEAR(learning_rate(s, 1.0, 100, 100), 0.1, 1e-12);
  s.kind = "wsd";
  s.decay_fraction = 0.2;
  EXPECT_DOUBLE_EQ(learning_rate(s, 1.0, 50, 100), 1.0);
  EXPECT_DOUBLE_EQ(learning_rate(s, 1.0, 79, 100), 1.0);
  EXPECT_NEAR(learning_rate(s, 1.0, 99, 100), 0.1, 1e-12);
}

TEST(Flops, SixNPlusAttention) {
  ModelConfig c = tiny();
  const int64_t T = 128;
  const double embed = double(c.vocab_size) * c.dim;
  const double non_embedding = double(parameter_count(c)) - embed - c.dim - 2.0 * c.dim * c.n_layers;  // minus norms
  EXPECT_DOUBLE_EQ(training_flops_per_token(c, T), 6 * (non_embedding + embed) + 6.0 * c.n_layers * T * c.dim);
}

}  // namespace
}  // namespace st
