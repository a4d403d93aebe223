// Fully sharded data parallel training of a Transformer (ZeRO-3, as PyTorch's FSDP).
//
// The parameters are grouped into units: one per block, and one "outer" unit with the
// embeddings, the final norm and the head. A unit's parameters are flattened in order and
// padded to a multiple of the world size; each rank keeps 1/N of that flat vector as fp32
// master weights, and the optimizer sees only those slices. Before a block runs, its unit is
// all-gathered (in the compute dtype) into one flat fp32 buffer that the block's parameters
// are views of, and the buffer's memory is released after the forward (or, with
// reshard_after_forward off, ZeRO-2, after the backward); the backward gathers it again.
// The next block's gather is issued before the current block runs, so it overlaps compute
// (on GPU the NCCL process group runs it on its own stream, ordered by CUDA events). The
// outer unit stays gathered for the whole step: it is used first and last. Gradients
// accumulate unsharded over the micro-batches and are reduce-scattered (averaged over
// ranks) into the slices once per step: during the last micro-batch's backward, a block's
// gradients as soon as its backward ends (overlapping the blocks still to go, and freeing
// their full-size memory then), the outer unit's after the whole backward.
//
// The model stays unaware: blocks are wrapped through its BlockRunner.
#pragma once
#include <map>
#include <memory>
#include <unordered_map>
#include <vector>

#include "dist/comm.h"
#include "io/safetensors.h"
#include "model/transformer.h"
#include "train/optimizer.h"

namespace st {

struct ShardingOptions {
  at::Device device = at::kCPU;              // where the run computes
  at::ScalarType gather_dtype = at::kFloat;  // bf16 when the run computes in bf16
  bool reshard_after_forward = true;         // false: ZeRO-2, keep each unit from forward to backward
};

class ShardedModel {
 public:
  // Takes over the model's parameters, whose current values (initialised or loaded, on the
  // CPU or the device) become the shards, on the device: the whole model is never there at
  // once. From here on the parameters hold data only while gathered.
  ShardedModel(Transformer& model, Comm& comm, ShardingOptions opt);

  // Runs each block with its unit gathered (and `inner` inside: plain or checkpointed).
  BlockRunner runner(BlockRunner inner);
  // Before a step's first forward: gathers the outer unit.
  void begin_step();
  // Before each micro-batch's backward; `last`: its backward completes the step's gradients,
  // so each block's are reduce-scattered as soon as that block's backward ends. Without the
  // call (or with last = false) everything waits for reduce_gradients.
  void begin_micro_batch(bool last);
  // After a step's last backward: reduce-scatters the gradients not yet on their way into the
  // slices' .grad (mean over ranks), waits for all, and releases every gathered unit.
  void reduce_gradients();
  // Global L2 norm of the slices' gradients; scales them down to max_norm when it is above
  // (max_norm <= 0: no clipping), as torch::nn::utils::clip_grad_norm_.
  double clip_grad_norm(double max_norm);
  // Everything gathered at once (evaluation), and released again.
  void gather_all();
  void release_all();

  // This rank's slices, each named after the parameter it is a piece of, for the optimizer.
  const std::vector<NamedParameter>& local_parameters() const { return slices_; }
  // This rank's slices of the weights, fp32 on the CPU, by parameter name.
  TensorMap local_weights() const;
  // Whole tensors by parameter name (optionally with a "<prefix>." such as "exp_avg.") ->
  // this rank's slices of them; keys naming no parameter ("step") are kept as they are.
  TensorMap local_slices(const TensorMap& whole) const;
  // Every parameter's shape, by name.
  std::map<std::string, std::vector<int64_t>> shapes() const;

 private:
  struct Param {
    std::string name;
    at::Tensor tensor;  // the model's parameter, a view of its unit's gathered buffer
    int64_t offset;     // in the unit's flat vector
  };
  enum class State { released, gathering, gathered };
  struct Unit {
    std::vector<Param> params;
    int64_t padded = 0;           // flat length, a multiple of the world size
    at::Tensor shard;             // fp32 [padded / world]: this rank's master weights
    at::Tensor full;              // fp32 [padded]: the gathered buffer (memory only while gathered)
    at::Tensor staged, staged_in; // the gather in a narrower dtype, until it is widened into `full`
    Pending pending;
    at::Tensor grad_flat;         // fp32 [padded]: the unit's gradients while their reduce-scatter runs
    at::Tensor grad_shard;        // fp32 [padded / world]: its result, this rank's piece
    Pending grad_pending;
    State state = State::released;
  };
  struct Slice {
    size_t unit;
    int64_t begin, length;  // in the parameter's flat vector
    int64_t shard_begin;    // in the unit's shard
  };
  friend struct UnitHooks;

  void start_gather(size_t u);
  void finish_gather(size_t u);
  void release(size_t u);
  torch::Tensor run_block(const BlockRunner& inner, Block& block, const torch::Tensor& x, const RopeTables& rope);
  void backward_begins(size_t u);
  void backward_ends(size_t u);
  void start_reduce(size_t u);   // unit u's .grad -> grad_flat -> reduce-scatter; clears the .grad
  void finish_reduce(size_t u);  // waits for it, averages, frees grad_flat
  std::string parameter_named_by(const std::string& key) const;

  Comm& comm_;
  ShardingOptions opt_;
  std::vector<Unit> units_;  // 0: outer; 1 + i: layers.i
  bool reduce_in_backward_ = false;  // begin_micro_batch(last = true) until reduce_gradients
  size_t reducing_ = 0;              // the block unit whose reduce-scatter runs (0: none)
  std::unordered_map<const BlockImpl*, size_t> unit_of_block_;
  std::map<std::string, int64_t> numel_;  // every parameter's element count, by name
  std::vector<NamedParameter> slices_;
  std::vector<Slice> slice_info_;        // parallel to slices_
  std::map<std::string, size_t> slice_index_;
};

}  // namespace st
