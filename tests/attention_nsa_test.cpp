// NSA (DESIGN §2.3): compression, selection and window branches and their gates against a
// loop-based reference, reduction to dense attention, gradients into the compressor, gates and
// branch K/V, the continual-pretraining start, and sparsity.
#include <gtest/gtest.h>

#include "attention/nsa.h"
#include "attention_brute_force.h"

namespace st {
namespace {

using test::kInf;

NsaConfig nsa_knobs(int64_t cmp_block, int64_t cmp_stride, int64_t sel_block, int64_t top_n, int64_t init,
                    int64_t local, int64_t window, std::string compressor = "mlp", std::string kv = "shared") {
  NsaConfig c;
  c.cmp_block = cmp_block;
  c.cmp_stride = cmp_stride;
  c.sel_block = sel_block;
  c.top_n = top_n;
  c.init_blocks = init;
  c.local_blocks = local;
  c.window = window;
  c.compressor = compressor;
  c.kv = kv;
  return c;
}

struct Case {
  int64_t B, Hq, Hkv, T, d;
  NsaConfig nsa;
};

ModelConfig model_config(const Case& c) {
  auto cfg = test::attention_config("nsa", c.Hq, c.Hkv, c.d);
  cfg.attention.nsa = c.nsa;
  return cfg;
}

// Every parameter random, so no branch hides behind an init value.
std::shared_ptr<NsaAttention> make_random_nsa(const Case& c, int64_t sparsity_offset = 0) {
  auto cfg = model_config(c);
  cfg.attention.sparsity_offset = sparsity_offset;
  auto nsa = std::dynamic_pointer_cast<NsaAttention>(test::build(cfg, torch::kFloat64));
  torch::NoGradGuard no_grad;
  torch::manual_seed(21);
  for (auto& p : nsa->parameters()) p.normal_(0, 0.3);
  return nsa;
}

struct Reference {
  std::vector<bool> selected;  // [B][Hkv][T][n_blocks]
  torch::Tensor output;
};

// DESIGN §2.3 one query at a time.
Reference brute_nsa(NsaAttention& nsa, const NsaConfig& cfg, const AttentionInputs& in) {
  const int64_t B = in.q.size(0), Hq = in.q.size(1), T = in.q.size(2), d = in.q.size(3), Hkv = in.k.size(1);
  const int64_t G = Hq / Hkv, l = cfg.cmp_block, s = cfg.cmp_stride, n_cmp = T >= l ? (T - l) / s + 1 : 0;
  const int64_t n_blocks = (T + cfg.sel_block - 1) / cfg.sel_block;
  auto heads = [&](const torch::Tensor& t) { return t.reshape({B, T, Hkv, d}).transpose(1, 2); };
  // Branch K/V: the block's, plus RoPE(x W) and x W' for kv: separate.
  auto branch = [&](torch::nn::Linear& delta) {
    if (!delta) return std::make_pair(in.k, in.v);
    auto y = in.x.matmul(delta->weight.t());
    auto dk = apply_rope(heads(y.narrow(-1, 0, Hkv * d)), {in.cos, in.sin});
    return std::make_pair(in.k + dk, in.v + heads(y.narrow(-1, Hkv * d, Hkv * d)));
  };
  auto [k_cmp_in, v_cmp_in] = branch(nsa.cmp_kv);
  auto [k_win, v_win] = branch(nsa.win_kv);
  // phi(block) = mean + W2 silu(W1 flatten(block + position) + b1) + b2 (or just the mean).
  auto compress = [&](const torch::Tensor& x, BlockCompressor& phi) {
    auto out = torch::zeros({B, Hkv, n_cmp, d}, torch::kFloat64);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t h = 0; h < Hkv; ++h)
        for (int64_t n = 0; n < n_cmp; ++n) {
          auto block = x[b][h].narrow(0, n * s, l);
          out[b][h][n] = block.mean(0);
          if (phi) {
            auto hidden = torch::silu(phi->hidden->weight.mv((block + phi->position).reshape(-1)) + phi->hidden->bias);
            out[b][h][n] += phi->out->weight.mv(hidden) + phi->out->bias;
          }
        }
    return out;
  };
  auto k_cmp = compress(k_cmp_in, nsa.compress_k), v_cmp = compress(v_cmp_in, nsa.compress_v);
  auto gates = torch::sigmoid(in.x.matmul(nsa.gate->weight.t()) + nsa.gate->bias);  // [B, T, 3 Hq]

  Reference ref{std::vector<bool>(B * Hkv * T * n_blocks, false), torch::zeros_like(in.q)};
  auto o_cmp = torch::zeros_like(in.q);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t hk = 0; hk < Hkv; ++hk)
      for (int64_t i = 0; i < T; ++i) {
        std::vector<double> importance(n_blocks, 0.0);
        for (int64_t g = 0; g < G; ++g) {
          const int64_t h = hk * G + g;
          auto p = test::brute_compressed_probs(in.q, k_cmp, b, h, hk, i, l, s);
          for (int64_t n = 0; n < n_cmp; ++n) {
            o_cmp[b][h][i] += p[n] * v_cmp[b][hk][n];
            for (int64_t c = 0; c < n_blocks; ++c)
              if (test::overlaps(n, l, s, c, cfg.sel_block)) importance[c] += p[n];
          }
        }
        auto chosen = test::brute_select(importance, i / cfg.sel_block, cfg.top_n, cfg.init_blocks, cfg.local_blocks);
        for (int64_t c = 0; c < n_blocks; ++c) ref.selected[((b * Hkv + hk) * T + i) * n_blocks + c] = chosen[c];
      }
  auto none = [](auto...) { return 0.0; };
  auto o_slc = test::brute_attention(
      in.q, in.k, in.v,
      [&](auto b, auto hk, auto i, auto j) { return bool(ref.selected[((b * Hkv + hk) * T + i) * n_blocks + j / cfg.sel_block]); },
      none);
  auto o_win = test::brute_attention(in.q, k_win, v_win, [&](auto, auto, auto i, auto j) { return i - j < cfg.window; }, none);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t)
      for (int64_t h = 0; h < Hq; ++h)
        ref.output.select(0, b).select(0, h)[t] = gates[b][t][h] * o_cmp[b][h][t] + gates[b][t][Hq + h] * o_slc[b][h][t] +
                                                  gates[b][t][2 * Hq + h] * o_win[b][h][t];
  return ref;
}

TEST(NsaAttention, SelectionAndOutputMatchBruteForce) {
  std::vector<Case> cases = {
      {2, 16, 16, 45, 4, nsa_knobs(8, 4, 16, 2, 1, 1, 16)},                      // G = 1, ragged
      {1, 16, 8, 50, 4, nsa_knobs(8, 4, 8, 3, 1, 1, 8)},                         // G = 2
      {2, 16, 4, 37, 4, nsa_knobs(6, 3, 6, 3, 0, 2, 12, "mean")},                // G = 4, mean compressor
      {1, 16, 2, 48, 4, nsa_knobs(8, 4, 16, 2, 1, 1, 16, "mlp", "separate")},    // G = 8, separate K/V
      {1, 16, 1, 41, 4, nsa_knobs(8, 8, 8, 3, 1, 1, 8)},                         // G = 16, stride = block
      {1, 2, 1, 150, 4, nsa_knobs(32, 16, 64, 2, 1, 1, 64, "mlp", "separate")},  // the default geometry
  };
  for (const auto& c : cases) {
    SCOPED_TRACE("B " + std::to_string(c.B) + " Hq " + std::to_string(c.Hq) + " Hkv " + std::to_string(c.Hkv) +
                 " T " + std::to_string(c.T));
    auto nsa = make_random_nsa(c);
    auto in = test::random_inputs(model_config(c), c.B, c.T, torch::kFloat64, 22);
    auto ref = brute_nsa(*nsa, c.nsa, in);
    auto selected = torch::isfinite(dense_bias(nsa->selection(in), c.B, c.Hkv, c.T, c.nsa.sel_block)).contiguous();
    ASSERT_EQ(std::vector<bool>(selected.data_ptr<bool>(), selected.data_ptr<bool>() + selected.numel()), ref.selected);
    // Not trivially everything: some causal blocks are left out.
    const int64_t n_blocks = selected.size(3);
    EXPECT_LT(selected.sum().item<int64_t>(), c.B * c.Hkv * c.T * n_blocks);
    EXPECT_TRUE(torch::allclose(nsa->forward(in), ref.output, 0, 1e-10));
  }
}

TEST(NsaAttention, ReducesToDenseWhenEverythingIsSelected) {
  for (const std::string kv : {"shared", "separate"}) {
    SCOPED_TRACE(kv);
    Case c{2, 4, 2, 90, 16, nsa_knobs(16, 8, 16, 100, 1, 2, 96, "mlp", kv)};
    auto nsa = std::dynamic_pointer_cast<NsaAttention>(test::build(model_config(c), torch::kFloat32));
    {
      torch::NoGradGuard no_grad;  // g_cmp = 0, g_slc = g_win = 1/2
      nsa->gate->bias.narrow(0, 0, 4).fill_(-1e4);
    }
    auto in = test::random_inputs(model_config(c), c.B, c.T, torch::kFloat32, 23);
    test::expect_dense(*nsa, in, 1e-5);
  }
}

TEST(NsaAttention, GradientsReachCompressorGatesAndBranchKV) {
  Case c{1, 2, 1, 30, 4, nsa_knobs(8, 4, 8, 2, 1, 1, 8, "mlp", "separate")};
  // At the continual-pretraining init: the compressor's output layer, the gates and the branch
  // K/V corrections all receive gradient (the compressor's inner layers follow once its zero
  // output layer has moved).
  {
    auto nsa = std::dynamic_pointer_cast<NsaAttention>(test::build(model_config(c), torch::kFloat64));
    auto in = test::random_inputs(model_config(c), c.B, c.T, torch::kFloat64, 24);
    nsa->forward(in).pow(2).sum().backward();
    for (const auto& [name, grad] : std::vector<std::pair<std::string, torch::Tensor>>{
             {"compress_k.out.weight", nsa->compress_k->out->weight.grad()},
             {"compress_v.out.weight", nsa->compress_v->out->weight.grad()},
             {"gate.weight", nsa->gate->weight.grad()},
             {"gate.bias", nsa->gate->bias.grad()},
             {"cmp_kv.weight", nsa->cmp_kv->weight.grad()},
             {"win_kv.weight", nsa->win_kv->weight.grad()}})
      EXPECT_TRUE(grad.defined() && grad.abs().max().item<double>() > 1e-6) << name;
  }
  // With every parameter random: each parameter's gradient matches finite differences.
  auto nsa = make_random_nsa(c);
  auto in = test::random_inputs(model_config(c), c.B, c.T, torch::kFloat64, 25);
  auto w = torch::randn_like(in.q);
  auto loss = [&] { return (nsa->forward(in) * w).sum(); };
  loss().backward();
  for (auto& item : nsa->named_parameters()) {
    const std::string& name = item.key();
    auto p = item.value();
    auto grad = p.grad().clone();
    // A bias shared by all compressed keys shifts every compressed logit of a query equally,
    // which the softmax ignores: its gradient is zero, and finite differences agree.
    if (name != "compress_k.out.bias") {
      EXPECT_GT(grad.abs().max().item<double>(), 1e-6) << name;
    }
    test::expect_finite_differences(p, grad, [&] { return loss().item<double>(); }, name);
  }
}

TEST(NsaAttention, RefusesSelectionsThatMaySkipTheQuerysOwnBlock) {
  auto cfg = model_config({1, 4, 2, 40, 4, nsa_knobs(8, 4, 8, 3, 1, 0, 8)});
  try {
    make_attention(cfg);
    FAIL() << "local_blocks 0 accepted";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("model.attention.nsa.local_blocks"), std::string::npos) << e.what();
  }
}

TEST(NsaAttention, InitialisedToStartCloseToDense) {
  // The recipe defaults on a sequence inside the window: the selection and window branches
  // are exactly dense, the compression branch enters with g_cmp = sigmoid(-3).
  auto cfg = test::attention_config("nsa", 4, 2, 16);
  auto nsa = test::build(cfg, torch::kFloat32);
  auto in = test::random_inputs(cfg, 1, 200, torch::kFloat32, 26);
  auto gap = (nsa->forward(in) - dense_causal_attention(in.q, in.k, in.v)).abs().max().item<double>();
  EXPECT_LT(gap, 0.05 * in.v.abs().max().item<double>());
  EXPECT_GT(gap, 0.0);
  // Mean compressor and shared K/V: the gates are the only parameters.
  cfg.attention.nsa.compressor = "mean";
  std::vector<std::string> names;
  for (const auto& p : make_attention(cfg)->named_parameters()) names.push_back(p.key());
  EXPECT_EQ(names, (std::vector<std::string>{"gate.weight", "gate.bias"}));
}

TEST(NsaAttention, SparsityCountMatchesBruteForce) {
  Case c{2, 4, 2, 70, 4, nsa_knobs(8, 4, 8, 3, 1, 1, 8)};
  for (int64_t offset : {0, 33}) {
    auto nsa = make_random_nsa(c, offset);
    nsa->record_stats = true;
    auto in = test::random_inputs(model_config(c), c.B, c.T, torch::kFloat64, 27);
    nsa->forward(in);
    auto sel = torch::isfinite(dense_bias(nsa->selection(in), c.B, c.Hkv, c.T, c.nsa.sel_block));
    auto S = sel.accessor<bool, 4>();
    EXPECT_EQ(nsa->stats.attended, test::brute_count(c.B, c.Hq, c.Hkv, c.T, offset, [&](auto b, auto h, auto i, auto j) {
                return S[b][h][i][j / 8] || i - j < 8;
              }));
    EXPECT_EQ(nsa->stats.causal, c.B * c.Hq * causal_pairs(c.T, offset));
    EXPECT_LT(nsa->stats.attended, nsa->stats.causal);
  }
}

}  // namespace
}  // namespace st
