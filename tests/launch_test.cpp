// The launcher: rank environment, exit codes, and never hanging on a failed or stuck rank.
// Ranks here are small shell scripts; the end-to-end case kills a rank of a real 2-rank
// training run.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <thread>

#include "cli.h"
#include "dist/launcher.h"
#include "oracle.h"

namespace st {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

std::string slurp(const std::string& path) {
  std::ifstream in(path);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

int run_sh(const LaunchOptions& opt, const std::string& script) { return launch(opt, "/bin/sh", {"-c", script}); }

TEST(Launch, GivesEachRankItsEnvironment) {
  test::TempDir dir;
  LaunchOptions opt;
  opt.nproc_per_node = 3;
  opt.nnodes = 2;
  opt.node_rank = 1;
  opt.master_addr = "10.1.2.3";
  opt.master_port = 29511;
  const std::string script = "echo \"$RANK $WORLD_SIZE $LOCAL_RANK $LOCAL_WORLD_SIZE $MASTER_ADDR $MASTER_PORT\" > " +
                             dir.file("rank-") + "$RANK";
  ASSERT_EQ(run_sh(opt, script), 0);
  for (int local = 0; local < 3; ++local)
    EXPECT_EQ(slurp(dir.file("rank-" + std::to_string(3 + local))),
              fmt::format("{} 6 {} 3 10.1.2.3 29511\n", 3 + local, local));
}

TEST(Launch, PicksAFreePortOnOneNode) {
  test::TempDir dir;
  LaunchOptions opt;
  opt.nproc_per_node = 2;
  ASSERT_EQ(run_sh(opt, "echo $MASTER_PORT > " + dir.file("port-") + "$RANK"), 0);
  const std::string a = slurp(dir.file("port-0")), b = slurp(dir.file("port-1"));
  EXPECT_EQ(a, b);
  EXPECT_GT(std::stoi(a), 0);
}

TEST(Launch, AFailedRankStopsTheOthersAndSetsTheExitCode) {
  LaunchOptions opt;
  opt.nproc_per_node = 3;
  const auto t0 = Clock::now();
  EXPECT_EQ(run_sh(opt, "if [ $RANK = 1 ]; then exit 3; fi; exec sleep 60"), 3);
  EXPECT_LT(seconds_since(t0), 10);
}

TEST(Launch, ARankIgnoringSigtermIsKilledAfterTheGracePeriod) {
  LaunchOptions opt;
  opt.nproc_per_node = 2;
  opt.grace_s = 1;
  const auto t0 = Clock::now();
  EXPECT_EQ(run_sh(opt, "if [ $RANK = 1 ]; then sleep 0.2; exit 1; fi; trap '' TERM; exec sleep 60"), 1);
  EXPECT_LT(seconds_since(t0), 10);
}

TEST(Launch, AKilledRankReportsItsSignal) {
  test::TempDir dir;
  LaunchOptions opt;
  opt.nproc_per_node = 2;
  std::thread killer([&] {
    const std::string pid_file = dir.file("pid-1");
    for (int i = 0; i < 200 && slurp(pid_file).empty(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(50));
    ::kill(std::stoi(slurp(pid_file)), SIGKILL);
  });
  const auto t0 = Clock::now();
  const int code = run_sh(opt, "echo $$ > " + dir.file("pid-") + "$RANK.tmp && mv " + dir.file("pid-") + "$RANK.tmp " +
                                   dir.file("pid-") + "$RANK; exec sleep 60");
  killer.join();
  EXPECT_EQ(code, 128 + SIGKILL);
  EXPECT_LT(seconds_since(t0), 10);
}

TEST(Launch, BadOptionsAreUsageErrors) {
  auto r = test::run_cli("launch --nproc-per-node 0 -- train recipes/tiny.yaml");
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("--nproc-per-node: expected >= 1"), std::string::npos) << r.output;
  r = test::run_cli("launch --nnodes 2 --node-rank 1 --master-addr 10.0.0.1 -- train recipes/tiny.yaml");
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("--master-port: required"), std::string::npos) << r.output;
  r = test::run_cli("launch --nproc-per-node 2");
  EXPECT_NE(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("expected the command to run after --"), std::string::npos) << r.output;
}

TEST(Launch, NamesTheRanksThatFailedThroughTheCli) {
  auto r = test::run_cli("launch --nproc-per-node 2 -- data check /nonexistent/shard.bin");
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_NE(r.output.find("rank 0 (pid"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("exited with code 1"), std::string::npos) << r.output;
}

// A real 2-rank training run: kill -9 one rank mid-run; the launcher must name it and exit
// non-zero within 60 s, whatever the survivor was doing (a collective waiting for the dead
// peer ignores SIGTERM until its timeout: the grace period's SIGKILL ends it).
TEST(Launch, KillingOneRankOfATrainingRunEndsTheJob) {
  if (!fs::exists(test::source_path("data/cache/kjv/train.bin")))
    FAIL() << "data/cache/kjv/train.bin is missing: run data/kjv.sh (tools/test.sh does)";
  test::TempDir dir;
  const std::string log = dir.file("launch.log");
  const std::string cmd = fmt::format(
      "cd {} && exec {} launch --nproc-per-node 2 --grace 10 -- train recipes/tiny.yaml --set run.out_dir={} "
      "--set train.steps=100000 --set train.device=cpu --set logging.progress=plain > {} 2>&1",
      SPARSETRAIN_SOURCE_DIR, SPARSETRAIN_BINARY, dir.file("runs"), log);
  const auto t_start = Clock::now();
  const pid_t launcher = ::fork();
  ASSERT_GE(launcher, 0);
  if (launcher == 0) {
    ::execl("/bin/sh", "sh", "-c", cmd.c_str(), static_cast<char*>(nullptr));
    ::_exit(127);
  }
  // Whatever fails below, the job does not outlive the test (SIGTERM reaches the ranks).
  struct Reaper {
    pid_t pid;
    bool done = false;
    ~Reaper() {
      if (done) return;
      ::kill(pid, SIGTERM);
      ::waitpid(pid, nullptr, 0);
    }
  } reaper{launcher};
  // Wait until the ranks are training (metrics.jsonl has a step), then kill rank 1.
  const std::string metrics = dir.file("runs/tiny/metrics.jsonl");
  int status = 0;
  while (slurp(metrics).find("\"step\"") == std::string::npos && seconds_since(t_start) < 120) {
    ASSERT_EQ(::waitpid(launcher, &status, WNOHANG), 0) << "the job ended before training: " << slurp(log);
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  const std::string out = slurp(log);
  const auto at = out.find("rank 1 pid ");
  ASSERT_NE(at, std::string::npos) << out;
  const int pid = std::stoi(out.substr(at + 11));
  const auto t_kill = Clock::now();
  ASSERT_EQ(::kill(pid, SIGKILL), 0);
  while (::waitpid(launcher, &status, WNOHANG) == 0 && seconds_since(t_kill) < 90)
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  ASSERT_LT(seconds_since(t_kill), 60) << slurp(log);
  reaper.done = true;
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) != 0) << slurp(log);
  EXPECT_NE(slurp(log).find("rank 1 (pid " + std::to_string(pid) + ") was killed by signal 9"), std::string::npos)
      << slurp(log);
}

}  // namespace
}  // namespace st
