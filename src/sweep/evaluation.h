// The sweep's evaluation of one finished run: loss, perplexity and attention sparsity on
// data.eval at the calibration length (the sparsity the comparison is plotted against), and
// each synthetic task at each eval length and needle depth.
#pragma once
#include <string>

#include "config/sweep.h"
#include "util/json.h"

namespace st {

// Evaluates the run's latest checkpoint. The JSON holds step, eval_loss, ppl, sparsity
// (a fraction), layer_sparsity, length, and tasks.<task>.{accuracy, lengths} (lengths as
// `eval --task --json` writes them).
JsonObject evaluate_run(const std::string& run_dir, const SweepConfig& sweep);

}  // namespace st
