// AdamW with decoupled weight decay, written out so that its state is plain named tensors
// (checkpoints store them by name; sharded training steps on shards of the same tensors).
#pragma once
#include <torch/types.h>

#include <string>
#include <vector>

#include "config/recipe.h"
#include "io/safetensors.h"

namespace st {

struct NamedParameter {
  std::string name;
  torch::Tensor param;
  // When `param` is a flat slice of a parameter (sharded training): the whole parameter's
  // number of dimensions, which weight decay follows. 0: param's own.
  int64_t whole_dim = 0;
};

class AdamW {
 public:
  AdamW(std::vector<NamedParameter> params, const OptimConfig& cfg);
  // One update from the parameters' .grad at learning rate lr; parameters without a
  // gradient are left alone.
  void step(double lr);
  void zero_grad();
  // "exp_avg.<name>", "exp_avg_sq.<name>", "step".
  TensorMap state() const;
  void load_state(const TensorMap& state);
  // Whether weight decay applies: matrices other than the embedding, unless configured.
  static bool decays(const std::string& name, const torch::Tensor& p, const OptimConfig& cfg);
  static bool decays(const std::string& name, int64_t dim, const OptimConfig& cfg);

 private:
  struct Slot {
    NamedParameter p;
    torch::Tensor exp_avg, exp_avg_sq;
    bool decay;
  };
  std::vector<Slot> slots_;
  OptimConfig cfg_;
  int64_t steps_ = 0;
};

}  // namespace st
