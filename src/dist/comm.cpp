#include "dist/comm.h"

#include <fmt/format.h>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#ifdef USE_C10D_NCCL
#include <c10/cuda/CUDAFunctions.h>
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include <chrono>
#include <cstdlib>
#include <limits>

#include "config/recipe.h"

namespace st {
namespace {

// Long enough for the first NCCL collectives of a large job; short enough that a peer that
// died without closing its sockets surfaces as an error rather than a hang.
constexpr std::chrono::minutes kTimeout{10};

const char* env(const char* name) {
  const char* v = std::getenv(name);
  return v && *v ? v : nullptr;
}

int64_t env_int(const char* name, int64_t lo, int64_t hi) {
  const char* v = env(name);
  char* end = nullptr;
  errno = 0;
  const long long x = std::strtoll(v, &end, 10);
  if (errno || end == v || *end || x < lo || x > hi)
    throw ConfigError(fmt::format("environment variable {}='{}': expected an integer in [{}, {}]", name, v, lo, hi));
  return x;
}

}  // namespace

DistEnv dist_env_from_environment() {
  struct Names {
    const char *rank, *world, *local_rank, *local_world;
  };
  const Names torchrun{"RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"};
  const Names srun{"SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", "SLURM_NTASKS_PER_NODE"};
  DistEnv e;
  if (!env("RANK") && !env("SLURM_PROCID")) {
    if (env("WORLD_SIZE") && env_int("WORLD_SIZE", 1, 1 << 20) > 1)
      throw ConfigError(fmt::format("WORLD_SIZE={} but RANK is unset: set both (torchrun and `sparsetrain launch` do)",
                                    env("WORLD_SIZE")));
    return e;
  }
  const Names& n = env("RANK") ? torchrun : srun;
  if (!env(n.world)) throw ConfigError(fmt::format("{} is set but {} is not", n.rank, n.world));
  e.world_size = env_int(n.world, 1, std::numeric_limits<int32_t>::max());
  e.rank = env_int(n.rank, 0, e.world_size - 1);
  e.local_world_size = env(n.local_world) ? env_int(n.local_world, 1, e.world_size) : e.world_size;
  e.local_rank = env(n.local_rank) ? env_int(n.local_rank, 0, e.local_world_size - 1) : e.rank % e.local_world_size;
  if (!e.distributed()) return e;
  for (const char* v : {"MASTER_ADDR", "MASTER_PORT"})
    if (!env(v))
      throw ConfigError(fmt::format("{} is unset; the {} processes ({}={}) rendezvous there", v, e.world_size, n.world,
                                    e.world_size));
  e.master_addr = env("MASTER_ADDR");
  e.master_port = env_int("MASTER_PORT", 1, 65535);
  return e;
}

void Pending::wait() {
  if (work_) work_->wait();
  work_.reset();
}

struct Comm::Group {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::Backend> backend;
};

Comm::Comm(const DistEnv& env, const at::Device& device)
    : rank_(env.rank), world_size_(env.world_size), device_(device) {
  if (!env.distributed()) return;
  group_ = std::make_unique<Group>();
  c10d::TCPStoreOptions store_opts;
  store_opts.port = uint16_t(env.master_port);
  store_opts.isServer = env.rank == 0;
  store_opts.numWorkers = size_t(env.world_size);
  store_opts.timeout = kTimeout;
  try {
    group_->store = c10::make_intrusive<c10d::TCPStore>(env.master_addr, store_opts);
  } catch (const std::exception& e) {
    throw std::runtime_error(fmt::format("rank {}: rendezvous at {}:{} failed: {}", env.rank, env.master_addr,
                                         env.master_port, e.what()));
  }
  const int rank = int(env.rank), size = int(env.world_size);
  if (device.is_cuda()) {
#ifdef USE_C10D_NCCL
    c10::cuda::set_device(device.index());
    auto opts = c10d::ProcessGroupNCCL::Options::create();
    opts->timeout = kTimeout;
    group_->backend = c10::make_intrusive<c10d::ProcessGroupNCCL>(group_->store, rank, size, opts);
#else
    throw std::runtime_error("this build has no NCCL process group (LibTorch without CUDA)");
#endif
  } else {
    group_->backend = c10::make_intrusive<c10d::ProcessGroupGloo>(
        group_->store, rank, size, c10d::ProcessGroupGloo::Options::create_default(kTimeout));
  }
}

Comm::~Comm() {
  // NCCL wants an explicit shutdown before its process group is destroyed.
  if (group_) group_->backend->shutdown();
}

Pending Comm::all_gather(at::Tensor out, at::Tensor in) {
  if (!group_) {
    out.copy_(in);
    return {};
  }
  return Pending(group_->backend->_allgather_base(out, in));
}

Pending Comm::reduce_scatter_sum(at::Tensor out, at::Tensor in) {
  if (!group_) {
    out.copy_(in);
    return {};
  }
  c10d::ReduceScatterOptions opts;
  opts.reduceOp = c10d::ReduceOp::SUM;  // Gloo has no AVG
  return Pending(group_->backend->_reduce_scatter_base(out, in, opts));
}

double Comm::sum(double v) {
  if (!group_) return v;
  std::vector<at::Tensor> t = {at::full({1}, v, at::TensorOptions().dtype(at::kDouble).device(device_))};
  group_->backend->allreduce(t)->wait();
  return t[0].item<double>();
}

bool Comm::any(bool v) { return sum(v ? 1.0 : 0.0) > 0; }

void Comm::barrier() {
  if (group_) group_->backend->barrier()->wait();
}

}  // namespace st
