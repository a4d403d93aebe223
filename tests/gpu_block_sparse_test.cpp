// GPU block-sparse attention kernels (kernels/, through src/attention/cuda/) against the ATen
// reference st::block_sparse_attention: forward and the gradients of q, k, v and the
// per-(query, block) bias, over ragged lengths, GQA group sizes 1..16 (3 included: tiles
// that straddle KV blocks), d 64/128, bf16/fp16, batch 1-2, random top-k lists with
// duplicates, padding and empty-but-diagonal rows, and the sliding window. Skips without a GPU.
// The full grid (T up to 16384) and the timing live in tools/kernel_dev/kernel_check.
#ifdef SPARSETRAIN_CUDA
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <string>

#include "attention/block_sparse.h"
#include "attention/cuda/block_sparse.h"
#include "relative_error.h"

namespace st {
namespace {

using test::rel_err;

// The reference's dense per-(query, block) bias from the kernel's lists: the entry's bias on
// a selected block (differentiable through `entries`), 0 on the diagonal block, -inf elsewhere.
torch::Tensor dense_bias(const cuda::BlockLists& l, const torch::Tensor& entries, int64_t B,
                         int64_t Hkv, int64_t T) {
  const int64_t nb = (T + 63) / 64, rows = B * Hkv * T;
  const auto i64 = torch::TensorOptions().dtype(torch::kInt64).device(entries.device());
  const auto counts = l.row_ptr.slice(0, 1) - l.row_ptr.slice(0, 0, rows);
  const auto entry_row = torch::repeat_interleave(torch::arange(rows, i64), counts);
  auto dense = torch::full({rows, nb}, -INFINITY, entries.options());
  dense = dense.index_put({entry_row, l.blocks.to(torch::kInt64)}, entries);
  const auto diag = torch::arange(rows, i64).remainder(T).div(64, "floor");
  dense = dense.index_put({torch::arange(rows, i64), diag}, torch::zeros({rows}, entries.options()));
  return dense.view({B, Hkv, T, nb});
}

struct Shape {
  int64_t B, Hkv, G, T, d;
  torch::ScalarType dtype;
};

class GpuBlockSparse : public ::testing::TestWithParam<Shape> {};

TEST_P(GpuBlockSparse, MatchesReferenceForwardAndGradients) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  const Shape s = GetParam();
  torch::manual_seed(s.T * 131 + s.G * 7 + s.d);
  const auto dev = torch::Device(torch::kCUDA);
  const auto opt = torch::TensorOptions().dtype(s.dtype).device(dev);
  const int64_t Hq = s.Hkv * s.G, nb = (s.T + 63) / 64;
  auto q = torch::randn({s.B, Hq, s.T, s.d}, opt);
  auto k = torch::randn({s.B, s.Hkv, s.T, s.d}, opt);
  auto v = torch::randn({s.B, s.Hkv, s.T, s.d}, opt);
  auto dout = torch::randn({s.B, Hq, s.T, s.d}, opt);
  // Top-k ids with padding (-1), out-of-range ids and duplicates; 20% of rows only diagonal.
  auto ids = torch::randint(-1, nb + 1, {s.B, s.Hkv, s.T, 8}, opt.dtype(torch::kInt32));
  ids = ids.masked_fill(torch::rand({s.B, s.Hkv, s.T, 1}, dev) < 0.2, -1);
  const cuda::BlockLists lists = cuda::lists_from_topk(ids);
  auto bias = torch::randn({lists.blocks.numel()}, torch::TensorOptions().device(dev));

  auto qg = q.clone().requires_grad_(true), kg = k.clone().requires_grad_(true),
       vg = v.clone().requires_grad_(true), bg = bias.clone().requires_grad_(true);
  auto out = cuda::block_sparse_attention(qg, kg, vg, bg, lists);
  out.backward(dout);

  auto qr = q.to(torch::kFloat32).requires_grad_(true), kr = k.to(torch::kFloat32).requires_grad_(true),
       vr = v.to(torch::kFloat32).requires_grad_(true), br = bias.clone().requires_grad_(true);
  auto ref = block_sparse_attention(qr, kr, vr, dense_bias(lists, br, s.B, s.Hkv, s.T), 64, 0);
  ref.backward(dout.to(torch::kFloat32));

  // bf16 keeps 8 mantissa bits, fp16 11: the kernels' P and dS round to them before the MMAs.
  const bool bf = s.dtype == torch::kBFloat16;
  const double tol_o = bf ? 1e-2 : 3e-3, tol_g = bf ? 2e-2 : 6e-3;
  EXPECT_LT(rel_err(out, ref), tol_o);
  EXPECT_LT(rel_err(qg.grad(), qr.grad()), tol_g);
  EXPECT_LT(rel_err(kg.grad(), kr.grad()), tol_g);
  EXPECT_LT(rel_err(vg.grad(), vr.grad()), tol_g);
  if (bias.numel() > 0) {
    EXPECT_LT(rel_err(bg.grad(), br.grad()), tol_g);
  }
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, GpuBlockSparse,
    ::testing::Values(Shape{2, 2, 1, 1, 64, torch::kBFloat16}, Shape{1, 2, 4, 63, 128, torch::kHalf},
                      Shape{2, 1, 16, 64, 64, torch::kBFloat16}, Shape{1, 2, 3, 300, 64, torch::kHalf},
                      Shape{2, 2, 4, 1000, 128, torch::kBFloat16}, Shape{1, 1, 16, 1000, 128, torch::kHalf},
                      Shape{1, 2, 1, 2048, 64, torch::kBFloat16}),
    [](const ::testing::TestParamInfo<Shape>& i) {
      const Shape& s = i.param;
      return "B" + std::to_string(s.B) + "_Hkv" + std::to_string(s.Hkv) + "_G" + std::to_string(s.G) +
             "_T" + std::to_string(s.T) + "_d" + std::to_string(s.d) +
             (s.dtype == torch::kBFloat16 ? "_bf16" : "_fp16");
    });

// Sliding window: window lists + the kernel's token mask equal the reference's pure window.
TEST(GpuBlockSparseWindow, MatchesReference) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  torch::manual_seed(5);
  const auto opt = torch::TensorOptions().dtype(torch::kBFloat16).device(torch::kCUDA);
  const int64_t B = 1, Hkv = 2, G = 4, T = 900, d = 64;
  const int window = 200;
  auto q = torch::randn({B, Hkv * G, T, d}, opt), k = torch::randn({B, Hkv, T, d}, opt),
       v = torch::randn({B, Hkv, T, d}, opt), dout = torch::randn({B, Hkv * G, T, d}, opt);
  const cuda::BlockLists lists = cuda::lists_window(B, Hkv, T, window, torch::Device(torch::kCUDA));
  auto qg = q.clone().requires_grad_(true), kg = k.clone().requires_grad_(true),
       vg = v.clone().requires_grad_(true);
  auto out = cuda::block_sparse_attention(qg, kg, vg, torch::Tensor(), lists);
  out.backward(dout);
  auto qr = q.to(torch::kFloat32).requires_grad_(true), kr = k.to(torch::kFloat32).requires_grad_(true),
       vr = v.to(torch::kFloat32).requires_grad_(true);
  auto ref = block_sparse_attention(qr, kr, vr, torch::Tensor(), 64, window);
  ref.backward(dout.to(torch::kFloat32));
  EXPECT_LT(rel_err(out, ref), 1e-2);
  EXPECT_LT(rel_err(qg.grad(), qr.grad()), 2e-2);
  EXPECT_LT(rel_err(kg.grad(), kr.grad()), 2e-2);
  EXPECT_LT(rel_err(vg.grad(), vr.grad()), 2e-2);
}

}  // namespace
}  // namespace st
#endif  // SPARSETRAIN_CUDA
