// alpha = 1.5 entmax over the last dim of fp32 rows (DESIGN §2.1), one warp per row: the
// threshold by Newton's method, the Jacobian-vector product in one pass. Plain C++ launchers
// (raw device pointers and a stream); src/attention/cuda/entmax.h wraps them for LibTorch.
#pragma once
#include <cstdint>

#include <cuda_runtime_api.h>

namespace st::kernels {

// p = entmax15(z) row by row: z, p [rows, n] contiguous. -inf entries get 0; a row of -inf
// only is all 0. tau solves sum_i [x_i - tau]_+^2 = 1 for x = (z - max z) / 2: Newton's method
// from tau = -1, where f is convex and decreasing, climbs monotonically to the root and is
// exact once the support stops changing (a quadratic on it); it stops when a step no longer
// moves tau (fp32 rounding), at most 64 steps.
int entmax15_forward(const float* z, float* p, int64_t rows, int64_t n, cudaStream_t stream);

// dz = s * dp - (s . dp / sum s) s with s = sqrt(p) on the support (p > 0), 0 off it.
int entmax15_backward(const float* p, const float* dp, float* dz, int64_t rows, int64_t n, cudaStream_t stream);

}  // namespace st::kernels
