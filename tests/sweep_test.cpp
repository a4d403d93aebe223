// Matched-sparsity sweeps: the sweep file's errors, calibration hitting its targets, the tiny
// sweep end to end (report, plots), and a sweep killed mid-run that resumes where it stopped.
#include <gtest/gtest.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <yaml-cpp/yaml.h>

#include <chrono>
#include <filesystem>
#include <thread>

#include "cli.h"
#include "config/sweep.h"
#include "io/read_file.h"
#include "oracle.h"
#include "sweep/calibrate.h"
#include "sweep/sweep.h"
#include "train/model_state.h"

extern char** environ;

namespace st {
namespace {

namespace fs = std::filesystem;

// The shipped tiny sweep with its output redirected to `out_dir`, plus `extra` YAML lines.
std::string tiny_sweep(const test::TempDir& dir, const std::string& out_dir, const std::string& extra = "") {
  std::string text = read_file(test::source_path("recipes/sweep-tiny.yaml"));
  const std::string set = "set:                                   # every run\n";
  text.replace(text.find(set), set.size(), set + "  run.out_dir: " + out_dir + "\n");
  text.replace(text.find("base: tiny.yaml"), 15, "base: " + test::source_path("recipes/tiny.yaml"));
  const std::string path = dir.file("sweep.yaml");
  test::write_file(path, text + extra);
  return path;
}

void expect_config_error(const std::string& yaml, const std::string& expected_in_message) {
  test::TempDir dir;
  const std::string path = dir.file("bad.yaml");
  test::write_file(path, yaml);
  try {
    plan_sweep(load_sweep(path));
    FAIL() << "expected ConfigError for:\n" << yaml;
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find(expected_in_message), std::string::npos) << e.what();
  }
}

class Sweep : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!fs::exists(test::source_path("data/cache/kjv/val.bin")))
      FAIL() << "data/cache/kjv is missing: run data/kjv.sh (tools/test.sh does)";
  }
};

TEST_F(Sweep, BadSweepFilesNameTheKey) {
  const std::string base = "base: " + test::source_path("recipes/tiny.yaml") + "\n";
  const std::string ok = "name: s\n" + base + "pretrain: {}\ncpt: {train.steps: 2}\nvariants: {nsa: {}}\ntargets: [50]\n"
                         "calibration: {length: 256}\n";
  expect_config_error(ok + "colour: red\n", "colour: unknown key");
  expect_config_error("name: s\n" + base + "cpt: {}\nvariants: {nsa: {}}\ntargets: [50]\n", "init_from: expected exactly one");
  expect_config_error("name: s\n" + base + "pretrain: {}\ncpt: {}\nvariants: {sparse: {}}\ntargets: [50]\n",
                      "variants.sparse: unknown variant");
  expect_config_error("name: s\n" + base + "pretrain: {}\ncpt: {}\nvariants: {nsa: {}}\ntargets: [50, 100]\n"
                      "calibration: {length: 256}\n", "targets[1]: expected a sparsity in percent in (0, 100)");
  expect_config_error(ok + "eval: {tasks: [passkeys], lengths: [256]}\n", "eval.tasks[0]: unknown task 'passkeys'");
  expect_config_error("name: s\n" + base + "pretrain: {}\ncpt: {}\nvariants: {nsa: {}}\ntargets: [50]\n",
                      "calibration.length: set it, or eval.lengths");
  // A variant may change its attention, never the budget or the data order.
  expect_config_error("name: s\n" + base + "pretrain: {}\ncpt: {train.steps: 2}\n"
                      "variants: {dense: {}, nsa: {train.steps: 3}}\ntargets: [50]\ncalibration: {length: 256}\n",
                      "variants.nsa: changes the training budget");
  expect_config_error("name: s\n" + base + "pretrain: {}\ncpt: {}\nvariants: {infllmv2: {}}\ntargets: [50]\n"
                      "calibration: {length: 256}\nset: {model.attention.infllmv2.dense_len: 1024}\n",
                      "variants.infllmv2: model.attention.infllmv2.dense_len (1024) is above calibration.length (256)");
  // Overrides reach the recipe loader, whose errors name the recipe key.
  expect_config_error(ok + "set: {train: {seq_len: -1}}\n", "train.seq_len");
}

TEST_F(Sweep, EveryShippedSweepLoads) {
  int sweeps = 0;
  for (const auto& e : fs::directory_iterator(test::source_path("recipes"))) {
    const std::string name = e.path().filename().string();
    if (name.rfind("sweep-", 0) != 0) continue;
    ++sweeps;
    try {
      SweepConfig s = load_sweep(e.path().string());
      s.eval.tokenizer = "byte";  // the paper sweep's comes with the user's model
      EXPECT_FALSE(plan_sweep(s).runs.empty()) << name;
    } catch (const ConfigError& err) {
      ADD_FAILURE() << err.what();
    }
  }
  EXPECT_GE(sweeps, 3);
}

TEST_F(Sweep, CalibrationHitsEachTargetWithinTwoPoints) {
  // A fresh tiny model (calibration needs no training) with 8-token blocks at 512 tokens.
  const std::vector<std::string> common = {"train.seq_len=512", "model.attention.sparsity_offset=256",
                                           "model.attention.nsa.cmp_block=8", "model.attention.nsa.cmp_stride=4",
                                           "model.attention.nsa.sel_block=8", "model.attention.nsa.window=16",
                                           "model.attention.infllmv2.pool_kernel=8", "model.attention.infllmv2.pool_stride=4",
                                           "model.attention.infllmv2.block=8", "model.attention.infllmv2.window=16",
                                           "model.attention.infllmv2.dense_len=0", "model.attention.dash.chunk=8"};
  const Recipe dense_recipe = load_recipe(test::source_path("recipes/tiny.yaml"), common);
  Transformer dense(dense_recipe.model);
  dense->init_weights(1);
  const TensorMap weights = model_state(dense);
  auto shard = std::make_shared<const TokenShard>(test::source_path("data/cache/kjv/val.bin"));

  for (const std::string variant : {"nsa", "infllmv2", "dash"}) {
    std::vector<std::string> overrides = common;
    overrides.push_back("model.attention.variant=" + variant);
    Calibrator calibrator(load_recipe(test::source_path("recipes/tiny.yaml"), overrides), weights, shard, 512, 1);
    Calibration last;
    for (double target : {50.0, 75.0, 87.5, 93.0}) {
      last = calibrator.calibrate(target, 2.0);
      EXPECT_TRUE(last.within_tolerance) << variant << " @ " << target << ": " << last.sparsity;
      EXPECT_NEAR(last.sparsity, target, 2.0) << variant << " " << last.knob << " = " << last.value;
      EXPECT_EQ(last.sparsity, last.probes.at(last.value));
    }
    // The searches rely on sparsity being monotone in the knob; the probes show it is.
    const bool rising = variant == "dash";
    double previous = rising ? -1 : 101;
    for (const auto& [value, sparsity] : last.probes) {
      EXPECT_TRUE(rising ? sparsity >= previous : sparsity <= previous) << variant << " at " << value;
      previous = sparsity;
    }
  }

  // Unreachable: even the fewest NSA blocks leave more than 1% of the pairs; flagged, not hidden.
  std::vector<std::string> overrides = common;
  overrides.push_back("model.attention.variant=nsa");
  Calibrator nsa(load_recipe(test::source_path("recipes/tiny.yaml"), overrides), weights, shard, 512, 1);
  const Calibration miss = nsa.calibrate(99.0, 2.0);
  EXPECT_FALSE(miss.within_tolerance);
  EXPECT_EQ(miss.value, 3);  // init_blocks + local_blocks: the sparsest NSA can be
  EXPECT_LT(miss.sparsity, 97.0);
}

// Runs the sweep again: it must calibrate nothing and skip the finished run in `done_dir`
// (`done_label` in the progress lines) without touching its files.
test::CliResult run_again(const std::string& sweep, const fs::path& done_dir, const std::string& done_label) {
  const std::string metrics = read_file((done_dir / "metrics.jsonl").string());
  auto r = test::run_cli("sweep " + sweep);
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_EQ(r.output.find("calibrating"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find(done_label + ": done, skipped"), std::string::npos) << r.output;
  EXPECT_EQ(read_file((done_dir / "metrics.jsonl").string()), metrics);
  return r;
}

// The shipped tiny sweep: pretraining, calibration, 10 continual runs, evaluation, report.
TEST_F(Sweep, TinySweepWritesTheReportAndPlotsAndSkipsFinishedWorkWhenRunAgain) {
  test::TempDir dir;
  const std::string sweep = tiny_sweep(dir, dir.file("runs"));
  const auto first = test::run_cli("sweep " + sweep);
  ASSERT_EQ(first.code, 0) << first.output;
  const fs::path out = dir.file("runs/sweep-tiny");

  const YAML::Node calibration = YAML::LoadFile((out / "calibration.json").string());
  int calibrated = 0;
  for (const auto& variant : calibration["variants"])
    for (const auto& target : variant.second) {
      EXPECT_NEAR(target.second["sparsity"].as<double>(), target.first.as<double>(), 2.0)
          << variant.first << " @ " << target.first;
      EXPECT_TRUE(target.second["within_tolerance"].as<bool>());
      ++calibrated;
    }
  EXPECT_EQ(calibrated, 9);  // nsa, infllmv2, dash x 50, 75, 87.5

  const std::string report = read_file((out / "report.md").string());
  for (const std::string run : {"dense", "nsa-50", "nsa-75", "nsa-87.5", "infllmv2-50", "infllmv2-75", "infllmv2-87.5",
                                "dash-50", "dash-75", "dash-87.5"}) {
    EXPECT_NE(report.find("| " + run + " |"), std::string::npos) << run << " row missing:\n" << report;
    const YAML::Node e = YAML::LoadFile((out / run / "eval.json").string());
    EXPECT_EQ(e["step"].as<int64_t>(), 6) << run;
    EXPECT_TRUE(std::isfinite(e["eval_loss"].as<double>())) << run;
    EXPECT_TRUE(e["tasks"]["passkey"]["lengths"]["512"]["accuracy"]["0.5"]) << run;
    EXPECT_EQ(e["device"].as<std::string>(), "CPU") << run;
  }
  EXPECT_NE(report.find("Evaluated on CPU, "), std::string::npos) << report;
  EXPECT_EQ(YAML::LoadFile((out / "dense/eval.json").string())["sparsity"].as<double>(), 0.0);
  EXPECT_EQ(report.find("MISSED"), std::string::npos) << report;
  for (const std::string png : {"pareto.png", "loss.png", "heatmap-passkey.png"}) {
    EXPECT_NE(report.find("(" + png + ")"), std::string::npos) << png << " not in the report:\n" << report;
    EXPECT_EQ(read_file((out / png).string()).substr(0, 8), "\x89PNG\r\n\x1a\n") << png;
  }

  // Again: nothing to train, calibrate or evaluate; the report is written anew.
  fs::remove(out / "report.md");
  const auto again = run_again(sweep, out / "nsa-75", "[4/11] nsa @ 75%");
  EXPECT_EQ(again.output.find("evaluating"), std::string::npos) << again.output;
  EXPECT_TRUE(fs::exists(out / "report.md"));
}

pid_t spawn_sweep(const std::string& sweep, const std::string& log) {
  const std::string cmd = std::string("exec ") + SPARSETRAIN_BINARY + " sweep " + sweep + " > " + log + " 2>&1";
  const char* argv[] = {"/bin/sh", "-c", cmd.c_str(), nullptr};
  pid_t pid = -1;
  posix_spawn(&pid, "/bin/sh", nullptr, nullptr, const_cast<char**>(argv), environ);
  return pid;
}

// Waits until `path` exists (true) or the process has ended (false); ctest's timeout bounds it.
bool wait_for(const fs::path& path, pid_t pid) {
  while (!fs::exists(path)) {
    if (waitpid(pid, nullptr, WNOHANG) == pid) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return true;
}

// Stopped by SIGTERM while training its second run, a sweep started again skips the finished
// run and the calibration, and resumes the second run from its checkpoint.
TEST_F(Sweep, KilledSweepResumesWhereItStopped) {
  test::TempDir dir;
  std::string sweep = tiny_sweep(dir, dir.file("runs"));
  // One variant, two targets, checkpoints every 4 of 12 steps, a short dense start.
  std::string text = read_file(sweep);
  auto cut = [&](const std::string& from, const std::string& to) {
    const size_t a = text.find(from), b = text.find(to, a);
    text.replace(a, b - a, "");
  };
  cut("  dense: {}", "  nsa:");
  cut("  infllmv2:", "targets:");
  text.replace(text.find("targets: [50, 75, 87.5]"), 23, "targets: [50, 87.5]");
  text.replace(text.find("  train.steps: 40"), 17, "  train.steps: 4");
  text.replace(text.find("  train.steps: 6"), 16, "  train.steps: 12\n  checkpoint.every: 4");
  test::write_file(sweep, text);
  const fs::path out = dir.file("runs/sweep-tiny");

  const pid_t pid = spawn_sweep(sweep, dir.file("first.log"));
  ASSERT_GT(pid, 0);
  ASSERT_TRUE(wait_for(out / "nsa-50/eval.json", pid)) << read_file(dir.file("first.log"));
  ASSERT_TRUE(wait_for(out / "nsa-87.5/ckpt/latest", pid)) << read_file(dir.file("first.log"));
  ::kill(pid, SIGTERM);
  int status = 0;
  waitpid(pid, &status, 0);
  const std::string first = read_file(dir.file("first.log"));
  ASSERT_TRUE(fs::exists(out / "nsa-87.5/ckpt/latest"));
  ASSERT_FALSE(fs::exists(out / "nsa-87.5/eval.json")) << "the second run finished before the signal:\n" << first;
  // The trainer catches the signal, checkpoints and returns; the sweep stops with exit code 1.
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 1) << first;
  EXPECT_NE(first.find("sweep: stopped; run the same command again to resume"), std::string::npos) << first;

  const auto second = run_again(sweep, out / "nsa-50", "nsa @ 50%");
  EXPECT_NE(second.output.find("resumed from"), std::string::npos) << second.output;
  EXPECT_EQ(YAML::LoadFile((out / "nsa-87.5/eval.json").string())["step"].as<int64_t>(), 12);
  EXPECT_TRUE(fs::exists(out / "report.md"));
}

}  // namespace
}  // namespace st
