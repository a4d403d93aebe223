// End-to-end training through the CLI on the quickstart corpus (tools/test.sh prepares
// data/cache/kjv): exact resume, falling loss, checkpoints that refuse damage, the
// non-finite guard.
#include <gtest/gtest.h>
#include <yaml-cpp/yaml.h>

#include <filesystem>
#include <fstream>

#include "cli.h"
#include "oracle.h"
#include "run_metrics.h"

namespace st {
namespace {

namespace fs = std::filesystem;

using test::metrics;
using test::step_losses;

std::string tiny(const test::TempDir& dir, const std::string& name, const std::string& extra = "") {
  return "train recipes/tiny.yaml --set run.out_dir=" + dir.file("runs") + " --set run.name=" + name + " " + extra;
}

class Training : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!fs::exists(test::source_path("data/cache/kjv/train.bin")))
      FAIL() << "data/cache/kjv/train.bin is missing: run data/kjv.sh (tools/test.sh does)";
  }
};

TEST_F(Training, ResumeGivesBitwiseIdenticalLosses) {
  test::TempDir dir;
  auto full = test::run_cli(tiny(dir, "full"));
  ASSERT_EQ(full.code, 0) << full.output;
  auto first = test::run_cli(tiny(dir, "split", "--stop-after 10"));
  ASSERT_EQ(first.code, 0) << first.output;
  EXPECT_EQ(fs::path(dir.file("runs/split/ckpt/latest")).filename(), "latest");
  auto second = test::run_cli(tiny(dir, "split", "--resume auto"));
  ASSERT_EQ(second.code, 0) << second.output;
  EXPECT_NE(second.output.find("resumed from"), std::string::npos) << second.output;

  auto a = step_losses(dir.file("runs/full")), b = step_losses(dir.file("runs/split"));
  ASSERT_EQ(a.size(), 20u);
  ASSERT_EQ(b.size(), 20u);
  for (int64_t s = 11; s <= 20; ++s) EXPECT_EQ(a[s], b[s]) << "step " << s;
}

TEST_F(Training, MetricsLinesCarryTheDocumentedKeys) {
  test::TempDir dir;
  auto r = test::run_cli(tiny(dir, "keys", "--set train.steps=3"));
  ASSERT_EQ(r.code, 0) << r.output;
  auto lines = metrics(dir.file("runs/keys"));
  ASSERT_GE(lines.size(), 4u);  // three steps and the final eval
  for (const char* key : {"step", "loss", "lr", "grad_norm", "tokens", "tokens_per_s", "mfu"}) EXPECT_TRUE(lines[0][key]) << key;
  EXPECT_EQ(lines[2]["tokens"].as<int64_t>(), 3 * 4 * 128);
  EXPECT_TRUE(lines.back()["eval_loss"]);
  EXPECT_TRUE(fs::exists(dir.file("runs/keys/recipe.resolved.yaml")));
}

TEST_F(Training, LossFallsOnTheQuickstartCorpus) {
  test::TempDir dir;
  auto r = test::run_cli(tiny(dir, "falls", "--set train.steps=80 --set train.eval_every=40"));
  ASSERT_EQ(r.code, 0) << r.output;
  auto losses = step_losses(dir.file("runs/falls"));
  double head = 0, tail = 0;
  for (int s = 1; s <= 5; ++s) head += std::stod(losses[s]) / 5;
  for (int s = 76; s <= 80; ++s) tail += std::stod(losses[s]) / 5;
  EXPECT_GT(head, 5.0);          // about ln(vocab) at the start
  EXPECT_LT(tail, head - 2.0);   // byte-level English is learnable fast
  std::vector<double> evals;
  for (auto& m : metrics(dir.file("runs/falls"))) if (m["eval_loss"]) evals.push_back(m["eval_loss"].as<double>());
  ASSERT_EQ(evals.size(), 2u);
  EXPECT_LT(evals[1], evals[0]);
  auto e = test::run_cli("eval " + dir.file("runs/falls"));
  EXPECT_EQ(e.code, 0) << e.output;
  EXPECT_NE(e.output.find("perplexity"), std::string::npos) << e.output;
}

TEST_F(Training, CheckpointsKeepLastNAndRefuseDamage) {
  test::TempDir dir;
  auto r = test::run_cli(tiny(dir, "ck", "--set train.steps=12 --set checkpoint.every=3 --set checkpoint.keep=2"));
  ASSERT_EQ(r.code, 0) << r.output;
  const std::string root = dir.file("runs/ck/ckpt");
  std::vector<std::string> steps;
  for (auto& e : fs::directory_iterator(root)) if (e.is_directory()) steps.push_back(e.path().filename());
  std::sort(steps.begin(), steps.end());
  EXPECT_EQ(steps, (std::vector<std::string>{"step-00000009", "step-00000012"}));
  std::ifstream latest(root + "/latest");
  std::string name;
  latest >> name;
  EXPECT_EQ(name, "step-00000012");

  // A save killed midway leaves only a temp folder: the previous checkpoint still loads.
  fs::create_directories(root + "/.tmp-step-00000015-1");
  std::ofstream(root + "/.tmp-step-00000015-1/model.safetensors") << "partial";
  EXPECT_EQ(test::run_cli("eval " + root + "/latest").code, 0);

  // Flip one byte of the weights: the checksum catches it.
  const std::string model = root + "/step-00000012/model.safetensors";
  {
    std::fstream f(model, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(-3, std::ios::end);
    f.put('\x7f');
  }
  auto corrupt = test::run_cli("eval " + root + "/latest");
  EXPECT_EQ(corrupt.code, 1);
  EXPECT_NE(corrupt.output.find("checksum mismatch"), std::string::npos) << corrupt.output;
  EXPECT_NE(corrupt.output.find(model), std::string::npos) << corrupt.output;

  // Truncate the other checkpoint's optimizer state: resuming from it is refused.
  const std::string optim = root + "/step-00000009/optim.safetensors";
  fs::resize_file(optim, fs::file_size(optim) / 2);
  auto truncated = test::run_cli(tiny(dir, "ck", "--resume " + root + "/step-00000009"));
  EXPECT_EQ(truncated.code, 1);
  EXPECT_NE(truncated.output.find("truncated"), std::string::npos) << truncated.output;
}

TEST_F(Training, NonFiniteStepsAreSkippedThenStop) {
  test::TempDir dir;
  auto r = test::run_cli(tiny(dir, "nan", "--set optim.lr=1e30 --set schedule.warmup_steps=0 --set train.max_bad_steps=3"));
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.output.find("update skipped"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("3 non-finite steps in a row"), std::string::npos) << r.output;
}

TEST_F(Training, CorruptShardIsAClearError) {
  test::TempDir dir;
  const std::string shard = dir.file("bad.bin");
  fs::copy_file(test::source_path("data/cache/kjv/val.bin"), shard);
  fs::resize_file(shard, fs::file_size(shard) - 7);
  auto r = test::run_cli(tiny(dir, "badshard", "--set data.train=" + shard));
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.output.find(shard), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(dir.file("runs/badshard")));
}

}  // namespace
}  // namespace st
