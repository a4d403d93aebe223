// DashAttention's fused routing kernels (kernels/dash_route.cu) against its ATen routing on the
// same GPU and inputs: the same lists, the same bias entries up to fp32 rounding, the same
// gradients into q and the chunk summaries up to TF32 rounding. Both paths take the same score
// GEMM and the same entmax threshold code (kernels/entmax15.cuh), so the supports must agree
// exactly. Skips without a GPU.
#ifdef SPARSETRAIN_CUDA
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstdio>

#include "attention/dash.h"
#include "attention_brute_force.h"
#include "relative_error.h"

namespace st {
namespace {

struct Case {
  int64_t B, Hkv, G, T, d;
  int64_t chunk;
  double temperature, sigma;
  std::string prior;
  int64_t sink, local, tile_rows;
  int64_t route_positions = 1;
};

TEST(GpuDashRouting, FusedKernelsMatchAten) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  const Case cases[] = {
      {1, 2, 1, 1000, 64, 64, 2.0, 1.0, "unnormalized", 0, 0, 0},
      {2, 1, 4, 777, 128, 32, 4.0, 1.0, "normalized", 1, 1, 100},  // ragged; tiles off chunk edges
      {1, 2, 3, 4096, 64, 64, 8.0, 2.0, "unnormalized", 1, 2, 0},
      {1, 1, 16, 4096, 128, 64, 3.0, 1.0, "unnormalized", 0, 0, 1000},
      {1, 1, 16, 8192, 128, 64, 16.0, 1.0, "normalized", 2, 1, 0},
      {1, 1, 8, 20000, 128, 64, 6.0, 1.0, "unnormalized", 0, 0, 0},  // over 256 chunks per row
      {1, 2, 16, 4099, 128, 64, 24.0, 1.0, "unnormalized", 0, 0, 1000, 4},  // one routing per 4 positions
      {2, 1, 4, 3001, 64, 64, 16.0, 1.0, "normalized", 1, 1, 0, 16},        // per 16, ragged
      {1, 1, 3, 2000, 64, 32, 5.0, 1.0, "unnormalized", 0, 2, 500, 2},
  };
  torch::manual_seed(11);
  for (const Case& c : cases) {
    SCOPED_TRACE("G " + std::to_string(c.G) + " T " + std::to_string(c.T) + " " + c.prior + " route_positions " +
                 std::to_string(c.route_positions));
    auto cfg = test::attention_config("dash", c.Hkv * c.G, c.Hkv, c.d);
    cfg.attention.dash.chunk = c.chunk;
    cfg.attention.dash.temperature = c.temperature;
    cfg.attention.dash.sigma = c.sigma;
    cfg.attention.dash.prior = c.prior;
    cfg.attention.dash.sink_chunks = c.sink;
    cfg.attention.dash.local_chunks = c.local;
    cfg.attention.dash.route_positions = c.route_positions;
    const auto f32 = torch::TensorOptions().dtype(torch::kFloat32).device(torch::kCUDA);
    const auto q0 = torch::randn({c.B, c.Hkv * c.G, c.T, c.d}, f32);
    const auto kbar0 = torch::randn({c.B, c.Hkv, c.T / c.chunk, c.d}, f32);
    const auto upstream = torch::randn({c.B * c.Hkv * c.T * (c.T / c.chunk + 1)}, f32);
    struct Run {
      BlockRows rows;
      torch::Tensor dq, dkbar;
    };
    auto run = [&](const std::string& impl) {
      cfg.attention.impl = impl;
      auto dash = std::dynamic_pointer_cast<DashAttention>(test::build(cfg, torch::kFloat32));
      dash->routing_tile_rows = c.tile_rows;
      auto q = q0.clone().requires_grad_(true), kbar = kbar0.clone().requires_grad_(true);
      Run r{dash->routing(q, kbar), {}, {}};
      (r.rows.bias * upstream.narrow(0, 0, r.rows.bias.numel())).sum().backward();
      r.dq = q.grad();
      r.dkbar = kbar.grad();
      return r;
    };
    const Run want = run("reference"), got = run("cuda");
    ASSERT_TRUE(torch::equal(got.rows.row_ptr, want.rows.row_ptr));
    ASSERT_TRUE(torch::equal(got.rows.blocks, want.rows.blocks));
    const int64_t nnz = want.rows.blocks.numel(), causal = c.B * c.Hkv * (c.T / c.chunk) * c.T / 2;
    EXPECT_GT(nnz, 0);
    EXPECT_LT(nnz, causal * 19 / 20) << "the routing should leave chunks out here";
    const double bias_err = (got.rows.bias - want.rows.bias).abs().max().item<double>();
    const double dq_err = test::rel_err(got.dq, want.dq), dkbar_err = test::rel_err(got.dkbar, want.dkbar);
    std::printf("  G %ld T %ld %s R %ld: %ld entries, bias max abs diff %.2e, dq %.2e, dkbar %.2e\n", long(c.G),
                long(c.T), c.prior.c_str(), long(c.route_positions), long(nnz), bias_err, dq_err, dkbar_err);
    EXPECT_LT(bias_err, 1e-4);
    // The kernels' path takes the scores' gradient products in TF32 (dash.cpp): ~5e-4.
    EXPECT_LT(dq_err, 3e-3);
    EXPECT_LT(dkbar_err, 3e-3);
  }
}

}  // namespace
}  // namespace st
#endif  // SPARSETRAIN_CUDA
