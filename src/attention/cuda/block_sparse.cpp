#ifdef SPARSETRAIN_CUDA
#include "attention/cuda/block_sparse.h"

#include <c10/cuda/CUDAGuard.h>

#include <cmath>
#include <stdexcept>

#include "attention/cuda/launch.h"

namespace st::cuda {
namespace kn = st::kernels;

namespace {

kn::BsaDtype dtype_of(const torch::Tensor& t) {
  if (t.scalar_type() == torch::kBFloat16) return kn::BsaDtype::kBf16;
  if (t.scalar_type() == torch::kHalf) return kn::BsaDtype::kFp16;
  throw std::invalid_argument("block_sparse_attention: q/k/v must be bf16 or fp16");
}

kn::BsaRows rows_of(const BlockLists& l, const torch::Tensor& bias) {
  kn::BsaRows r;
  r.row_ptr = l.row_ptr.data_ptr<int64_t>();
  r.blocks = l.blocks.data_ptr<int32_t>();
  r.bias = bias.defined() && bias.numel() > 0 ? bias.data_ptr<float>() : nullptr;
  r.nnz = l.blocks.numel();
  r.window = l.window;
  return r;
}

void check_qkv(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v) {
  TORCH_CHECK(q.is_cuda() && k.is_cuda() && v.is_cuda(), "block_sparse_attention: CUDA tensors");
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4, "block_sparse_attention: 4-d q/k/v");
  TORCH_CHECK(q.is_contiguous() && k.is_contiguous() && v.is_contiguous(),
              "block_sparse_attention: contiguous q/k/v");
  TORCH_CHECK(k.sizes() == v.sizes() && q.size(0) == k.size(0) && q.size(2) == k.size(2) &&
                  q.size(3) == k.size(3) && q.size(1) % k.size(1) == 0,
              "block_sparse_attention: q [B,Hq,T,d], k/v [B,Hkv,T,d]");
  TORCH_CHECK(q.scalar_type() == k.scalar_type() && q.scalar_type() == v.scalar_type(),
              "block_sparse_attention: one dtype for q/k/v");
}

torch::Tensor scratch(int64_t bytes, torch::Device device) {
  return torch::empty({bytes}, torch::TensorOptions().dtype(torch::kUInt8).device(device));
}

}  // namespace

BlockLists lists_from_topk(const torch::Tensor& ids_in) {
  TORCH_CHECK(ids_in.is_cuda() && ids_in.dim() == 4, "lists_from_topk: ids [B,Hkv,T,k] on CUDA");
  const c10::cuda::CUDAGuard guard(ids_in.device());
  const torch::Tensor ids = ids_in.to(torch::kInt32).contiguous();
  const kn::BsaShape s{ids.size(0), ids.size(1), ids.size(1), ids.size(2), 64};
  const int k = static_cast<int>(ids.size(3));
  const int64_t rows = s.B * s.Hkv * s.T;
  BlockLists l;
  l.row_ptr = torch::empty({rows + 1}, ids.options().dtype(torch::kInt64));
  torch::Tensor tmp = scratch(kn::bsa_scan_bytes(rows), ids.device());
  check_launch(kn::bsa_rows_count(s, ids.data_ptr<int32_t>(), k, l.row_ptr.data_ptr<int64_t>(), tmp.data_ptr(),
                                  current_stream()),
               "lists_from_topk");
  const int64_t nnz = l.row_ptr[rows].item<int64_t>();
  l.blocks = torch::empty({nnz}, l.row_ptr.options().dtype(torch::kInt32));
  if (nnz > 0)
    check_launch(kn::bsa_rows_fill(s, ids.data_ptr<int32_t>(), k, l.row_ptr.data_ptr<int64_t>(),
                                   l.blocks.data_ptr<int32_t>(), current_stream()),
                 "lists_from_topk");
  return l;
}

BlockLists lists_window(int64_t B, int64_t Hkv, int64_t T, int window, torch::Device device) {
  const auto ints = torch::TensorOptions().dtype(torch::kInt64).device(device);
  return {torch::zeros({B * Hkv * T + 1}, ints), torch::empty({0}, ints.dtype(torch::kInt32)), window};
}

Plan make_plan(const BlockLists& l, int64_t B, int64_t Hq, int64_t Hkv, int64_t T, int64_t d) {
  const c10::cuda::CUDAGuard guard(l.row_ptr.device());
  TORCH_CHECK(l.row_ptr.numel() == B * Hkv * T + 1, "make_plan: row_ptr size");
  Plan p;
  p.shape = {B, Hq, Hkv, T, d};
  p.workspace = scratch(kn::bsa_plan_bytes(p.shape, l.blocks.numel(), l.window), l.row_ptr.device());
  check_launch(kn::bsa_plan(p.shape, rows_of(l, torch::Tensor()), p.workspace.data_ptr(), &p.view, current_stream()),
               "make_plan");
  return p;
}

Forward forward(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                const torch::Tensor& bias, const BlockLists& lists, const Plan& plan, double scale,
                kn::BsaPath path) {
  check_qkv(q, k, v);
  const c10::cuda::CUDAGuard guard(q.device());
  Forward f;
  f.o = torch::empty_like(q);
  f.lse = torch::empty({q.size(0), q.size(1), q.size(2)}, q.options().dtype(torch::kFloat32));
  check_launch(
      kn::bsa_forward(plan.shape, dtype_of(q), q.data_ptr(), k.data_ptr(), v.data_ptr(), rows_of(lists, bias),
                      plan.view, static_cast<float>(scale), f.o.data_ptr(), f.lse.data_ptr<float>(),
                      current_stream(), path),
      "block_sparse_attention forward");
  return f;
}

Grads backward(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
               const torch::Tensor& o, const torch::Tensor& lse, const torch::Tensor& dout_in,
               const torch::Tensor& bias, const BlockLists& lists, const Plan& plan,
               double scale, bool want_dbias, kn::BsaPath path) {
  check_qkv(q, k, v);
  const c10::cuda::CUDAGuard guard(q.device());
  const torch::Tensor dout = dout_in.to(q.scalar_type()).contiguous();
  Grads g;
  g.dq = torch::empty_like(q);
  g.dk = torch::empty_like(k);
  g.dv = torch::empty_like(v);
  if (want_dbias) g.dbias = torch::empty({lists.blocks.numel()}, q.options().dtype(torch::kFloat32));
  torch::Tensor tmp = scratch(kn::bsa_backward_scratch_bytes(plan.shape), q.device());
  check_launch(kn::bsa_backward(plan.shape, dtype_of(q), q.data_ptr(), k.data_ptr(), v.data_ptr(), o.data_ptr(),
                                lse.data_ptr<float>(), dout.data_ptr(),
                                rows_of(lists, bias), plan.view, static_cast<float>(scale), g.dq.data_ptr(),
                                g.dk.data_ptr(), g.dv.data_ptr(), want_dbias ? g.dbias.data_ptr<float>() : nullptr,
                                tmp.data_ptr(), current_stream(), path),
               "block_sparse_attention backward");
  return g;
}

namespace {

// Inputs q, k, v, bias (empty: none). The plan is built once in forward and reused by the
// backward: its workspace is saved as a tensor, its device pointers as integers.
struct BlockSparseFn : public torch::autograd::Function<BlockSparseFn> {
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, torch::Tensor q,
                               torch::Tensor k, torch::Tensor v, torch::Tensor bias,
                               const BlockLists* lists, double scale) {
    const int64_t B = q.size(0), Hq = q.size(1), T = q.size(2), d = q.size(3), Hkv = k.size(1);
    Plan plan = make_plan(*lists, B, Hq, Hkv, T, d);
    Forward f = st::cuda::forward(q, k, v, bias, *lists, plan, scale);
    ctx->save_for_backward({q, k, v, f.o, f.lse, bias, lists->row_ptr, lists->blocks, plan.workspace});
    ctx->saved_data["scale"] = scale;
    ctx->saved_data["window"] = static_cast<int64_t>(lists->window);
    ctx->saved_data["has_bias"] = bias.numel() > 0;
    // The plan's view is a set of device pointers into plan.workspace, which is saved above;
    // store them as integers so the backward can rebuild the view without re-planning.
    ctx->saved_data["tile_ptr"] = reinterpret_cast<int64_t>(plan.view.tile_ptr);
    ctx->saved_data["tile_blocks"] = reinterpret_cast<int64_t>(plan.view.tile_blocks);
    ctx->saved_data["rev_ptr"] = reinterpret_cast<int64_t>(plan.view.rev_ptr);
    ctx->saved_data["rev_tiles"] = reinterpret_cast<int64_t>(plan.view.rev_tiles);
    return f.o;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad) {
    const auto s = ctx->get_saved_variables();
    const torch::Tensor &q = s[0], &k = s[1], &v = s[2], &o = s[3], &lse = s[4], &bias = s[5];
    BlockLists lists;
    lists.row_ptr = s[6];
    lists.blocks = s[7];
    lists.window = static_cast<int>(ctx->saved_data["window"].toInt());
    Plan plan;
    plan.workspace = s[8];
    plan.shape = {q.size(0), q.size(1), k.size(1), q.size(2), q.size(3)};
    plan.view.tile_ptr = reinterpret_cast<int64_t*>(ctx->saved_data["tile_ptr"].toInt());
    plan.view.tile_blocks = reinterpret_cast<int32_t*>(ctx->saved_data["tile_blocks"].toInt());
    plan.view.rev_ptr = reinterpret_cast<int64_t*>(ctx->saved_data["rev_ptr"].toInt());
    plan.view.rev_tiles = reinterpret_cast<int32_t*>(ctx->saved_data["rev_tiles"].toInt());
    const bool has_bias = ctx->saved_data["has_bias"].toBool();
    Grads g = st::cuda::backward(q, k, v, o, lse, grad[0], bias, lists, plan,
                                 ctx->saved_data["scale"].toDouble(),
                                 has_bias && ctx->needs_input_grad(3));
    return {g.dq, g.dk, g.dv, g.dbias, torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace

torch::Tensor block_sparse_attention(const torch::Tensor& q, const torch::Tensor& k,
                                     const torch::Tensor& v, const torch::Tensor& bias,
                                     const BlockLists& lists, double scale) {
  if (scale <= 0) scale = 1.0 / std::sqrt(static_cast<double>(q.size(3)));
  // Function::apply needs defined tensors: "no bias" travels as an empty one.
  torch::Tensor b = bias.defined() ? bias.to(torch::kFloat32).contiguous()
                                   : torch::empty({0}, q.options().dtype(torch::kFloat32));
  return BlockSparseFn::apply(q.contiguous(), k.contiguous(), v.contiguous(), b, &lists, scale);
}

}  // namespace st::cuda
#endif  // SPARSETRAIN_CUDA
