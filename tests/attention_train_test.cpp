// Each sparse variant trains the tiny config through the CLI, from scratch and continued from
// a dense checkpoint (continual pretraining), with falling loss and measured sparsity.
#include <gtest/gtest.h>
#include <yaml-cpp/yaml.h>

#include <filesystem>
#include <fstream>

#include "cli.h"
#include "oracle.h"

namespace st {
namespace {

// Blocks small enough that 128-token sequences are sparse: 8 blocks of 16.
const std::map<std::string, std::string> kVariantKnobs = {
    {"dash", "--set model.attention.dash.chunk=16 --set model.attention.dash.temperature=300"},
    {"nsa",
     "--set model.attention.nsa.cmp_block=16 --set model.attention.nsa.cmp_stride=8 --set model.attention.nsa.sel_block=16 "
     "--set model.attention.nsa.top_n=4 --set model.attention.nsa.window=32"},
    {"infllmv2",
     "--set model.attention.infllmv2.pool_kernel=16 --set model.attention.infllmv2.pool_stride=8 "
     "--set model.attention.infllmv2.block=16 --set model.attention.infllmv2.top_k=4 "
     "--set model.attention.infllmv2.window=32 --set model.attention.infllmv2.dense_len=0"},
};

struct Run {
  std::vector<double> losses;      // per step
  std::vector<double> sparsities;  // every line that reports one
};

Run read_metrics(const std::string& run_dir) {
  Run r;
  std::ifstream in(run_dir + "/metrics.jsonl");
  for (std::string line; std::getline(in, line);) {
    auto m = YAML::Load(line);
    if (m["loss"]) r.losses.push_back(m["loss"].as<double>());
    if (m["sparsity"]) r.sparsities.push_back(m["sparsity"].as<double>());
  }
  return r;
}

double mean(const std::vector<double>& v, size_t from, size_t to) {
  double s = 0;
  for (size_t i = from; i < to; ++i) s += v[i];
  return s / double(to - from);
}

class SparseTraining : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!std::filesystem::exists(test::source_path("data/cache/kjv/train.bin")))
      FAIL() << "data/cache/kjv/train.bin is missing: run data/kjv.sh (tools/test.sh does)";
  }
  // Trains recipes/tiny.yaml with `variant`; returns the CLI output.
  std::string train(const std::string& name, const std::string& variant, int steps, const std::string& extra = "") {
    auto r = test::run_cli("train recipes/tiny.yaml --set run.out_dir=" + dir.file("runs") + " --set run.name=" + name +
                           " --set model.attention.variant=" + variant + " --set train.steps=" + std::to_string(steps) +
                           " --set logging.progress=plain " + (variant == "dense" ? "" : kVariantKnobs.at(variant)) + " " +
                           extra);
    EXPECT_EQ(r.code, 0) << r.output;
    return r.output;
  }
  test::TempDir dir;
};

TEST_F(SparseTraining, EachVariantTrainsFromScratchWithFallingLossAndMeasuredSparsity) {
  for (const auto& [variant, knobs] : kVariantKnobs) {
    SCOPED_TRACE(variant);
    train(variant, variant, 30);
    auto run = read_metrics(dir.file("runs/" + variant));
    ASSERT_EQ(run.losses.size(), 30u);
    EXPECT_GT(mean(run.losses, 0, 5), 5.0);  // about ln(vocab) at the start
    EXPECT_LT(mean(run.losses, 25, 30), mean(run.losses, 0, 5) - 1.5);
    ASSERT_FALSE(run.sparsities.empty());
    EXPECT_GT(run.sparsities.back(), 0.1);  // really sparse, not dense in disguise
    EXPECT_LT(run.sparsities.back(), 1.0);
  }
}

TEST_F(SparseTraining, EachVariantContinuesFromADenseCheckpointCloseToDense) {
  train("dense", "dense", 30);
  const double dense_loss = mean(read_metrics(dir.file("runs/dense")).losses, 25, 30);
  const std::string ckpt = dir.file("runs/dense/ckpt/latest");
  const std::map<std::string, std::string> new_params = {
      {"dash", "variant.pool_query"}, {"nsa", "variant.gate.weight"}, {"infllmv2", ""}};
  for (const auto& [variant, knobs] : kVariantKnobs) {
    SCOPED_TRACE(variant);
    auto out = train("from-dense-" + variant, variant, 10, "--set train.init_from=" + ckpt);
    EXPECT_NE(out.find("newly initialised"), std::string::npos) << out;
    if (!new_params.at(variant).empty()) {
      EXPECT_NE(out.find(new_params.at(variant)), std::string::npos) << out;
    }
    auto run = read_metrics(dir.file("runs/from-dense-" + variant));
    ASSERT_EQ(run.losses.size(), 10u);
    // The new parameters' init keeps the first steps near the dense model (from scratch it is ~6.2).
    EXPECT_LT(run.losses[0], dense_loss + 0.5);
    EXPECT_LT(mean(run.losses, 5, 10), run.losses[0] + 0.1);
  }
}

}  // namespace
}  // namespace st
