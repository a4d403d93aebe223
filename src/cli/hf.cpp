// sparsetrain import hf DIR --out CKPT; sparsetrain export CKPT --format hf|sparsetrain --out DIR
#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include "cli/commands.h"
#include "io/hf.h"
#include "train/checkpoint.h"

namespace st {

void add_hf_commands(CLI::App& app) {
  struct Args {
    std::string source, out, format = "hf", dtype = "fp32", tokenizer;
    int64_t max_shard_bytes = 5'000'000'000;
  };
  auto a = std::make_shared<Args>();

  auto* import = app.add_subcommand("import", "Turn another framework's model into a sparsetrain checkpoint");
  import->require_subcommand(1);
  auto* hf = import->add_subcommand("hf", "Import a Hugging Face LlamaForCausalLM folder (config.json + safetensors)");
  hf->add_option("dir", a->source, "Hugging Face model folder")->required()->check(CLI::ExistingDirectory);
  hf->add_option("--out", a->out, "Checkpoint folder to create (use it as train.init_from)")->required();
  hf->callback([a] {
    std::string step = import_hf(a->source, a->out);
    fmt::print("imported {} -> {}\n  train.init_from: {}\n  model.config:    {}/model.yaml\n", a->source, step, a->out, a->out);
  });

  auto* exp = app.add_subcommand("export", "Write a checkpoint in another layout: Hugging Face, or consolidated");
  exp->add_option("checkpoint", a->source, "Checkpoint folder, `latest` file, or run folder")->required();
  exp->add_option("--format", a->format,
                  "Output layout: hf, or sparsetrain (one process's checkpoint, e.g. of a sharded one)")
      ->check(CLI::IsMember({"hf", "sparsetrain"}));
  exp->add_option("--out", a->out, "Output folder")->required();
  exp->add_option("--dtype", a->dtype, "Weight dtype: fp32 | bf16 | fp16")->check(CLI::IsMember({"fp32", "bf16", "fp16"}));
  exp->add_option("--max-shard-size", a->max_shard_bytes, "Shard the weights above this size (e.g. 5GB, 500MB)")
      ->transform(CLI::AsSizeValue(true));
  exp->add_option("--tokenizer", a->tokenizer, "Folder with tokenizer.json to copy (default: found beside the checkpoint)")
      ->check(CLI::ExistingDirectory);
  exp->callback([a] {
    if (a->format == "sparsetrain") {
      CheckpointData c = load_checkpoint(a->source, /*with_optimizer=*/true);  // whole tensors, however sharded
      const int64_t was = c.world_size;
      c.world_size = 1;
      fmt::print("exported {} ({} ranks) -> {}\n", a->source, was, save_checkpoint(a->out, c, /*keep=*/1));
      return;
    }
    HfExportOptions opt;
    opt.dtype = a->dtype == "bf16" ? torch::kBFloat16 : a->dtype == "fp16" ? torch::kFloat16 : torch::kFloat32;
    opt.max_shard_bytes = a->max_shard_bytes;
    opt.tokenizer_dir = a->tokenizer;
    std::string note = export_hf(a->source, a->out, opt);
    fmt::print("exported {} -> {} ({})\n  {}\n", a->source, a->out, a->dtype, note);
  });
}

}  // namespace st
