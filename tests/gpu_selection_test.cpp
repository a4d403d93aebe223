// The selection kernels (kernels/block_select.h, wrapped in attention/cuda/selection.h) against
// the ATen reference (attention/block_selection.h), stage by stage:
//   - pooled block scores vs the reference pipeline in fp64 on the same 16-bit q and fp32 k_cmp;
//   - top-k lists vs select_blocks + list_entries on the same scores, exactly, ties included;
//   - select_rows = the two stages composed, whatever the chunking;
//   - select_rows vs select_rows_from_compressed on the GPU in fp32: equal up to near-ties.
// Skips without a GPU.
#ifdef SPARSETRAIN_CUDA
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstdio>
#include <string>

#include "attention/block_selection.h"
#include "attention/cuda/selection.h"

namespace st {
namespace {

struct Case {
  int64_t Hkv, G, T, d;
  SelectionKnobs knobs;
  torch::ScalarType dtype;
};

std::string name(const Case& c) {
  return "Hkv" + std::to_string(c.Hkv) + " G" + std::to_string(c.G) + " T" + std::to_string(c.T) + " d" +
         std::to_string(c.d) + " L" + std::to_string(c.knobs.length) + "/s" + std::to_string(c.knobs.stride) +
         (c.knobs.pool == Pool::Max ? " max" : " sum") + (c.dtype == torch::kHalf ? " fp16" : " bf16");
}

struct Inputs {
  torch::Tensor q, k_cmp;  // q in the case's 16-bit dtype, k_cmp fp32, both on the GPU
};

// Keys scaled by 2 so the softmax over compressed blocks is peaked, as in a trained model.
Inputs draw(const Case& c) {
  torch::manual_seed(c.T * 31 + c.G * 7 + c.d);
  const auto opt = torch::TensorOptions().dtype(torch::kFloat32).device(torch::kCUDA);
  auto q = torch::randn({2, c.Hkv * c.G, c.T, c.d}, opt).to(c.dtype);
  auto k = (torch::randn({2, c.Hkv, c.T, c.d}, opt) * 2).to(c.dtype).to(torch::kFloat32);
  auto k_cmp = compression_blocks(k, c.knobs.length, c.knobs.stride).mean(-2);
  return {q, k_cmp.contiguous()};
}

// select_tile's scores on the reference path, in fp64 on the CPU.
torch::Tensor reference_scores(const Case& c, const Inputs& in) {
  const auto& kn = c.knobs;
  auto q = in.q.to(torch::kCPU, torch::kFloat64), k = in.k_cmp.to(torch::kCPU, torch::kFloat64);
  auto probs = compressed_attention_probs(q, k, kn.length, kn.stride).sum(2);
  return pool_to_blocks(probs, kn.length, kn.stride, kn.block, (c.T + kn.block - 1) / kn.block, kn.pool);
}

// Dense [B, Hkv, T, n_blocks] view of lists, for comparisons.
torch::Tensor dense(const BlockRows& rows, const Case& c) {
  return torch::isfinite(dense_bias({rows.row_ptr.cpu(), rows.blocks.cpu(), {}}, 2, c.Hkv, c.T, c.knobs.block));
}

class GpuSelection : public ::testing::TestWithParam<Case> {};

TEST_P(GpuSelection, ScoresMatchFp64Reference) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  const Case c = GetParam();
  const Inputs in = draw(c);
  auto want = reference_scores(c, in);
  // Both forms of the scores kernel: the default (wgmma on a Hopper) and the portable one.
  for (const kernels::BsaPath path : {kernels::BsaPath::kAuto, kernels::BsaPath::kPortable}) {
    auto got = cuda::block_scores(in.q, in.k_cmp, c.knobs, c.dtype, path).cpu().to(torch::kFloat64);
    ASSERT_EQ(got.sizes(), want.sizes());
    // fp32 logits from q (exact) and k_cmp's high + low 16-bit parts (~16 bits), ex2.approx.
    auto bad = (got - want).abs() > want.abs() * 1e-4 + 1e-7;
    EXPECT_EQ(bad.sum().item<int64_t>(), 0) << name(c) << (path == kernels::BsaPath::kAuto ? "" : " (portable)")
                                            << ": max |diff| " << (got - want).abs().max().item<double>();
  }
}

TEST_P(GpuSelection, TopKListsEqualReferenceOnSameScores) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  Case c = GetParam();
  const Inputs in = draw(c);
  // Scores rounded to a few levels: many exact ties (zeros included), which go to the earlier block.
  auto scores = (cuda::block_scores(in.q, in.k_cmp, c.knobs, c.dtype) * 8).floor() / 8;
  const int64_t n_blocks = scores.size(-1);
  for (int64_t top_k : {int64_t(1), int64_t(4), n_blocks / 3 + 2, n_blocks + 5})
    for (auto [init, local] : {std::pair<int64_t, int64_t>{1, 2}, {0, 1}, {2, 0}}) {
      if (top_k < init + local) continue;
      c.knobs.top_k = top_k, c.knobs.init_blocks = init, c.knobs.local_blocks = local;
      auto got = cuda::rows_from_scores(scores, c.knobs);
      auto chosen = select_blocks(scores.cpu(), c.knobs.block, top_k, init, local);
      auto want = list_entries(chosen, 0, c.knobs.block);
      ASSERT_TRUE(torch::equal(got.row_ptr.cpu().diff(), want.counts.flatten())) << name(c) << " top_k " << top_k;
      ASSERT_TRUE(torch::equal(got.blocks.cpu(), want.blocks))
          << name(c) << " top_k " << top_k << " init " << init << " local " << local;
    }
}

TEST_P(GpuSelection, SelectRowsComposesTheStagesAtAnyChunking) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  const Case c = GetParam();
  const Inputs in = draw(c);
  auto staged = cuda::rows_from_scores(cuda::block_scores(in.q, in.k_cmp, c.knobs, c.dtype), c.knobs);
  for (int64_t chunk : {int64_t(0), int64_t(37)}) {
    auto rows = cuda::select_rows(in.q, in.k_cmp, c.knobs, c.dtype, chunk);
    EXPECT_TRUE(torch::equal(rows.row_ptr, staged.row_ptr)) << name(c) << " chunk " << chunk;
    EXPECT_TRUE(torch::equal(rows.blocks, staged.blocks)) << name(c) << " chunk " << chunk;
  }
}

// The reference in fp32 on the GPU rounds differently from the kernels: where the k-th and
// (k+1)-th scores of a row lie within that rounding, the two pick different blocks. With
// continuous random scores that is rare; count it.
TEST_P(GpuSelection, SelectRowsMatchReferenceUpToNearTies) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  const Case c = GetParam();
  const Inputs in = draw(c);
  auto got = dense(select_rows(in.q, in.k_cmp, c.knobs, "cuda"), c);
  auto want = dense(select_rows_from_compressed(in.q.to(torch::kFloat32), in.k_cmp, c.knobs), c);
  const int64_t rows_differing = (got != want).any(-1).sum().item<int64_t>(), rows = 2 * c.Hkv * c.T;
  std::printf("  %s: %ld of %ld rows choose differently\n", name(c).c_str(), long(rows_differing), long(rows));
  EXPECT_LE(rows_differing, rows / 500 + 1) << name(c);
}

std::vector<Case> cases() {
  const SelectionKnobs infllm{32, 16, 64, 6, 1, 2, Pool::Max}, nsa{32, 16, 64, 6, 1, 2, Pool::Sum},
      wide{64, 32, 64, 5, 1, 1, Pool::Max}, plain{16, 16, 64, 8, 0, 1, Pool::Sum};
  std::vector<Case> all;
  for (int64_t T : {1, 33, 100, 1000, 4097})
    for (int64_t G : {1, 3, 16}) all.push_back({G == 16 ? 1 : 2, G, T, 128, infllm, torch::kBFloat16});
  for (int64_t G : {4, 8}) all.push_back({2, G, 1000, 64, nsa, torch::kBFloat16});
  all.push_back({2, 4, 1000, 128, nsa, torch::kHalf});
  all.push_back({2, 2, 777, 64, wide, torch::kBFloat16});
  all.push_back({1, 16, 3000, 128, plain, torch::kBFloat16});
  all.push_back({1, 64, 300, 64, infllm, torch::kBFloat16});
  return all;
}

INSTANTIATE_TEST_SUITE_P(Grid, GpuSelection, ::testing::ValuesIn(cases()), [](const ::testing::TestParamInfo<Case>& i) {
  return "case" + std::to_string(i.index);
});

}  // namespace
}  // namespace st
#endif  // SPARSETRAIN_CUDA
