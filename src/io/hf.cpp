#include "io/hf.h"

#include <fmt/format.h>

#include <cctype>
#include <cstdlib>
#include <filesystem>
#include <set>

#include "io/atomic_file.h"
#include "io/json_reader.h"
#include "io/read_file.h"
#include "model/transformer.h"
#include "train/checkpoint.h"
#include "train/model_state.h"
#include "util/json.h"

namespace st {

namespace fs = std::filesystem;

namespace {

const char* const kTokenizerFiles[] = {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"};
const char* const kAttentionKey = "sparsetrain_attention";

// Typed access to config.json fields; every failure names the file and the field.
class HfFields {
 public:
  HfFields(YAML::Node root, std::string path) : root_(std::move(root)), path_(std::move(path)) {}

  [[noreturn]] void fail(const std::string& field, const std::string& what) const {
    throw ConfigError(fmt::format("{}: {}: {}", path_, field, what));
  }
  bool has(const std::string& key) const { return root_[key] && !root_[key].IsNull(); }
  YAML::Node node(const std::string& key) const { return root_[key]; }

  template <class T>
  T get(const YAML::Node& n, const std::string& field) const {
    if (!n.IsScalar()) fail(field, "expected a value");
    try {
      return n.as<T>();
    } catch (const YAML::Exception&) {
      fail(field, fmt::format("'{}' has the wrong type", n.Scalar()));
    }
  }
  template <class T>
  T get(const std::string& key) const {
    if (!has(key)) fail(key, "missing");
    return get<T>(root_[key], key);
  }
  template <class T>
  T get_or(const std::string& key, T fallback) const {
    return has(key) ? get<T>(root_[key], key) : fallback;
  }
  // A field that must keep the value this model implements, when present.
  template <class T>
  void require(const std::string& key, T value, const std::string& why) const {
    if (has(key) && get<T>(root_[key], key) != value) fail(key, why);
  }

 private:
  YAML::Node root_;
  std::string path_;
};

void read_rope(const HfFields& f, ModelConfig& m) {
  // transformers 5 nests everything in rope_parameters; older configs have rope_theta and
  // rope_scaling (null for plain RoPE).
  const bool nested = f.has("rope_parameters");
  const std::string section = nested ? "rope_parameters" : "rope_scaling";
  m.rope_theta = f.get_or<double>("rope_theta", 10000.0);
  if (!f.has(section)) return;
  const YAML::Node p = f.node(section);
  if (!p.IsMap()) f.fail(section, "expected an object or null");
  std::string type = "default";
  for (const auto& kv : p) {
    const std::string key = kv.first.Scalar(), field = section + "." + key;
    if (key == "rope_type" || key == "type") type = f.get<std::string>(kv.second, field);
    else if (key == "rope_theta") m.rope_theta = f.get<double>(kv.second, field);
    else if (key == "factor") m.rope_scaling.factor = f.get<double>(kv.second, field);
    else if (key == "low_freq_factor") m.rope_scaling.low_freq_factor = f.get<double>(kv.second, field);
    else if (key == "high_freq_factor") m.rope_scaling.high_freq_factor = f.get<double>(kv.second, field);
    else if (key == "original_max_position_embeddings")
      m.rope_scaling.original_max_position = f.get<int64_t>(kv.second, field);
    else if (key == "partial_rotary_factor" && f.get<double>(kv.second, field) == 1.0) continue;
    else f.fail(field, "is not supported");
  }
  if (type == "default") type = "none";
  if (type != "none" && type != "linear" && type != "llama3")
    f.fail(section + ".rope_type", fmt::format("'{}' is not supported (default, linear, llama3)", type));
  m.rope_scaling.type = type;
}

// The attention settings an exported sparse model carries, read back through the recipe
// schema so that unknown keys and bad values are refused the same way.
AttentionConfig read_attention(const YAML::Node& node, const std::string& path) {
  YAML::Node recipe;
  recipe["run"]["name"] = "hf-config";
  recipe["data"]["train"] = "none";
  recipe["train"]["steps"] = 1;
  recipe["model"]["attention"] = node;
  return parse_recipe(YAML::Dump(recipe), path + " (" + kAttentionKey + ")").model.attention;
}

// A scalar of recipe YAML as JSON: booleans and numbers bare, anything else quoted.
std::string scalar_json(const std::string& s) {
  if (s == "true" || s == "false") return s;
  char* end = nullptr;
  std::strtod(s.c_str(), &end);
  const bool number = !s.empty() && (std::isdigit(static_cast<unsigned char>(s[0])) || s[0] == '-') && *end == '\0';
  return number ? s : json_quote(s);
}

std::string yaml_to_json(const YAML::Node& n) {
  if (n.IsMap()) {
    std::string out;
    for (const auto& kv : n) out += (out.empty() ? "" : ", ") + json_quote(kv.first.Scalar()) + ": " + yaml_to_json(kv.second);
    return "{" + out + "}";
  }
  if (n.IsSequence()) {
    std::string out;
    for (const auto& v : n) out += (out.empty() ? "" : ", ") + yaml_to_json(v);
    return "[" + out + "]";
  }
  return n.IsNull() ? "null" : scalar_json(n.Scalar());
}

std::string dtype_name(torch::ScalarType t) {
  if (t == torch::kFloat32) return "float32";
  if (t == torch::kBFloat16) return "bfloat16";
  if (t == torch::kFloat16) return "float16";
  throw ConfigError(fmt::format("export dtype {} is not supported (fp32, bf16, fp16)", c10::toString(t)));
}

// Copies whichever tokenizer files `from` has into `to`; returns how many.
int copy_tokenizer_files(const fs::path& from, const fs::path& to) {
  int n = 0;
  for (const char* name : kTokenizerFiles)
    if (fs::exists(from / name)) {
      fs::copy_file(from / name, to / name, fs::copy_options::overwrite_existing);
      ++n;
    }
  return n;
}

// Where a checkpoint's tokenizer files live: its own folder, the folder holding it (an
// import puts them there), then the same for the checkpoint its run started from.
std::string find_tokenizer_dir(std::string ckpt_dir, Recipe recipe) {
  for (int hop = 0; hop < 8; ++hop) {
    for (const fs::path& dir : {fs::path(ckpt_dir), fs::path(ckpt_dir).parent_path()})
      if (fs::exists(dir / "tokenizer.json")) return dir.string();
    if (recipe.train.init_from.empty()) break;
    try {
      ckpt_dir = resolve_checkpoint(recipe.train.init_from);
      recipe = parse_recipe(read_file(ckpt_dir + "/recipe.yaml"), ckpt_dir + "/recipe.yaml");
    } catch (const std::exception&) {
      break;  // the run's starting point moved or is gone: no tokenizer to find there
    }
  }
  return "";
}

}  // namespace

ModelConfig model_config_from_hf(const std::string& config_json, int64_t* max_position) {
  YAML::Node root;
  try {
    root = load_json_file(config_json);
  } catch (const IoError& e) {
    throw ConfigError(e.what());
  }
  if (!root.IsMap()) throw ConfigError(config_json + ": not a JSON object");
  HfFields f(root, config_json);
  const std::string type = f.get<std::string>("model_type");
  if (type == "qwen2")
    f.fail("model_type", "qwen2 has q/k/v projection biases, which this model lacks (only llama maps cleanly)");
  if (type == "minicpm")
    f.fail("model_type", "minicpm scales embeddings and residuals (scale_emb, scale_depth, dim_model_base), which this model lacks");
  if (type != "llama") f.fail("model_type", fmt::format("'{}' is not supported (only llama)", type));

  ModelConfig m;
  m.vocab_size = f.get<int64_t>("vocab_size");
  m.dim = f.get<int64_t>("hidden_size");
  m.ffn_dim = f.get<int64_t>("intermediate_size");
  m.n_layers = f.get<int64_t>("num_hidden_layers");
  m.n_heads = f.get<int64_t>("num_attention_heads");
  m.n_kv_heads = f.get_or<int64_t>("num_key_value_heads", m.n_heads);
  const int64_t head_dim = f.get_or<int64_t>("head_dim", m.dim / m.n_heads);
  m.head_dim = head_dim * m.n_heads == m.dim ? 0 : head_dim;
  m.norm_eps = f.get_or<double>("rms_norm_eps", 1e-6);
  m.tie_embeddings = f.get_or<bool>("tie_word_embeddings", false);
  m.init_std = f.get_or<double>("initializer_range", 0.02);
  read_rope(f, m);
  f.require<std::string>("hidden_act", "silu", "only silu (SwiGLU) is supported");
  f.require<bool>("attention_bias", false, "q/k/v/o biases are not supported");
  f.require<bool>("mlp_bias", false, "MLP biases are not supported");
  f.require<double>("attention_dropout", 0.0, "attention dropout is not supported");
  if (f.has(kAttentionKey)) m.attention = read_attention(f.node(kAttentionKey), config_json);
  if (max_position) *max_position = f.get_or<int64_t>("max_position_embeddings", 0);

  // Every other field either carries no information for this model or must be refused.
  static const std::set<std::string> understood = {
      "model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
      "num_attention_heads", "num_key_value_heads", "head_dim", "rms_norm_eps", "tie_word_embeddings",
      "initializer_range", "rope_theta", "rope_scaling", "rope_parameters", "hidden_act", "attention_bias",
      "mlp_bias", "attention_dropout", kAttentionKey, "max_position_embeddings",
      // informational: no effect on the weights or the forward pass
      "architectures", "bos_token_id", "eos_token_id", "pad_token_id", "torch_dtype", "dtype",
      "transformers_version", "use_cache", "pretraining_tp", "_name_or_path", "output_attentions",
      "output_hidden_states", "return_dict"};
  for (const auto& kv : root)
    if (!understood.count(kv.first.Scalar())) f.fail(kv.first.Scalar(), "is not supported by this model");
  if (f.has("architectures"))
    for (const auto& a : f.node("architectures"))
      if (a.Scalar() != "LlamaForCausalLM") f.fail("architectures", fmt::format("'{}' is not supported", a.Scalar()));
  return m;
}

std::string hf_config_json(const ModelConfig& m, int64_t max_position, const std::string& torch_dtype) {
  std::vector<std::pair<std::string, std::string>> fields = {
      {"architectures", "[\"LlamaForCausalLM\"]"},
      {"model_type", "\"llama\""},
      {"vocab_size", std::to_string(m.vocab_size)},
      {"hidden_size", std::to_string(m.dim)},
      {"intermediate_size", std::to_string(m.ffn_dim_or_default())},
      {"num_hidden_layers", std::to_string(m.n_layers)},
      {"num_attention_heads", std::to_string(m.n_heads)},
      {"num_key_value_heads", std::to_string(m.n_kv_heads)},
      {"head_dim", std::to_string(m.head_dim_or_default())},
      {"hidden_act", "\"silu\""},
      {"max_position_embeddings", std::to_string(max_position)},
      {"rms_norm_eps", json_number(m.norm_eps)},
      {"rope_theta", json_number(m.rope_theta)},
      {"tie_word_embeddings", m.tie_embeddings ? "true" : "false"},
      {"attention_bias", "false"},
      {"mlp_bias", "false"},
      {"initializer_range", json_number(m.init_std)},
      {"torch_dtype", json_quote(torch_dtype)},
  };
  const RopeScaling& s = m.rope_scaling;
  if (s.type == "none") {
    fields.push_back({"rope_scaling", "null"});
  } else {
    JsonObject rope;
    rope.add("rope_type", s.type).add("factor", s.factor);
    if (s.type == "llama3")
      rope.add("low_freq_factor", s.low_freq_factor)
          .add("high_freq_factor", s.high_freq_factor)
          .add("original_max_position_embeddings", s.original_max_position);
    fields.push_back({"rope_scaling", rope.str()});
  }
  if (m.attention.variant != "dense") {  // the variant, its knobs, and the shared settings
    Recipe r;
    r.model.attention = m.attention;
    YAML::Node attention = YAML::Load(recipe_to_yaml(r))["model"]["attention"];
    for (const char* other : {"dash", "nsa", "infllmv2"})
      if (m.attention.variant != other) attention.remove(other);
    fields.push_back({kAttentionKey, yaml_to_json(attention)});
  }
  std::string out = "{\n";
  for (size_t i = 0; i < fields.size(); ++i)
    out += fmt::format("  {}: {}{}\n", json_quote(fields[i].first), fields[i].second, i + 1 < fields.size() ? "," : "");
  return out + "}\n";
}

TensorMap weights_from_hf(const TensorMap& hf, const ModelConfig& cfg, const std::string& origin) {
  TensorMap out;
  for (const auto& [name, t] : hf) {
    if (name.size() > 16 && name.compare(name.size() - 16, 16, ".rotary_emb.inv_freq") == 0) continue;  // old buffers
    std::string ours;
    if (name.rfind("model.", 0) == 0) ours = name.substr(6);
    else if (name == "lm_head.weight") ours = name;
    else throw IoError(fmt::format("{}: tensor '{}' is not part of a LlamaForCausalLM", origin, name));
    if (ours == "lm_head.weight" && cfg.tie_embeddings) continue;  // tied: the embedding is the head
    out[ours] = t.to(torch::kFloat32).contiguous();
  }
  return out;
}

TensorMap weights_to_hf(const TensorMap& ours, torch::ScalarType dtype) {
  TensorMap out;
  for (const auto& [name, t] : ours) out[name == "lm_head.weight" ? name : "model." + name] = t.to(dtype).contiguous();
  return out;
}

std::string import_hf(const std::string& hf_dir, const std::string& out) {
  int64_t max_position = 0;
  const ModelConfig cfg = model_config_from_hf(hf_dir + "/config.json", &max_position);
  TensorMap weights = weights_from_hf(load_safetensors_dir(hf_dir), cfg, hf_dir);
  {  // every parameter present with its shape, nothing left over
    Transformer model(cfg);
    load_model_state(model, weights, /*allow_new_variant_params=*/false, hf_dir);
  }
  // A checkpoint carries the recipe of the run that wrote it; an import has no run, so the
  // recipe holds the architecture, the model's context length, and placeholders.
  Recipe r;
  r.source = hf_dir + "/config.json";
  r.run.name = "hf-import";
  r.data.train = "(none: imported from " + hf_dir + ")";
  r.train.steps = 1;
  if (max_position > 0) r.train.seq_len = max_position;
  r.model = cfg;
  CheckpointData ckpt;
  ckpt.recipe_yaml = recipe_to_yaml(r);
  ckpt.model = std::move(weights);
  const std::string step_dir = save_checkpoint(out, ckpt, /*keep=*/1);

  YAML::Node arch = YAML::Load(ckpt.recipe_yaml)["model"];
  arch.remove("config");
  arch.remove("attention");
  YAML::Emitter e;
  e << arch;
  write_file_atomic(out + "/model.yaml", "# Architecture of " + hf_dir + " (sparsetrain import hf); use as model.config.\n" +
                                             e.c_str() + "\n");
  copy_tokenizer_files(hf_dir, out);
  return step_dir;
}

std::string export_hf(const std::string& checkpoint, const std::string& out_dir, const HfExportOptions& opt) {
  const std::string dir = resolve_checkpoint(checkpoint);
  const CheckpointData ckpt = load_checkpoint(dir, /*with_optimizer=*/false);
  const Recipe r = parse_recipe(ckpt.recipe_yaml, dir + "/recipe.yaml");
  const std::string torch_dtype = dtype_name(opt.dtype);
  save_safetensors_sharded(out_dir, weights_to_hf(ckpt.model, opt.dtype), opt.max_shard_bytes);
  write_file_atomic(out_dir + "/config.json", hf_config_json(r.model, r.train.seq_len, torch_dtype));

  const std::string tok_dir = opt.tokenizer_dir.empty() ? find_tokenizer_dir(dir, r) : opt.tokenizer_dir;
  if (tok_dir.empty()) return "no tokenizer files found beside the checkpoint or its train.init_from; pass --tokenizer DIR";
  if (copy_tokenizer_files(tok_dir, out_dir) == 0) throw IoError(tok_dir + ": holds no tokenizer.json");
  return "tokenizer files copied from " + tok_dir;
}

}  // namespace st
