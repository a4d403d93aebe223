// Checkpoints: <root>/step-00000100/ holding
//   model.safetensors   model parameters by name (fp32)
//   optim.safetensors   optimizer state (absent in weights-only checkpoints, e.g. imports)
//   state.safetensors   RNG states
//   recipe.yaml         the resolved recipe of the run that wrote it
//   manifest.json       format, step, tokens, world size, and size + FNV-1a 64 of each file
// A checkpoint is written into a temporary folder and renamed into place; only then does
// <root>/latest (a one-line file naming the folder) move to it, and old ones are pruned.
// A kill at any moment leaves the previous checkpoint and `latest` intact.
#pragma once
#include <cstdint>
#include <string>

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

// Accepts a step folder, a `latest` file, a ckpt root (uses its latest) or a run folder
// (uses <run>/ckpt/latest). Throws IoError when nothing complete is there.
std::string resolve_checkpoint(const std::string& path);

// Verifies sizes and checksums against the manifest before reading; a truncated or
// corrupted checkpoint throws IoError naming the file.
CheckpointData load_checkpoint(const std::string& path, bool with_optimizer = true);

// 64-bit FNV-1a of a file's bytes, as 16 hex digits.
std::string file_checksum(const std::string& path);

}  // namespace st
