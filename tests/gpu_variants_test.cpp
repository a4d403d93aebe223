// DashAttention, NSA and InfLLMv2 with model.attention.impl: cuda (the block-sparse kernels, fed
// the variants' per-row lists or lists built from their dense bias) against impl: reference on
// the same module and inputs: the output and the gradients of q, k, v and every parameter
// (Dash's pooling query, NSA's gates and compressors). Dash's routing runs the same ATen code
// on both sides; NSA's and InfLLMv2's selections run the selection kernels under cuda, which
// choose as the reference does up to near-ties (gpu_selection_test.cpp counts those). Skips
// without a GPU.
#ifdef SPARSETRAIN_CUDA
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <ATen/autocast_mode.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>

#include "attention/block_selection.h"
#include "config/recipe.h"
#include "model/attention.h"
#include "model/rope.h"
#include "relative_error.h"

namespace st {
namespace {

using test::rel_err;

struct Case {
  std::string variant;
  int64_t Hkv, G, T, d;
};

ModelConfig config(const Case& c, const std::string& impl) {
  ModelConfig cfg;
  cfg.n_heads = c.Hkv * c.G;
  cfg.n_kv_heads = c.Hkv;
  cfg.head_dim = c.d;
  cfg.dim = 64;
  cfg.attention.variant = c.variant;
  cfg.attention.impl = impl;
  // Sparse at these lengths: random keys make near-equal chunk scores, which entmax at s = 1
  // would route almost all; NSA keeps 6 of up to 64 blocks and a 256-key window; InfLLMv2 6
  // blocks and a 192-key window, dense below 512 tokens.
  cfg.attention.dash.temperature = 8.0;
  cfg.attention.nsa.top_n = 6;
  cfg.attention.nsa.window = 256;
  cfg.attention.infllmv2.top_k = 6;
  cfg.attention.infllmv2.window = 192;
  cfg.attention.infllmv2.dense_len = 512;
  return cfg;
}

// The same random module for either impl: every parameter off its init, so the zero-started
// pooling query, gates and compressor output layers all carry signal.
std::shared_ptr<AttentionVariant> build(const Case& c, const std::string& impl, torch::ScalarType param_dtype) {
  torch::manual_seed(17);
  auto m = make_attention(config(c, impl));
  torch::NoGradGuard no_grad;
  for (auto& p : m->parameters()) p.normal_(0, 0.05);
  m->to(torch::kCUDA, param_dtype);
  return m;
}

struct Result {
  torch::Tensor out, dq, dk, dv;
  std::vector<std::pair<std::string, torch::Tensor>> param_grads;
  double sparsity = 0;
};

// Inputs are drawn in fp32 and rounded to `values` (bf16 unless fp32 inputs are the point),
// then held in `dtype`: an fp64 run sees exactly the bf16 run's numbers.
Result run(const Case& c, const std::string& impl, torch::ScalarType dtype,
           torch::ScalarType values = torch::kBFloat16) {
  auto m = build(c, impl, dtype == torch::kFloat64 ? torch::kFloat64 : torch::kFloat32);
  m->record_stats = true;
  torch::manual_seed(c.T * 131 + c.G * 7 + c.d);
  const auto opt = torch::TensorOptions().dtype(torch::kFloat32).device(torch::kCUDA);
  auto draw = [&](torch::IntArrayRef shape) { return torch::randn(shape, opt).to(values).to(dtype); };
  auto q = draw({1, c.Hkv * c.G, c.T, c.d}).requires_grad_(true);
  auto k = draw({1, c.Hkv, c.T, c.d}).requires_grad_(true);
  auto v = draw({1, c.Hkv, c.T, c.d}).requires_grad_(true);
  auto x = torch::randn({1, c.T, 64}, opt).to(dtype == torch::kFloat64 ? dtype : torch::kFloat32);
  auto dout = draw({1, c.Hkv * c.G, c.T, c.d});
  auto rope = rope_tables(config(c, impl), c.T, torch::kCUDA);
  if (dtype == torch::kFloat64) rope = {rope.cos.to(dtype), rope.sin.to(dtype)};
  Result r;
  r.out = m->forward({q, k, v, x, rope.cos, rope.sin});
  r.out.backward(dout.to(r.out.scalar_type()));
  r.dq = q.grad(), r.dk = k.grad(), r.dv = v.grad();
  for (const auto& p : m->named_parameters()) r.param_grads.emplace_back(p.key(), p.value().grad());
  r.sparsity = m->stats.sparsity();
  return r;
}

// Forward 1e-2 and gradients 2e-2 relative: the kernels round P and dS to bf16 (8 mantissa
// bits) before their MMAs, the reference computes in fp32 from the same bf16 inputs.
// Dash's dq, dk and pool_query also carry d(bias) back through log(pbar) and the
// normalisation: dL/dpbar_c has a term mean(d bias) / pbar_c, so an error of d(bias) is
// amplified ~50x on chunks with a small prior. The kernels' d(bias) used to take delta =
// rowsum(dO O) from the bf16 O, itself the product of P rounded to bf16: each rounding alone
// put dq 0.08-0.17 off fp64 in a CPU emulation (T 1000, G 1, d 128), both together 0.19 on the
// H200. With delta as the row's sum of P dP (bsa_backward's dQ pass computes it), the
// emulation gives 1.2e-3; GpuVariantsDash.Fp64Oracle measures both impls against fp64 on the GPU.
void expect_close(const Case& c, const Result& got, const Result& want) {
  double worst_grad = 0;
  auto grad = [&](const std::string& what, const torch::Tensor& g, const torch::Tensor& w) {
    ASSERT_EQ(g.defined(), w.defined()) << what;
    if (!g.defined()) return;  // no path to it at all (Dash's pooling query when T < one chunk)
    const double e = rel_err(g, w);
    worst_grad = std::max(worst_grad, e);
    EXPECT_LT(e, 2e-2) << what;
  };
  const double e_out = rel_err(got.out, want.out);
  EXPECT_LT(e_out, 1e-2) << "output";
  EXPECT_EQ(got.out.scalar_type(), want.out.scalar_type());
  grad("dq", got.dq, want.dq);
  grad("dk", got.dk, want.dk);
  grad("dv", got.dv, want.dv);
  ASSERT_EQ(got.param_grads.size(), want.param_grads.size());
  for (size_t i = 0; i < got.param_grads.size(); ++i) {
    // Zero in exact arithmetic: a bias shared by all compressed keys shifts each query's
    // compressed logits equally. Both sides return rounding noise; the fused bf16 attention
    // of the compression branch (delta from its 16-bit output) more of it than fp32 ATen.
    if (got.param_grads[i].first == "compress_k.out.bias") continue;
    grad("d " + got.param_grads[i].first, got.param_grads[i].second, want.param_grads[i].second);
  }
  std::printf("  %s Hkv %ld G %ld T %ld d %ld: sparsity %.3f, out %.2e, worst grad %.2e\n", c.variant.c_str(),
              long(c.Hkv), long(c.G), long(c.T), long(c.d), want.sparsity, e_out, worst_grad);
}

class GpuVariants : public ::testing::TestWithParam<Case> {};

TEST_P(GpuVariants, CudaMatchesReference) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  const Case c = GetParam();
  const Result got = run(c, "cuda", torch::kBFloat16), want = run(c, "reference", torch::kBFloat16);
  expect_close(c, got, want);
}

std::vector<Case> cases() {
  std::vector<Case> all;
  for (const std::string variant : {"dash", "nsa", "infllmv2"})
    for (int64_t T : {63, 1000, 4096})
      for (int64_t G : {1, 4, 16})
        for (int64_t d : {64, 128}) all.push_back({variant, G == 16 ? 1 : 2, G, T, d});
  return all;
}

INSTANTIATE_TEST_SUITE_P(Grid, GpuVariants, ::testing::ValuesIn(cases()),
                         [](const ::testing::TestParamInfo<Case>& i) {
                           const Case& c = i.param;
                           return c.variant + "_Hkv" + std::to_string(c.Hkv) + "_G" + std::to_string(c.G) + "_T" +
                                  std::to_string(c.T) + "_d" + std::to_string(c.d);
                         });

// Both impls against the reference run in fp64 on the same bf16-rounded inputs and parameters:
// which of the two sides a cuda/reference difference comes from.
TEST(GpuVariantsDash, Fp64Oracle) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  for (const Case& c : {Case{"dash", 2, 1, 1000, 128}, Case{"dash", 2, 4, 4096, 128}, Case{"dash", 1, 16, 4096, 64}}) {
    const Result oracle = run(c, "reference", torch::kFloat64);
    for (const std::string impl : {"reference", "cuda"}) {
      const Result r = run(c, impl, impl == "cuda" ? torch::kBFloat16 : torch::kFloat32);
      double worst = 0;
      std::string worst_name;
      auto grad = [&](const std::string& what, const torch::Tensor& g, const torch::Tensor& w) {
        const double e = rel_err(g, w);
        if (e > worst) worst = e, worst_name = what;
        EXPECT_LT(e, 2e-2) << impl << " " << what;
      };
      grad("dq", r.dq, oracle.dq);
      grad("dk", r.dk, oracle.dk);
      grad("dv", r.dv, oracle.dv);
      for (size_t i = 0; i < r.param_grads.size(); ++i)
        grad("d " + r.param_grads[i].first, r.param_grads[i].second, oracle.param_grads[i].second);
      std::printf("  dash Hkv %ld G %ld T %ld d %ld, %s vs fp64: out %.2e, worst grad %.2e (%s)\n", long(c.Hkv),
                  long(c.G), long(c.T), long(c.d), impl.c_str(), rel_err(r.out, oracle.out), worst, worst_name.c_str());
    }
  }
}

// Training's case: fp32 q/k/v (the residual stream) under bf16 autocast. The kernel path casts
// to bf16 and returns fp32, like the reference. The inputs are bf16 values (held in fp32), so
// that cast loses nothing. Dash's reference runs without autocast: under it the reference's own
// matmuls round P to bf16 before P V and it saves that O for its delta, which is the d(bias)
// error the kernels no longer make (Fp64Oracle above), amplified by Dash's routing gradient.
TEST(GpuVariantsAutocast, Fp32InputsUnderBf16Autocast) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  const bool was_enabled = at::autocast::is_autocast_enabled(at::kCUDA);
  const auto was_dtype = at::autocast::get_autocast_dtype(at::kCUDA);
  at::autocast::set_autocast_enabled(at::kCUDA, true);
  at::autocast::set_autocast_dtype(at::kCUDA, at::kBFloat16);
  for (const std::string variant : {"dash", "nsa", "infllmv2"}) {
    const Case c{variant, 2, 4, 1000, 64};
    const Result got = run(c, "cuda", torch::kFloat32);
    at::autocast::set_autocast_enabled(at::kCUDA, variant != "dash");
    const Result want = run(c, "reference", torch::kFloat32);
    at::autocast::set_autocast_enabled(at::kCUDA, true);
    EXPECT_EQ(got.out.scalar_type(), torch::kFloat32);
    expect_close(c, got, want);
  }
  at::autocast::clear_cache();
  at::autocast::set_autocast_enabled(at::kCUDA, was_enabled);
  at::autocast::set_autocast_dtype(at::kCUDA, was_dtype);
}

// What the kernels cannot express: impl cuda refuses, naming the key; impl auto falls back.
TEST(GpuVariantsFallback, InexpressibleCallsRefuseUnderCudaAndFallBackUnderAuto) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  auto forward = [](ModelConfig cfg) {
    torch::manual_seed(3);
    auto m = make_attention(cfg);
    m->to(torch::kCUDA);
    const auto opt = torch::TensorOptions().dtype(torch::kBFloat16).device(torch::kCUDA);
    const int64_t T = 700, d = cfg.head_dim;
    auto rope = rope_tables(cfg, T, torch::kCUDA);
    return m->forward({torch::randn({1, cfg.n_heads, T, d}, opt), torch::randn({1, cfg.n_kv_heads, T, d}, opt),
                       torch::randn({1, cfg.n_kv_heads, T, d}, opt),
                       torch::randn({1, T, cfg.dim}, opt.dtype(torch::kFloat32)), rope.cos, rope.sin});
  };
  // InfLLMv2 and NSA with selection blocks of 32 keys (the core kernels' are 64; the selection
  // kernels take them, so under auto NSA's selection and window branch run on kernels).
  ModelConfig infllm = config({"infllmv2", 2, 4, 0, 64}, "cuda");
  infllm.attention.infllmv2.dense_len = 0;
  infllm.attention.infllmv2.block = 32;
  infllm.attention.infllmv2.window = 128;
  ModelConfig nsa = config({"nsa", 2, 4, 0, 64}, "cuda");
  nsa.attention.nsa.sel_block = 32;
  nsa.attention.nsa.top_n = 3;
  for (ModelConfig cfg : {infllm, nsa}) {
    std::string error;
    try {
      forward(cfg);
    } catch (const ConfigError& e) {
      error = e.what();
    }
    EXPECT_NE(error.find("model.attention.impl"), std::string::npos) << cfg.attention.variant << ": " << error;
    // Under auto only the inexpressible call falls back (NSA's window branch still runs the
    // kernels, so do both variants' selections), so auto matches the reference to bf16 tolerance.
    auto ref = cfg, autod = cfg;
    ref.attention.impl = "reference";
    autod.attention.impl = "auto";
    EXPECT_LT(rel_err(forward(autod), forward(ref)), 1e-2) << cfg.attention.variant;
  }
}

// NSA's compression branch on the GPU, tiled so that each tile works only on the compressed
// blocks complete by its last query (several tiles, ragged last tile, tiles before the first
// complete block), against the untiled math in fp64 on the CPU: output and q, k, v gradients.
TEST(GpuCompressedAttention, TiledMatchesUntiledFp64) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  torch::manual_seed(5);
  const int64_t B = 1, Hkv = 2, G = 4, T = 4000, d = 64, length = 32, stride = 16, n = (T - length) / stride + 1;
  auto q = torch::randn({B, Hkv * G, T, d}, torch::kFloat64);
  auto k = torch::randn({B, Hkv, n, d}, torch::kFloat64), v = torch::randn({B, Hkv, n, d}, torch::kFloat64);
  auto w = torch::randn({B, Hkv * G, T, d}, torch::kFloat64);
  auto grads = [&](const torch::Tensor& q_in, const torch::Tensor& k_in, const torch::Tensor& v_in, int64_t tile_rows) {
    auto qq = q_in.clone().requires_grad_(true), kk = k_in.clone().requires_grad_(true),
         vv = v_in.clone().requires_grad_(true);
    auto out = tile_rows > 0 ? compressed_attention(qq, kk, vv, length, stride, tile_rows)
                             : torch::matmul(compressed_attention_probs(qq, kk, length, stride), vv.unsqueeze(2))
                                   .view({B, Hkv * G, T, d});
    auto g = torch::autograd::grad({(out * w.to(out.device(), out.scalar_type())).sum()}, {qq, kk, vv});
    return std::vector<torch::Tensor>{out, g[0], g[1], g[2]};
  };
  const auto want = grads(q, k, v, 0);
  const int64_t tilings[] = {7, 300, 1024, T};
  for (int64_t tile_rows : tilings) {
    const auto got = grads(q.to(torch::kCUDA, torch::kFloat32), k.to(torch::kCUDA, torch::kFloat32),
                           v.to(torch::kCUDA, torch::kFloat32), tile_rows);
    const char* names[] = {"out", "dq", "dk", "dv"};
    for (int i = 0; i < 4; ++i)
      EXPECT_LT(rel_err(got[i].cpu(), want[i]), 1e-4) << "tile rows " << tile_rows << " " << names[i];
  }
}

// The compression branch's fast path (SDPA in bf16 with the block-causal mask, query tiles)
// against the untiled math in fp64 on the CPU on the same bf16-rounded numbers: output and q,
// k, v gradients within the core kernels' bf16 tolerances; queries before the first complete
// block get 0 and no gradient.
TEST(GpuCompressedAttention, SdpaPathMatchesFp64) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  const int64_t B = 2, Hkv = 2, length = 32, stride = 16;
  for (auto [G, T, d] : {std::tuple<int64_t, int64_t, int64_t>{4, 20, 64}, {4, 4000, 64}, {16, 1500, 128}, {1, 777, 128}}) {
    torch::manual_seed(T + G);
    const int64_t n = T < length ? 0 : (T - length) / stride + 1;
    auto bf16 = [](torch::IntArrayRef shape) { return torch::randn(shape).to(torch::kBFloat16).to(torch::kFloat64); };
    auto q = bf16({B, Hkv * G, T, d}), k = bf16({B, Hkv, n, d}), v = bf16({B, Hkv, n, d});
    auto w = torch::randn({B, Hkv * G, T, d}, torch::kFloat64);
    auto run = [&](const torch::Tensor& q_in, const torch::Tensor& k_in, const torch::Tensor& v_in, bool fast,
                   int64_t tile_rows = 0) {
      auto qq = q_in.clone().requires_grad_(true), kk = k_in.clone().requires_grad_(true),
           vv = v_in.clone().requires_grad_(true);
      auto out = fast ? attend_compressed(qq, kk, vv, length, stride, "cuda", tile_rows)
                      : torch::matmul(compressed_attention_probs(qq, kk, length, stride), vv.unsqueeze(2))
                            .view({B, Hkv * G, T, d});
      auto loss = (out * w.to(out.device(), out.scalar_type())).sum();
      std::vector<torch::Tensor> g(3);
      if (loss.requires_grad())  // else no query sees a block: the output is a constant 0
        g = torch::autograd::grad({loss}, {qq, kk, vv}, /*grad_outputs=*/{}, /*retain_graph=*/false,
                                  /*create_graph=*/false, /*allow_unused=*/true);
      // No path from an input (q when no query sees a block) means a zero gradient.
      auto zero_if_unused = [](const torch::Tensor& grad, const torch::Tensor& x) {
        return grad.defined() ? grad : torch::zeros_like(x);
      };
      return std::vector<torch::Tensor>{out, zero_if_unused(g[0], qq), zero_if_unused(g[1], kk),
                                        zero_if_unused(g[2], vv)};
    };
    const auto want = run(q, k, v, false);
    for (int64_t tile_rows : {int64_t(0), int64_t(700)}) {  // one tile (T <= 4000), several
      const auto got = run(q.to(torch::kCUDA, torch::kBFloat16), k.to(torch::kCUDA, torch::kFloat32),
                           v.to(torch::kCUDA, torch::kFloat32), true, tile_rows);
      EXPECT_EQ(got[0].scalar_type(), torch::kFloat32);
      const char* names[] = {"out", "dq", "dk", "dv"};
      const double tol[] = {1e-2, 2e-2, 2e-2, 2e-2};
      for (int i = 0; i < 4; ++i) {
        if (want[i].numel() == 0) continue;
        EXPECT_LT(rel_err(got[i].cpu(), want[i]), tol[i])
            << "G " << G << " T " << T << " d " << d << " tile rows " << tile_rows << " " << names[i];
      }
      const int64_t blind = std::min<int64_t>(T, length - 1);  // queries that see no block
      EXPECT_EQ(got[0].narrow(2, 0, blind).abs().max().item<double>(), 0.0);
      EXPECT_EQ(got[1].narrow(2, 0, blind).abs().max().item<double>(), 0.0);
    }
  }
}

}  // namespace
}  // namespace st
#endif  // SPARSETRAIN_CUDA
