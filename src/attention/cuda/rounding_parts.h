// A float operand for the 16-bit tensor-core kernels at more than 16-bit accuracy: the sum of
// a few 16-bit parts, each the rounding of what the earlier ones leave. Two parts carry ~16
// mantissa bits, three all 24 of fp32's. Compiled only with SPARSETRAIN_CUDA.
#pragma once
#ifdef SPARSETRAIN_CUDA
#include <torch/types.h>

#include <vector>

namespace st::cuda {

// x -> [count, x's shape] in the 16-bit `dtype`, contiguous, x ~ the parts' sum (in fp32).
inline torch::Tensor rounding_parts(const torch::Tensor& x, torch::ScalarType dtype, int count) {
  std::vector<torch::Tensor> parts;
  torch::Tensor rest = x.to(torch::kFloat32);
  for (int i = 0; i < count; ++i) {
    parts.push_back(rest.to(dtype));
    if (i + 1 < count) rest = rest - parts.back().to(torch::kFloat32);
  }
  return torch::stack(parts);
}

}  // namespace st::cuda
#endif  // SPARSETRAIN_CUDA
