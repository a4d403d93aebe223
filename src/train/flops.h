// Model size and compute, from the config alone, for MFU.
#pragma once
#include <cstdint>

#include "config/recipe.h"

namespace st {

// Parameters of the dense architecture (variant-specific extras are not counted).
int64_t parameter_count(const ModelConfig& cfg);
// Training FLOPs per token: 6 x (matmul parameters, head included) for forward and
// backward, plus the causal attention term 6 x n_layers x seq_len x (n_heads x head_dim)
// (QK^T and PV, 2 FLOPs per multiply-add, half the pairs under the causal mask, x3 for
// backward). Sparse variants are charged the dense attention term, so their MFU is
// comparable with the dense model's.
double training_flops_per_token(const ModelConfig& cfg, int64_t seq_len);
// Peak dense FLOP/s of the device the run uses (bf16 tensor cores on GPU; an AVX2/AVX-512
// fp32 estimate on CPU), unless logging.peak_tflops is set.
double peak_flops(const std::string& device, const std::string& precision, double configured_tflops);

}  // namespace st
