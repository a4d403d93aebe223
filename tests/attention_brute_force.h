// Independent, loop-based references for the attention tests: one (batch, head, query) at a
// time, in double, written from DESIGN §2 without the tensor code's helpers. Plus the shared
// fixtures (random inputs, comparison against dense attention, finite differences).
#pragma once
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <vector>

#include "attention/dense.h"
#include "model/attention.h"
#include "model/rope.h"

namespace st::test {

inline const double kInf = std::numeric_limits<double>::infinity();

inline ModelConfig attention_config(const std::string& variant, int64_t n_heads, int64_t n_kv_heads, int64_t head_dim) {
  ModelConfig cfg;
  cfg.n_heads = n_heads;
  cfg.n_kv_heads = n_kv_heads;
  cfg.head_dim = head_dim;
  cfg.dim = 16;
  cfg.attention.variant = variant;
  return cfg;
}

// Random post-RoPE inputs for a variant built from cfg.
inline AttentionInputs random_inputs(const ModelConfig& cfg, int64_t B, int64_t T, torch::ScalarType dtype,
                                     uint64_t seed) {
  torch::manual_seed(seed);
  const int64_t d = cfg.head_dim_or_default();
  auto o = torch::TensorOptions().dtype(dtype);
  auto rope = rope_tables(cfg, T, torch::kCPU);
  return {torch::randn({B, cfg.n_heads, T, d}, o), torch::randn({B, cfg.n_kv_heads, T, d}, o),
          torch::randn({B, cfg.n_kv_heads, T, d}, o), torch::randn({B, T, cfg.dim}, o), rope.cos, rope.sin};
}

inline std::shared_ptr<AttentionVariant> build(const ModelConfig& cfg, torch::ScalarType dtype) {
  auto m = make_attention(cfg);
  m->to(dtype);
  return m;
}

// For query (b, kv head hk, position i) and key j: does the query read the key, and with
// which additive bias.
using Reads = std::function<bool(int64_t b, int64_t hk, int64_t i, int64_t j)>;
using Bias = std::function<double(int64_t b, int64_t hk, int64_t i, int64_t j)>;

// o[b, h, i] = sum over read keys j <= i of softmax_j(q . k_j / sqrt(d) + bias) v_j;
// a query reading nothing gets 0.
inline torch::Tensor brute_attention(const torch::Tensor& q_, const torch::Tensor& k_, const torch::Tensor& v_,
                                     const Reads& reads, const Bias& bias) {
  auto q = q_.to(torch::kFloat64).contiguous(), k = k_.to(torch::kFloat64).contiguous(),
       v = v_.to(torch::kFloat64).contiguous();
  const int64_t B = q.size(0), Hq = q.size(1), T = q.size(2), d = q.size(3), G = Hq / k.size(1);
  auto out = torch::zeros_like(q);
  auto Q = q.accessor<double, 4>(), K = k.accessor<double, 4>(), V = v.accessor<double, 4>();
  auto O = out.accessor<double, 4>();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < Hq; ++h)
      for (int64_t i = 0; i < T; ++i) {
        const int64_t hk = h / G;
        std::vector<int64_t> keys;
        std::vector<double> logits;
        for (int64_t j = 0; j <= i; ++j) {
          if (!reads(b, hk, i, j)) continue;
          double s = 0;
          for (int64_t x = 0; x < d; ++x) s += Q[b][h][i][x] * K[b][hk][j][x];
          keys.push_back(j);
          logits.push_back(s / std::sqrt(double(d)) + bias(b, hk, i, j));
        }
        if (keys.empty()) continue;
        const double m = *std::max_element(logits.begin(), logits.end());
        double z = 0;
        for (double& l : logits) z += (l = std::exp(l - m));
        for (size_t n = 0; n < keys.size(); ++n)
          for (int64_t x = 0; x < d; ++x) O[b][h][i][x] += logits[n] / z * V[b][hk][keys[n]][x];
      }
  return out;
}

// The top_k blocks a query in block `own` reads: blocks [0, init) and (own - local, own] are
// forced and count inside top_k; the rest go by score, the earlier block first on ties.
inline std::vector<bool> brute_select(const std::vector<double>& scores, int64_t own, int64_t top_k, int64_t init,
                                      int64_t local) {
  std::vector<bool> chosen(scores.size(), false);
  std::vector<int64_t> rest;
  int64_t budget = top_k;
  for (int64_t c = 0; c <= own; ++c) {
    if (c < init || c > own - local) {
      chosen[c] = true;
      --budget;
    } else {
      rest.push_back(c);
    }
  }
  std::stable_sort(rest.begin(), rest.end(), [&](int64_t a, int64_t b) { return scores[a] > scores[b]; });
  for (int64_t n = 0; n < budget && n < int64_t(rest.size()); ++n) chosen[rest[n]] = true;
  return chosen;
}

// Compressed block n covers [n stride, n stride + length); selection block c covers
// [c block, (c + 1) block).
inline bool overlaps(int64_t n, int64_t length, int64_t stride, int64_t c, int64_t block) {
  return n * stride < (c + 1) * block && n * stride + length > c * block;
}

// Softmax of q . k_cmp / sqrt(d) over the compressed blocks wholly at or before position i.
inline std::vector<double> brute_compressed_probs(const torch::Tensor& q, const torch::Tensor& k_cmp, int64_t b,
                                                  int64_t h, int64_t hk, int64_t i, int64_t length, int64_t stride) {
  const int64_t n = k_cmp.size(2), d = q.size(3);
  std::vector<double> p(n, 0.0);
  double m = -kInf, z = 0;
  for (int64_t c = 0; c < n; ++c)
    if (c * stride + length - 1 <= i)
      m = std::max(m, (q[b][h][i] * k_cmp[b][hk][c]).sum().item<double>() / std::sqrt(double(d)));
  for (int64_t c = 0; c < n; ++c)
    if (c * stride + length - 1 <= i)
      z += (p[c] = std::exp((q[b][h][i] * k_cmp[b][hk][c]).sum().item<double>() / std::sqrt(double(d)) - m));
  for (double& x : p) x = z > 0 ? x / z : 0;
  return p;
}

// Attended (query, key) pairs counted one by one: queries at positions >= offset, all heads.
inline int64_t brute_count(int64_t B, int64_t Hq, int64_t Hkv, int64_t T, int64_t offset, const Reads& reads) {
  int64_t n = 0;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < Hq; ++h)
      for (int64_t i = offset; i < T; ++i)
        for (int64_t j = 0; j <= i; ++j) n += reads(b, h / (Hq / Hkv), i, j);
  return n;
}

// An attention function's output and d(sum(o * w))/d(q, k, v) against dense attention.
using AttentionFn = std::function<torch::Tensor(const AttentionInputs&)>;
inline void expect_dense(const AttentionFn& attend, const AttentionInputs& in, double tol) {
  auto run = [&](const AttentionFn& f) {
    auto q = in.q.detach().clone().requires_grad_(true), k = in.k.detach().clone().requires_grad_(true),
         v = in.v.detach().clone().requires_grad_(true);
    auto o = f({q, k, v, in.x, in.cos, in.sin});
    auto w = torch::sin(torch::arange(o.numel(), o.options()).view(o.sizes()));  // fixed weights
    (o * w).sum().backward();
    return std::vector<torch::Tensor>{o.detach(), q.grad(), k.grad(), v.grad()};
  };
  auto got = run(attend);
  auto want = run([](const AttentionInputs& x) { return dense_causal_attention(x.q, x.k, x.v); });
  const char* names[] = {"output", "dq", "dk", "dv"};
  for (int n = 0; n < 4; ++n)
    EXPECT_TRUE(torch::allclose(got[n], want[n], 0, tol))
        << names[n] << " max error " << (got[n] - want[n]).abs().max().item<double>();
}
inline void expect_dense(AttentionVariant& variant, const AttentionInputs& in, double tol) {
  expect_dense([&](const AttentionInputs& x) { return variant.forward(x); }, in, tol);
}

// Central finite differences of f (a scalar function of x) compared with `grad`, one entry at
// a time; x is perturbed in place and restored.
inline void expect_finite_differences(torch::Tensor x, const torch::Tensor& grad, const std::function<double()>& f,
                                      const std::string& what, double eps = 1e-6, double tol = 1e-6) {
  torch::NoGradGuard no_grad;
  auto flat = x.view(-1);
  auto numeric = torch::zeros_like(flat);
  for (int64_t n = 0; n < flat.numel(); ++n) {
    const double x0 = flat[n].item<double>();
    flat[n] = x0 + eps;
    const double up = f();
    flat[n] = x0 - eps;
    const double down = f();
    flat[n] = x0;
    numeric[n] = (up - down) / (2 * eps);
  }
  auto err = (numeric - grad.reshape(-1)).abs().max().item<double>();
  EXPECT_LT(err, tol) << what << ": analytic vs finite-difference gradient";
}

}  // namespace st::test
