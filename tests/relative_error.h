// Relative error for comparing a fast path with its reference.
#pragma once
#include <torch/torch.h>

#include <algorithm>
#include <cmath>

namespace st::test {

// ||got - want|| / ||want||, the denominator floored at 1e-3 per sqrt(element): a gradient
// that is zero in exact arithmetic (dQ, dK of a query with a single attended key) comes out
// as rounding noise (~1e-6) from both sides, and noise over noise is no measure of error.
inline double rel_err(const torch::Tensor& got, const torch::Tensor& want) {
  const auto g = got.to(torch::kFloat64), w = want.to(torch::kFloat64);
  const double floor = 1e-3 * std::sqrt(static_cast<double>(w.numel()));
  return (g - w).norm().item<double>() / std::max(w.norm().item<double>(), floor);
}

}  // namespace st::test
