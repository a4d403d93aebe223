// LibTorch face of the alpha = 1.5 entmax kernels (kernels/entmax15.h): a differentiable
// function over the last dim of an fp32 CUDA tensor. st::entmax (attention/entmax.h) routes
// such calls here; compiled only with SPARSETRAIN_CUDA.
#pragma once
#ifdef SPARSETRAIN_CUDA
#include <torch/types.h>

namespace st::cuda {

torch::Tensor entmax15(const torch::Tensor& z);
// Its Jacobian-vector product at the output p (last dim; p and dp fp32 on CUDA).
torch::Tensor entmax15_backward(const torch::Tensor& p, const torch::Tensor& dp);

}  // namespace st::cuda
#endif  // SPARSETRAIN_CUDA
