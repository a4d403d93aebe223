// Recipe loading. One list of fields per struct (visit_fields) drives both reading and
// writing, so the YAML schema, the defaults and the resolved dump cannot drift apart.
#include "config/recipe.h"

#include "io/read_file.h"

#include <fmt/format.h>
#include <yaml-cpp/yaml.h>

#include <cmath>
#include <filesystem>
#include <functional>
#include <limits>
#include <set>
#include <sstream>

namespace st {
namespace {

namespace fs = std::filesystem;

// A constraint on a field's value, with the words that say what was expected.
template <class T>
struct Check {
  std::string expected;
  std::function<bool(const T&)> ok;
};
Check<int64_t> at_least(int64_t lo) {
  return {fmt::format("an integer >= {}", lo), [lo](const int64_t& v) { return v >= lo; }};
}
Check<double> in_range(double lo, double hi, bool lo_open = false) {
  return {fmt::format("a number in {}{}, {}]", lo_open ? "(" : "[", lo, hi),
          [=](const double& v) { return std::isfinite(v) && (lo_open ? v > lo : v >= lo) && v <= hi; }};
}
Check<double> positive() {
  return {"a number > 0", [](const double& v) { return std::isfinite(v) && v > 0; }};
}
Check<std::string> one_of(std::vector<std::string> options) {
  std::string words;
  for (auto& o : options) words += (words.empty() ? "" : " | ") + o;
  return {"one of: " + words, [options](const std::string& v) {
            return std::find(options.begin(), options.end(), v) != options.end();
          }};
}

// Reads fields out of a YAML map; remembers which keys it used so that leftovers are
// reported as unknown.
class Reader {
 public:
  Reader(const YAML::Node& node, std::string file, std::string prefix)
      : node_(node), file_(std::move(file)), prefix_(std::move(prefix)) {}

  template <class T>
  void field(const char* key, T& out, const Check<T>& check = {}) {
    used_.insert(key);
    YAML::Node v = node_[key];
    if (!v) return;
    out = convert<T>(v, key, check.expected);
    if (check.ok && !check.ok(out)) fail(key, fmt::format("expected {}, got '{}'", check.expected, Dump(v)));
  }

  template <class S>
  void section(const char* key, S& sub) {
    used_.insert(key);
    YAML::Node v = node_[key];
    if (!v || v.IsNull()) return;
    if (!v.IsMap()) fail(key, "expected a mapping of keys");
    read_map(v, file_, path(key), sub);
  }

  void reject_unknown() const {
    for (auto it = node_.begin(); it != node_.end(); ++it) {
      auto key = it->first.as<std::string>();
      if (!used_.count(key)) fail(key.c_str(), "unknown key");
    }
  }

  [[noreturn]] void fail(const char* key, const std::string& what) const {
    throw ConfigError(fmt::format("{}: {}: {}", file_, path(key), what));
  }

  template <class S>
  static void read_map(const YAML::Node& node, const std::string& file, const std::string& prefix, S& out) {
    Reader r(node, file, prefix);
    visit_fields(r, out);
    r.reject_unknown();
  }

 private:
  std::string path(const std::string& key) const { return prefix_.empty() ? key : prefix_ + "." + key; }

  template <class T>
  T convert(const YAML::Node& v, const char* key, const std::string& expected) const {
    const std::string what = expected.empty() ? type_name<T>() : expected;
    if constexpr (std::is_same_v<T, std::string>) {
      if (!v.IsScalar()) fail(key, "expected " + what);
      return v.Scalar();
    } else {
      if (!v.IsScalar()) fail(key, fmt::format("expected {}, got a {}", what, v.IsMap() ? "mapping" : "list"));
      const std::string& s = v.Scalar();
      if constexpr (std::is_same_v<T, bool>) {
        if (s == "true" || s == "True") return true;
        if (s == "false" || s == "False") return false;
      } else if constexpr (std::is_same_v<T, int64_t>) {
        // Accept 1e6-style integers and 16_384 separators; reject fractions.
        std::string t;
        for (char c : s) if (c != '_') t += c;
        char* end = nullptr;
        long long n = std::strtoll(t.c_str(), &end, 10);
        if (!t.empty() && *end == 0) return n;
        double d = std::strtod(t.c_str(), &end);
        if (!t.empty() && *end == 0 && std::isfinite(d) && d == std::floor(d) && std::fabs(d) < 9e18)
          return static_cast<int64_t>(d);
      } else if constexpr (std::is_same_v<T, double>) {
        char* end = nullptr;
        double d = std::strtod(s.c_str(), &end);
        if (!s.empty() && *end == 0) return d;
      }
      fail(key, fmt::format("expected {}, got '{}'", what, s));
    }
  }

  template <class T>
  static std::string type_name() {
    if constexpr (std::is_same_v<T, bool>) return "true or false";
    if constexpr (std::is_same_v<T, int64_t>) return "an integer";
    if constexpr (std::is_same_v<T, double>) return "a number";
    return "a string";
  }

  YAML::Node node_;
  std::string file_, prefix_;
  std::set<std::string> used_;
};

// Writes fields into a YAML emitter, in declaration order.
class Writer {
 public:
  explicit Writer(YAML::Emitter& out) : out_(out) {}
  template <class T>
  void field(const char* key, const T& v, const Check<T>& = {}) {
    out_ << YAML::Key << key << YAML::Value;
    if constexpr (std::is_same_v<T, double>) {
      out_ << fmt::format("{}", v);  // shortest round-trip form
    } else if constexpr (std::is_same_v<T, std::string>) {
      out_ << YAML::DoubleQuoted << v;
    } else {
      out_ << v;
    }
  }
  template <class S>
  void section(const char* key, const S& sub) {
    out_ << YAML::Key << key << YAML::Value << YAML::BeginMap;
    visit_fields(*this, const_cast<S&>(sub));
    out_ << YAML::EndMap;
  }

 private:
  YAML::Emitter& out_;
};

const std::vector<std::string> kVariants = {"dense", "dash", "nsa", "infllmv2"};

template <class V> void visit_fields(V& v, DashConfig& c) {
  v.field("chunk", c.chunk, at_least(1));
  v.field("alpha", c.alpha, in_range(1.0, 2.0, /*lo_open=*/true));
  v.field("temperature", c.temperature, positive());
  v.field("sigma", c.sigma, positive());
  v.field("prior", c.prior, one_of({"normalized", "unnormalized"}));
  v.field("sink_chunks", c.sink_chunks, at_least(0));
  v.field("local_chunks", c.local_chunks, at_least(0));
  v.field("route_positions", c.route_positions, at_least(1));
}
template <class V> void visit_fields(V& v, NsaConfig& c) {
  v.field("cmp_block", c.cmp_block, at_least(1));
  v.field("cmp_stride", c.cmp_stride, at_least(1));
  v.field("compressor", c.compressor, one_of({"mlp", "mean"}));
  v.field("sel_block", c.sel_block, at_least(1));
  v.field("top_n", c.top_n, at_least(1));
  v.field("init_blocks", c.init_blocks, at_least(0));
  v.field("local_blocks", c.local_blocks, at_least(0));
  v.field("window", c.window, at_least(1));
  v.field("kv", c.kv, one_of({"shared", "separate"}));
}
template <class V> void visit_fields(V& v, InfllmConfig& c) {
  v.field("pool_kernel", c.pool_kernel, at_least(1));
  v.field("pool_stride", c.pool_stride, at_least(1));
  v.field("block", c.block, at_least(1));
  v.field("top_k", c.top_k, at_least(1));
  v.field("init_blocks", c.init_blocks, at_least(0));
  v.field("local_blocks", c.local_blocks, at_least(0));
  v.field("window", c.window, at_least(0));
  v.field("dense_len", c.dense_len, at_least(0));
}
template <class V> void visit_fields(V& v, AttentionConfig& c) {
  v.field("variant", c.variant, one_of(kVariants));
  v.field("impl", c.impl, one_of({"auto", "reference", "cuda"}));
  v.field("sparsity_offset", c.sparsity_offset, at_least(0));
  v.section("dash", c.dash);
  v.section("nsa", c.nsa);
  v.section("infllmv2", c.infllmv2);
}
template <class V> void visit_fields(V& v, RopeScaling& c) {
  v.field("type", c.type, one_of({"none", "linear", "llama3"}));
  v.field("factor", c.factor, positive());
  v.field("low_freq_factor", c.low_freq_factor, positive());
  v.field("high_freq_factor", c.high_freq_factor, positive());
  v.field("original_max_position", c.original_max_position, at_least(1));
}
// Architecture fields only; `config` is handled by load_model.
template <class V> void visit_architecture(V& v, ModelConfig& c) {
  v.field("vocab_size", c.vocab_size, at_least(2));
  v.field("dim", c.dim, at_least(1));
  v.field("n_layers", c.n_layers, at_least(1));
  v.field("n_heads", c.n_heads, at_least(1));
  v.field("n_kv_heads", c.n_kv_heads, at_least(1));
  v.field("head_dim", c.head_dim, at_least(0));
  v.field("ffn_dim", c.ffn_dim, at_least(0));
  v.field("norm_eps", c.norm_eps, positive());
  v.field("rope_theta", c.rope_theta, positive());
  v.section("rope_scaling", c.rope_scaling);
  v.field("tie_embeddings", c.tie_embeddings);
  v.field("init_std", c.init_std, positive());
  v.section("attention", c.attention);
}
template <class V> void visit_fields(V& v, ModelConfig& c) {
  v.field("config", c.config);
  visit_architecture(v, c);
}
template <class V> void visit_fields(V& v, DataConfig& c) {
  v.field("train", c.train);
  v.field("eval", c.eval);
}
template <class V> void visit_fields(V& v, OptimConfig& c) {
  v.field("lr", c.lr, positive());
  v.field("beta1", c.beta1, in_range(0, 1));
  v.field("beta2", c.beta2, in_range(0, 1));
  v.field("eps", c.eps, positive());
  v.field("weight_decay", c.weight_decay, in_range(0, 10));
  v.field("decay_norms_and_embeddings", c.decay_norms_and_embeddings);
}
template <class V> void visit_fields(V& v, ScheduleConfig& c) {
  v.field("kind", c.kind, one_of({"cosine", "wsd", "constant"}));
  v.field("warmup_steps", c.warmup_steps, at_least(0));
  v.field("min_lr_ratio", c.min_lr_ratio, in_range(0, 1));
  v.field("decay_fraction", c.decay_fraction, in_range(0, 1));
}
template <class V> void visit_fields(V& v, TrainConfig& c) {
  v.field("steps", c.steps, at_least(0));
  v.field("tokens", c.tokens, at_least(0));
  v.field("seq_len", c.seq_len, at_least(1));
  v.field("micro_batch", c.micro_batch, at_least(1));
  v.field("grad_accum", c.grad_accum, at_least(1));
  v.field("precision", c.precision, one_of({"auto", "fp32", "bf16"}));
  v.field("device", c.device, one_of({"auto", "cpu", "cuda"}));
  v.field("grad_clip", c.grad_clip, in_range(0, 1e9));
  v.field("seed", c.seed, at_least(0));
  v.field("activation_checkpointing", c.activation_checkpointing);
  v.field("sharding", c.sharding, one_of({"zero3", "zero2"}));
  v.field("max_bad_steps", c.max_bad_steps, at_least(1));
  v.field("eval_every", c.eval_every, at_least(0));
  v.field("eval_batches", c.eval_batches, at_least(1));
  v.field("init_from", c.init_from);
}
template <class V> void visit_fields(V& v, CheckpointConfig& c) {
  v.field("every", c.every, at_least(0));
  v.field("keep", c.keep, at_least(1));
}
template <class V> void visit_fields(V& v, LoggingConfig& c) {
  v.field("every", c.every, at_least(1));
  v.field("progress", c.progress, one_of({"auto", "bar", "plain", "off"}));
  v.field("peak_tflops", c.peak_tflops, in_range(0, 1e6));
}
template <class V> void visit_fields(V& v, RunConfig& c) {
  v.field("name", c.name);
  v.field("out_dir", c.out_dir);
}
template <class V> void visit_fields(V& v, Recipe& r) {
  v.section("run", r.run);
  v.section("model", r.model);
  v.section("data", r.data);
  v.section("optim", r.optim);
  v.section("schedule", r.schedule);
  v.section("train", r.train);
  v.section("checkpoint", r.checkpoint);
  v.section("logging", r.logging);
}

// Finds a path written in a recipe: as given (relative to the working directory), else
// relative to the recipe's folder and its parent (recipes/ sits beside configs/).
std::string resolve_path(const std::string& path, const std::string& recipe_file) {
  if (path.empty() || fs::path(path).is_absolute() || fs::exists(path)) return path;
  fs::path dir = fs::path(recipe_file).parent_path();
  for (const fs::path& base : {dir, dir.parent_path()}) {
    if (!base.empty() && fs::exists(base / path)) return (base / path).lexically_normal().string();
  }
  return path;
}

YAML::Node parse_yaml(const std::string& text, const std::string& origin) {
  try {
    YAML::Node node = YAML::Load(text);
    if (node.IsNull()) return YAML::Node(YAML::NodeType::Map);
    if (!node.IsMap()) throw ConfigError(origin + ": expected a mapping of keys at the top level");
    return node;
  } catch (const YAML::Exception& e) {
    throw ConfigError(fmt::format("{}: YAML syntax error at line {}, column {}: {}", origin,
                                  e.mark.line + 1, e.mark.column + 1, e.msg));
  }
}

std::string read_text(const std::string& path, const std::string& what) {
  try {
    return read_file(path);
  } catch (const IoError&) {
    throw ConfigError(fmt::format("{}: cannot open {}", path, what));
  }
}

// Applies "a.b.c=value" by creating or replacing the scalar at that path.
void apply_override(YAML::Node root, const std::string& assignment) {
  auto eq = assignment.find('=');
  if (eq == std::string::npos || eq == 0)
    throw ConfigError(fmt::format("--set {}: expected key.path=value", assignment));
  std::string path = assignment.substr(0, eq);
  YAML::Node value = YAML::Load(assignment.substr(eq + 1));
  std::vector<std::string> keys;
  std::stringstream ss(path);
  for (std::string k; std::getline(ss, k, '.');) keys.push_back(k);
  // yaml-cpp nodes are handles: walk down by reassigning a vector of handles.
  std::vector<YAML::Node> chain{root};
  for (size_t i = 0; i + 1 < keys.size(); ++i) {
    YAML::Node next = chain.back()[keys[i]];
    if (next && !next.IsMap())
      throw ConfigError(fmt::format("--set {}: {} is not a mapping", assignment, keys[i]));
    if (!next) chain.back()[keys[i]] = YAML::Node(YAML::NodeType::Map);
    chain.push_back(chain.back()[keys[i]]);
  }
  chain.back()[keys.back()] = value;
}

}  // namespace

Recipe parse_recipe_node(const YAML::Node& root, const std::string& origin) {
  Recipe r;
  r.source = origin;
  // The model config file is read first; inline model.* keys then override it.
  YAML::Node model = root["model"];
  YAML::Node config = model && model.IsMap() ? model["config"] : YAML::Node();
  if (config && config.IsScalar() && !config.Scalar().empty()) {
    std::string cfg_path = resolve_path(config.Scalar(), origin);
    if (!fs::is_regular_file(cfg_path))
      throw ConfigError(fmt::format("{}: model.config: cannot open model config file '{}'", origin, config.Scalar()));
    YAML::Node cfg = parse_yaml(read_text(cfg_path, "model config (model.config)"), cfg_path);
    Reader arch(cfg, cfg_path, "");
    visit_architecture(arch, r.model);
    arch.reject_unknown();
  }
  Reader::read_map(root, origin, "", r);
  if (!r.model.config.empty()) r.model.config = resolve_path(r.model.config, origin);
  validate(r);
  return r;
}

Recipe parse_recipe(const std::string& yaml_text, const std::string& origin) {
  return parse_recipe_node(parse_yaml(yaml_text, origin), origin);
}

Recipe load_recipe(const std::string& path, const std::vector<std::string>& overrides) {
  YAML::Node root = parse_yaml(read_text(path, "recipe"), path);
  for (const auto& o : overrides) apply_override(root, o);
  Recipe r = parse_recipe_node(root, overrides.empty() ? path : path + " (with --set)");
  r.source = path;
  r.data.train = resolve_path(r.data.train, path);
  r.data.eval = resolve_path(r.data.eval, path);
  return r;
}

std::string recipe_to_yaml(const Recipe& recipe) {
  // Every architecture field is written out, so the dump stands alone: it no longer
  // refers to the model config file, which may change after the run.
  Recipe copy = recipe;
  std::string header = copy.model.config.empty() ? "" : "# model.config was " + copy.model.config + "\n";
  copy.model.config.clear();
  YAML::Emitter out;
  out << YAML::BeginMap;
  Writer w(out);
  visit_fields(w, copy);
  out << YAML::EndMap;
  return header + out.c_str() + "\n";
}

void validate(const Recipe& r) {
  auto fail = [&](const std::string& key, const std::string& what) {
    throw ConfigError(fmt::format("{}: {}: {}", r.source, key, what));
  };
  if (r.run.name.empty()) fail("run.name", "missing required key (a name for the run)");
  if (r.run.name.find('/') != std::string::npos) fail("run.name", "expected a name without '/'");
  if (r.data.train.empty()) fail("data.train", "missing required key (a token shard to train on)");
  if (r.train.steps == 0 && r.train.tokens == 0)
    fail("train.steps", "set train.steps or train.tokens (a token budget) to a positive value");
  const ModelConfig& m = r.model;
  if (m.n_heads % m.n_kv_heads != 0)
    fail("model.n_kv_heads", fmt::format("expected a divisor of model.n_heads ({}), got {}", m.n_heads, m.n_kv_heads));
  if (m.head_dim == 0 && m.dim % m.n_heads != 0)
    fail("model.head_dim", fmt::format("model.dim ({}) is not divisible by model.n_heads ({}); set head_dim", m.dim, m.n_heads));
  if (m.head_dim_or_default() % 2 != 0) fail("model.head_dim", "expected an even head dimension (RoPE rotates pairs)");
  const std::string a = "model.attention.";
  const auto& nsa = m.attention.nsa;
  if (m.attention.dash.chunk % m.attention.dash.route_positions != 0)
    fail(a + "dash.route_positions", fmt::format("expected a divisor of dash.chunk ({})", m.attention.dash.chunk));
  if (nsa.cmp_stride > nsa.cmp_block) fail(a + "nsa.cmp_stride", "expected <= nsa.cmp_block");
  if (nsa.sel_block % nsa.cmp_stride != 0)
    fail(a + "nsa.sel_block", fmt::format("expected a multiple of nsa.cmp_stride ({})", nsa.cmp_stride));
  if (nsa.top_n < nsa.init_blocks + nsa.local_blocks)
    fail(a + "nsa.top_n", fmt::format("expected >= init_blocks + local_blocks ({})", nsa.init_blocks + nsa.local_blocks));
  if (nsa.window % nsa.sel_block != 0)
    fail(a + "nsa.window", fmt::format("expected a multiple of nsa.sel_block ({})", nsa.sel_block));
  const auto& inf = m.attention.infllmv2;
  if (inf.pool_stride > inf.pool_kernel) fail(a + "infllmv2.pool_stride", "expected <= infllmv2.pool_kernel");
  if (inf.block % inf.pool_stride != 0)
    fail(a + "infllmv2.block", fmt::format("expected a multiple of infllmv2.pool_stride ({})", inf.pool_stride));
  if (inf.top_k < inf.init_blocks + inf.local_blocks)
    fail(a + "infllmv2.top_k", fmt::format("expected >= init_blocks + local_blocks ({})", inf.init_blocks + inf.local_blocks));
  if (inf.window % inf.block != 0)
    fail(a + "infllmv2.window", fmt::format("expected a multiple of infllmv2.block ({})", inf.block));
  if (m.rope_scaling.type == "llama3" && m.rope_scaling.high_freq_factor <= m.rope_scaling.low_freq_factor)
    fail("model.rope_scaling.high_freq_factor", "expected > low_freq_factor");
}

}  // namespace st
