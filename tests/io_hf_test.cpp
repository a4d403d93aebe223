// Hugging Face interop against `transformers` (CPU, fp32): import gives transformers'
// logits, export loads in transformers and gives ours, weights round-trip bit for bit.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>
#include <fstream>

#include "cli.h"
#include "io/hf.h"
#include "io/read_file.h"
#include "model/transformer.h"
#include "oracle.h"
#include "train/checkpoint.h"
#include "train/model_state.h"

namespace st {
namespace {

namespace fs = std::filesystem;

// Logits of a checkpoint for `tokens`, computed by our model.
torch::Tensor our_logits(const std::string& ckpt_path, const torch::Tensor& tokens, ModelConfig* cfg_out = nullptr) {
  CheckpointData ckpt = load_checkpoint(ckpt_path, false);
  Recipe r = parse_recipe(ckpt.recipe_yaml, ckpt_path);
  Transformer model(r.model);
  load_model_state(model, ckpt.model, false, ckpt_path);
  model->eval();
  if (cfg_out) *cfg_out = r.model;
  torch::NoGradGuard no_grad;
  return model->forward(tokens);
}

void expect_bit_equal(const TensorMap& a, const TensorMap& b) {
  ASSERT_EQ(a.size(), b.size());
  for (const auto& [name, t] : a) {
    ASSERT_TRUE(b.count(name)) << name;
    EXPECT_TRUE(t.scalar_type() == b.at(name).scalar_type() && t.sizes() == b.at(name).sizes() &&
                torch::equal(t, b.at(name)))
        << name;
  }
}

void round_trip(const std::string& kind) {
  test::TempDir dir;
  const std::string hf = dir.file("hf"), ckpt = dir.file("ckpt"), out = dir.file("export");
  ASSERT_EQ(test::run_oracle("hf_llama_oracle.py", "make " + hf + " " + kind), 0);
  TensorMap ref = load_safetensors(hf + "/reference.safetensors");

  // Import: our model on the imported weights gives transformers' logits.
  auto r = test::run_cli("import hf " + hf + " --out " + ckpt);
  ASSERT_EQ(r.code, 0) << r.output;
  ModelConfig cfg;
  torch::Tensor ours = our_logits(ckpt, ref.at("tokens"), &cfg);
  EXPECT_LE((ours - ref.at("logits")).abs().max().item<double>(), 1e-4);
  EXPECT_EQ(cfg.tie_embeddings, kind == "tied");
  EXPECT_EQ(cfg.rope_scaling.type, kind == "tied" ? "linear" : "llama3");
  EXPECT_EQ(read_file(ckpt + "/tokenizer.json"), read_file(hf + "/tokenizer.json"));

  // model.yaml is a model config a continual-pretraining recipe can name.
  std::ofstream(dir.file("cpt.yaml")) << "run: {name: cpt}\nmodel: {config: " << ckpt << "/model.yaml}\n"
                                      << "data: {train: x.bin}\ntrain: {steps: 1, init_from: " << ckpt << "}\n";
  Recipe cpt = load_recipe(dir.file("cpt.yaml"));
  EXPECT_EQ(cpt.model.dim, cfg.dim);
  EXPECT_EQ(cpt.model.n_kv_heads, cfg.n_kv_heads);
  EXPECT_EQ(cpt.model.ffn_dim_or_default(), cfg.ffn_dim_or_default());
  EXPECT_EQ(cpt.model.rope_theta, cfg.rope_theta);
  EXPECT_EQ(cpt.model.rope_scaling.factor, cfg.rope_scaling.factor);

  // Export: transformers loads it (sharded when asked) and gives our logits; the weights
  // are the original ones bit for bit; the tokenizer comes along.
  r = test::run_cli("export " + ckpt + " --format hf --out " + out + (kind == "untied" ? " --max-shard-size 200KB" : ""));
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_EQ(fs::exists(out + "/model.safetensors.index.json"), kind == "untied");
  save_safetensors(dir.file("tokens.safetensors"), {{"tokens", ref.at("tokens")}});
  ASSERT_EQ(test::run_oracle("hf_llama_oracle.py", "logits " + out + " " + dir.file("tokens.safetensors") + " " +
                                                      dir.file("theirs.safetensors")),
            0);
  torch::Tensor theirs = load_safetensors(dir.file("theirs.safetensors")).at("logits");
  EXPECT_LE((theirs - ours).abs().max().item<double>(), 1e-4);
  expect_bit_equal(load_safetensors_dir(hf), load_safetensors_dir(out));
  EXPECT_EQ(read_file(out + "/tokenizer.json"), read_file(hf + "/tokenizer.json"));
  EXPECT_EQ(model_config_from_hf(out + "/config.json").rope_scaling.type, cfg.rope_scaling.type);
}

TEST(HfInterop, UntiedLlama3RopeShardedRoundTrip) { round_trip("untied"); }
TEST(HfInterop, TiedLinearRopeRoundTrip) { round_trip("tied"); }

// A sparse variant's extra parameters keep their names under model.layers.*, config.json
// carries the attention settings, and importing the export gives both back.
TEST(HfInterop, SparseVariantExportKeepsParametersAndSettings) {
  test::TempDir dir;
  Recipe r;
  r.run.name = "dash";
  r.data.train = "x.bin";
  r.train.steps = 1;
  r.model.vocab_size = 97;
  r.model.dim = 32;
  r.model.n_layers = 2;
  r.model.n_heads = 4;
  r.model.n_kv_heads = 2;
  r.model.attention.variant = "dash";
  r.model.attention.dash.chunk = 16;
  r.model.attention.dash.temperature = 2.5;
  Transformer model(r.model);
  model->init_weights(3);
  CheckpointData ckpt;
  ckpt.recipe_yaml = recipe_to_yaml(r);
  ckpt.model = model_state(model);
  save_checkpoint(dir.file("ckpt"), ckpt, 1);

  export_hf(dir.file("ckpt"), dir.file("out"), {});
  TensorMap hf = load_safetensors_dir(dir.file("out"));
  size_t variant_params = 0;
  for (const auto& kv : hf) variant_params += kv.first.find("model.layers.1.self_attn.variant.") == 0;
  EXPECT_GT(variant_params, 0u);
  const std::string config = read_file(dir.file("out/config.json"));
  EXPECT_NE(config.find("\"sparsetrain_attention\": {\"variant\": \"dash\""), std::string::npos) << config;
  EXPECT_NE(config.find("\"temperature\": 2.5"), std::string::npos) << config;
  EXPECT_EQ(config.find("\"nsa\""), std::string::npos) << config;  // only the variant in use

  import_hf(dir.file("out"), dir.file("back"));
  CheckpointData back = load_checkpoint(dir.file("back"), false);
  expect_bit_equal(ckpt.model, back.model);
  Recipe rb = parse_recipe(back.recipe_yaml, "back");
  EXPECT_EQ(rb.model.attention.variant, "dash");
  EXPECT_EQ(rb.model.attention.dash.chunk, 16);
  EXPECT_EQ(rb.model.attention.dash.temperature, 2.5);
}

TEST(HfInterop, UnsupportedConfigsNameTheField) {
  test::TempDir dir;
  ASSERT_EQ(test::run_oracle("hf_llama_oracle.py", "make " + dir.file("hf") + " tied"), 0);
  const std::string good = read_file(dir.file("hf/config.json"));
  auto expect_refused = [&](const std::string& from, const std::string& to, const std::string& needle) {
    std::string edited = good;
    size_t at = edited.find(from);
    ASSERT_NE(at, std::string::npos) << from;
    edited.replace(at, from.size(), to);
    std::ofstream(dir.file("hf/config.json")) << edited;
    try {
      model_config_from_hf(dir.file("hf/config.json"));
      ADD_FAILURE() << "accepted " << to;
    } catch (const ConfigError& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  expect_refused("\"model_type\": \"llama\"", "\"model_type\": \"qwen2\"", "q/k/v projection biases");
  expect_refused("\"model_type\": \"llama\"", "\"model_type\": \"minicpm\"", "scale_emb");
  expect_refused("\"attention_bias\": false", "\"attention_bias\": true", "attention_bias");
  expect_refused("\"hidden_act\": \"silu\"", "\"hidden_act\": \"gelu\"", "hidden_act");
  expect_refused("\"rope_type\": \"linear\"", "\"rope_type\": \"yarn\"", "'yarn' is not supported");
  expect_refused("\"use_cache\": true", "\"sliding_window\": 4096", "sliding_window: is not supported");
  expect_refused("\"vocab_size\": 300", "\"vocab_size\": 300.5", "vocab_size");

  // Through the CLI: exit code 2 and nothing written.
  std::string edited = good;
  edited.replace(edited.find("\"attention_bias\": false"), 23, "\"attention_bias\": true");
  std::ofstream(dir.file("hf/config.json")) << edited;
  auto r = test::run_cli("import hf " + dir.file("hf") + " --out " + dir.file("ckpt"));
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("attention_bias"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(dir.file("ckpt")));
}

}  // namespace
}  // namespace st
