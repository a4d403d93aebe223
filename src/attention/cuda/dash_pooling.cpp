#ifdef SPARSETRAIN_CUDA
#include "attention/cuda/dash_pooling.h"

#include <c10/cuda/CUDAGuard.h>
#include <torch/autograd.h>

#include "attention/cuda/dash_routing.h"  // dash_q_type
#include "attention/cuda/launch.h"
#include "dash_pool.h"

namespace st::cuda {
namespace kn = st::kernels;

namespace {

using torch::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

kn::DashPoolArgs pool_args(const Tensor& k, const Tensor& pool_query, int64_t chunk) {
  kn::DashPoolArgs a{};
  a.k = k.data_ptr();
  a.batch_stride = k.stride(0);
  a.head_stride = k.stride(1);
  a.row_stride = k.stride(2);
  a.dtype = dash_q_type(k, "dash chunk pooling: k");
  a.B = k.size(0);
  a.H = k.size(1);
  a.T = k.size(2);
  a.n = k.size(2) / chunk;
  a.chunk = chunk;
  a.d = k.size(3);
  a.pool_query = pool_query.data_ptr<float>();
  return a;
}

// Saves k, the fp32 pooling query, kbar and each chunk's log sum exp; the backward recomputes
// the weights from them in one more pass over the keys.
struct PoolChunksFunction : torch::autograd::Function<PoolChunksFunction> {
  static Tensor forward(AutogradContext* ctx, const Tensor& k, const Tensor& pool_query, int64_t chunk) {
    const c10::cuda::CUDAGuard guard(k.device());
    const Tensor h = pool_query.to(torch::kFloat32).contiguous();
    const kn::DashPoolArgs a = pool_args(k, h, chunk);
    const auto f32 = k.options().dtype(torch::kFloat32);
    auto kbar = torch::empty({a.B, a.H, a.n, a.d}, f32), lse = torch::empty({a.B, a.H, a.n}, f32);
    check_launch(kn::dash_pool_forward(a, kbar.data_ptr<float>(), lse.data_ptr<float>(), current_stream()),
                 "dash chunk pooling");
    ctx->save_for_backward({k, h, kbar, lse});
    ctx->saved_data["chunk"] = chunk;
    ctx->saved_data["query_type"] = pool_query.scalar_type();
    return kbar;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const Tensor &k = saved[0], &h = saved[1], &kbar = saved[2], &lse = saved[3];
    const int64_t chunk = ctx->saved_data["chunk"].toInt();
    const c10::cuda::CUDAGuard guard(k.device());
    const kn::DashPoolArgs a = pool_args(k, h, chunk);
    const Tensor d_kbar = grads[0].to(torch::kFloat32).contiguous();
    auto dk = torch::empty({a.B, a.H, a.T, a.d}, k.options());
    dk.narrow(2, a.n * chunk, a.T - a.n * chunk).zero_();  // keys of the last, incomplete chunk
    auto dh = torch::zeros_like(h);
    check_launch(kn::dash_pool_backward(a, kbar.data_ptr<float>(), lse.data_ptr<float>(), d_kbar.data_ptr<float>(),
                                        dk.data_ptr(), dh.data_ptr<float>(), current_stream()),
                 "dash chunk pooling backward");
    return {dk, dh.to(ctx->saved_data["query_type"].toScalarType()), Tensor()};
  }
};

}  // namespace

bool dash_pooling_runs(const Tensor& k) {
  const auto t = k.scalar_type();
  return k.is_cuda() && k.dim() == 4 && (t == torch::kBFloat16 || t == torch::kHalf || t == torch::kFloat32) &&
         (k.size(3) == 64 || k.size(3) == 128) && k.stride(3) == 1;
}

Tensor pool_chunks(const Tensor& k, const Tensor& pool_query, int64_t chunk) {
  TORCH_CHECK(dash_pooling_runs(k),
              "dash chunk pooling: k must be CUDA [B, H, T, d] in bf16, fp16 or fp32, d 64 or 128, unit stride over d");
  TORCH_CHECK(pool_query.dim() == 2 && pool_query.size(0) == k.size(1) && pool_query.size(1) == k.size(3) &&
                  pool_query.device() == k.device(),
              "dash chunk pooling: pool_query must be [H, d] on k's device");
  TORCH_CHECK(chunk >= 1, "dash chunk pooling: chunk must be positive");
  return PoolChunksFunction::apply(k, pool_query, chunk);
}

}  // namespace st::cuda
#endif  // SPARSETRAIN_CUDA
