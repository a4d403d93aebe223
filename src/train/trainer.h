// The training loop: data, forward/backward with gradient accumulation, clipping, the
// non-finite guard, AdamW, metrics, periodic eval and checkpoints. One process, or one rank
// of a sharded run (world size from the environment, see dist/comm.h; dist/fsdp.h shards).
#pragma once
#include <string>

#include "config/recipe.h"

namespace st {

struct TrainOptions {
  std::string resume;          // "" | "auto" (latest in the run, if any) | checkpoint path
  int64_t stop_after = 0;      // stop (with a checkpoint) once this many steps are done; 0: run to the end
};

struct TrainSummary {
  bool lead = true;            // false on ranks other than 0, which leave the reporting to rank 0
  int64_t steps_done = 0;
  double last_loss = 0;
  double eval_loss = 0;        // NaN when there is no eval data
  std::string run_dir;
  std::string checkpoint;      // the last checkpoint written
};

// Raised when training cannot go on (e.g. too many non-finite steps in a row).
struct TrainingError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

TrainSummary train(const Recipe& recipe, const TrainOptions& options);

}  // namespace st
