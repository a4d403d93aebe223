// GPU block-sparse attention kernels (kernels/, through src/attention/cuda/) against the ATen
// reference st::block_sparse_attention: forward and the gradients of q, k, v and the
// per-(query, block) bias, over ragged lengths up to 16K, GQA group sizes 1..16 (3 included: tiles
// that straddle KV blocks), d 64/128, bf16/fp16, batch 1-2, random top-k lists with
// duplicates, padding and empty-but-diagonal rows, alone and with a sliding window on top
// (one softmax over the union, InfLLMv2), and the sliding window alone; on a Hopper both the
// default (wgmma) kernels and the portable (mma.sync) ones. Skips without a GPU.
// The full grid (T up to 16384) and the timing live in tools/kernel_dev/kernel_check.
#ifdef SPARSETRAIN_CUDA
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <string>

#include "attention/block_sparse.h"
#include "attention/block_sparse_dispatch.h"
#include "attention/cuda/block_sparse.h"
#include "relative_error.h"

namespace st {
namespace {

using test::rel_err;

struct Shape {
  int64_t B, Hkv, G, T, d;
  torch::ScalarType dtype;
  int window;  // keys; 0: none
};

// The ATen reference in fp32 on the same (16-bit) inputs: output and every gradient.
struct Reference {
  torch::Tensor o, dq, dk, dv, dbias;
};
Reference reference(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, const torch::Tensor& bias,
                    const cuda::BlockLists& lists, const torch::Tensor& dout, const Shape& s) {
  auto qr = q.to(torch::kFloat32).requires_grad_(true), kr = k.to(torch::kFloat32).requires_grad_(true),
       vr = v.to(torch::kFloat32).requires_grad_(true), br = bias.clone().requires_grad_(true);
  auto o = block_sparse_attention(qr, kr, vr, dense_bias({lists.row_ptr, lists.blocks, br}, s.B, s.Hkv, s.T, 64), 64,
                                  s.window);
  o.backward(dout.to(torch::kFloat32));
  return {o.detach(), qr.grad(), kr.grad(), vr.grad(), br.grad()};
}

// bf16 keeps 8 mantissa bits, fp16 11: the kernels' P and dS round to them before the MMAs.
double output_tolerance(const Shape& s) { return s.dtype == torch::kBFloat16 ? 1e-2 : 3e-3; }
double grad_tolerance(const Shape& s) { return s.dtype == torch::kBFloat16 ? 2e-2 : 6e-3; }

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
  cuda::BlockLists lists = cuda::lists_from_topk(ids);
  lists.window = s.window;
  auto bias = torch::randn({lists.blocks.numel()}, torch::TensorOptions().device(dev));

  auto qg = q.clone().requires_grad_(true), kg = k.clone().requires_grad_(true),
       vg = v.clone().requires_grad_(true), bg = bias.clone().requires_grad_(true);
  auto out = cuda::block_sparse_attention(qg, kg, vg, bg, lists);
  out.backward(dout);

  const Reference ref = reference(q, k, v, bias, lists, dout, s);
  const double tol_o = output_tolerance(s), tol_g = grad_tolerance(s);
  EXPECT_LT(rel_err(out, ref.o), tol_o);
  EXPECT_LT(rel_err(qg.grad(), ref.dq), tol_g);
  EXPECT_LT(rel_err(kg.grad(), ref.dk), tol_g);
  EXPECT_LT(rel_err(vg.grad(), ref.dv), tol_g);
  if (bias.numel() > 0) {
    EXPECT_LT(rel_err(bg.grad(), ref.dbias), tol_g);
  }
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, GpuBlockSparse,
    ::testing::Values(Shape{2, 2, 1, 1, 64, torch::kBFloat16, 0}, Shape{1, 2, 4, 63, 128, torch::kHalf, 0},
                      Shape{2, 1, 16, 64, 64, torch::kBFloat16, 0}, Shape{1, 2, 3, 300, 64, torch::kHalf, 0},
                      Shape{2, 2, 4, 1000, 128, torch::kBFloat16, 0}, Shape{1, 1, 16, 1000, 128, torch::kHalf, 0},
                      Shape{1, 2, 1, 2048, 64, torch::kBFloat16, 0}, Shape{1, 2, 4, 4096, 128, torch::kBFloat16, 0},
                      Shape{1, 1, 16, 4096, 64, torch::kHalf, 0}, Shape{1, 1, 16, 16384, 128, torch::kBFloat16, 0},
                      // Windows shorter than a block, of one block, not multiples of 64, and
                      // longer than the sequence, on top of the lists.
                      Shape{2, 2, 1, 130, 64, torch::kBFloat16, 1}, Shape{1, 2, 1, 777, 128, torch::kBFloat16, 30},
                      Shape{1, 2, 3, 900, 64, torch::kBFloat16, 64}, Shape{2, 2, 4, 1000, 64, torch::kBFloat16, 100},
                      Shape{1, 1, 16, 1500, 128, torch::kBFloat16, 200}, Shape{1, 2, 4, 2000, 128, torch::kHalf, 256},
                      Shape{1, 1, 16, 333, 64, torch::kHalf, 1000}),
    [](const ::testing::TestParamInfo<Shape>& i) {
      const Shape& s = i.param;
      return "B" + std::to_string(s.B) + "_Hkv" + std::to_string(s.Hkv) + "_G" + std::to_string(s.G) +
             "_T" + std::to_string(s.T) + "_d" + std::to_string(s.d) +
             (s.dtype == torch::kBFloat16 ? "_bf16" : "_fp16") + "_w" + std::to_string(s.window);
    });

// The portable (sm_80, mma.sync) kernels, which a Hopper would otherwise never run: forward
// and every gradient against the reference, and against the default path.
TEST(GpuBlockSparsePortable, MatchesReferenceAndDefaultPath) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  for (const Shape s : {Shape{1, 2, 4, 1000, 128, torch::kBFloat16, 0}, Shape{2, 1, 16, 700, 64, torch::kHalf, 100},
                        Shape{1, 2, 3, 900, 128, torch::kBFloat16, 0}}) {
    SCOPED_TRACE("T " + std::to_string(s.T) + " G " + std::to_string(s.G) + " d " + std::to_string(s.d));
    torch::manual_seed(s.T + s.G);
    const auto dev = torch::Device(torch::kCUDA);
    const auto opt = torch::TensorOptions().dtype(s.dtype).device(dev);
    const int64_t Hq = s.Hkv * s.G, nb = (s.T + 63) / 64;
    auto q = torch::randn({s.B, Hq, s.T, s.d}, opt), k = torch::randn({s.B, s.Hkv, s.T, s.d}, opt),
         v = torch::randn({s.B, s.Hkv, s.T, s.d}, opt), dout = torch::randn({s.B, Hq, s.T, s.d}, opt);
    cuda::BlockLists lists = cuda::lists_from_topk(torch::randint(-1, nb, {s.B, s.Hkv, s.T, 6}, opt.dtype(torch::kInt32)));
    lists.window = s.window;
    auto bias = torch::randn({lists.blocks.numel()}, torch::TensorOptions().device(dev));
    const cuda::Plan plan = cuda::make_plan(lists, s.B, Hq, s.Hkv, s.T, s.d);
    const double scale = 1.0 / std::sqrt(static_cast<double>(s.d));
    auto run = [&](kernels::BsaPath path) {
      const cuda::Forward f = cuda::forward(q, k, v, bias, lists, plan, scale, path);
      cuda::Grads g = cuda::backward(q, k, v, f.o, f.lse, dout, bias, lists, plan, scale, true, path);
      return std::make_pair(f.o, g);
    };
    const auto [o_p, g_p] = run(kernels::BsaPath::kPortable);
    const auto [o_d, g_d] = run(kernels::BsaPath::kAuto);

    const Reference ref = reference(q, k, v, bias, lists, dout, s);
    const double tol_o = output_tolerance(s), tol_g = grad_tolerance(s);
    EXPECT_LT(rel_err(o_p, ref.o), tol_o);
    EXPECT_LT(rel_err(g_p.dq, ref.dq), tol_g);
    EXPECT_LT(rel_err(g_p.dk, ref.dk), tol_g);
    EXPECT_LT(rel_err(g_p.dv, ref.dv), tol_g);
    EXPECT_LT(rel_err(g_p.dbias, ref.dbias), tol_g);
    // The two paths differ only in how the same fp32 sums are ordered.
    EXPECT_LT(rel_err(o_p, o_d), tol_o / 4);
    EXPECT_LT(rel_err(g_p.dq, g_d.dq), tol_g / 4);
    EXPECT_LT(rel_err(g_p.dk, g_d.dk), tol_g / 4);
    EXPECT_LT(rel_err(g_p.dv, g_d.dv), tol_g / 4);
  }
}

// Sliding window alone (NSA's window branch): empty lists + the window equal the reference's
// pure window.
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
