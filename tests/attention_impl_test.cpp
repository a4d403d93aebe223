// model.attention.impl on the CPU: `cuda` refuses with an error that names the key and the
// reason, `auto` runs the reference bit for bit. The kernel side is tests/gpu_variants_test.cpp.
#include <gtest/gtest.h>

#include <string>

#include "attention/block_sparse_dispatch.h"
#include "attention_brute_force.h"
#include "config/recipe.h"

namespace st {
namespace {

std::shared_ptr<AttentionVariant> build_variant(const std::string& variant, const std::string& impl) {
  auto cfg = test::attention_config(variant, 4, 2, 16);
  cfg.attention.impl = impl;
  cfg.attention.infllmv2.dense_len = 0;  // sparse at any length
  cfg.attention.infllmv2.window = 64;
  cfg.attention.nsa.window = 64;
  torch::manual_seed(3);
  auto m = make_attention(cfg);
  torch::NoGradGuard no_grad;
  for (auto& p : m->parameters()) p.normal_(0, 0.3);  // pool_query and gates off their zero init
  return m;
}

TEST(AttentionImpl, CudaOnCpuNamesTheKeyAndTheReason) {
  for (const std::string variant : {"dash", "nsa", "infllmv2"}) {
    auto in = test::random_inputs(test::attention_config(variant, 4, 2, 16), 1, 150, torch::kFloat32, 7);
    try {
      build_variant(variant, "cuda")->forward(in);
      FAIL() << variant << ": impl cuda ran on the CPU";
    } catch (const ConfigError& e) {
      const std::string what = e.what();
      EXPECT_NE(what.find("model.attention.impl"), std::string::npos) << what;
#ifdef SPARSETRAIN_CUDA
      EXPECT_NE(what.find("cpu"), std::string::npos) << what;
#else
      EXPECT_NE(what.find("no CUDA kernels"), std::string::npos) << what;
#endif
    }
  }
}

TEST(AttentionImpl, AutoOnCpuIsTheReference) {
  for (const std::string variant : {"dash", "nsa", "infllmv2"}) {
    auto in = test::random_inputs(test::attention_config(variant, 4, 2, 16), 2, 200, torch::kFloat32, 8);
    auto q_auto = in.q.clone().requires_grad_(true), q_ref = in.q.clone().requires_grad_(true);
    auto in_auto = in, in_ref = in;
    in_auto.q = q_auto;
    in_ref.q = q_ref;
    auto out_auto = build_variant(variant, "auto")->forward(in_auto);
    auto out_ref = build_variant(variant, "reference")->forward(in_ref);
    EXPECT_TRUE(torch::equal(out_auto, out_ref)) << variant;
    out_auto.sum().backward();
    out_ref.sum().backward();
    EXPECT_TRUE(torch::equal(q_auto.grad(), q_ref.grad())) << variant;
  }
}

TEST(AttentionImpl, UnknownImplIsAConfigError) {
  auto q = torch::randn({1, 2, 10, 16}), k = torch::randn({1, 1, 10, 16});
  EXPECT_THROW(attend_blocks(q, k, k, {}, 64, 4, "fast"), ConfigError);
}

}  // namespace
}  // namespace st
