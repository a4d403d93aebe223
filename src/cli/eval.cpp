// sparsetrain eval CKPT [--task ppl|passkey|niah|mqar|vt] [--data SHARD] [--batches N] [--seq-len N]
//                       [--lengths 4k,16k] [--depths 0,0.5,1] [--count N] [--seed S] [--tokenizer T] [--json PATH]
#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cmath>
#include <fstream>

#include "cli/commands.h"
#include "config/recipe.h"
#include "data/synthetic.h"
#include "eval/tasks.h"
#include "train/checkpoint.h"
#include "train/evaluate.h"
#include "train/model_state.h"
#include "util/json.h"

namespace st {
namespace {

struct Args {
  std::string checkpoint, data, json, device = "auto", task = "ppl", tokenizer = "byte";
  int64_t batches = 0, seq_len = 0, micro_batch = 0, count = 8;
  uint64_t seed = 0;
  std::vector<std::string> lengths{"4k"};
  std::vector<double> depths{0, 0.25, 0.5, 0.75, 1};
};

void run_perplexity(const Args& args, Transformer& model, const Recipe& recipe, TrainConfig tc, const Runtime& rt,
                    int64_t step) {
  const std::string data = args.data.empty() ? recipe.data.eval : args.data;
  if (data.empty()) throw ConfigError("the checkpoint's recipe has no data.eval; pass --data SHARD");
  const int64_t batches = args.batches > 0 ? args.batches : tc.eval_batches;
  TokenShard shard(data);
  EvalResult r = evaluate(model, shard, rt, tc.seq_len, tc.micro_batch, batches);

  fmt::print("checkpoint  {} (step {})\ndata        {} ({} tokens evaluated, seq_len {})\n", resolve_checkpoint(args.checkpoint),
             step, data, r.tokens, tc.seq_len);
  fmt::print("eval_loss   {:.4f}\nperplexity  {:.3f}\nsparsity    {:.4f} ({})\n", r.loss, std::exp(r.loss), r.sparsity(),
             recipe.model.attention.variant);
  for (size_t l = 0; l < r.layers.size(); ++l)
    fmt::print("  layer {:>3}  sparsity {:.4f}  attended pairs {}  causal pairs {}\n", l, r.layers[l].sparsity(),
               r.layers[l].attended, r.layers[l].causal);
  if (!args.json.empty()) {
    std::ofstream(args.json) << JsonObject().add("step", step).add("eval_loss", r.loss).add("perplexity", std::exp(r.loss))
                                    .add("sparsity", r.sparsity()).add("layer_sparsity", r.layer_sparsity())
                                    .add("tokens", r.tokens).str() << "\n";
  }
}

void run_task(const Args& args, Transformer& model, const Recipe& recipe, const Runtime& rt, int64_t step) {
  TaskEvalConfig cfg{args.task, {}, args.depths, args.count, args.seed};
  for (const std::string& s : args.lengths) cfg.lengths.push_back(parse_length(s));
  const auto tokenizer = load_tokenizer(args.tokenizer);
  if (int64_t(tokenizer->vocab_size()) > recipe.model.vocab_size)
    throw ConfigError(fmt::format("--tokenizer {} has {} tokens, more than the model's vocab_size {}", args.tokenizer,
                                  tokenizer->vocab_size(), recipe.model.vocab_size));
  const TaskEvalResult r = evaluate_task(model, *tokenizer, rt, cfg);

  fmt::print("checkpoint  {} (step {})\ntask        {} ({} examples per cell, seed {}, tokenizer {}, {} attention)\n",
             resolve_checkpoint(args.checkpoint), step, args.task, args.count, args.seed, args.tokenizer,
             recipe.model.attention.variant);
  fmt::print("{:>8}  {:>6}  {:>8}  {:>7}  {:>14}\n", "length", "depth", "accuracy", "correct", "token accuracy");
  for (const TaskCell& c : r.cells)
    fmt::print("{:>8}  {:>6}  {:>8.3f}  {:>7}  {:>14.3f}\n", c.length, depth_name(c.depth), c.accuracy(),
               fmt::format("{}/{}", c.correct, c.total), c.token_accuracy());
  fmt::print("sparsity per layer\n");
  for (const TaskLengthSparsity& s : r.sparsity)
    fmt::print("{:>8}  all {:.4f}  layers {:.4f}\n", s.length, sparsity_of_all(s.layers),
               fmt::join(sparsity_per_layer(s.layers), " "));

  if (args.json.empty()) return;
  const TaskCell all = all_cells(r);
  std::ofstream(args.json) << JsonObject().add("step", step).add("task", args.task).add("count", args.count)
                                  .add("seed", int64_t(args.seed)).add("tokenizer", args.tokenizer)
                                  .add("variant", recipe.model.attention.variant).add("accuracy", all.accuracy())
                                  .add("token_accuracy", all.token_accuracy()).add("lengths", lengths_json(r)).str()
                           << "\n";
}

}  // namespace

void add_eval_command(CLI::App& app) {
  auto args = std::make_shared<Args>();
  auto* cmd = app.add_subcommand(
      "eval", "Perplexity (ppl) or synthetic long-context task accuracy of a checkpoint, with attention sparsity per layer");
  cmd->add_option("checkpoint", args->checkpoint, "Checkpoint folder, `latest` file, or run folder")->required();
  cmd->add_option("--task", args->task, "ppl | passkey | niah | mqar | vt")->capture_default_str();
  cmd->add_option("--data", args->data, "ppl: token shard (default: the recipe's data.eval)");
  cmd->add_option("--batches", args->batches, "ppl: batches to evaluate (default: train.eval_batches)");
  cmd->add_option("--seq-len", args->seq_len, "ppl: sequence length (default: train.seq_len)");
  cmd->add_option("--micro-batch", args->micro_batch, "ppl: sequences per batch (default: train.micro_batch)");
  auto* lengths = cmd->add_option("--lengths", args->lengths, "Tasks: example lengths (comma-separated, k = 1024)")
                      ->delimiter(',')->capture_default_str();
  cmd->add_option("--depths", args->depths, "passkey, niah: needle depths as fractions of the filler")
      ->delimiter(',')->check(CLI::Range(0.0, 1.0))->capture_default_str();
  cmd->add_option("--count", args->count, "Tasks: examples per (length, depth)")->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd->add_option("--seed", args->seed, "Tasks: example seed (the same examples at every depth)")->capture_default_str();
  cmd->add_option("--tokenizer", args->tokenizer, "Tasks: byte | tokenizer.json")->capture_default_str();
  cmd->add_option("--device", args->device, "auto | cpu | cuda")->check(CLI::IsMember({"auto", "cpu", "cuda"}));
  cmd->add_option("--json", args->json, "Also write the results as JSON to this file");
  cmd->callback([args, lengths] {
    const auto& tasks = synthetic_task_names();
    const bool synthetic = std::find(tasks.begin(), tasks.end(), args->task) != tasks.end();
    if (!synthetic && args->task != "ppl")
      throw ConfigError(fmt::format("--task: unknown task '{}' (expected ppl, {})", args->task, fmt::join(tasks, ", ")));
    if (!synthetic && lengths->count() > 0)
      throw ConfigError("--lengths is for the synthetic tasks; --task ppl takes --seq-len");

    CheckpointData ckpt = load_checkpoint(args->checkpoint, /*with_optimizer=*/false);
    Recipe recipe = parse_recipe(ckpt.recipe_yaml, resolve_checkpoint(args->checkpoint) + "/recipe.yaml");
    TrainConfig tc = recipe.train;
    tc.device = args->device;
    if (args->seq_len > 0) tc.seq_len = args->seq_len;
    if (args->micro_batch > 0) tc.micro_batch = args->micro_batch;
    const Runtime rt = make_runtime(tc);
    Transformer model(recipe.model);
    load_model_state(model, ckpt.model, /*allow_new_variant_params=*/false, args->checkpoint);
    model->to(rt.device);
    if (synthetic)
      run_task(*args, model, recipe, rt, ckpt.step);
    else
      run_perplexity(*args, model, recipe, tc, rt, ckpt.step);
  });
}

}  // namespace st
