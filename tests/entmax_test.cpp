// alpha-entmax (DESIGN §2.1): values against the PyPI `entmax` package, the exact and
// bisection solvers against each other, the custom backward against finite differences,
// and the edge cases attention routing hits (masked entries, empty rows, ties, one element,
// large magnitudes).
#include <gtest/gtest.h>

#include <fstream>
#include <limits>

#include "attention/entmax.h"
#include "oracle.h"

namespace st {
namespace {

const double kInf = std::numeric_limits<double>::infinity();
const auto kF64 = torch::TensorOptions().dtype(torch::kFloat64);

void write_f64(const std::string& path, const torch::Tensor& t) {
  auto c = t.to(torch::kFloat64).contiguous();
  std::ofstream(path, std::ios::binary).write(reinterpret_cast<const char*>(c.data_ptr<double>()), c.numel() * sizeof(double));
}

torch::Tensor read_f64(const std::string& path, std::vector<int64_t> shape) {
  auto t = torch::empty(shape, kF64);
  std::ifstream in(path, std::ios::binary);
  in.read(reinterpret_cast<char*>(t.data_ptr<double>()), t.numel() * sizeof(double));
  EXPECT_EQ(in.gcount(), std::streamsize(t.numel() * sizeof(double))) << path;
  return t;
}

// d(sum(entmax(z) * w))/dz through the custom backward.
torch::Tensor entmax_grad(const torch::Tensor& z, const torch::Tensor& w, double alpha) {
  auto zg = z.clone().requires_grad_(true);
  (entmax(zg, alpha) * w).sum().backward();
  return zg.grad();
}

TEST(Entmax, MatchesPyPIEntmaxValuesAndGradients) {
  test::TempDir dir;
  torch::manual_seed(0);
  const int64_t rows = 64, n = 13;
  // Spread rows from near-uniform (dense support) to peaked (support of one or two).
  auto z = torch::randn({rows, n}, kF64) * torch::logspace(-1, 1.5, rows, 10, kF64).unsqueeze(1);
  auto w = torch::randn({rows, n}, kF64);
  write_f64(dir.file("in.bin"), torch::stack({z, w}));
  const std::vector<double> alphas = {1.5, 2.0, 1.25, 1.75};
  ASSERT_EQ(test::run_oracle("entmax_reference.py", dir.file("in.bin") + " " + dir.file("out.bin") + " " +
                                                        std::to_string(rows) + " " + std::to_string(n) + " 1.5 2 1.25 1.75"),
            0)
      << "the oracle needs numpy, torch and entmax in $SPARSETRAIN_PYTHON";
  auto ref = read_f64(dir.file("out.bin"), {int64_t(alphas.size()), 2, rows, n});
  for (size_t i = 0; i < alphas.size(); ++i) {
    SCOPED_TRACE("alpha " + std::to_string(alphas[i]));
    EXPECT_TRUE(torch::allclose(entmax(z, alphas[i]), ref[i][0], 0, 1e-9));
    EXPECT_TRUE(torch::allclose(entmax_grad(z, w, alphas[i]), ref[i][1], 0, 1e-8));
  }
  // The inputs exercised sparse supports: some rows have zeros, no row is all zeros.
  auto p = entmax(z, 1.5);
  EXPECT_GT((p == 0).sum().item<int64_t>(), rows);
  EXPECT_TRUE((p.amax(-1) > 0).all().item<bool>());
}

TEST(Entmax, ExactAndBisectionSolversAgree) {
  torch::manual_seed(1);
  auto z = torch::randn({200, 17}, kF64) * 4;
  z.index_put_({torch::indexing::Slice(0, 20), 3}, -kInf);            // masked entries
  z.index_put_({torch::indexing::Slice(20, 40), torch::indexing::Slice(0, 4)}, 2.5);  // ties
  for (double alpha : {1.5, 2.0}) {
    SCOPED_TRACE("alpha " + std::to_string(alpha));
    EXPECT_TRUE(torch::allclose(entmax(z, alpha), entmax_bisect(z, alpha), 0, 1e-12));
  }
}

TEST(Entmax, BackwardMatchesFiniteDifferences) {
  torch::manual_seed(2);
  for (double alpha : {1.5, 2.0, 1.3}) {
    SCOPED_TRACE("alpha " + std::to_string(alpha));
    auto z = torch::randn({6, 9}, kF64) * 2;
    z.index_put_({0, 0}, -kInf);
    auto w = torch::randn({6, 9}, kF64);
    auto analytic = entmax_grad(z, w, alpha);
    auto numeric = torch::zeros_like(z);
    const double eps = 1e-6;
    for (int64_t i = 0; i < z.numel(); ++i) {
      if (std::isinf(z.view(-1)[i].item<double>())) continue;
      auto zp = z.clone(), zm = z.clone();
      zp.view(-1)[i] += eps;
      zm.view(-1)[i] -= eps;
      numeric.view(-1)[i] = ((entmax(zp, alpha) - entmax(zm, alpha)) * w).sum() / (2 * eps);
    }
    EXPECT_TRUE(torch::allclose(analytic, numeric, 1e-5, 1e-7)) << analytic - numeric;
    EXPECT_GT(analytic.abs().sum().item<double>(), 1e-3);
  }
}

TEST(Entmax, MaskedEntriesGetExactlyZeroAndNoGradient) {
  torch::manual_seed(3);
  auto finite = torch::randn({4, 5}, kF64);
  auto z = torch::cat({finite.narrow(1, 0, 2), torch::full({4, 3}, -kInf, kF64), finite.narrow(1, 2, 3)}, 1);
  for (double alpha : {1.5, 2.0, 1.7}) {
    SCOPED_TRACE("alpha " + std::to_string(alpha));
    auto p = entmax(z, alpha);
    EXPECT_TRUE((p.narrow(1, 2, 3) == 0).all().item<bool>());
    // Masking is the same as leaving the entries out.
    auto expected = entmax(finite, alpha);
    EXPECT_TRUE(torch::allclose(torch::cat({p.narrow(1, 0, 2), p.narrow(1, 5, 3)}, 1), expected, 0, 1e-12));
    auto g = entmax_grad(z, torch::randn({4, 8}, kF64), alpha);
    EXPECT_TRUE((g.narrow(1, 2, 3) == 0).all().item<bool>());
    EXPECT_TRUE(torch::isfinite(g).all().item<bool>());
  }
}

TEST(Entmax, AllMaskedRowIsZeroNotNaN) {
  auto z = torch::tensor({{-kInf, -kInf, -kInf}, {0.5, -kInf, 0.1}}, kF64);
  for (double alpha : {1.5, 2.0, 1.2}) {
    auto p = entmax(z, alpha);
    EXPECT_TRUE((p[0] == 0).all().item<bool>());
    EXPECT_NEAR(p[1].sum().item<double>(), 1.0, 1e-12);
    auto g = entmax_grad(z, torch::ones({2, 3}, kF64) + torch::eye(2, 3, kF64), alpha);
    EXPECT_TRUE((g[0] == 0).all().item<bool>());
    EXPECT_TRUE(torch::isfinite(g).all().item<bool>());
  }
  // An empty dimension is fine too (a query with no past chunks to route over).
  EXPECT_EQ(entmax(torch::zeros({3, 0}, kF64), 1.5).numel(), 0);
}

TEST(Entmax, TiesSingleElementAndKnownValues) {
  for (double alpha : {1.5, 2.0, 1.6}) {
    SCOPED_TRACE("alpha " + std::to_string(alpha));
    auto p = entmax(torch::tensor({3.0, 3.0, 3.0, -5.0}, kF64), alpha);
    EXPECT_TRUE(torch::allclose(p, torch::tensor({1.0 / 3, 1.0 / 3, 1.0 / 3, 0.0}, kF64), 0, 1e-12)) << p;
    auto one = entmax(torch::tensor({-7.0}, kF64), alpha);
    EXPECT_EQ(one.item<double>(), 1.0);
    EXPECT_EQ(entmax_grad(torch::tensor({-7.0}, kF64), torch::tensor({2.0}, kF64), alpha).item<double>(), 0.0);
  }
  // sparsemax([1, 0]) puts all mass on the first entry; entmax15 keeps both:
  // tau = 1/4 - sqrt(7/16) on x = z/2, p = (x - tau)^2.
  EXPECT_TRUE(torch::allclose(entmax(torch::tensor({1.0, 0.0}, kF64), 2.0), torch::tensor({1.0, 0.0}, kF64)));
  const double tau = 0.25 - std::sqrt(7.0 / 16.0);
  EXPECT_TRUE(torch::allclose(entmax(torch::tensor({1.0, 0.0}, kF64), 1.5),
                              torch::tensor({(0.5 - tau) * (0.5 - tau), tau * tau}, kF64), 0, 1e-12));
}

TEST(Entmax, LargeMagnitudesAndShiftInvariance) {
  torch::manual_seed(4);
  auto z = torch::randn({8, 10}, kF64);
  for (double alpha : {1.5, 2.0, 1.4}) {
    SCOPED_TRACE("alpha " + std::to_string(alpha));
    EXPECT_TRUE(torch::allclose(entmax(z + 1e8, alpha), entmax(z, alpha), 0, 1e-7));
    // fp32 logits of magnitude 1e30: finite, one-hot on the arg max, gradient finite.
    auto big = (z * 1e30).to(torch::kFloat32);
    auto p = entmax(big, alpha);
    EXPECT_TRUE(torch::isfinite(p).all().item<bool>());
    EXPECT_TRUE(torch::equal(p.argmax(-1), big.argmax(-1)));
    EXPECT_TRUE(torch::allclose(p.amax(-1), torch::ones({8})));
    auto g = entmax_grad(big, torch::randn({8, 10}), alpha);
    EXPECT_TRUE(torch::isfinite(g).all().item<bool>());
  }
}

TEST(Entmax, WorksAlongAnyDimAndInFloat32) {
  torch::manual_seed(5);
  auto z = torch::randn({5, 7, 3}, kF64);
  EXPECT_TRUE(torch::allclose(entmax(z, 1.5, 1), entmax(z.transpose(1, 2), 1.5, -1).transpose(1, 2)));
  EXPECT_TRUE(torch::allclose(entmax(z.to(torch::kFloat32), 1.5, 0).to(torch::kFloat64), entmax(z, 1.5, 0), 0, 1e-6));
  EXPECT_TRUE(torch::allclose(entmax(z.to(torch::kFloat32), 1.3, 0).to(torch::kFloat64), entmax(z, 1.3, 0), 0, 1e-6));
}

TEST(Entmax, RejectsAlphaOutsideOneToTwo) {
  auto z = torch::randn({3});
  EXPECT_THROW(entmax(z, 1.0), c10::Error);
  EXPECT_THROW(entmax(z, 2.5), c10::Error);
}

}  // namespace
}  // namespace st
