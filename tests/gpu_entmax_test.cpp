// The alpha = 1.5 entmax kernels (what st::entmax runs for fp32 CUDA tensors) against the
// sort-based ATen path on the CPU, in fp64 on the same fp32 inputs: values and gradients,
// masked entries, all-masked rows, ties, row lengths around the warp width. The kernels work
// in fp32, where x - tau carries the rounding of |z| (2^-24 relative): the tolerance scales
// with the row's largest |z| (on the H200, 3.6e-6 at |z| up to ~170). Skips without a GPU.
#ifdef SPARSETRAIN_CUDA
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <limits>

#include "attention/entmax.h"

namespace st {
namespace {

TEST(GpuEntmax, KernelsMatchTheSortBasedSolver) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  torch::manual_seed(4);
  const double inf = std::numeric_limits<double>::infinity();
  for (int64_t n : {1, 5, 32, 33, 1000, 2049}) {
    for (double scale : {0.5, 4.0, 40.0}) {  // dense to very sparse supports
      SCOPED_TRACE("n " + std::to_string(n) + " scale " + std::to_string(scale));
      auto z = (torch::randn({3, 70, n}, torch::kFloat32) * scale).to(torch::kFloat64);
      z = z.masked_fill(torch::rand({3, 70, n}) < 0.3, -inf);  // masked entries
      z.select(1, 5).fill_(-inf);                             // an all-masked row
      z.select(1, 6).fill_(1.0);                              // ties
      auto dp = torch::randn({3, 70, n}, torch::kFloat64);
      auto z_cpu = z.clone().requires_grad_(true);
      auto want = entmax(z_cpu, 1.5, -1);
      want.backward(dp);
      auto z_gpu = z.to(torch::kCUDA, torch::kFloat32).requires_grad_(true);
      auto got = entmax(z_gpu, 1.5, -1);
      got.backward(dp.to(torch::kCUDA, torch::kFloat32));
      const double tol = 1e-6 * (1 + z.abs().nan_to_num(0, 0, 0).max().item<double>() / 8);
      EXPECT_LT((got.cpu().to(torch::kFloat64) - want).abs().max().item<double>(), tol);
      EXPECT_LT((z_gpu.grad().cpu().to(torch::kFloat64) - z_cpu.grad()).abs().max().item<double>(), 10 * tol);
      EXPECT_TRUE((got.cpu() == 0).masked_select(torch::isinf(z)).all().item<bool>()) << "masked entries exactly 0";
    }
  }
}

}  // namespace
}  // namespace st
#endif  // SPARSETRAIN_CUDA
