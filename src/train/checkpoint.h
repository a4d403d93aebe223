// Checkpoints: <root>/step-00000100/ holding
//   model.safetensors   model parameters by name (fp32)
//   optim.safetensors   optimizer state (absent in weights-only checkpoints, e.g. imports)
//   state.safetensors   RNG states
//   recipe.yaml         the resolved recipe of the run that wrote it
//   manifest.json       format, step, tokens, world size, and size + FNV-1a 64 of each file
// A checkpoint is written into a temporary folder and renamed into place; only then does
// <root>/latest (a one-line file naming the folder) move to it, and old ones are pruned.
// A kill at any moment leaves the previous checkpoint and `latest` intact.
//
// Sharded checkpoints (written by a run of world_size > 1 processes) hold, instead of
// model.safetensors and optim.safetensors, one file per rank: rank-00001-of-00004.safetensors
// with that rank's slices of the parameters ("<name>") and of the optimizer state
// ("exp_avg.<name>", ..., "step"), each a contiguous piece of the flattened tensor; the
// pieces in rank order make the whole. The manifest adds "layout", every parameter's shape.
// load_checkpoint() puts the pieces back together, so everything that reads checkpoints
// (resume at any world size, eval, export, init_from) sees whole tensors.
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "io/safetensors.h"

namespace st {

struct CheckpointData {
  int64_t step = 0;        // optimizer steps completed
  int64_t tokens = 0;      // training tokens consumed
  int64_t world_size = 1;
  std::string recipe_yaml;
  TensorMap model;
  TensorMap optim;         // empty: weights only
  TensorMap state;         // RNG states and other trainer tensors
};

// Writes <root>/step-XXXXXXXX and points <root>/latest at it; keeps the newest `keep`.
// Returns the checkpoint folder.
std::string save_checkpoint(const std::string& root, const CheckpointData& ckpt, int64_t keep);

struct ShardedSave {
  int64_t rank = 0;
  std::map<std::string, std::vector<int64_t>> layout;  // parameter name -> shape
  std::function<void()> barrier;                        // returns once every rank called it
};

// Called by every rank with its own slices in ckpt.model and ckpt.optim; rank 0 writes the
// rest (state, recipe, manifest) once all slices are on disk, then commits as above.
std::string save_sharded_checkpoint(const std::string& root, const CheckpointData& ckpt, const ShardedSave& shard,
                                    int64_t keep);

// Accepts a step folder, a `latest` file, a ckpt root (uses its latest) or a run folder
// (uses <run>/ckpt/latest). Throws IoError when nothing complete is there.
std::string resolve_checkpoint(const std::string& path);

// Verifies sizes and checksums against the manifest before reading; a truncated or
// corrupted checkpoint throws IoError naming the file.
CheckpointData load_checkpoint(const std::string& path, bool with_optimizer = true);

// 64-bit FNV-1a of a file's bytes, as 16 hex digits.
std::string file_checksum(const std::string& path);

}  // namespace st
