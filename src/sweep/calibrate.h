// Calibration: the value of a sparse variant's knob that makes its measured attention
// sparsity hit a target at a given length, on a model initialised as continual pretraining
// starts it (dense weights, the variant's own parameters at their initialisation).
//
//   nsa       model.attention.nsa.top_n          integer, sparsity falls as it grows
//   infllmv2  model.attention.infllmv2.top_k     integer, sparsity falls as it grows
//   dash      model.attention.dash.temperature   real, sparsity rises as it grows
//
// Integer knobs: bisection for the pair of neighbours around the target, keeping the closer
// one. DashAttention's temperature: bracketing by factors of 4, then bisection on log s.
// Every measured value is cached, so several targets of one variant share their probes.
#pragma once
#include <functional>
#include <map>
#include <memory>
#include <string>

#include "config/recipe.h"
#include "data/shard.h"
#include "io/safetensors.h"
#include "model/transformer.h"
#include "train/runtime.h"

namespace st {

struct Knob {
  std::string key;       // recipe key path
  bool integer = false;
  double lo = 0, hi = 0; // search range (integer knobs: every valid value)
};

// The knob of a sparse variant at a sequence length; ConfigError for dense.
Knob sparsity_knob(const AttentionConfig& attention, int64_t length);
// Sets the knob's field in the config.
void set_knob(AttentionConfig& attention, double value);

struct Calibration {
  double target = 0;           // percent
  std::string knob;            // recipe key path
  double value = 0;            // the chosen knob value
  double sparsity = 0;         // measured at that value, in percent
  bool within_tolerance = false;
  std::map<double, double> probes;  // every knob value measured so far -> sparsity in percent
  double error() const { return sparsity - target; }
};

using Calibrations = std::map<std::string, std::map<double, Calibration>>;  // variant -> target -> result

class Calibrator {
 public:
  // `recipe` is the variant's continual-pretraining recipe; `dense` the weights it starts from.
  // Sparsity is measured on the first `batches` sequences of `length` tokens of `shard`.
  Calibrator(const Recipe& recipe, const TensorMap& dense, std::shared_ptr<const TokenShard> shard, int64_t length,
             int64_t batches);
  // `report` is called after every new probe with the knob value and its sparsity (percent).
  Calibration calibrate(double target, double tolerance, const std::function<void(double, double)>& report = {});
  // A measurement made earlier (before a restart), used instead of measuring again.
  void remember(double value, double sparsity) { probes_[value] = sparsity; }

 private:
  double measure(double value);
  void search_integer(double target);
  void search_real(double target, double tolerance);

  Recipe recipe_;
  Runtime rt_;
  Knob knob_;
  Transformer model_{nullptr};
  std::shared_ptr<const TokenShard> shard_;
  int64_t length_, batches_;
  std::map<double, double> probes_;
  std::function<void(double, double)> report_;
};

}  // namespace st
