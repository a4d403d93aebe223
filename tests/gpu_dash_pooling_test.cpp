// DashAttention's fused chunk pooling (kernels/dash_pool.cu) against the pooling written out
// in fp64 ATen: the summaries, d k and d pool_query, for 16- and 32-bit keys, ragged sequence
// ends (keys past the last complete chunk get no summary and a zero gradient) and strided key
// layouts. Skips without a GPU.
#ifdef SPARSETRAIN_CUDA
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <cstdio>
#include <string>

#include "attention/cuda/dash_pooling.h"
#include "relative_error.h"

namespace st {
namespace {

struct PoolCase {
  int64_t B, H, T, d, chunk;
  torch::ScalarType dtype;
  bool heads_inner;  // k as a [B, T, H, d] tensor seen as [B, H, T, d], as projections make it
};

// softmax_j(h . k_j / sqrt(d)) weighted sum over each complete chunk, in k's dtype.
torch::Tensor pooled(const torch::Tensor& k, const torch::Tensor& h, int64_t chunk) {
  const int64_t B = k.size(0), H = k.size(1), d = k.size(3), n = k.size(2) / chunk;
  const auto chunks = k.narrow(2, 0, n * chunk).reshape({B, H, n, chunk, d});
  const auto w = torch::softmax((chunks * h.view({1, H, 1, 1, d})).sum(-1) / std::sqrt(double(d)), -1);
  return (w.unsqueeze(-1) * chunks).sum(3);
}

TEST(GpuDashPooling, MatchesFp64) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  const PoolCase cases[] = {
      {1, 2, 1000, 64, 64, torch::kBFloat16, false},  // ragged: 40 keys past the last chunk
      {2, 3, 4096, 128, 64, torch::kHalf, true},
      {1, 1, 777, 128, 16, torch::kFloat32, false},
      {2, 2, 130, 64, 128, torch::kBFloat16, true},  // one chunk per sequence
      {1, 2, 50, 64, 64, torch::kFloat32, false},    // no complete chunk
  };
  torch::manual_seed(3);
  for (const PoolCase& c : cases) {
    SCOPED_TRACE("B " + std::to_string(c.B) + " H " + std::to_string(c.H) + " T " + std::to_string(c.T) + " d " +
                 std::to_string(c.d) + " chunk " + std::to_string(c.chunk));
    const auto f32 = torch::TensorOptions().dtype(torch::kFloat32).device(torch::kCUDA);
    const auto k0 = c.heads_inner ? torch::randn({c.B, c.T, c.H, c.d}, f32).to(c.dtype).transpose(1, 2)
                                  : torch::randn({c.B, c.H, c.T, c.d}, f32).to(c.dtype);
    const auto h0 = torch::randn({c.H, c.d}, f32) * 2;  // peaked weights, far from the mean
    const int64_t n = c.T / c.chunk;
    const auto d_kbar = torch::randn({c.B, c.H, n, c.d}, f32);

    auto k = k0.detach().requires_grad_(true), h = h0.clone().requires_grad_(true);
    const auto got = cuda::pool_chunks(k, h, c.chunk);
    ASSERT_EQ(got.sizes(), (std::vector<int64_t>{c.B, c.H, n, c.d}));
    ASSERT_EQ(got.scalar_type(), torch::kFloat32);
    (got * d_kbar).sum().backward();

    auto k64 = k0.detach().to(torch::kFloat64).requires_grad_(true);
    auto h64 = h0.to(torch::kFloat64).requires_grad_(true);
    const auto want = pooled(k64, h64, c.chunk);
    (want * d_kbar.to(torch::kFloat64)).sum().backward();

    if (n > 0) {
      const double kbar_err = test::rel_err(got, want), dk_err = test::rel_err(k.grad(), k64.grad()),
                   dh_err = test::rel_err(h.grad(), h64.grad());
      std::printf("  %s T %ld d %ld chunk %ld: kbar %.2e, dk %.2e, d pool_query %.2e\n", c10::toString(c.dtype),
                  long(c.T), long(c.d), long(c.chunk), kbar_err, dk_err, dh_err);
      EXPECT_LT(kbar_err, 1e-5);
      // dk comes out in k's type: one rounding (bf16 2^-9, fp16 2^-12) on top of fp32.
      EXPECT_LT(dk_err, c.dtype == torch::kFloat32 ? 1e-5 : c.dtype == torch::kHalf ? 1e-3 : 5e-3);
      EXPECT_LT(dh_err, 1e-5);
    } else {
      EXPECT_EQ(h.grad().abs().sum().item<double>(), 0.0);
    }
    // Keys past the last complete chunk feed no summary.
    const auto tail = k.grad().narrow(2, n * c.chunk, c.T - n * c.chunk);
    EXPECT_EQ(tail.abs().sum().item<double>(), 0.0);
  }
}

}  // namespace
}  // namespace st
#endif  // SPARSETRAIN_CUDA
