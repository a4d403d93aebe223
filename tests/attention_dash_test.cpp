// DashAttention (DESIGN §2.2): routing and output against a loop-based reference, reduction
// to dense attention, finite-difference gradients through the entmax prior, and sparsity.
#include <gtest/gtest.h>

#include "attention/dash.h"
#include "attention/entmax.h"
#include "attention_brute_force.h"

namespace st {
namespace {

using test::kInf;

// The chunk bias [B][Hkv][T][n_chunks] from DESIGN §2.2, one query at a time.
std::vector<double> brute_chunk_bias(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& h,
                                     const DashConfig& cfg) {
  const int64_t B = q.size(0), Hq = q.size(1), T = q.size(2), d = q.size(3), Hkv = k.size(1), G = Hq / Hkv;
  const int64_t C = cfg.chunk, n_full = T / C, n_chunks = (T + C - 1) / C;
  std::vector<double> bias(B * Hkv * T * n_chunks, -kInf);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t hk = 0; hk < Hkv; ++hk) {
      // kbar_c = sum_j softmax_j(h . k_j / sqrt(d)) k_j over the C keys of complete chunk c.
      std::vector<torch::Tensor> kbar;
      for (int64_t c = 0; c < n_full; ++c) {
        auto keys = k[b][hk].narrow(0, c * C, C);
        kbar.push_back((torch::softmax(keys.matmul(h[hk]) / std::sqrt(double(d)), 0).unsqueeze(1) * keys).sum(0));
      }
      for (int64_t i = 0; i < T; ++i) {
        const int64_t own = i / C;
        auto forced = [&](int64_t c) { return c < own && (c < cfg.sink_chunks || c >= own - cfg.local_chunks); };
        std::vector<int64_t> candidates;
        for (int64_t c = 0; c < own; ++c)
          if (!forced(c)) candidates.push_back(c);
        // pbar: the mean of p over the group's heads and over the positions sharing i's routing.
        const int64_t first = i - i % cfg.route_positions, last = std::min(first + cfg.route_positions, T);
        std::vector<double> pbar(n_chunks, 0.0);
        if (!candidates.empty())
          for (int64_t pos = first; pos < last; ++pos)
            for (int64_t g = 0; g < G; ++g) {
              auto z = torch::empty({int64_t(candidates.size())}, torch::kFloat64);
              for (size_t n = 0; n < candidates.size(); ++n)
                z[n] = cfg.temperature * q[b][hk * G + g][pos].dot(kbar[candidates[n]]).item<double>() / std::sqrt(double(d));
              auto p = entmax(z, cfg.alpha);
              for (size_t n = 0; n < candidates.size(); ++n)
                pbar[candidates[n]] += p[n].item<double>() / double(G * (last - first));
            }
        double log_g = 0;
        int64_t routed = 0;
        for (int64_t c = 0; c < n_chunks; ++c)
          if (pbar[c] > 0) log_g += std::log(pbar[c]), ++routed;
        log_g = cfg.prior == "normalized" && routed > 0 ? log_g / routed : 0.0;
        double* row = &bias[((b * Hkv + hk) * T + i) * n_chunks];
        for (int64_t c = 0; c < n_chunks; ++c) {
          if (c == own || forced(c))
            row[c] = 0;
          else if (pbar[c] > 0)
            row[c] = (std::log(pbar[c]) - log_g) / cfg.sigma;
        }
      }
    }
  return bias;
}

struct Case {
  int64_t B, Hq, Hkv, T, d;
  DashConfig dash;
};

DashConfig dash_knobs(int64_t chunk, double alpha, double temperature, double sigma, std::string prior = "normalized",
                      int64_t sink = 0, int64_t local = 0, int64_t route_positions = 1) {
  DashConfig c;
  c.route_positions = route_positions;
  c.chunk = chunk;
  c.alpha = alpha;
  c.temperature = temperature;
  c.sigma = sigma;
  c.prior = prior;
  c.sink_chunks = sink;
  c.local_chunks = local;
  return c;
}

std::shared_ptr<DashAttention> make_dash(const Case& c, int64_t sparsity_offset = 0) {
  auto cfg = test::attention_config("dash", c.Hq, c.Hkv, c.d);
  cfg.attention.dash = c.dash;
  cfg.attention.sparsity_offset = sparsity_offset;
  auto dash = std::dynamic_pointer_cast<DashAttention>(test::build(cfg, torch::kFloat64));
  torch::NoGradGuard no_grad;
  dash->pool_query.normal_(0, 1.0);  // a trained-looking pooling query, not the zero init
  return dash;
}

AttentionInputs inputs_for(const Case& c, torch::ScalarType dtype, uint64_t seed) {
  return test::random_inputs(test::attention_config("dash", c.Hq, c.Hkv, c.d), c.B, c.T, dtype, seed);
}

TEST(DashAttention, RoutingAndOutputMatchBruteForce) {
  std::vector<Case> cases = {
      {2, 16, 16, 45, 4, dash_knobs(6, 1.5, 2.0, 1.0)},           // G = 1, ragged T
      {2, 16, 8, 40, 4, dash_knobs(5, 2.0, 3.0, 0.5)},            // G = 2, T a multiple of C
      {1, 16, 4, 47, 4, dash_knobs(8, 1.5, 4.0, 1.0, "unnormalized")},  // G = 4
      {2, 16, 2, 38, 4, dash_knobs(4, 1.3, 2.0, 2.0, "normalized", 1, 1)},  // G = 8, forced sink + local
      {1, 16, 1, 33, 4, dash_knobs(5, 1.5, 3.0, 1.0, "normalized", 2, 0)},  // G = 16
      {1, 2, 1, 3, 4, dash_knobs(8, 1.5, 1.0, 1.0)},              // shorter than one chunk
      {2, 8, 2, 45, 4, dash_knobs(6, 1.5, 2.0, 1.0, "unnormalized", 0, 0, 3)},  // routing per 3 positions, ragged
      {1, 16, 1, 40, 4, dash_knobs(8, 1.5, 3.0, 1.0, "normalized", 1, 1, 4)},   // per 4 positions, G = 16
  };
  for (const auto& c : cases) {
    SCOPED_TRACE("B " + std::to_string(c.B) + " Hq " + std::to_string(c.Hq) + " Hkv " + std::to_string(c.Hkv) +
                 " T " + std::to_string(c.T) + " C " + std::to_string(c.dash.chunk));
    auto dash = make_dash(c);
    auto in = inputs_for(c, torch::kFloat64, 7);
    const int64_t n_chunks = (c.T + c.dash.chunk - 1) / c.dash.chunk;
    auto want_bias = torch::tensor(brute_chunk_bias(in.q, in.k, dash->pool_query, c.dash), torch::kFloat64)
                         .view({c.B, c.Hkv, c.T, n_chunks});
    auto bias = dash->chunk_bias(in.q, in.k);
    ASSERT_TRUE(torch::equal(torch::isfinite(bias), torch::isfinite(want_bias))) << "routed chunks differ";
    auto finite = torch::isfinite(bias);
    EXPECT_TRUE(torch::allclose(bias.masked_select(finite), want_bias.masked_select(finite), 0, 1e-10));

    auto W = want_bias.accessor<double, 4>();
    const int64_t C = c.dash.chunk;
    auto want = test::brute_attention(
        in.q, in.k, in.v, [&](auto b, auto h, auto i, auto j) { return std::isfinite(W[b][h][i][j / C]); },
        [&](auto b, auto h, auto i, auto j) { return W[b][h][i][j / C]; });
    EXPECT_TRUE(torch::allclose(dash->forward(in), want, 0, 1e-10));
  }
}

TEST(DashAttention, RoutingIsSparseAndAdaptive) {
  // Not a test of a number: the entmax router leaves some past chunks out, and which ones
  // depends on the query (so the brute-force comparison above compares real selections).
  Case c{1, 4, 2, 64, 8, dash_knobs(4, 1.5, 4.0, 1.0)};
  auto dash = make_dash(c);
  auto in = inputs_for(c, torch::kFloat64, 8);
  auto bias = dash->chunk_bias(in.q, in.k);
  auto last = torch::isfinite(bias.select(2, 63));  // [B, Hkv, 16 chunks]
  EXPECT_GT(last.sum().item<int64_t>(), 2);   // more than the diagonal chunk per head
  EXPECT_LT(last.sum().item<int64_t>(), 30);  // fewer than all 2 x 16
  EXPECT_FALSE(torch::equal(torch::isfinite(bias.select(2, 62)), last));
}

TEST(DashAttention, ReducesToDenseWhenEveryChunkIsRead) {
  for (int64_t Hkv : {4, 1}) {
    SCOPED_TRACE("Hkv " + std::to_string(Hkv));
    // Every chunk forced (sink chunks cover the sequence).
    Case forced{2, 4, Hkv, 70, 16, dash_knobs(8, 1.5, 1.0, 1.0, "normalized", 100, 0)};
    auto cfg = test::attention_config("dash", 4, Hkv, 16);
    cfg.attention.dash = forced.dash;
    auto in = inputs_for(forced, torch::kFloat32, 9);
    test::expect_dense(*test::build(cfg, torch::kFloat32), in, 1e-5);
    // Through the router: a tiny temperature makes entmax route every past chunk, and a huge
    // sigma turns the prior into a pure mask.
    cfg.attention.dash = dash_knobs(8, 1.5, 1e-4, 1e6);
    auto routed = test::build(cfg, torch::kFloat32);
    test::expect_dense(*routed, in, 1e-5);
  }
}

// The routing's backward is derived by hand (dash.cpp, routing_bias_backward): both priors,
// alpha 1.5 (the kernels' entmax on GPU) and 1.3 (bisection), with and without forced chunks.
TEST(DashAttention, GradientsMatchFiniteDifferencesThroughTheEntmaxPrior) {
  struct Knobs {
    std::string prior;
    double alpha;
    int64_t sink, local, route_positions;
  };
  for (const Knobs& kn : {Knobs{"normalized", 1.5, 0, 0, 1}, Knobs{"unnormalized", 1.5, 0, 0, 1},
                          Knobs{"normalized", 1.3, 1, 1, 1}, Knobs{"unnormalized", 1.3, 1, 1, 1},
                          Knobs{"normalized", 1.5, 0, 0, 3}, Knobs{"unnormalized", 1.5, 1, 0, 3}}) {
    SCOPED_TRACE(kn.prior + " alpha " + std::to_string(kn.alpha) + " forced " + std::to_string(kn.sink + kn.local) +
                 " route_positions " + std::to_string(kn.route_positions));
    Case c{1, 2, 1, 13, 4, dash_knobs(3, kn.alpha, 2.0, 1.0, kn.prior, kn.sink, kn.local, kn.route_positions)};
    auto dash = make_dash(c);
    auto in = inputs_for(c, torch::kFloat64, 11);
    auto bias = dash->chunk_bias(in.q, in.k);
    // Partial routing: some past chunks routed, some not (so the prior is a real selection).
    auto past_routed = torch::isfinite(bias).sum().item<int64_t>() - 13;  // less the diagonal chunks
    ASSERT_GT(past_routed, 5);
    ASSERT_GT(torch::isinf(bias).sum().item<int64_t>(), kn.sink + kn.local > 0 ? 8 : 20);

    auto w = torch::randn({1, 2, 13, 4}, torch::kFloat64);
    auto q = in.q.clone().requires_grad_(true), k = in.k.clone().requires_grad_(true), v = in.v.clone().requires_grad_(true);
    auto loss = [&] { return (dash->forward({q, k, v, in.x, in.cos, in.sin}) * w).sum(); };
    loss().backward();
    auto f = [&] { return loss().item<double>(); };
    test::expect_finite_differences(q, q.grad().clone(), f, "dq");
    test::expect_finite_differences(k, k.grad().clone(), f, "dk");
    test::expect_finite_differences(v, v.grad().clone(), f, "dv");
    auto dh = dash->pool_query.grad().clone();
    test::expect_finite_differences(dash->pool_query, dh, f, "d pool_query");
    // The pooling query reaches the output only through kbar -> z -> entmax -> prior, so a
    // nonzero, correct gradient here is the gradient through the entmax prior.
    EXPECT_GT(dh.abs().max().item<double>(), 1e-3);
  }
}

// The routing is built one tile of query rows per KV group at a time and recomputed tile by
// tile in the backward: any tiling gives the dense chunk_bias's lists, and the same output and
// gradients as one tile per group.
TEST(DashAttention, TiledRoutingMatchesOneTile) {
  for (int64_t route_positions : {1, 2}) {
    SCOPED_TRACE("route_positions " + std::to_string(route_positions));
    Case c{2, 4, 2, 45, 4, dash_knobs(4, 1.5, 3.0, 1.0, "normalized", 1, 1, route_positions)};
    auto dash = make_dash(c);
    auto in = inputs_for(c, torch::kFloat64, 5);
    struct Run {
      torch::Tensor out, dq, dk, dh;
    };
    auto run = [&](int64_t tile_rows) {
      dash->routing_tile_rows = tile_rows;
      dash->zero_grad();
      auto q = in.q.clone().requires_grad_(true), k = in.k.clone().requires_grad_(true);
      auto rows = dash->routing(q, dash->chunk_summaries(k));
      // Lists against the dense bias: the same selection and the same values, up to 1e-9. Near
      // the support's edge log p = 2 log(x - tau) turns fp64 rounding of x - tau into 2e-16 /
      // (x - tau), and the threaded sums' order changes from run to run: under load the
      // difference reached 2e-12 (1e-12 failed about 1 run in 20).
      auto dense = dense_bias(rows, c.B, c.Hkv, c.T, c.dash.chunk);
      auto want = dash->chunk_bias(in.q, in.k);
      EXPECT_TRUE(torch::equal(torch::isfinite(dense), torch::isfinite(want)));
      EXPECT_TRUE(torch::allclose(dense.masked_select(torch::isfinite(want)), want.masked_select(torch::isfinite(want)),
                                  0, 1e-9));
      auto out = dash->forward({q, k, in.v, in.x, in.cos, in.sin});
      (out * out).sum().backward();
      return Run{out.detach(), q.grad(), k.grad(), dash->pool_query.grad().clone()};
    };
    const Run whole = run(c.T);
    for (int64_t tile_rows : {1, 7, 16}) {
      SCOPED_TRACE("tile rows " + std::to_string(tile_rows));
      const Run tiled = run(tile_rows);
      // fp64, differing only in summation order (per-tile matmuls vs one): gradients reach ~170
      // here, so the bound has a relative part (an absolute 1e-10 alone failed now and then by
      // 1.7e-10, 1e-12 relative).
      EXPECT_TRUE(torch::allclose(tiled.out, whole.out, 0, 1e-12));
      EXPECT_TRUE(torch::allclose(tiled.dq, whole.dq, 1e-11, 1e-10));
      EXPECT_TRUE(torch::allclose(tiled.dk, whole.dk, 1e-11, 1e-10));
      EXPECT_TRUE(torch::allclose(tiled.dh, whole.dh, 1e-11, 1e-10));
    }
    EXPECT_GT(whole.dh.abs().max().item<double>(), 1e-3);
  }
}

TEST(DashAttention, SparsityCountMatchesBruteForce) {
  Case c{2, 8, 2, 50, 4, dash_knobs(4, 1.5, 3.0, 1.0, "normalized", 1, 1)};
  for (int64_t offset : {0, 21}) {
    auto dash = make_dash(c, offset);
    dash->record_stats = true;
    auto in = inputs_for(c, torch::kFloat64, 12);
    dash->forward(in);
    auto W = brute_chunk_bias(in.q, in.k, dash->pool_query, c.dash);
    const int64_t n_chunks = (c.T + 3) / 4;
    auto reads = [&](auto b, auto h, auto i, auto j) {
      return std::isfinite(W[((b * c.Hkv + h) * c.T + i) * n_chunks + j / 4]);
    };
    EXPECT_EQ(dash->stats.attended, test::brute_count(c.B, c.Hq, c.Hkv, c.T, offset, reads));
    EXPECT_EQ(dash->stats.causal, test::brute_count(c.B, c.Hq, c.Hkv, c.T, offset, [](auto...) { return true; }));
    EXPECT_LT(dash->stats.attended, dash->stats.causal);
  }
}

TEST(DashAttention, ZeroPoolingQueryStartsWithChunkMeans) {
  auto cfg = test::attention_config("dash", 4, 2, 8);
  cfg.attention.dash.chunk = 8;
  auto dash = std::dynamic_pointer_cast<DashAttention>(make_attention(cfg));
  ASSERT_TRUE(dash);
  auto params = dash->named_parameters();
  ASSERT_EQ(params.size(), 1u);
  EXPECT_TRUE(params.contains("pool_query"));
  EXPECT_TRUE((dash->pool_query == 0).all().item<bool>());
  auto k = torch::randn({1, 2, 20, 8});
  auto means = k.narrow(2, 0, 16).view({1, 2, 2, 8, 8}).mean(3);  // two complete chunks of 8
  EXPECT_TRUE(torch::allclose(dash->chunk_summaries(k), means, 1e-6, 1e-6));
}

}  // namespace
}  // namespace st
