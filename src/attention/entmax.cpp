#include "attention/entmax.h"

#include <torch/autograd.h>

#include <cmath>

#ifdef SPARSETRAIN_CUDA
#include "attention/cuda/entmax.h"
#endif

namespace st {
namespace {

using torch::Tensor;

// All thresholds below work on the last dim of x = (alpha - 1)(z - max z), so max x = 0 and
// tau lies in DESIGN §2.1's bracket [-1, -n^(1-alpha)]. Entries below -1 are outside the
// support whatever the rest of the row holds, so clamping x at -2 changes neither tau nor the
// output, and keeps -inf and huge magnitudes out of the arithmetic (no inf - inf, no overflow
// when squaring).

// alpha = 2: with x sorted descending, the support is the largest prefix k with
// 1 + k x_(k) > sum_{i<=k} x_(i); tau = (sum_{i<=k} x_(i) - 1) / k.
Tensor sparsemax_probs(const Tensor& x) {
  auto xs = std::get<0>(x.sort(-1, /*descending=*/true));
  auto cumsum = xs.cumsum(-1);
  auto k = torch::arange(1, x.size(-1) + 1, x.options());
  auto support = (1 + k * xs > cumsum).sum(-1, /*keepdim=*/true);
  auto tau = (cumsum.gather(-1, support - 1) - 1) / support.to(x.scalar_type());
  return (x - tau).clamp_min(0);
}

// alpha = 1.5: on a support of the k largest entries, sum (x_i - tau)^2 = 1 is a quadratic in
// tau whose smaller root is tau_k = mean_k - sqrt((1 - ss_k) / k), ss_k the sum of squared
// deviations from mean_k. The support is the largest prefix k with tau_k <= x_(k).
Tensor entmax15_probs(const Tensor& x) {
  auto xs = std::get<0>(x.sort(-1, /*descending=*/true));
  auto k = torch::arange(1, x.size(-1) + 1, x.options());
  auto mean = xs.cumsum(-1) / k;
  auto mean_sq = (xs * xs).cumsum(-1) / k;
  auto ss = k * (mean_sq - mean * mean);
  auto taus = mean - ((1 - ss) / k).clamp_min(0).sqrt();
  auto support = (taus <= xs).sum(-1, /*keepdim=*/true);
  auto tau = taus.gather(-1, support - 1);
  return (x - tau).clamp_min(0).square();
}

// Any alpha: f(tau) = sum_i [x_i - tau]_+^(1/(alpha-1)) - 1 decreases in tau; bisect on the
// bracket, then renormalise so the result sums to 1 exactly up to rounding.
Tensor bisect_probs(const Tensor& x, double alpha) {
  const double power = 1.0 / (alpha - 1.0);
  auto lo = torch::full_like(x.narrow(-1, 0, 1), -1.0);  // f(lo) >= 0
  auto hi = torch::full_like(lo, -std::pow(double(x.size(-1)), 1.0 - alpha));  // f(hi) <= 0
  for (int it = 0; it < 60; ++it) {  // the bracket is < 1 wide: 60 halvings pass double eps
    auto mid = (lo + hi) / 2;
    auto f_mid = (x - mid).clamp_min(0).pow(power).sum(-1, /*keepdim=*/true) - 1;
    lo = torch::where(f_mid >= 0, mid, lo);
    hi = torch::where(f_mid >= 0, hi, mid);
  }
  auto p = (x - lo).clamp_min(0).pow(power);
  return p / p.sum(-1, /*keepdim=*/true);
}

Tensor entmax_probs(const Tensor& z, double alpha, bool bisect) {
  if (z.size(-1) == 0) return torch::zeros_like(z);
  auto max = std::get<0>(z.max(-1, /*keepdim=*/true));
  auto live = torch::isfinite(max);  // false only where the whole row is -inf
  auto x = ((alpha - 1) * (z - torch::where(live, max, torch::zeros_like(max)))).clamp_min(-2);
  Tensor p;
  if (bisect || (alpha != 1.5 && alpha != 2.0))
    p = bisect_probs(x, alpha);
  else if (alpha == 2.0)
    p = sparsemax_probs(x);
  else
    p = entmax15_probs(x);
  return torch::where(live, p, torch::zeros_like(p));
}

// DESIGN §2.1's closed-form Jacobian-vector product over the last dim: with s = p^(2-alpha)
// on the support and 0 off it, dz = s * dp - (s . dp / sum s) s. Off-support and masked
// entries get 0.
Tensor entmax_jvp(const Tensor& p, const Tensor& dp, double alpha) {
#ifdef SPARSETRAIN_CUDA
  if (alpha == 1.5 && p.is_cuda() && p.scalar_type() == torch::kFloat32) return cuda::entmax15_backward(p, dp);
#endif
  auto s = torch::where(p > 0, p.pow(2 - alpha), torch::zeros_like(p));
  auto s_sum = s.sum(-1, /*keepdim=*/true);
  auto s_dot_dp = (s * dp).sum(-1, /*keepdim=*/true);
  // An all-masked row has s = 0 everywhere; its gradient is 0, not 0/0.
  auto mean_dp = s_dot_dp / torch::where(s_sum > 0, s_sum, torch::ones_like(s_sum));
  return s * dp - mean_dp * s;
}

struct EntmaxFunction : torch::autograd::Function<EntmaxFunction> {
  static Tensor forward(torch::autograd::AutogradContext* ctx, const Tensor& z, double alpha,
                        bool bisect) {
    auto p = entmax_probs(z, alpha, bisect);
    ctx->save_for_backward({p});
    ctx->saved_data["alpha"] = alpha;
    return p;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    return {entmax_jvp(ctx->get_saved_variables()[0], grads[0], ctx->saved_data["alpha"].toDouble()), Tensor(),
            Tensor()};
  }
};

Tensor entmax_along(const Tensor& z, double alpha, int64_t dim, bool bisect) {
  TORCH_CHECK(alpha > 1.0 && alpha <= 2.0, "entmax: alpha must be in (1, 2], got ", alpha);
  auto last = z.movedim(dim, -1);
#ifdef SPARSETRAIN_CUDA
  // The kernels: one pass per Newton step instead of a sort and its cumulative sums.
  if (alpha == 1.5 && !bisect && last.is_cuda() && last.scalar_type() == torch::kFloat32)
    return cuda::entmax15(last).movedim(-1, dim);
#endif
  return EntmaxFunction::apply(last, alpha, bisect).movedim(-1, dim);
}

}  // namespace

Tensor entmax(const Tensor& z, double alpha, int64_t dim) {
  return entmax_along(z, alpha, dim, /*bisect=*/false);
}

Tensor entmax_bisect(const Tensor& z, double alpha, int64_t dim) {
  return entmax_along(z, alpha, dim, /*bisect=*/true);
}

Tensor entmax_backward(const Tensor& p, const Tensor& dp, double alpha, int64_t dim) {
  return entmax_jvp(p.movedim(dim, -1), dp.movedim(dim, -1), alpha).movedim(-1, dim);
}

}  // namespace st
