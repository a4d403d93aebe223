// The sweep's report: <sweep>/report.md with the comparison table and the calibration, and
// the PNG plots beside it, drawn by tools/plot_sweep.py from each run's eval.json and
// metrics.jsonl (matplotlib; the report says so when it is missing).
#pragma once
#include <string>

#include "sweep/calibrate.h"
#include "sweep/sweep.h"

namespace st {

// Writes report.md (atomically) and returns its path.
std::string write_report(const SweepConfig& sweep, const SweepPlan& plan, const Calibrations& calibrations);

}  // namespace st
