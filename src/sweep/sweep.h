// sparsetrain sweep: variants x target sparsities at equal continual-pretraining budgets.
//
//   1. pretrain   (optional) a dense run, the common starting point
//   2. calibrate  each sparse variant's knob for each target, at the calibration length
//   3. train      every (variant, target) from the same dense checkpoint, same budget and data
//   4. evaluate   each finished run (perplexity, sparsity, synthetic tasks)
//   5. report     report.md with the table, and PNG plots beside it
//
// Everything lands in <run.out_dir>/<sweep name>/: one run folder per training run
// (pretrain/, dense/, nsa-75/, ...), calibration.json, <run>/eval.json, report.md, *.png.
// Results are written atomically as they are made, so a sweep killed at any point and
// started again skips what is done and resumes unfinished training from its checkpoint.
#pragma once
#include <optional>
#include <string>
#include <vector>

#include "config/sweep.h"

namespace st {

struct SweepRun {
  std::string name;              // its folder in the sweep folder
  std::string variant;
  std::optional<double> target;  // percent; none for dense runs
  Recipe recipe;                 // sparse variants: the knob is set once calibrated
};

struct SweepPlan {
  std::string dir;                    // <run.out_dir>/<name>
  std::optional<SweepRun> pretrain;
  std::string dense_checkpoint;       // what every continual-pretraining run starts from
  std::vector<SweepRun> runs;         // continual-pretraining runs, in order
  int64_t cpt_steps = 0;              // optimizer steps of each of them
};

// Builds and validates every run's recipe (ConfigError before anything is created), and
// checks that all continual-pretraining runs share budget, batch shape, seed and data.
SweepPlan plan_sweep(const SweepConfig& sweep);

struct SweepOutcome {
  bool finished = false;         // false: stopped by a signal; run it again to resume
  int missed_targets = 0;        // calibrations outside the tolerance (flagged in the report)
  std::string report;            // report.md, once finished
};

SweepOutcome run_sweep(const SweepConfig& sweep);

}  // namespace st
