// InfLLMv2 (DESIGN §2.4): block scores and selection against a loop-based reference, the
// output over selected blocks plus window, dense below dense_len, reduction to dense
// attention, no parameters, and sparsity.
#include <gtest/gtest.h>

#include "attention/infllmv2.h"
#include "attention_brute_force.h"

namespace st {
namespace {

InfllmConfig infllm_knobs(int64_t kernel, int64_t stride, int64_t block, int64_t top_k, int64_t init, int64_t local,
                          int64_t window, int64_t dense_len = 0) {
  InfllmConfig c;
  c.pool_kernel = kernel;
  c.pool_stride = stride;
  c.block = block;
  c.top_k = top_k;
  c.init_blocks = init;
  c.local_blocks = local;
  c.window = window;
  c.dense_len = dense_len;
  return c;
}

struct Case {
  int64_t B, Hq, Hkv, T, d;
  InfllmConfig inf;
};

ModelConfig model_config(const Case& c) {
  auto cfg = test::attention_config("infllmv2", c.Hq, c.Hkv, c.d);
  cfg.attention.infllmv2 = c.inf;
  return cfg;
}

// Which blocks each query selects, DESIGN §2.4 one query at a time: mean-pooled keys,
// softmax over the complete pooled blocks, summed over the group, max over the pooled blocks
// overlapping each selection block, then top-k with forced initial and local blocks.
std::vector<bool> brute_selection(const InfllmConfig& cfg, const torch::Tensor& q, const torch::Tensor& k) {
  const int64_t B = q.size(0), Hq = q.size(1), T = q.size(2), Hkv = k.size(1), G = Hq / Hkv;
  const int64_t l = cfg.pool_kernel, s = cfg.pool_stride, n_cmp = T >= l ? (T - l) / s + 1 : 0;
  const int64_t n_blocks = (T + cfg.block - 1) / cfg.block;
  auto k_cmp = torch::zeros({B, Hkv, n_cmp, k.size(3)}, torch::kFloat64);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < Hkv; ++h)
      for (int64_t n = 0; n < n_cmp; ++n) k_cmp[b][h][n] = k[b][h].narrow(0, n * s, l).mean(0);
  std::vector<bool> selected(B * Hkv * T * n_blocks);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t hk = 0; hk < Hkv; ++hk)
      for (int64_t i = 0; i < T; ++i) {
        std::vector<double> summed(n_cmp, 0.0), scores(n_blocks, 0.0);
        for (int64_t g = 0; g < G; ++g) {
          auto p = test::brute_compressed_probs(q, k_cmp, b, hk * G + g, hk, i, l, s);
          for (int64_t n = 0; n < n_cmp; ++n) summed[n] += p[n];
        }
        for (int64_t c = 0; c < n_blocks; ++c)
          for (int64_t n = 0; n < n_cmp; ++n)
            if (test::overlaps(n, l, s, c, cfg.block)) scores[c] = std::max(scores[c], summed[n]);
        auto chosen = test::brute_select(scores, i / cfg.block, cfg.top_k, cfg.init_blocks, cfg.local_blocks);
        for (int64_t c = 0; c < n_blocks; ++c) selected[((b * Hkv + hk) * T + i) * n_blocks + c] = chosen[c];
      }
  return selected;
}

TEST(InfllmV2Attention, SelectionAndOutputMatchBruteForce) {
  std::vector<Case> cases = {
      {2, 16, 16, 45, 4, infllm_knobs(8, 4, 8, 2, 1, 1, 8)},     // G = 1, ragged
      {1, 16, 8, 50, 4, infllm_knobs(8, 4, 16, 2, 0, 1, 16)},    // G = 2
      {2, 16, 4, 37, 4, infllm_knobs(6, 2, 6, 3, 1, 1, 0)},      // G = 4, no window
      {1, 16, 2, 48, 4, infllm_knobs(8, 4, 8, 3, 1, 2, 8)},      // G = 8
      {1, 16, 1, 41, 4, infllm_knobs(4, 4, 8, 2, 1, 1, 5)},      // G = 16, window not block-aligned
      {1, 2, 1, 300, 4, infllm_knobs(32, 16, 64, 3, 1, 1, 64)},  // MiniCPM4's pooling geometry
  };
  for (const auto& c : cases) {
    SCOPED_TRACE("B " + std::to_string(c.B) + " Hq " + std::to_string(c.Hq) + " Hkv " + std::to_string(c.Hkv) +
                 " T " + std::to_string(c.T));
    auto inf = std::dynamic_pointer_cast<InfllmV2Attention>(test::build(model_config(c), torch::kFloat64));
    auto in = test::random_inputs(model_config(c), c.B, c.T, torch::kFloat64, 31);
    auto want = brute_selection(c.inf, in.q, in.k);
    // The selection travels as lists that leave each query's own block implicit: with a local
    // block forced, it is always chosen.
    auto selected = torch::isfinite(dense_bias(inf->selection(in.q, in.k), c.B, c.Hkv, c.T, c.inf.block)).contiguous();
    ASSERT_EQ(std::vector<bool>(selected.data_ptr<bool>(), selected.data_ptr<bool>() + selected.numel()), want);
    // Not trivially everything: fewer blocks than the causal ones.
    int64_t causal_blocks = 0;
    for (int64_t i = 0; i < c.T; ++i) causal_blocks += c.B * c.Hkv * (i / c.inf.block + 1);
    EXPECT_LT(selected.sum().item<int64_t>(), causal_blocks);

    const int64_t n_blocks = selected.size(3), T = c.T, Hkv = c.Hkv, block = c.inf.block, window = c.inf.window;
    auto ref = test::brute_attention(
        in.q, in.k, in.v,
        [&](auto b, auto hk, auto i, auto j) {
          return want[((b * Hkv + hk) * T + i) * n_blocks + j / block] || i - j < window;
        },
        [](auto...) { return 0.0; });
    EXPECT_TRUE(torch::allclose(inf->forward(in), ref, 0, 1e-10));
  }
}

TEST(InfllmV2Attention, DenseBelowDenseLen) {
  Case c{2, 4, 2, 100, 8, infllm_knobs(8, 4, 8, 2, 1, 1, 8, /*dense_len=*/101)};
  auto inf = test::build(model_config(c), torch::kFloat32);
  inf->record_stats = true;
  auto in = test::random_inputs(model_config(c), c.B, c.T, torch::kFloat32, 32);
  EXPECT_TRUE(torch::equal(inf->forward(in), dense_causal_attention(in.q, in.k, in.v)));
  EXPECT_EQ(inf->stats.attended, inf->stats.causal);
  // At dense_len the sparse path takes over.
  c.inf.dense_len = 100;
  auto sparse = test::build(model_config(c), torch::kFloat32);
  sparse->record_stats = true;
  sparse->forward(in);
  EXPECT_LT(sparse->stats.attended, sparse->stats.causal);
}

TEST(InfllmV2Attention, ReducesToDenseWhenEverythingIsSelected) {
  for (int64_t Hkv : {4, 1}) {
    SCOPED_TRACE("Hkv " + std::to_string(Hkv));
    Case all_blocks{2, 4, Hkv, 90, 16, infllm_knobs(8, 4, 16, 6, 1, 2, 0)};  // 6 blocks, top-k 6
    auto in = test::random_inputs(model_config(all_blocks), 2, 90, torch::kFloat32, 33);
    test::expect_dense(*test::build(model_config(all_blocks), torch::kFloat32), in, 1e-5);
    Case all_window{2, 4, Hkv, 90, 16, infllm_knobs(8, 4, 16, 3, 1, 2, 96)};
    test::expect_dense(*test::build(model_config(all_window), torch::kFloat32), in, 1e-5);
  }
}

TEST(InfllmV2Attention, RefusesSelectionsThatMaySkipTheOwnBlock) {
  auto cfg = test::attention_config("infllmv2", 8, 2, 16);
  cfg.attention.infllmv2 = infllm_knobs(8, 4, 8, 2, 1, 0, 0);  // no local block, no window
  try {
    make_attention(cfg);
    FAIL() << "expected a ConfigError";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("model.attention.infllmv2.local_blocks"), std::string::npos) << e.what();
  }
  cfg.attention.infllmv2.window = 8;  // a window of a block covers the own block's causal keys
  EXPECT_NO_THROW(make_attention(cfg));
}

TEST(InfllmV2Attention, AddsNoParameters) {
  auto cfg = test::attention_config("infllmv2", 8, 2, 16);
  EXPECT_TRUE(make_attention(cfg)->parameters().empty());
}

TEST(InfllmV2Attention, SparsityCountMatchesBruteForce) {
  Case c{2, 4, 2, 70, 4, infllm_knobs(8, 4, 8, 3, 1, 1, 8)};
  for (int64_t offset : {0, 40}) {
    auto cfg = model_config(c);
    cfg.attention.sparsity_offset = offset;
    auto inf = test::build(cfg, torch::kFloat64);
    inf->record_stats = true;
    auto in = test::random_inputs(cfg, c.B, c.T, torch::kFloat64, 34);
    inf->forward(in);
    auto want = brute_selection(c.inf, in.q, in.k);
    const int64_t n_blocks = 9;
    EXPECT_EQ(inf->stats.attended, test::brute_count(c.B, c.Hq, c.Hkv, c.T, offset, [&](auto b, auto hk, auto i, auto j) {
                return want[((b * c.Hkv + hk) * c.T + i) * n_blocks + j / 8] || i - j < 8;
              }));
    EXPECT_EQ(inf->stats.causal, c.B * c.Hq * causal_pairs(c.T, offset));
  }
}

}  // namespace
}  // namespace st
