// The sweep file: which variants to compare at which target sparsities, starting from which
// dense checkpoint, with what continual-pretraining budget and which evaluations. Every run
// of a sweep is an ordinary recipe: the base recipe plus `set` overrides (see recipe.h).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "config/recipe.h"

namespace st {

struct SweepVariant {
  std::string name;                    // dense | dash | nsa | infllmv2
  std::vector<std::string> overrides;  // "key.path=value" on the run's recipe
};

struct SweepCalibration {
  int64_t length = 0;                  // tokens per calibration sequence; 0: the longest eval length
  int64_t batches = 4;                 // sequences measured per knob value
  double tolerance = 2.0;              // allowed |measured - target|, in percentage points
};

struct SweepEval {
  int64_t ppl_batches = 4;             // sequences of data.eval at the calibration length
  std::vector<std::string> tasks;      // synthetic tasks (passkey, niah, mqar, vt)
  std::vector<int64_t> lengths;
  std::vector<double> depths{0, 0.25, 0.5, 0.75, 1};
  int64_t count = 8;                   // examples per (task, length, depth)
  int64_t seed = 0;
  std::string tokenizer = "byte";      // byte | tokenizer.json
};

struct SweepConfig {
  std::string source;                  // the sweep file
  std::string name;                    // folder under the base recipe's run.out_dir
  std::string base;                    // the recipe every run starts from
  std::vector<std::string> overrides;  // on the base, for every run
  std::string init_from;               // dense checkpoint the variants start from ...
  std::vector<std::string> pretrain;   // ... or the overrides of a dense pretraining run
  bool has_pretrain = false;
  std::vector<SweepVariant> variants;
  std::vector<double> targets;         // sparsity in percent, each in (0, 100)
  SweepCalibration calibration;
  std::vector<std::string> cpt;        // overrides of every continual-pretraining run (its budget)
  SweepEval eval;
};

// Reads and checks a sweep file. Throws ConfigError naming the file and key path.
SweepConfig load_sweep(const std::string& path);

}  // namespace st
