// Sharded training for real on the CPU: N processes of the `sparsetrain` binary, each one rank
// (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT as torchrun sets them), talking Gloo over the
// loopback interface. With the same global batch (6 sequences a step: grad_accum 6, 3, 2 at
// 1, 2, 3 ranks), runs must agree to fp32 reduction-order tolerance; 3 ranks do not divide
// the units' sizes, so padding is exercised. Checkpoints reshard across world sizes.
#include <gtest/gtest.h>
#include <torch/cuda.h>

#include <filesystem>

#include "cli.h"
#include "dist/fsdp.h"
#include "dist/launcher.h"
#include "io/safetensors.h"
#include "oracle.h"
#include "run_metrics.h"
#include "small_model.h"
#include "train/activation_checkpoint.h"
#include "train/checkpoint.h"
#include "train/evaluate.h"

namespace st {
namespace {

namespace fs = std::filesystem;

// `sparsetrain <args>` as `ranks` processes at once (each one's output in
// <dir>/<name>.rank<r>.log); fails when any of them does.
test::CliResult run_ranks(const test::TempDir& dir, int ranks, const std::string& name, const std::string& args) {
  if (ranks == 1) return test::run_cli(args);
  const std::string log = dir.file(name) + ".rank";
  const int64_t port = free_local_port();
  std::string script = "pids=; ";
  for (int r = 0; r < ranks; ++r)
    script += "RANK=" + std::to_string(r) + " WORLD_SIZE=" + std::to_string(ranks) + " LOCAL_RANK=" +
              std::to_string(r) + " MASTER_ADDR=127.0.0.1 MASTER_PORT=" + std::to_string(port) + " " +
              SPARSETRAIN_BINARY + " " + args + " > " + log + std::to_string(r) + " 2>&1 & pids=\"$pids $!\"; ";
  script += "rc=0; for p in $pids; do wait $p || rc=1; done; cat " + log + "*; exit $rc";
  return test::run_shell("bash -c '" + script + "'");
}

// The tiny recipe at 6 sequences of 64 tokens a step, for 10 steps, on the CPU (Gloo) unless
// `extra` says otherwise.
std::string tiny(const test::TempDir& dir, int ranks, const std::string& name, const std::string& extra = "") {
  return "train recipes/tiny.yaml --set run.out_dir=" + dir.file("runs") + " --set run.name=" + name +
         " --set train.steps=10 --set train.seq_len=64 --set train.micro_batch=1 --set train.grad_accum=" +
         std::to_string(6 / ranks) + " --set logging.progress=plain --set train.device=cpu " + extra;
}

std::vector<double> losses(const std::string& run_dir) {
  std::vector<double> out;
  for (auto& [step, text] : test::step_losses(run_dir)) out.push_back(std::stod(text));
  return out;
}

void expect_close(const std::vector<double>& a, const std::vector<double>& b, const std::string& what,
                  double tolerance = 2e-4) {
  ASSERT_EQ(a.size(), b.size()) << what;
  for (size_t i = 0; i < a.size(); ++i) EXPECT_NEAR(a[i], b[i], tolerance) << what << ", step " << i + 1;
}

class Sharded : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!fs::exists(test::source_path("data/cache/kjv/train.bin")))
      FAIL() << "data/cache/kjv/train.bin is missing: run data/kjv.sh (tools/test.sh does)";
  }
  test::TempDir dir;
  std::string run(const std::string& name) const { return dir.file("runs/" + name); }
  // The tiny recipe with `extra` at 1 and at 2 ranks: losses within `tolerance`.
  void one_vs_two(const std::string& extra, double tolerance) {
    ASSERT_EQ(run_ranks(dir, 1, "one", tiny(dir, 1, "one", extra)).code, 0);
    auto two = run_ranks(dir, 2, "two", tiny(dir, 2, "two", extra));
    ASSERT_EQ(two.code, 0) << two.output;
    expect_close(losses(run("one")), losses(run("two")), extra, tolerance);
  }
};

TEST_F(Sharded, OneTwoAndThreeRanksGiveTheSameLosses) {
  for (int n : {1, 2, 3}) {
    auto r = run_ranks(dir, n, "r" + std::to_string(n), tiny(dir, n, "r" + std::to_string(n)));
    ASSERT_EQ(r.code, 0) << r.output;
  }
  const auto one = losses(run("r1"));
  ASSERT_EQ(one.size(), 10u);
  EXPECT_LT(one.back(), one.front() - 0.5);  // it trains
  expect_close(one, losses(run("r2")), "2 ranks");
  expect_close(one, losses(run("r3")), "3 ranks");
  auto lines = test::metrics(run("r3"));
  EXPECT_EQ(lines[0]["tokens"].as<int64_t>(), 6 * 64);  // every rank's tokens count
  EXPECT_NEAR(lines.back()["eval_loss"].as<double>(), test::metrics(run("r1")).back()["eval_loss"].as<double>(), 2e-4);
}

TEST_F(Sharded, ActivationCheckpointingAndZero2GiveTheSameLosses) {
  ASSERT_EQ(run_ranks(dir, 1, "r1", tiny(dir, 1, "r1")).code, 0);
  auto ac = run_ranks(dir, 2, "ac", tiny(dir, 2, "ac", "--set train.activation_checkpointing=true"));
  ASSERT_EQ(ac.code, 0) << ac.output;
  auto z2 = run_ranks(dir, 3, "z2", tiny(dir, 3, "z2", "--set train.sharding=zero2"));
  ASSERT_EQ(z2.code, 0) << z2.output;
  const auto one = losses(run("r1"));
  expect_close(one, losses(run("ac")), "2 ranks, activation checkpointing");
  expect_close(one, losses(run("z2")), "3 ranks, ZeRO-2");
}

// Under bf16 the units are gathered in bf16 (widened to fp32 parameters afterwards): the
// norms and embeddings, fp32 in one process, are then bf16-rounded, hence the looser bound.
TEST_F(Sharded, Bf16GatherStaysCloseToOneProcess) { one_vs_two("--set train.precision=bf16", 5e-3); }

// NCCL: the same comparison on two GPUs (bf16), run wherever two are visible.
TEST_F(Sharded, TwoGpusStayCloseToOne) {
  if (torch::cuda::device_count() < 2) GTEST_SKIP() << "needs two CUDA devices";
  one_vs_two("--set train.device=cuda", 5e-3);
}

TEST_F(Sharded, CheckpointsReshardToOtherWorldSizes) {
  ASSERT_EQ(run_ranks(dir, 1, "r1", tiny(dir, 1, "r1")).code, 0);
  auto first = run_ranks(dir, 2, "two", tiny(dir, 2, "two", "--stop-after 5"));
  ASSERT_EQ(first.code, 0) << first.output;
  for (int n : {1, 3}) {
    const std::string name = "from2to" + std::to_string(n);
    auto r = run_ranks(dir, n, name, tiny(dir, n, name, "--resume " + run("two")));
    ASSERT_EQ(r.code, 0) << r.output;
    EXPECT_NE(r.output.find("resumed from"), std::string::npos) << r.output;
    const auto whole = losses(run("r1")), resumed = losses(run(name));
    ASSERT_EQ(resumed.size(), 5u) << name;
    expect_close(std::vector<double>(whole.begin() + 5, whole.end()), resumed, name);
  }

  // What the 2-rank checkpoint holds: one file per rank, and whole tensors when loaded.
  const std::string ckpt = run("two") + "/ckpt/step-00000005";
  EXPECT_FALSE(fs::exists(ckpt + "/model.safetensors"));
  CheckpointData sharded = load_checkpoint(ckpt), single = load_checkpoint(run("r1"));
  EXPECT_EQ(sharded.world_size, 2);
  ASSERT_EQ(sharded.model.size(), single.model.size());
  for (auto& [name, t] : single.model) EXPECT_EQ(sharded.model.at(name).sizes(), t.sizes()) << name;
  ASSERT_EQ(sharded.optim.size(), single.optim.size());
  for (auto& [name, t] : single.optim) EXPECT_EQ(sharded.optim.at(name).sizes(), t.sizes()) << name;
  auto hf = test::run_cli("export " + ckpt + " --format hf --out " + dir.file("hf"));
  EXPECT_EQ(hf.code, 0) << hf.output;
  auto whole = test::run_cli("export " + ckpt + " --format sparsetrain --out " + dir.file("whole"));
  ASSERT_EQ(whole.code, 0) << whole.output;
  EXPECT_TRUE(fs::exists(dir.file("whole/step-00000005/model.safetensors")));
  CheckpointData consolidated = load_checkpoint(dir.file("whole"));
  EXPECT_EQ(consolidated.world_size, 1);
  for (auto& [name, t] : sharded.model) EXPECT_TRUE(consolidated.model.at(name).equal(t)) << name;
}

TEST_F(Sharded, EachRankHoldsAboutOneNthOfTheOptimizerState) {
  auto r = run_ranks(dir, 3, "r3", tiny(dir, 3, "r3", "--set train.steps=1"));
  ASSERT_EQ(r.code, 0) << r.output;
  const std::string ckpt = run("r3") + "/ckpt/step-00000001";
  int64_t whole = 0;
  for (auto& [name, t] : load_checkpoint(ckpt).model) whole += t.numel();
  const int64_t units = 1 + 2;  // embeddings/norm/head, and the tiny config's 2 blocks
  for (int rank = 0; rank < 3; ++rank) {
    int64_t exp_avg = 0;
    for (auto& [key, t] : load_safetensors(ckpt + "/rank-0000" + std::to_string(rank) + "-of-00003.safetensors"))
      if (key.rfind("exp_avg.", 0) == 0) exp_avg += t.numel();
    // Each unit's share is its padded size / 3, less the padding that falls on this rank.
    EXPECT_NEAR(double(exp_avg), double(whole) / 3, double(units)) << "rank " << rank;
  }
}

// In one process (a world of one: the collectives are copies), the sharded model must give
// the plain model's gradients, and hold a block's weights only around its use; reduced in
// the backward (begin_micro_batch(true)), a block's full-size gradients are gone by its end.
TEST(ShardedModel, PlainGradientsWithOnlyTheRunningBlocksGathered) {
  const ModelConfig c = test::small_model_config();
  auto tokens = torch::randint(0, 61, {2, 17}, torch::kInt64);
  auto targets = torch::randint(0, 61, {2, 17}, torch::kInt64);
  Transformer plain(c);
  plain->init_weights(5);
  next_token_loss(plain(tokens), targets).backward();

  Comm comm(DistEnv{}, torch::kCPU);
  for (bool reshard : {true, false}) {
    for (bool recompute : {false, true}) {
      for (bool in_backward : {false, true}) {
        const std::string what = std::string(reshard ? "ZeRO-3" : "ZeRO-2") + (recompute ? ", recompute" : "") +
                                 (in_backward ? ", reduced in backward" : "");
        Transformer model(c);
        model->init_weights(5);
        ShardedModel sharded(model, comm, {torch::kCPU, at::kFloat, reshard});
        auto held = [&](int64_t layer) {
          return model->layers[layer]->as<BlockImpl>()->mlp->up_proj->weight.storage().nbytes() > 0;
        };
        std::vector<bool> earlier_held;  // while block i > 0 runs: is block i - 1 still gathered?
        auto inner = [&](Block& block, const torch::Tensor& x, const RopeTables& rope) {
          for (int64_t i = 1; i < c.n_layers; ++i)
            if (model->layers[i]->as<BlockImpl>() == block.get()) earlier_held.push_back(held(i - 1));
          return recompute ? checkpointed_block(block, x, rope) : block(x, rope);
        };
        for (int64_t i = 0; i < c.n_layers; ++i) EXPECT_FALSE(held(i)) << what;
        sharded.begin_step();
        sharded.begin_micro_batch(in_backward);
        next_token_loss(model(tokens, sharded.runner(inner)), targets).backward();
        EXPECT_EQ(earlier_held, std::vector<bool>(c.n_layers - 1, !reshard)) << what;
        for (int64_t i = 0; i < c.n_layers; ++i)
          EXPECT_EQ(model->layers[i]->as<BlockImpl>()->mlp->up_proj->weight.grad().defined(), !in_backward) << what;
        sharded.reduce_gradients();
        for (int64_t i = 0; i < c.n_layers; ++i) EXPECT_FALSE(held(i)) << what;
        EXPECT_EQ(model->embed_tokens->weight.storage().nbytes(), 0u) << what;

        auto plain_params = plain->named_parameters();
        ASSERT_EQ(sharded.local_parameters().size(), plain_params.size());
        for (const auto& p : sharded.local_parameters()) {
          const auto& want = plain_params[p.name];
          EXPECT_TRUE(torch::allclose(p.param.grad(), want.grad().reshape(-1), 1e-5, 1e-7)) << what << ": " << p.name;
          EXPECT_TRUE(p.param.equal(want.detach().reshape(-1))) << what << ": " << p.name;
        }
      }
    }
  }
}

TEST(DistEnv, PartialOrMalformedVariablesAreNamed) {
  struct Case {
    std::string env, named;
  };
  for (const Case& c : {Case{"RANK=0", "WORLD_SIZE"}, Case{"WORLD_SIZE=2", "RANK"},
                        Case{"RANK=2 WORLD_SIZE=2", "RANK"}, Case{"RANK=0 WORLD_SIZE=2", "MASTER_ADDR"},
                        Case{"RANK=0 WORLD_SIZE=2 MASTER_ADDR=x MASTER_PORT=http", "MASTER_PORT"},
                        Case{"SLURM_PROCID=0 SLURM_NTASKS=two", "SLURM_NTASKS"}}) {
    auto r = test::run_shell("env " + c.env + " " + SPARSETRAIN_BINARY + " train recipes/tiny.yaml --set run.out_dir=/nonexistent");
    EXPECT_EQ(r.code, 2) << c.env << ": " << r.output;
    EXPECT_NE(r.output.find(c.named), std::string::npos) << c.env << ": " << r.output;
  }
}

}  // namespace
}  // namespace st
