// Who this process is in a multi-process run, and the few collectives sharded training
// needs, over LibTorch's c10d process groups: NCCL for CUDA tensors, Gloo for CPU ones (so
// CPU tests shard for real). A world of one has no process group; every collective is then
// the identity.
#pragma once
#include <ATen/ATen.h>
#include <torch/csrc/distributed/c10d/Work.hpp>

#include <memory>
#include <string>

namespace st {

struct DistEnv {
  int64_t rank = 0, world_size = 1, local_rank = 0, local_world_size = 1;
  std::string master_addr;
  int64_t master_port = 0;
  bool distributed() const { return world_size > 1; }
};

// From RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT (torchrun,
// `sparsetrain launch`), or, when RANK is unset, SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID,
// SLURM_NTASKS_PER_NODE (srun; MASTER_ADDR and MASTER_PORT still come from the job script).
// A missing local rank is the rank modulo the local world size. Nothing set: one
// process. Throws ConfigError naming the variable that is malformed, out of range, or
// missing while the others are set.
DistEnv dist_env_from_environment();

// A collective in flight. wait() returns once its output may be read: the host blocks
// (Gloo), or the current CUDA stream is ordered after it (NCCL). Throws on failure.
class Pending {
 public:
  Pending() = default;
  explicit Pending(c10::intrusive_ptr<c10d::Work> work) : work_(std::move(work)) {}
  void wait();

 private:
  c10::intrusive_ptr<c10d::Work> work_;
};

class Comm {
 public:
  // Joins the process group: a TCPStore on MASTER_ADDR:MASTER_PORT (rank 0 hosts it), then
  // NCCL when `device` is CUDA (this process is bound to it) or Gloo otherwise.
  Comm(const DistEnv& env, const at::Device& device);
  ~Comm();
  int64_t rank() const { return rank_; }
  int64_t world_size() const { return world_size_; }

  // out [world * n] <- every rank's in [n], in rank order.
  Pending all_gather(at::Tensor out, at::Tensor in);
  // out [n] <- the sum over ranks of in[rank * n, (rank + 1) * n).
  Pending reduce_scatter_sum(at::Tensor out, at::Tensor in);
  double sum(double v);
  bool any(bool v);
  void barrier();

 private:
  struct Group;
  std::unique_ptr<Group> group_;  // null when the world is one process
  int64_t rank_ = 0, world_size_ = 1;
  at::Device device_;
};

}  // namespace st
