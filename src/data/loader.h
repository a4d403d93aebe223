// Deterministic, resumable batches from a token shard. Batch contents are a pure function
// of (seed, step, micro-step, rank), so resuming at a step needs no other state.
#pragma once
#include <torch/types.h>

#include <memory>

#include "data/shard.h"

namespace st {

struct Batch {
  torch::Tensor inputs;   // [micro_batch, seq_len] int64
  torch::Tensor targets;  // [micro_batch, seq_len] int64, inputs shifted by one
};

struct LoaderOptions {
  int64_t seq_len = 1024;
  int64_t micro_batch = 1;
  int64_t grad_accum = 1;
  int64_t seed = 0;
  int64_t rank = 0;
  int64_t world_size = 1;
};

// Training order: the shard is cut into windows of seq_len + 1 tokens (documents are packed
// back to back, separated by EOS); each epoch visits every window once in a seeded
// permutation. The window of global sample g = ((step * grad_accum + micro) * world_size +
// rank) * micro_batch + row.
class Loader {
 public:
  Loader(std::shared_ptr<const TokenShard> shard, LoaderOptions opt);
  Batch batch(int64_t step, int64_t micro) const;
  int64_t windows() const { return n_windows_; }

 private:
  std::shared_ptr<const TokenShard> shard_;
  LoaderOptions opt_;
  int64_t n_windows_;
};

// Evaluation order: the first n_batches * micro_batch windows of the shard, in order.
Batch eval_batch(const TokenShard& shard, int64_t seq_len, int64_t micro_batch, int64_t index);

}  // namespace st
