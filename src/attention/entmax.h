// alpha-entmax (DESIGN §2.1): a sparse softmax whose support adapts to its input.
//   entmax_a(z)_i = [(a-1) z_i - tau]_+ ^ (1/(a-1)),  tau such that the outputs sum to 1.
// a -> 1 is softmax, a = 1.5 the usual choice, a = 2 sparsemax.
#pragma once
#include <torch/types.h>

namespace st {

// alpha-entmax along `dim`, alpha in (1, 2]. Exact sort-based threshold for alpha = 1.5 and
// alpha = 2, bisection otherwise; alpha = 1.5 on fp32 CUDA tensors runs the kernels of
// attention/cuda/entmax.h (Newton's method on the threshold, exact to fp32 rounding). Differentiable (closed-form Jacobian-vector product).
// -inf entries are masked: their output and gradient are exactly 0. A row whose entries are
// all -inf has nothing to distribute; its output is defined as all 0 (not NaN).
torch::Tensor entmax(const torch::Tensor& z, double alpha, int64_t dim = -1);

// entmax's Jacobian-vector product at its output p: dz = s dp - (s . dp / sum s) s along dim,
// s = p^(2 - alpha) on the support and 0 off it (DESIGN §2.1); for callers that derive through
// entmax by hand. Not differentiable itself.
torch::Tensor entmax_backward(const torch::Tensor& p, const torch::Tensor& dp, double alpha, int64_t dim = -1);

// The same map with the threshold found by bisection for every alpha. entmax() uses it for
// alpha other than 1.5 and 2; it is public so tests can check the two solvers agree.
torch::Tensor entmax_bisect(const torch::Tensor& z, double alpha, int64_t dim = -1);

}  // namespace st
