// What every LibTorch face of the kernels (kernels/*.h) needs around a launch: the current
// stream, and the launchers' return codes (0, a cudaError_t, or kBsaBadShape, which all of
// them use for a shape they do not take) as exceptions. Compiled only with SPARSETRAIN_CUDA.
#pragma once
#ifdef SPARSETRAIN_CUDA
#include <cuda_runtime_api.h>

namespace st::cuda {

cudaStream_t current_stream();

// Throws std::invalid_argument "WHAT: unsupported shape" for kBsaBadShape, std::runtime_error
// "WHAT: <CUDA error>" for any other nonzero code.
void check_launch(int rc, const char* what);

}  // namespace st::cuda
#endif  // SPARSETRAIN_CUDA
