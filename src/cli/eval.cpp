// sparsetrain eval CKPT [--data SHARD] [--batches N] [--seq-len N] [--json PATH]
#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <cmath>
#include <fstream>

#include "cli/commands.h"
#include "config/recipe.h"
#include "train/checkpoint.h"
#include "train/evaluate.h"
#include "train/model_state.h"
#include "util/json.h"

namespace st {

void add_eval_command(CLI::App& app) {
  struct Args {
    std::string checkpoint, data, json, device = "auto";
    int64_t batches = 0, seq_len = 0, micro_batch = 0;
  };
  auto args = std::make_shared<Args>();
  auto* cmd = app.add_subcommand("eval", "Validation loss, perplexity and attention sparsity of a checkpoint");
  cmd->add_option("checkpoint", args->checkpoint, "Checkpoint folder, `latest` file, or run folder")->required();
  cmd->add_option("--data", args->data, "Token shard (default: the recipe's data.eval)");
  cmd->add_option("--batches", args->batches, "Batches to evaluate (default: train.eval_batches)");
  cmd->add_option("--seq-len", args->seq_len, "Sequence length (default: train.seq_len)");
  cmd->add_option("--micro-batch", args->micro_batch, "Sequences per batch (default: train.micro_batch)");
  cmd->add_option("--device", args->device, "auto | cpu | cuda")->check(CLI::IsMember({"auto", "cpu", "cuda"}));
  cmd->add_option("--json", args->json, "Also write the results as JSON to this file");
  cmd->callback([args] {
    CheckpointData ckpt = load_checkpoint(args->checkpoint, /*with_optimizer=*/false);
    Recipe recipe = parse_recipe(ckpt.recipe_yaml, resolve_checkpoint(args->checkpoint) + "/recipe.yaml");
    const std::string data = args->data.empty() ? recipe.data.eval : args->data;
    if (data.empty()) throw ConfigError("the checkpoint's recipe has no data.eval; pass --data SHARD");
    TrainConfig tc = recipe.train;
    tc.device = args->device;
    if (args->seq_len > 0) tc.seq_len = args->seq_len;
    if (args->micro_batch > 0) tc.micro_batch = args->micro_batch;
    const int64_t batches = args->batches > 0 ? args->batches : tc.eval_batches;
    const Runtime rt = make_runtime(tc);

    TokenShard shard(data);
    Transformer model(recipe.model);
    load_model_state(model, ckpt.model, /*allow_new_variant_params=*/false, args->checkpoint);
    model->to(rt.device);
    EvalResult r = evaluate(model, shard, rt, tc.seq_len, tc.micro_batch, batches);

    fmt::print("checkpoint  {} (step {})\ndata        {} ({} tokens evaluated, seq_len {})\n", resolve_checkpoint(args->checkpoint),
               ckpt.step, data, r.tokens, tc.seq_len);
    fmt::print("eval_loss   {:.4f}\nperplexity  {:.3f}\nsparsity    {:.4f} ({})\n", r.loss, std::exp(r.loss), r.sparsity(),
               recipe.model.attention.variant);
    for (size_t l = 0; l < r.layers.size(); ++l)
      fmt::print("  layer {:>3}  sparsity {:.4f}  attended pairs {}  causal pairs {}\n", l, r.layers[l].sparsity(),
                 r.layers[l].attended, r.layers[l].causal);
    if (!args->json.empty()) {
      std::ofstream(args->json) << JsonObject().add("step", ckpt.step).add("eval_loss", r.loss).add("perplexity", std::exp(r.loss))
                                        .add("sparsity", r.sparsity()).add("layer_sparsity", r.layer_sparsity())
                                        .add("tokens", r.tokens).str() << "\n";
    }
  });
}

}  // namespace st
