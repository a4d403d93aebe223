#ifdef SPARSETRAIN_CUDA
#include "attention/cuda/entmax.h"

#include <c10/cuda/CUDAGuard.h>
#include <torch/autograd.h>

#include "attention/cuda/launch.h"
#include "entmax15.h"

namespace st::cuda {
namespace {

using torch::Tensor;

struct Entmax15Function : torch::autograd::Function<Entmax15Function> {
  static Tensor forward(torch::autograd::AutogradContext* ctx, const Tensor& z_in) {
    const c10::cuda::CUDAGuard guard(z_in.device());
    const Tensor z = z_in.contiguous();
    Tensor p = torch::empty_like(z);
    const int64_t n = z.size(-1);
    check_launch(st::kernels::entmax15_forward(z.data_ptr<float>(), p.data_ptr<float>(), n ? z.numel() / n : 0, n,
                                               current_stream()),
                 "entmax15 forward");
    ctx->save_for_backward({p});
    return p;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    return {entmax15_backward(ctx->get_saved_variables()[0], grads[0])};
  }
};

}  // namespace

torch::Tensor entmax15_backward(const torch::Tensor& p_in, const torch::Tensor& dp_in) {
  const c10::cuda::CUDAGuard guard(p_in.device());
  const Tensor p = p_in.contiguous(), dp = dp_in.to(torch::kFloat32).contiguous();
  Tensor dz = torch::empty_like(p);
  const int64_t n = p.size(-1);
  check_launch(st::kernels::entmax15_backward(p.data_ptr<float>(), dp.data_ptr<float>(), dz.data_ptr<float>(),
                                              n ? p.numel() / n : 0, n, current_stream()),
               "entmax15 backward");
  return dz;
}

torch::Tensor entmax15(const torch::Tensor& z) {
  TORCH_CHECK(z.is_cuda() && z.scalar_type() == torch::kFloat32, "cuda::entmax15: fp32 CUDA tensor");
  return Entmax15Function::apply(z);
}

}  // namespace st::cuda
#endif  // SPARSETRAIN_CUDA
