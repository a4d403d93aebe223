#include "dist/launcher.h"

#include <arpa/inet.h>
#include <fmt/format.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <cstring>
#include <optional>
#include <thread>

#include "config/recipe.h"

namespace st {
namespace {

volatile std::sig_atomic_t g_signal = 0;
void remember_signal(int sig) { g_signal = sig; }

struct Rank {
  int64_t rank = 0;
  pid_t pid = -1;
  bool running = true;
};

void check(const LaunchOptions& o) {
  if (o.nproc_per_node < 1) throw ConfigError(fmt::format("--nproc-per-node: expected >= 1, got {}", o.nproc_per_node));
  if (o.nnodes < 1) throw ConfigError(fmt::format("--nnodes: expected >= 1, got {}", o.nnodes));
  if (o.node_rank < 0 || o.node_rank >= o.nnodes)
    throw ConfigError(fmt::format("--node-rank: expected 0..{} (--nnodes {}), got {}", o.nnodes - 1, o.nnodes, o.node_rank));
  if (o.master_port < 0 || o.master_port > 65535)
    throw ConfigError(fmt::format("--master-port: expected 1..65535, got {}", o.master_port));
  if (o.nnodes > 1 && o.master_port == 0)
    throw ConfigError("--master-port: required with --nnodes > 1 (every node must name the same port)");
  if (o.nnodes > 1 && (o.master_addr == "127.0.0.1" || o.master_addr == "localhost"))
    throw ConfigError("--master-addr: with --nnodes > 1, expected the address of node 0 that the other nodes can reach");
  if (o.grace_s < 0) throw ConfigError(fmt::format("--grace: expected >= 0 seconds, got {}", o.grace_s));
}

// In the child: the rank's environment, then the program. Never returns.
[[noreturn]] void exec_rank(const LaunchOptions& o, int64_t local_rank, int64_t port, pid_t launcher,
                            const std::string& program, const std::vector<std::string>& args) {
  // Die with the launcher, even if it is killed without a chance to clean up.
  ::prctl(PR_SET_PDEATHSIG, SIGTERM);
  if (::getppid() != launcher) ::_exit(128 + SIGTERM);
  const int64_t world = o.nnodes * o.nproc_per_node;
  auto set = [](const char* key, const std::string& value) { ::setenv(key, value.c_str(), 1); };
  set("RANK", std::to_string(o.node_rank * o.nproc_per_node + local_rank));
  set("WORLD_SIZE", std::to_string(world));
  set("LOCAL_RANK", std::to_string(local_rank));
  set("LOCAL_WORLD_SIZE", std::to_string(o.nproc_per_node));
  set("GROUP_RANK", std::to_string(o.node_rank));
  set("MASTER_ADDR", o.master_addr);
  set("MASTER_PORT", std::to_string(port));
  std::vector<char*> argv;
  argv.push_back(const_cast<char*>(program.c_str()));
  for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  ::execv(program.c_str(), argv.data());
  std::string msg = fmt::format("launch: cannot run {}: {}\n", program, std::strerror(errno));
  (void)!::write(STDERR_FILENO, msg.data(), msg.size());
  ::_exit(127);
}

// Exit code the way a shell reports it: the code, or 128 + the signal that killed it.
int shell_code(int status) { return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status); }

std::string describe_exit(int status) {
  if (WIFEXITED(status)) return fmt::format("exited with code {}", WEXITSTATUS(status));
  return fmt::format("was killed by signal {} ({})", WTERMSIG(status), strsignal(WTERMSIG(status)));
}

}  // namespace

int64_t free_local_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) throw std::runtime_error(fmt::format("launch: socket: {}", std::strerror(errno)));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof addr;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    ::close(fd);
    throw std::runtime_error(fmt::format("launch: cannot find a free port: {}", std::strerror(errno)));
  }
  ::close(fd);
  return ntohs(addr.sin_port);
}

int launch(const LaunchOptions& opt, const std::string& program, const std::vector<std::string>& args) {
  check(opt);
  const int64_t port = opt.master_port > 0 ? opt.master_port : free_local_port();
  const int64_t world = opt.nnodes * opt.nproc_per_node;
  fmt::print(stderr, "launch: node {}/{}, {} ranks here, world size {}, rendezvous {}:{}\n", opt.node_rank, opt.nnodes,
             opt.nproc_per_node, world, opt.master_addr, port);

  g_signal = 0;
  auto old_int = std::signal(SIGINT, remember_signal);
  auto old_term = std::signal(SIGTERM, remember_signal);
  const pid_t self = ::getpid();
  // A child inherits remember_signal until it execs: a SIGTERM that reached it in between (a
  // rank that failed at once makes the launcher stop the others while it is still starting
  // them) would be remembered in the child's copy of g_signal and lost. So the stop signals
  // stay blocked across fork; the child puts back the caller's dispositions, then unblocks,
  // and a pending SIGTERM kills it as it should.
  sigset_t stop_signals, unblocked;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  std::vector<Rank> ranks;
  for (int64_t local = 0; local < opt.nproc_per_node; ++local) {
    std::fflush(nullptr);  // the child must not inherit (and flush again) buffered output
    ::pthread_sigmask(SIG_BLOCK, &stop_signals, &unblocked);
    pid_t pid = ::fork();
    if (pid == 0) {
      std::signal(SIGINT, old_int);
      std::signal(SIGTERM, old_term);
      ::pthread_sigmask(SIG_SETMASK, &unblocked, nullptr);
      exec_rank(opt, local, port, self, program, args);
    }
    ::pthread_sigmask(SIG_SETMASK, &unblocked, nullptr);
    if (pid < 0) {
      fmt::print(stderr, "launch: fork failed: {}\n", std::strerror(errno));
      g_signal = SIGTERM;  // stop what was started
      break;
    }
    ranks.push_back({opt.node_rank * opt.nproc_per_node + local, pid});
    fmt::print(stderr, "launch: rank {} pid {}\n", ranks.back().rank, pid);
  }

  using Clock = std::chrono::steady_clock;
  std::optional<Clock::time_point> kill_at;  // set once stopping: when survivors get SIGKILL
  int result = 0;
  int forwarded = 0;
  auto stop_all = [&](int sig) {
    for (auto& r : ranks) if (r.running) ::kill(r.pid, sig);
    if (!kill_at) kill_at = Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(opt.grace_s));
  };
  size_t running = ranks.size();
  while (running > 0) {
    if (g_signal != 0 && forwarded == 0) {
      forwarded = g_signal;
      fmt::print(stderr, "launch: got signal {} ({}); passing it to the ranks\n", forwarded, strsignal(forwarded));
      stop_all(forwarded);
    }
    bool reaped = false;
    for (auto& r : ranks) {
      int status = 0;
      if (!r.running || ::waitpid(r.pid, &status, WNOHANG) != r.pid) continue;
      r.running = false;
      reaped = true;
      --running;
      if (WIFEXITED(status) && WEXITSTATUS(status) == 0) continue;
      if (result == 0) {
        result = shell_code(status);
        fmt::print(stderr, "launch: rank {} (pid {}) {}; stopping the other ranks\n", r.rank, r.pid, describe_exit(status));
        stop_all(SIGTERM);
      } else {
        fmt::print(stderr, "launch: rank {} (pid {}) stopped: {}\n", r.rank, r.pid, describe_exit(status));
      }
    }
    if (reaped) continue;
    if (kill_at && Clock::now() >= *kill_at) {
      for (auto& r : ranks) {
        if (!r.running) continue;
        fmt::print(stderr, "launch: rank {} (pid {}) did not stop within {}s; killing it\n", r.rank, r.pid, opt.grace_s);
        ::kill(r.pid, SIGKILL);
      }
      kill_at = Clock::time_point::max();
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  std::signal(SIGINT, old_int);
  std::signal(SIGTERM, old_term);
  if (result == 0 && forwarded != 0) result = 128 + forwarded;
  if (result == 0 && ranks.size() < size_t(opt.nproc_per_node)) result = 1;
  if (result == 0) fmt::print(stderr, "launch: all {} ranks finished\n", ranks.size());
  return result;
}

}  // namespace st
