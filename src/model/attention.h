// The one interface between the transformer block and an attention variant.
// The block owns the Q/K/V/O projections and RoPE; the variant decides which keys each
// query sees. Variants live in src/attention/ and know nothing of the rest of the model.
#pragma once
#include <torch/nn/module.h>
#include <torch/types.h>

#include <memory>

#include "config/recipe.h"

namespace st {

// What one attention call attended: (query, key) pairs attended and causal pairs, counted
// over queries at positions >= AttentionConfig::sparsity_offset, summed over batch and query
// heads. sparsity = 1 - attended / causal.
struct AttentionStats {
  int64_t attended = 0;
  int64_t causal = 0;
  double sparsity() const { return causal > 0 ? 1.0 - double(attended) / double(causal) : 0.0; }
  AttentionStats& operator+=(const AttentionStats& o) {
    attended += o.attended;
    causal += o.causal;
    return *this;
  }
};

struct AttentionInputs {
  torch::Tensor q;    // [B, Hq, T, d], RoPE applied
  torch::Tensor k;    // [B, Hkv, T, d], RoPE applied
  torch::Tensor v;    // [B, Hkv, T, d]
  torch::Tensor x;    // [B, T, dim], the normalised block input (NSA gates and branch K/V read it)
  torch::Tensor cos;  // [T, d] RoPE tables, for variants that project their own keys
  torch::Tensor sin;  // [T, d]
};

class AttentionVariant : public torch::nn::Module {
 public:
  // Returns [B, Hq, T, d]. Causal; position t attends only to keys <= t.
  virtual torch::Tensor forward(const AttentionInputs& in) = 0;
  // Names of parameters a dense checkpoint lacks are whatever this module registers; they
  // must be initialised in the constructor so that a dense-initialised model starts close
  // to dense attention (continual pretraining).

  // Filled by forward when record_stats is true (no effect on the result or its gradient).
  bool record_stats = false;
  AttentionStats stats;
};

// Builds the variant named by cfg.attention.variant for a model with these dimensions.
std::shared_ptr<AttentionVariant> make_attention(const ModelConfig& cfg);

// Causal (query, key) pairs for queries at positions >= offset of a length-T sequence.
int64_t causal_pairs(int64_t T, int64_t offset);

}  // namespace st
