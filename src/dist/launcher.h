// Starts and supervises the ranks of one node, as torchrun does: each rank is a child process
// with RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR and MASTER_PORT set.
// When one rank fails, the others are asked to stop (SIGTERM: the trainer checkpoints if it
// can), then killed once the grace period is over, so the launcher never hangs on a dead peer.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace st {

struct LaunchOptions {
  int64_t nproc_per_node = 1;
  int64_t nnodes = 1;
  int64_t node_rank = 0;
  std::string master_addr = "127.0.0.1";
  int64_t master_port = 0;     // 0: a free local port (single node only)
  double grace_s = 20;         // after a failure or a signal: SIGTERM, then SIGKILL this much later
};

// Runs `program args...` once per local rank and waits for all of them. Returns 0 when every
// rank exits 0; otherwise the first failure's exit code (128 + signal for a killed rank,
// never 0). Prints one line per rank started and a line naming the first rank that failed.
// Throws ConfigError on inconsistent options.
int launch(const LaunchOptions& opt, const std::string& program, const std::vector<std::string>& args);

// A TCP port on the loopback interface that nothing listens on right now.
int64_t free_local_port();

}  // namespace st
