// Hugging Face interop for Llama-family models (LlamaForCausalLM): config.json <-> our
// ModelConfig, parameter names (HF adds a "model." prefix; lm_head is absent when tied),
// and whole-folder import and export.
//
// Supported: LlamaForCausalLM without biases, silu, RoPE default/linear/llama3, tied or
// untied embeddings. Qwen2 (q/k/v biases) and MiniCPM (muP scale_emb/scale_depth) do not
// map onto this model: their configs are refused naming the field that does not fit.
#pragma once
#include <cstdint>
#include <string>

#include "config/recipe.h"
#include "io/safetensors.h"

namespace st {

// Throws ConfigError naming the file and the unsupported or missing field. A config.json we
// exported for a sparse variant gives back its attention settings. max_position receives
// max_position_embeddings (0 when absent).
ModelConfig model_config_from_hf(const std::string& config_json, int64_t* max_position = nullptr);
// config.json text. max_position is written as max_position_embeddings; a sparse variant's
// settings go under "sparsetrain_attention".
std::string hf_config_json(const ModelConfig& cfg, int64_t max_position, const std::string& torch_dtype);

// Names and dtype: HF tensors -> ours (fp32, contiguous) and back (in `dtype`).
TensorMap weights_from_hf(const TensorMap& hf, const ModelConfig& cfg, const std::string& origin);
TensorMap weights_to_hf(const TensorMap& ours, torch::ScalarType dtype);

// `sparsetrain import hf DIR --out OUT`: a weights-only checkpoint OUT/step-00000000 with
// OUT/latest (what train.init_from and eval accept), OUT/model.yaml (the architecture, for a
// recipe's model.config), and the tokenizer files of DIR copied into OUT. Returns the step
// folder.
std::string import_hf(const std::string& hf_dir, const std::string& out);

struct HfExportOptions {
  torch::ScalarType dtype = torch::kFloat32;
  int64_t max_shard_bytes = 5'000'000'000;
  std::string tokenizer_dir;  // empty: look beside the checkpoint and its train.init_from
};
// `sparsetrain export CKPT --format hf --out DIR`: model*.safetensors (+ index when
// sharded), config.json and the tokenizer files. Returns a note on where the tokenizer
// files came from (or that none were found).
std::string export_hf(const std::string& checkpoint, const std::string& out_dir, const HfExportOptions& opt);

}  // namespace st
