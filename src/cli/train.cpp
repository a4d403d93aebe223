// sparsetrain train RECIPE [--set key.path=value ...] [--resume auto|PATH] [--dry-run]
// Run under `sparsetrain launch`, torchrun or srun, each process is one rank of a sharded run.
#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <cmath>

#include "cli/commands.h"
#include "config/recipe.h"
#include "train/trainer.h"

namespace st {

void add_train_command(CLI::App& app) {
  struct Args {
    std::string recipe, resume;
    std::vector<std::string> overrides;
    bool dry_run = false;
    int64_t stop_after = 0;
  };
  auto args = std::make_shared<Args>();
  auto* cmd = app.add_subcommand("train", "Train a model from a YAML recipe");
  cmd->add_option("recipe", args->recipe, "Recipe file (recipes/*.yaml)")->required();
  cmd->add_option("--set", args->overrides, "Override a recipe key: --set train.steps=100 (repeatable)");
  cmd->add_option("--resume", args->resume, "Resume: 'auto' (the run's latest checkpoint, if any) or a checkpoint path");
  cmd->add_flag("--dry-run", args->dry_run, "Print the resolved recipe and exit without training");
  cmd->add_option("--stop-after", args->stop_after, "Stop with a checkpoint once this many steps are done (time-sliced jobs)");
  cmd->callback([args] {
    Recipe recipe = load_recipe(args->recipe, args->overrides);
    if (args->dry_run) {
      fmt::print("{}", recipe_to_yaml(recipe));
      return;
    }
    TrainSummary s = train(recipe, {args->resume, args->stop_after});
    if (!s.lead) return;
    fmt::print("done: {} steps, last loss {:.4f}{}\n  run:         {}\n  metrics:     {}/metrics.jsonl\n  checkpoint:  {}\n",
               s.steps_done, s.last_loss, std::isnan(s.eval_loss) ? "" : fmt::format(", eval loss {:.4f}", s.eval_loss),
               s.run_dir, s.run_dir, s.checkpoint.empty() ? "(none written)" : s.checkpoint);
  });
}

}  // namespace st
