// Sweep file loading. Overrides are written as YAML mappings, nested or with dotted keys
// ({train: {steps: 40}} or {train.steps: 40}), and flattened into the "key.path=value"
// strings that load_recipe applies, so a sweep run is exactly `train BASE --set ...`.
#include "config/sweep.h"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <set>

#include "data/synthetic.h"
#include "io/read_file.h"

namespace st {
namespace {

namespace fs = std::filesystem;

class SweepReader {
 public:
  explicit SweepReader(std::string file) : file_(std::move(file)) {}

  [[noreturn]] void fail(const std::string& path, const std::string& what) const {
    throw ConfigError(fmt::format("{}: {}: {}", file_, path, what));
  }

  template <class T>
  T scalar(const YAML::Node& node, const std::string& path, const std::string& expected) const {
    if (!node.IsScalar()) fail(path, "expected " + expected);
    try {
      return node.as<T>();
    } catch (const YAML::Exception&) {
      fail(path, fmt::format("expected {}, got '{}'", expected, node.Scalar()));
    }
  }

  template <class T>
  std::vector<T> list(const YAML::Node& node, const std::string& path, const std::string& expected) const {
    if (!node.IsSequence()) fail(path, "expected a list of " + expected);
    std::vector<T> out;
    for (size_t i = 0; i < node.size(); ++i) out.push_back(scalar<T>(node[i], fmt::format("{}[{}]", path, i), expected));
    return out;
  }

  // A mapping of recipe overrides -> "key.path=value" strings.
  std::vector<std::string> overrides(const YAML::Node& node, const std::string& path) const {
    std::vector<std::string> out;
    if (node.IsNull()) return out;
    if (!node.IsMap()) fail(path, "expected a mapping of recipe keys to values (e.g. train.steps: 100)");
    flatten(node, "", path, out);
    return out;
  }

  void reject_unknown(const YAML::Node& map, const std::string& path, const std::set<std::string>& known) const {
    for (auto it = map.begin(); it != map.end(); ++it) {
      const std::string key = it->first.as<std::string>();
      if (!known.count(key)) fail(path.empty() ? key : path + "." + key, "unknown key");
    }
  }

 private:
  void flatten(const YAML::Node& map, const std::string& prefix, const std::string& path,
               std::vector<std::string>& out) const {
    for (auto it = map.begin(); it != map.end(); ++it) {
      const std::string key = prefix + it->first.as<std::string>();
      if (it->second.IsMap()) {
        flatten(it->second, key + ".", path, out);
      } else if (it->second.IsScalar()) {
        out.push_back(key + "=" + YAML::Dump(it->second));
      } else {
        fail(path + "." + key, "expected a value");
      }
    }
  }

  std::string file_;
};

// A path in a sweep file: as given, else relative to the sweep file's folder.
std::string resolve(const std::string& path, const std::string& sweep_file) {
  if (path.empty() || fs::path(path).is_absolute() || fs::exists(path)) return path;
  const fs::path beside = fs::path(sweep_file).parent_path() / path;
  return fs::exists(beside) ? beside.lexically_normal().string() : path;
}

}  // namespace

SweepConfig load_sweep(const std::string& path) {
  SweepReader r(path);
  YAML::Node root;
  try {
    root = YAML::Load(read_file(path));
  } catch (const IoError&) {
    throw ConfigError(fmt::format("{}: cannot open sweep file", path));
  } catch (const YAML::Exception& e) {
    throw ConfigError(fmt::format("{}: YAML syntax error at line {}, column {}: {}", path, e.mark.line + 1,
                                  e.mark.column + 1, e.msg));
  }
  if (!root.IsMap()) throw ConfigError(path + ": expected a mapping of keys at the top level");
  r.reject_unknown(root, "",
                   {"name", "base", "set", "init_from", "pretrain", "variants", "targets", "calibration", "cpt", "eval"});

  SweepConfig s;
  s.source = path;
  auto required = [&](const char* key, const char* what) {
    if (!root[key]) r.fail(key, fmt::format("missing required key ({})", what));
    return root[key];
  };
  s.name = r.scalar<std::string>(required("name", "a name for the sweep's folder"), "name", "a name");
  if (s.name.empty() || s.name.find('/') != std::string::npos) r.fail("name", "expected a name without '/'");
  s.base = resolve(r.scalar<std::string>(required("base", "the recipe every run starts from"), "base", "a recipe file"),
                   path);
  if (root["set"]) s.overrides = r.overrides(root["set"], "set");

  if (root["init_from"]) s.init_from = resolve(r.scalar<std::string>(root["init_from"], "init_from", "a checkpoint"), path);
  if (root["pretrain"]) {
    s.has_pretrain = true;
    s.pretrain = r.overrides(root["pretrain"], "pretrain");
  }
  if (s.has_pretrain == !s.init_from.empty())
    r.fail("init_from", "expected exactly one of init_from (a dense checkpoint) and pretrain (a dense pretraining run)");

  const YAML::Node variants = required("variants", "a mapping of attention variants to their overrides");
  if (!variants.IsMap() || variants.size() == 0)
    r.fail("variants", "expected a mapping of variant names (dense, dash, nsa, infllmv2) to overrides");
  for (auto it = variants.begin(); it != variants.end(); ++it) {
    const std::string name = it->first.as<std::string>();
    if (name != "dense" && name != "dash" && name != "nsa" && name != "infllmv2")
      r.fail("variants." + name, "unknown variant (expected dense, dash, nsa or infllmv2)");
    s.variants.push_back({name, r.overrides(it->second, "variants." + name)});
  }

  s.targets = r.list<double>(required("targets", "target sparsities in percent"), "targets", "numbers");
  if (s.targets.empty()) r.fail("targets", "expected at least one target sparsity");
  for (size_t i = 0; i < s.targets.size(); ++i) {
    if (!(s.targets[i] > 0 && s.targets[i] < 100))
      r.fail(fmt::format("targets[{}]", i), fmt::format("expected a sparsity in percent in (0, 100), got {}", s.targets[i]));
    if (std::count(s.targets.begin(), s.targets.end(), s.targets[i]) > 1)
      r.fail(fmt::format("targets[{}]", i), fmt::format("{} is listed twice", s.targets[i]));
  }

  if (const YAML::Node c = root["calibration"]) {
    if (!c.IsMap()) r.fail("calibration", "expected a mapping");
    r.reject_unknown(c, "calibration", {"length", "batches", "tolerance"});
    if (c["length"]) s.calibration.length = r.scalar<int64_t>(c["length"], "calibration.length", "an integer");
    if (c["batches"]) s.calibration.batches = r.scalar<int64_t>(c["batches"], "calibration.batches", "an integer");
    if (c["tolerance"]) s.calibration.tolerance = r.scalar<double>(c["tolerance"], "calibration.tolerance", "a number");
    if (s.calibration.length < 0) r.fail("calibration.length", "expected an integer >= 0");
    if (s.calibration.batches < 1) r.fail("calibration.batches", "expected an integer >= 1");
    if (!(s.calibration.tolerance > 0)) r.fail("calibration.tolerance", "expected a number of percentage points > 0");
  }

  if (!root["cpt"]) r.fail("cpt", "missing required key (overrides of the continual-pretraining runs, e.g. train.steps)");
  s.cpt = r.overrides(root["cpt"], "cpt");

  if (const YAML::Node e = root["eval"]) {
    if (!e.IsMap()) r.fail("eval", "expected a mapping");
    r.reject_unknown(e, "eval", {"ppl_batches", "tasks", "lengths", "depths", "count", "seed", "tokenizer"});
    SweepEval& v = s.eval;
    if (e["ppl_batches"]) v.ppl_batches = r.scalar<int64_t>(e["ppl_batches"], "eval.ppl_batches", "an integer");
    if (e["tasks"]) v.tasks = r.list<std::string>(e["tasks"], "eval.tasks", "task names");
    if (e["lengths"]) v.lengths = r.list<int64_t>(e["lengths"], "eval.lengths", "integers (tokens)");
    if (e["depths"]) v.depths = r.list<double>(e["depths"], "eval.depths", "numbers in [0, 1]");
    if (e["count"]) v.count = r.scalar<int64_t>(e["count"], "eval.count", "an integer");
    if (e["seed"]) v.seed = r.scalar<int64_t>(e["seed"], "eval.seed", "an integer");
    if (e["tokenizer"]) v.tokenizer = resolve(r.scalar<std::string>(e["tokenizer"], "eval.tokenizer", "byte or a tokenizer.json"), path);
    if (v.ppl_batches < 1) r.fail("eval.ppl_batches", "expected an integer >= 1");
    if (v.count < 1) r.fail("eval.count", "expected an integer >= 1");
    if (v.seed < 0) r.fail("eval.seed", "expected an integer >= 0");
    const auto& known = synthetic_task_names();
    for (size_t i = 0; i < v.tasks.size(); ++i)
      if (std::find(known.begin(), known.end(), v.tasks[i]) == known.end())
        r.fail(fmt::format("eval.tasks[{}]", i), fmt::format("unknown task '{}' (expected one of: {})", v.tasks[i],
                                                             fmt::join(known, ", ")));
    for (size_t i = 0; i < v.lengths.size(); ++i)
      if (v.lengths[i] < 1) r.fail(fmt::format("eval.lengths[{}]", i), "expected a positive length");
    for (size_t i = 0; i < v.depths.size(); ++i)
      if (!(v.depths[i] >= 0 && v.depths[i] <= 1)) r.fail(fmt::format("eval.depths[{}]", i), "expected a depth in [0, 1]");
  }
  if (!s.eval.tasks.empty() && s.eval.lengths.empty())
    r.fail("eval.lengths", "expected the example lengths of eval.tasks");
  if (s.calibration.length == 0) {
    if (s.eval.lengths.empty())
      r.fail("calibration.length", "set it, or eval.lengths (calibration uses the longest eval length)");
    s.calibration.length = *std::max_element(s.eval.lengths.begin(), s.eval.lengths.end());
  }
  return s;
}

}  // namespace st
