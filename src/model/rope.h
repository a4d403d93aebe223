// Rotary position embedding, rotate-half convention (as in Llama / Hugging Face).
#pragma once
#include <torch/types.h>

#include "config/recipe.h"

namespace st {

struct RopeTables {
  torch::Tensor cos;  // [T, head_dim], fp32
  torch::Tensor sin;  // [T, head_dim], fp32
};

// Per-pair inverse frequencies with the configured scaling (none, linear, llama3).
torch::Tensor rope_inv_freq(const ModelConfig& cfg);
RopeTables rope_tables(const ModelConfig& cfg, int64_t seq_len, torch::Device device);
// x: [..., T, head_dim]; returns x rotated, in x's dtype.
torch::Tensor apply_rope(const torch::Tensor& x, const RopeTables& rope);

}  // namespace st
