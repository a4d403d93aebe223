// sparsetrain sweep SWEEP.yaml [--dry-run]: variants x target sparsities (src/sweep/sweep.h).
#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include "cli/commands.h"
#include "sweep/sweep.h"

namespace st {

void add_sweep_command(CLI::App& app) {
  struct Args {
    std::string file;
    bool dry_run = false;
  };
  auto args = std::make_shared<Args>();
  auto* cmd = app.add_subcommand(
      "sweep", "Calibrate, continually pretrain and evaluate attention variants at matched target sparsities; "
               "writes report.md and plots. Run it again to resume");
  cmd->add_option("sweep", args->file, "Sweep file (e.g. recipes/sweep-tiny.yaml)")->required();
  cmd->add_flag("--dry-run", args->dry_run, "Check the sweep file and list its runs; create nothing");
  cmd->callback([args] {
    const SweepConfig sweep = load_sweep(args->file);
    if (args->dry_run) {
      const SweepPlan plan = plan_sweep(sweep);
      fmt::print("sweep {} in {}\n", sweep.name, plan.dir);
      if (plan.pretrain) fmt::print("  pretrain (dense)\n");
      fmt::print("  then from {}, {} steps each:\n", plan.dense_checkpoint, plan.cpt_steps);
      for (const SweepRun& r : plan.runs) fmt::print("  {}\n", r.name);
      return;
    }
    const SweepOutcome outcome = run_sweep(sweep);
    if (!outcome.finished) throw std::runtime_error("sweep stopped before the end; run it again to resume");
    fmt::print("sweep {} done: {}\n", sweep.name, outcome.report);
    if (outcome.missed_targets > 0)
      fmt::print("WARNING: {} calibration(s) missed their target sparsity by more than the tolerance (flagged in the "
                 "report)\n", outcome.missed_targets);
  });
}

}  // namespace st
