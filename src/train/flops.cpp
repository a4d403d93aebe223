#include "train/flops.h"

#include <torch/cuda.h>
#include <ATen/cuda/CUDAContextLight.h>

#include <thread>

namespace st {

int64_t parameter_count(const ModelConfig& c) {
  const int64_t d = c.head_dim_or_default();
  const int64_t attn = c.dim * d * (2 * c.n_heads + 2 * c.n_kv_heads);
  const int64_t mlp = 3 * c.dim * c.ffn_dim_or_default();
  const int64_t norms = 2 * c.dim;
  const int64_t embed = c.vocab_size * c.dim * (c.tie_embeddings ? 1 : 2);
  return c.n_layers * (attn + mlp + norms) + c.dim + embed;
}

double training_flops_per_token(const ModelConfig& c, int64_t seq_len) {
  const double d = double(c.head_dim_or_default());
  const double matmul_params = double(c.n_layers) * (c.dim * d * (2 * c.n_heads + 2 * c.n_kv_heads) + 3.0 * c.dim * c.ffn_dim_or_default())
                               + double(c.vocab_size) * c.dim;  // the head
  return 6.0 * matmul_params + 6.0 * c.n_layers * double(seq_len) * c.n_heads * d;
}

double peak_flops(const std::string& device, const std::string& precision, double configured_tflops) {
  if (configured_tflops > 0) return configured_tflops * 1e12;
  if (device == "cuda") {
    const auto* p = at::cuda::getCurrentDeviceProperties();
    const bool low = precision == "bf16";
    // Dense tensor-core rates of the SXM parts (fp32 runs as tf32 at half the bf16 rate).
    double bf16 = 0;
    if (p->major == 9) bf16 = 989.4e12;        // H100 / H200
    else if (p->major == 8 && p->minor == 0) bf16 = 312e12;  // A100
    else if (p->major == 10) bf16 = 2250e12;   // B200
    else bf16 = 2.0 * p->multiProcessorCount * 1024 * 1.5e9;  // rough: 1024 FLOP/clk/SM at 1.5 GHz
    return low ? bf16 : bf16 / 2;
  }
  // CPU: 2 FMA units x (16 fp32 lanes with AVX-512, else 8) x 2 FLOPs per cycle at ~3 GHz.
  const double flops_per_cycle = __builtin_cpu_supports("avx512f") ? 64 : 32;
  return double(std::max(1u, std::thread::hardware_concurrency())) * flops_per_cycle * 3e9;
}

}  // namespace st
