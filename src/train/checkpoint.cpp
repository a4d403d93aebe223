#include "train/checkpoint.h"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <unistd.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <filesystem>
#include <fstream>

#include "io/atomic_file.h"
#include "io/json_reader.h"
#include "io/read_file.h"
#include "io/remove_tree.h"
#include "util/json.h"

namespace st {
namespace fs = std::filesystem;
namespace {

constexpr const char* kFormat = "sparsetrain-checkpoint";
constexpr int kVersion = 1;

std::string step_name(int64_t step) { return fmt::format("step-{:08d}", step); }

std::string rank_file(int64_t rank, int64_t world_size) {
  return fmt::format("rank-{:05d}-of-{:05d}.safetensors", rank, world_size);
}

// Writes the manifest over `files` (already in tmp), moves tmp into place as <root>/<name>,
// points `latest` at it and prunes old ones.
std::string commit(const std::string& root, const fs::path& tmp, const CheckpointData& ckpt,
                   const std::vector<std::string>& files, const JsonObject* layout, int64_t keep) {
  const std::string name = step_name(ckpt.step);
  const fs::path final_dir = fs::path(root) / name;
  JsonObject sums;
  for (const auto& f : files) {
    sums.add(f, JsonObject().add("bytes", int64_t(fs::file_size(tmp / f))).add("fnv1a64", file_checksum((tmp / f).string())));
  }
  JsonObject manifest;
  manifest.add("format", kFormat).add("version", kVersion).add("step", ckpt.step).add("tokens", ckpt.tokens)
      .add("world_size", ckpt.world_size).add("files", sums);
  if (layout) manifest.add("layout", *layout);
  write_file_atomic((tmp / "manifest.json").string(), manifest.str() + "\n");
  sync_directory(tmp.string());

  remove_tree(final_dir.string());  // a re-save of the same step replaces it
  fs::rename(tmp, final_dir);
  sync_directory(root);
  write_file_atomic((fs::path(root) / "latest").string(), name + "\n");

  // Prune: keep the newest `keep` step folders; never the one `latest` names.
  std::vector<std::string> steps;
  for (const auto& e : fs::directory_iterator(root))
    if (e.is_directory() && e.path().filename().string().rfind("step-", 0) == 0) steps.push_back(e.path().filename().string());
  std::sort(steps.begin(), steps.end());
  for (size_t i = 0; i + size_t(keep) < steps.size(); ++i)
    if (steps[i] != name) remove_tree((fs::path(root) / steps[i]).string());
  return final_dir.string();
}

void write_state_and_recipe(const fs::path& tmp, const CheckpointData& ckpt, std::vector<std::string>& files) {
  save_safetensors((tmp / "state.safetensors").string(), ckpt.state);
  write_file_atomic((tmp / "recipe.yaml").string(), ckpt.recipe_yaml);
  files.insert(files.end(), {"state.safetensors", "recipe.yaml"});
}

// The whole tensors of a sharded checkpoint: each key's pieces, concatenated in rank order.
void read_sharded(const fs::path& dir, const YAML::Node& layout, int64_t world_size, bool with_optimizer,
                  CheckpointData& c) {
  std::map<std::string, std::vector<at::Tensor>> pieces;
  for (int64_t r = 0; r < world_size; ++r)
    for (auto& [key, t] : load_safetensors((dir / rank_file(r, world_size)).string())) pieces[key].push_back(t.reshape(-1));
  for (auto& [key, list] : pieces) {
    const size_t dot = key.find('.');
    const bool weight = bool(layout[key]);
    const std::string name = weight ? key : dot == std::string::npos ? "" : key.substr(dot + 1);
    if (name.empty() || !layout[name]) {  // not a piece of anything: the same on every rank ("step")
      if (with_optimizer) c.optim[key] = list[0];
      continue;
    }
    if (!weight && !with_optimizer) continue;
    const auto shape = layout[name].as<std::vector<int64_t>>();
    at::Tensor whole = at::cat(list);
    if (whole.numel() != c10::multiply_integers(shape))
      throw IoError(fmt::format("{}: the pieces of '{}' hold {} elements; manifest.json's layout says [{}]", dir.string(),
                                key, whole.numel(), fmt::join(shape, ", ")));
    (weight ? c.model : c.optim)[key] = whole.view(shape);
  }
}

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
  const fs::path tmp = fs::path(root) / (".tmp-" + step_name(ckpt.step) + "-" + std::to_string(::getpid()));
  remove_tree(tmp.string());
  fs::create_directories(tmp);

  std::vector<std::string> files = {"model.safetensors"};
  save_safetensors((tmp / "model.safetensors").string(), ckpt.model);
  write_state_and_recipe(tmp, ckpt, files);
  if (!ckpt.optim.empty()) {
    save_safetensors((tmp / "optim.safetensors").string(), ckpt.optim);
    files.push_back("optim.safetensors");
  }
  return commit(root, tmp, ckpt, files, nullptr, keep);
}

std::string save_sharded_checkpoint(const std::string& root, const CheckpointData& ckpt, const ShardedSave& shard,
                                    int64_t keep) {
  // Every rank writes into the same folder: its name must not depend on the process.
  const fs::path tmp = fs::path(root) / (".tmp-" + step_name(ckpt.step) + "-sharded");
  if (shard.rank == 0) {
    fs::create_directories(root);
    remove_tree(tmp.string());
    fs::create_directories(tmp);
  }
  shard.barrier();
  TensorMap mine = ckpt.model;
  mine.insert(ckpt.optim.begin(), ckpt.optim.end());
  save_safetensors((tmp / rank_file(shard.rank, ckpt.world_size)).string(), mine);
  shard.barrier();
  std::string dir = (fs::path(root) / step_name(ckpt.step)).string();
  if (shard.rank == 0) {
    std::vector<std::string> files;
    for (int64_t r = 0; r < ckpt.world_size; ++r) files.push_back(rank_file(r, ckpt.world_size));
    write_state_and_recipe(tmp, ckpt, files);
    JsonObject layout;
    for (const auto& [name, shape] : shard.layout) layout.add(name, std::vector<double>(shape.begin(), shape.end()));
    dir = commit(root, tmp, ckpt, files, &layout, keep);
  }
  shard.barrier();  // nobody reads `latest` before it moved
  return dir;
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
  c.state = load_safetensors((dir / "state.safetensors").string());
  if (manifest["layout"]) {
    read_sharded(dir, manifest["layout"], c.world_size, with_optimizer, c);
    return c;
  }
  c.model = load_safetensors((dir / "model.safetensors").string());
  if (with_optimizer && fs::exists(dir / "optim.safetensors")) c.optim = load_safetensors((dir / "optim.safetensors").string());
  return c;
}

}  // namespace st
