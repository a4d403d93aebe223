#include "train/checkpoint.h"

#include <fmt/format.h>
#include <unistd.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <filesystem>
#include <fstream>

#include "io/atomic_file.h"
#include "io/json_reader.h"
#include "io/read_file.h"
#include "util/json.h"

namespace st {
namespace fs = std::filesystem;
namespace {

constexpr const char* kFormat = "sparsetrain-checkpoint";
constexpr int kVersion = 1;

std::string step_name(int64_t step) { return fmt::format("step-{:08d}", step); }

}  // namespace

std::string file_checksum(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw IoError(fmt::format("{}: cannot open", path));
  uint64_t h = 1469598103934665603ull;
  std::vector<char> buf(1 << 20);
  while (in) {
    in.read(buf.data(), std::streamsize(buf.size()));
    for (std::streamsize i = 0; i < in.gcount(); ++i) h = (h ^ uint8_t(buf[size_t(i)])) * 1099511628211ull;
  }
  return fmt::format("{:016x}", h);
}

std::string save_checkpoint(const std::string& root, const CheckpointData& ckpt, int64_t keep) {
  fs::create_directories(root);
  const std::string name = step_name(ckpt.step);
  const fs::path final_dir = fs::path(root) / name;
  const fs::path tmp = fs::path(root) / (".tmp-" + name + "-" + std::to_string(::getpid()));
  fs::remove_all(tmp);
  fs::create_directories(tmp);

  std::vector<std::string> files = {"model.safetensors", "state.safetensors", "recipe.yaml"};
  save_safetensors((tmp / "model.safetensors").string(), ckpt.model);
  save_safetensors((tmp / "state.safetensors").string(), ckpt.state);
  if (!ckpt.optim.empty()) {
    save_safetensors((tmp / "optim.safetensors").string(), ckpt.optim);
    files.push_back("optim.safetensors");
  }
  write_file_atomic((tmp / "recipe.yaml").string(), ckpt.recipe_yaml);

  JsonObject sums;
  for (const auto& f : files) {
    sums.add(f, JsonObject().add("bytes", int64_t(fs::file_size(tmp / f))).add("fnv1a64", file_checksum((tmp / f).string())));
  }
  JsonObject manifest;
  manifest.add("format", kFormat).add("version", kVersion).add("step", ckpt.step).add("tokens", ckpt.tokens)
      .add("world_size", ckpt.world_size).add("files", sums);
  write_file_atomic((tmp / "manifest.json").string(), manifest.str() + "\n");
  sync_directory(tmp.string());

  fs::remove_all(final_dir);  // a re-save of the same step replaces it
  fs::rename(tmp, final_dir);
  sync_directory(root);
  write_file_atomic((fs::path(root) / "latest").string(), name + "\n");

  // Prune: keep the newest `keep` step folders; never the one `latest` names.
  std::vector<std::string> steps;
  for (const auto& e : fs::directory_iterator(root))
    if (e.is_directory() && e.path().filename().string().rfind("step-", 0) == 0) steps.push_back(e.path().filename().string());
  std::sort(steps.begin(), steps.end());
  for (size_t i = 0; i + size_t(keep) < steps.size(); ++i)
    if (steps[i] != name) fs::remove_all(fs::path(root) / steps[i]);
  return final_dir.string();
}

std::string resolve_checkpoint(const std::string& path) {
  fs::path p(path);
  if (!fs::exists(p)) throw IoError(fmt::format("{}: no such checkpoint", path));
  if (fs::is_directory(p) && fs::exists(p / "manifest.json")) return p.string();
  if (fs::is_directory(p) && fs::exists(p / "ckpt" / "latest")) p = p / "ckpt" / "latest";
  else if (fs::is_directory(p) && fs::exists(p / "latest")) p = p / "latest";
  if (fs::is_regular_file(p)) {
    std::string name = read_file(p.string());
    name.erase(name.find_last_not_of(" \n\r\t") + 1);
    fs::path dir = p.parent_path() / name;
    if (name.empty() || !fs::exists(dir / "manifest.json"))
      throw IoError(fmt::format("{}: points at '{}', which is not a complete checkpoint", p.string(), name));
    return dir.string();
  }
  throw IoError(fmt::format("{}: not a checkpoint (expected a folder with manifest.json, a `latest` file, or a run folder)", path));
}

CheckpointData load_checkpoint(const std::string& path, bool with_optimizer) {
  const fs::path dir = resolve_checkpoint(path);
  const YAML::Node manifest = load_json_file((dir / "manifest.json").string());
  if (!manifest.IsMap() || !manifest["format"] || manifest["format"].as<std::string>() != kFormat)
    throw IoError(fmt::format("{}: manifest.json is not a sparsetrain checkpoint manifest", dir.string()));
  if (manifest["version"].as<int>() > kVersion)
    throw IoError(fmt::format("{}: checkpoint version {} is newer than this build reads ({})", dir.string(),
                              manifest["version"].as<int>(), kVersion));
  for (auto it = manifest["files"].begin(); it != manifest["files"].end(); ++it) {
    const std::string name = it->first.as<std::string>();
    if (name == "optim.safetensors" && !with_optimizer) continue;
    const fs::path f = dir / name;
    if (!fs::exists(f)) throw IoError(fmt::format("{}: missing (checkpoint incomplete)", f.string()));
    const auto bytes = it->second["bytes"].as<int64_t>();
    if (int64_t(fs::file_size(f)) != bytes)
      throw IoError(fmt::format("{}: {} bytes, manifest says {} (truncated or replaced)", f.string(), fs::file_size(f), bytes));
    if (file_checksum(f.string()) != it->second["fnv1a64"].as<std::string>())
      throw IoError(fmt::format("{}: checksum mismatch (corrupted)", f.string()));
  }
  CheckpointData c;
  c.step = manifest["step"].as<int64_t>();
  c.tokens = manifest["tokens"].as<int64_t>();
  c.world_size = manifest["world_size"].as<int64_t>();
  c.recipe_yaml = read_file((dir / "recipe.yaml").string());
  c.model = load_safetensors((dir / "model.safetensors").string());
  c.state = load_safetensors((dir / "state.safetensors").string());
  if (with_optimizer && fs::exists(dir / "optim.safetensors")) c.optim = load_safetensors((dir / "optim.safetensors").string());
  return c;
}

}  // namespace st
