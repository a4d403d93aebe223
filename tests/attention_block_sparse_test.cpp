// The shared pieces of the sparse variants (DESIGN §2, §3): block-sparse attention with a
// per-(query, block) bias and a window, its attended-pair count, top-k block selection with
// forced blocks, and pooling compressed-block scores onto selection blocks.
#include <gtest/gtest.h>

#include "attention/block_selection.h"
#include "attention/block_sparse.h"
#include "attention_brute_force.h"

namespace st {
namespace {

using test::kInf;

// A random causal selection [B, Hkv, T, n_blocks] (some rows empty) and biases on it.
struct RandomSelection {
  torch::Tensor selected, bias;
};
RandomSelection random_selection(int64_t B, int64_t Hkv, int64_t T, int64_t block, double density) {
  const int64_t n_blocks = (T + block - 1) / block;
  auto own = torch::arange(T).div(block, "floor").view({T, 1});
  auto causal = torch::arange(n_blocks).view({1, n_blocks}) <= own;
  auto selected = (torch::rand({B, Hkv, T, n_blocks}) < density) & causal;
  auto bias = torch::where(selected, torch::randn({B, Hkv, T, n_blocks}, torch::kFloat64), -kInf);
  return {selected, bias};
}

TEST(BlockSparseAttention, MatchesBruteForceWithBiasWindowAndTiles) {
  auto cfg = test::attention_config("dense", 4, 2, 4);
  auto in = test::random_inputs(cfg, 2, 37, torch::kFloat64, 1);
  auto sel = random_selection(2, 2, 37, 8, 0.4);
  auto S = sel.selected.accessor<bool, 4>();
  auto Bias = sel.bias.accessor<double, 4>();
  for (int64_t window : {0, 5}) {
    for (int64_t tile : {7, 128}) {
      SCOPED_TRACE("window " + std::to_string(window) + " tile " + std::to_string(tile));
      auto got = block_sparse_attention(in.q, in.k, in.v, sel.bias, 8, window, tile);
      auto want = test::brute_attention(
          in.q, in.k, in.v, [&](auto b, auto h, auto i, auto j) { return S[b][h][i][j / 8] || i - j < window; },
          [&](auto b, auto h, auto i, auto j) { return S[b][h][i][j / 8] ? Bias[b][h][i][j / 8] : 0.0; });
      EXPECT_TRUE(torch::allclose(got, want, 0, 1e-12)) << (got - want).abs().max();
    }
  }
  // No bias: the window alone.
  auto got = block_sparse_attention(in.q, in.k, in.v, {}, 8, 6, 5);
  auto want = test::brute_attention(
      in.q, in.k, in.v, [](auto, auto, auto i, auto j) { return i - j < 6; }, [](auto...) { return 0.0; });
  EXPECT_TRUE(torch::allclose(got, want, 0, 1e-12));
}

TEST(BlockSparseAttention, GradientsMatchFiniteDifferences) {
  // q, k, v and the bias, through a tiled, windowed, GQA selection (the backward recomputes
  // tiles rather than storing them, so it is checked on its own here).
  auto cfg = test::attention_config("dense", 4, 2, 4);
  auto in = test::random_inputs(cfg, 1, 21, torch::kFloat64, 6);
  auto sel = random_selection(1, 2, 21, 4, 0.5);
  auto q = in.q.requires_grad_(true), k = in.k.requires_grad_(true), v = in.v.requires_grad_(true);
  auto bias = sel.bias.clone().requires_grad_(true);
  auto w = torch::randn_like(in.q);
  auto loss = [&] { return (block_sparse_attention(q, k, v, bias, 4, 3, 5) * w).sum(); };
  loss().backward();
  auto f = [&] { return loss().item<double>(); };
  test::expect_finite_differences(q, q.grad().clone(), f, "dq");
  test::expect_finite_differences(k, k.grad().clone(), f, "dk");
  test::expect_finite_differences(v, v.grad().clone(), f, "dv");
  test::expect_finite_differences(bias, bias.grad().clone(), f, "dbias");
  EXPECT_GT(bias.grad().abs().max().item<double>(), 1e-3);
  EXPECT_TRUE((bias.grad().masked_select(~sel.selected) == 0).all().item<bool>());
}

TEST(BlockSparseAttention, EverythingSelectedIsDenseInFloat32) {
  for (int64_t G : {1, 4}) {
    auto cfg = test::attention_config("dense", 4, 4 / G, 16);
    auto in = test::random_inputs(cfg, 2, 75, torch::kFloat32, 2);
    auto bias = torch::zeros({2, 4 / G, 75, 10});  // block 8: all 10 blocks, bias 0
    test::expect_dense([&](const AttentionInputs& x) { return block_sparse_attention(x.q, x.k, x.v, bias, 8, 0, 32); },
                       in, 1e-5);
    // A window as long as the sequence is dense attention too.
    test::expect_dense([](const AttentionInputs& x) { return block_sparse_attention(x.q, x.k, x.v, {}, 16, 75, 32); },
                       in, 1e-5);
  }
}

// Attended (query, key) pairs of per-row lists, which leave each query's own block implicit
// (always read), plus the window.
TEST(AttendedPairs, ListsMatchBruteForceCount) {
  torch::manual_seed(3);
  const int64_t B = 2, Hkv = 2, G = 3, T = 45, block = 8;
  auto sel = random_selection(B, Hkv, T, block, 0.3);
  auto S = sel.selected.accessor<bool, 4>();
  auto entries = list_entries(sel.selected, 0, block);
  const BlockRows rows{row_ptr_from_counts(entries.counts), entries.blocks, {}};
  for (int64_t window : {0, 1, 10, 20, 100})
    for (int64_t offset : {0, 17, 44, 45}) {
      SCOPED_TRACE("window " + std::to_string(window) + " offset " + std::to_string(offset));
      EXPECT_EQ(attended_pairs(rows, T, block, window, offset, G),
                test::brute_count(B, Hkv * G, Hkv, T, offset, [&](auto b, auto h, auto i, auto j) {
                  return j / block == i / block || S[b][h][i][j / block] || i - j < window;
                }));
    }
}

TEST(SelectBlocks, MatchesBruteForceIncludingTiesAndForcedBlocks) {
  torch::manual_seed(4);
  const int64_t B = 2, H = 3, T = 70, block = 8, n_blocks = 9;
  // Scores on a coarse grid so that ties are common.
  auto scores = (torch::rand({B, H, T, n_blocks}, torch::kFloat64) * 3).floor() / 2;
  struct Knobs {
    int64_t top_k, init, local;
  };
  for (Knobs kn : {Knobs{3, 1, 1}, Knobs{4, 0, 2}, Knobs{2, 0, 0}, Knobs{5, 2, 3}, Knobs{20, 1, 2}}) {
    SCOPED_TRACE("top_k " + std::to_string(kn.top_k) + " init " + std::to_string(kn.init) + " local " +
                 std::to_string(kn.local));
    auto got = select_blocks(scores, block, kn.top_k, kn.init, kn.local);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t h = 0; h < H; ++h)
        for (int64_t i = 0; i < T; ++i) {
          auto row = scores[b][h][i];
          std::vector<double> s(row.data_ptr<double>(), row.data_ptr<double>() + n_blocks);
          auto want = test::brute_select(s, i / block, kn.top_k, kn.init, kn.local);
          for (int64_t c = 0; c < n_blocks; ++c)
            ASSERT_EQ(got[b][h][i][c].item<bool>(), bool(want[c])) << "b " << b << " h " << h << " i " << i << " c " << c;
        }
  }
}

// The compression branch and the selection run one tile of queries at a time: every tiling
// gives the untiled math (softmax over the visible compressed blocks, then P v), forward and
// gradients, and the same selected blocks (per-row lists, tiled per batch and KV group too). Each tile works
// only on the compressed blocks complete by its last query, so the tilings (ragged last tiles,
// tiles wholly before the first complete block) each trim differently.
TEST(CompressedAttention, TiledMatchesWholeForwardGradientsAndSelection) {
  torch::manual_seed(9);
  const int64_t B = 2, Hkv = 2, G = 3, T = 70, d = 8, length = 8, stride = 4, n = (T - length) / stride + 1;
  auto q = torch::randn({B, Hkv * G, T, d}, torch::kFloat64).requires_grad_(true);
  auto k = torch::randn({B, Hkv, n, d}, torch::kFloat64).requires_grad_(true);
  auto v = torch::randn({B, Hkv, n, d}, torch::kFloat64).requires_grad_(true);
  auto w = torch::randn({B, Hkv * G, T, d}, torch::kFloat64);
  auto whole = torch::matmul(compressed_attention_probs(q, k, length, stride), v.unsqueeze(2)).view({B, Hkv * G, T, d});
  auto grads = torch::autograd::grad({(whole * w).sum()}, {q, k, v});
  const SelectionKnobs knobs{length, stride, 16, 3, 1, 1, Pool::Sum};
  auto selected = torch::isfinite(dense_bias(select_rows_from_compressed(q, k, knobs, T), B, Hkv, T, knobs.block));
  EXPECT_GT(selected.sum().item<int64_t>(), 0);
  for (int64_t tile_rows : {1, 5, 9, 13, 32}) {
    SCOPED_TRACE("tile rows " + std::to_string(tile_rows));
    auto out = compressed_attention(q, k, v, length, stride, tile_rows);
    EXPECT_TRUE(torch::allclose(out, whole, 0, 1e-12));
    auto g = torch::autograd::grad({(out * w).sum()}, {q, k, v});
    for (int i = 0; i < 3; ++i) EXPECT_TRUE(torch::allclose(g[i], grads[i], 0, 1e-11)) << "input " << i;
    // The forced local block is each query's own, which the lists leave implicit.
    auto rows = select_rows_from_compressed(q, k, knobs, tile_rows);
    EXPECT_TRUE(torch::equal(torch::isfinite(dense_bias(rows, B, Hkv, T, knobs.block)), selected));
  }
}

TEST(PoolToBlocks, SumsAndMaxesTheOverlappingCompressedBlocks) {
  torch::manual_seed(5);
  struct Geometry {
    int64_t length, stride, block, T;
  };
  for (Geometry g : {Geometry{32, 16, 64, 300}, Geometry{8, 4, 16, 53}, Geometry{5, 2, 6, 31}, Geometry{4, 4, 8, 40},
                     Geometry{12, 3, 3, 29}}) {
    SCOPED_TRACE("length " + std::to_string(g.length) + " stride " + std::to_string(g.stride) + " block " +
                 std::to_string(g.block) + " T " + std::to_string(g.T));
    const int64_t n = (g.T - g.length) / g.stride + 1, n_blocks = (g.T + g.block - 1) / g.block;
    auto scores = torch::rand({2, 3, n}, torch::kFloat64);
    auto sum = pool_to_blocks(scores, g.length, g.stride, g.block, n_blocks, Pool::Sum);
    auto max = pool_to_blocks(scores, g.length, g.stride, g.block, n_blocks, Pool::Max);
    ASSERT_EQ(sum.sizes(), (std::vector<int64_t>{2, 3, n_blocks}));
    for (int64_t r = 0; r < 2; ++r)
      for (int64_t h = 0; h < 3; ++h)
        for (int64_t c = 0; c < n_blocks; ++c) {
          double want_sum = 0, want_max = 0;
          for (int64_t i = 0; i < n; ++i)
            if (test::overlaps(i, g.length, g.stride, c, g.block)) {
              want_sum += scores[r][h][i].item<double>();
              want_max = std::max(want_max, scores[r][h][i].item<double>());
            }
          EXPECT_NEAR(sum[r][h][c].item<double>(), want_sum, 1e-12);
          EXPECT_EQ(max[r][h][c].item<double>(), want_max);
        }
  }
  // InfLLMv2's default geometry is MiniCPM4's max-pool with kernel 5, stride 4, padding 1.
  auto scores = torch::rand({4, 17}, torch::kFloat64);
  auto minicpm = torch::max_pool1d(scores.unsqueeze(1), {5}, {4}, {1}).squeeze(1);
  auto ours = pool_to_blocks(scores, 32, 16, 64, minicpm.size(-1), Pool::Max);
  EXPECT_TRUE(torch::equal(ours, minicpm));
}

}  // namespace
}  // namespace st
