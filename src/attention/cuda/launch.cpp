#ifdef SPARSETRAIN_CUDA
#include "attention/cuda/launch.h"

#include <c10/cuda/CUDAStream.h>

#include <stdexcept>
#include <string>

#include "block_sparse_attention.h"

namespace st::cuda {

cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

void check_launch(int rc, const char* what) {
  if (rc == 0) return;
  if (rc == st::kernels::kBsaBadShape) throw std::invalid_argument(std::string(what) + ": unsupported shape");
  throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(static_cast<cudaError_t>(rc)));
}

}  // namespace st::cuda
#endif  // SPARSETRAIN_CUDA
