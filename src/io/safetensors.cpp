#include "io/safetensors.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <set>
#include <vector>

#include "io/atomic_file.h"
#include "io/json_reader.h"
#include "io/mapped_file.h"
#include "util/json.h"

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "safetensors data is little-endian");

namespace st {

namespace {

constexpr uint64_t kMaxHeaderBytes = 100ull << 20;
constexpr int kMaxHeaderDepth = 4;  // {"name": {"shape": [..]}} nests three deep
constexpr size_t kMaxDims = 64;
const char* const kIndexName = "model.safetensors.index.json";
const char* const kSingleName = "model.safetensors";

struct Dtype {
  const char* name;
  torch::ScalarType type;
  uint64_t bytes;
};

const Dtype kDtypes[] = {
    {"F64", torch::kFloat64, 8}, {"F32", torch::kFloat32, 4}, {"F16", torch::kFloat16, 2},
    {"BF16", torch::kBFloat16, 2}, {"I64", torch::kInt64, 8}, {"I32", torch::kInt32, 4},
    {"I16", torch::kInt16, 2},   {"I8", torch::kInt8, 1},     {"U8", torch::kUInt8, 1},
    {"BOOL", torch::kBool, 1},
};

const Dtype* dtype_named(const std::string& name) {
  for (const Dtype& d : kDtypes)
    if (name == d.name) return &d;
  return nullptr;
}

const Dtype* dtype_of(torch::ScalarType type) {
  for (const Dtype& d : kDtypes)
    if (type == d.type) return &d;
  return nullptr;
}

struct Entry {
  std::string name;
  const Dtype* dtype = nullptr;
  std::vector<int64_t> shape;
  uint64_t begin = 0, end = 0;
};

struct Header {
  std::vector<Entry> entries;
  std::map<std::string, std::string> metadata;
};

[[noreturn]] void fail(const std::string& path, const std::string& defect) {
  throw IoError(path + ": " + defect);
}

bool is_string(const YAML::Node& n) { return n.IsScalar() && n.Tag() == "!"; }

// A non-negative JSON integer below 2^63 (shapes become int64 sizes).
bool parse_count(const YAML::Node& n, uint64_t* out) {
  if (!n.IsScalar() || n.Tag() != "?") return false;
  const std::string& s = n.Scalar();
  if (s.empty() || s.size() > 19) return false;
  uint64_t v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return false;
    v = v * 10 + static_cast<uint64_t>(c - '0');
  }
  if (v > static_cast<uint64_t>(INT64_MAX)) return false;
  *out = v;
  return true;
}

Entry parse_entry(const std::string& path, const std::string& name, const YAML::Node& node) {
  auto bad = [&](const std::string& what) { fail(path, "tensor '" + name + "': " + what); };
  if (!node.IsMap()) bad("entry is not an object");
  Entry e;
  e.name = name;
  std::set<std::string> seen;
  for (const auto& kv : node) {
    std::string key = kv.first.Scalar();
    if (!seen.insert(key).second) bad("duplicate key '" + key + "'");
    if (key != "dtype" && key != "shape" && key != "data_offsets") bad("unknown key '" + key + "'");
  }
  const YAML::Node dtype = node["dtype"], shape = node["shape"], offsets = node["data_offsets"];
  if (!dtype || !shape || !offsets) bad("needs dtype, shape and data_offsets");
  if (!is_string(dtype)) bad("dtype is not a string");
  e.dtype = dtype_named(dtype.Scalar());
  if (!e.dtype) bad("unsupported dtype '" + dtype.Scalar() + "'");
  if (!shape.IsSequence()) bad("shape is not a list");
  if (shape.size() > kMaxDims) bad(fmt::format("shape has more than {} dimensions", kMaxDims));
  for (const auto& d : shape) {
    uint64_t v = 0;
    if (!parse_count(d, &v)) bad("shape holds something other than a non-negative integer");
    e.shape.push_back(static_cast<int64_t>(v));
  }
  if (!offsets.IsSequence() || offsets.size() != 2 || !parse_count(offsets[0], &e.begin) ||
      !parse_count(offsets[1], &e.end))
    bad("data_offsets is not a pair of non-negative integers");
  return e;
}

std::string shape_str(const std::vector<int64_t>& shape) {
  return fmt::format("[{}]", fmt::join(shape, ", "));
}

// Parses the header and checks that the tensors tile the data section exactly.
Header parse_header(const std::string& path, std::string_view json, uint64_t data_bytes) {
  YAML::Node root = parse_json(json, path, kMaxHeaderDepth);
  if (!root.IsMap()) fail(path, "header is not a JSON object");
  Header h;
  std::set<std::string> names;
  for (const auto& kv : root) {
    if (!is_string(kv.first)) fail(path, "header key is not a string");
    const std::string& name = kv.first.Scalar();
    if (!names.insert(name).second) fail(path, "duplicate tensor name '" + name + "'");
    if (name == "__metadata__") {
      if (!kv.second.IsMap()) fail(path, "__metadata__ is not an object");
      for (const auto& m : kv.second) {
        if (!is_string(m.first) || !is_string(m.second))
          fail(path, "__metadata__ must map strings to strings");
        if (!h.metadata.emplace(m.first.Scalar(), m.second.Scalar()).second)
          fail(path, "duplicate __metadata__ key '" + m.first.Scalar() + "'");
      }
      continue;
    }
    h.entries.push_back(parse_entry(path, name, kv.second));
  }

  for (const Entry& e : h.entries) {
    if (e.end < e.begin || e.end > data_bytes)
      fail(path, fmt::format("tensor '{}': data_offsets [{}, {}] out of range of the {}-byte data "
                             "section",
                             e.name, e.begin, e.end, data_bytes));
    uint64_t bytes = e.dtype->bytes;
    for (int64_t d : e.shape)
      if (__builtin_mul_overflow(bytes, static_cast<uint64_t>(d), &bytes)) bytes = UINT64_MAX;
    if (bytes != e.end - e.begin)
      fail(path, fmt::format("tensor '{}': shape {} of {} needs {} bytes but data_offsets [{}, {}] "
                             "span {}",
                             e.name, shape_str(e.shape), e.dtype->name,
                             bytes == UINT64_MAX ? "too many" : std::to_string(bytes), e.begin,
                             e.end, e.end - e.begin));
  }
  std::vector<const Entry*> order;
  for (const Entry& e : h.entries) order.push_back(&e);
  std::sort(order.begin(), order.end(), [](const Entry* a, const Entry* b) {
    return a->begin != b->begin ? a->begin < b->begin : a->end < b->end;
  });
  uint64_t covered = 0;
  for (const Entry* e : order) {
    if (e->begin < covered)
      fail(path, fmt::format("tensor '{}': data_offsets [{}, {}] overlap another tensor", e->name,
                             e->begin, e->end));
    if (e->begin > covered)
      fail(path, fmt::format("data bytes [{}, {}) belong to no tensor", covered, e->begin));
    covered = e->end;
  }
  if (covered != data_bytes)
    fail(path, fmt::format("data section has {} bytes but tensors cover only {}", data_bytes,
                           covered));
  return h;
}

struct Prepared {
  std::string name;
  const Dtype* dtype;
  torch::Tensor tensor;  // CPU, contiguous
  uint64_t bytes;
};

}  // namespace

void save_safetensors(const std::string& path, const TensorMap& tensors,
                      const std::map<std::string, std::string>& metadata) {
  std::vector<Prepared> items;
  for (const auto& [name, t] : tensors) {
    if (name == "__metadata__") fail(path, "'__metadata__' cannot name a tensor");
    const Dtype* dtype = dtype_of(t.scalar_type());
    if (!dtype)
      fail(path, fmt::format("tensor '{}': dtype {} has no safetensors equivalent", name,
                             c10::toString(t.scalar_type())));
    torch::Tensor c = t.detach().to(torch::kCPU).contiguous();
    items.push_back({name, dtype, c, static_cast<uint64_t>(c.numel()) * dtype->bytes});
  }
  // Wider dtypes first keeps every tensor aligned to its element size in the file.
  std::stable_sort(items.begin(), items.end(),
                   [](const Prepared& a, const Prepared& b) { return a.dtype->bytes > b.dtype->bytes; });

  std::map<std::string, std::string> meta = metadata;
  meta.emplace("format", "pt");
  std::string header = "{\"__metadata__\":{";
  for (const auto& [k, v] : meta)
    header += (header.back() == '{' ? "" : ",") + json_quote(k) + ":" + json_quote(v);
  header += "}";
  uint64_t offset = 0;
  for (const Prepared& p : items) {
    header += fmt::format(",{}:{{\"dtype\":\"{}\",\"shape\":[{}],\"data_offsets\":[{},{}]}}",
                          json_quote(p.name), p.dtype->name, fmt::join(p.tensor.sizes(), ","),
                          offset, offset + p.bytes);
    offset += p.bytes;
  }
  header += "}";
  header.append((8 - header.size() % 8) % 8, ' ');  // data starts 8-byte aligned

  AtomicFile f(path);
  uint64_t n = header.size();
  f.write(&n, 8);
  f.write(header.data(), header.size());
  for (const Prepared& p : items) f.write(p.tensor.data_ptr(), p.bytes);
  f.commit();
}

TensorMap load_safetensors(const std::string& path, std::map<std::string, std::string>* metadata) {
  MappedFile file(path);
  if (file.size() < 8)
    fail(path, fmt::format("truncated: {} bytes, shorter than the 8-byte header length", file.size()));
  uint64_t n = 0;
  std::memcpy(&n, file.data(), 8);
  if (n > kMaxHeaderBytes)
    fail(path, fmt::format("header length {} exceeds the {}-byte limit", n, kMaxHeaderBytes));
  if (n > file.size() - 8)
    fail(path, fmt::format("truncated: header length {} but only {} bytes follow", n,
                           file.size() - 8));
  const unsigned char* data = file.data() + 8 + n;
  uint64_t data_bytes = file.size() - 8 - n;
  Header h = parse_header(path, std::string_view(reinterpret_cast<const char*>(file.data() + 8), n),
                          data_bytes);

  TensorMap out;
  for (const Entry& e : h.entries) {
    const unsigned char* src = data + e.begin;
    uint64_t bytes = e.end - e.begin;
    if (e.dtype->type == torch::kBool &&
        std::any_of(src, src + bytes, [](unsigned char b) { return b > 1; }))
      fail(path, "tensor '" + e.name + "': BOOL data holds bytes other than 0 and 1");
    torch::Tensor t;
    try {
      t = torch::empty(e.shape, torch::TensorOptions().dtype(e.dtype->type));
    } catch (const c10::Error&) {
      fail(path, "tensor '" + e.name + "': shape " + shape_str(e.shape) + " cannot be allocated");
    }
    if (bytes) std::memcpy(t.data_ptr(), src, bytes);
    out.emplace(e.name, std::move(t));
  }
  if (metadata) *metadata = std::move(h.metadata);
  return out;
}

void save_safetensors_sharded(const std::string& dir, const TensorMap& tensors,
                              int64_t max_shard_bytes,
                              const std::map<std::string, std::string>& metadata) {
  namespace fs = std::filesystem;
  fs::create_directories(dir);
  std::vector<TensorMap> shards(1);
  uint64_t shard_bytes = 0, total = 0;
  for (const auto& [name, t] : tensors) {
    uint64_t bytes = static_cast<uint64_t>(t.numel()) * t.element_size();
    if (!shards.back().empty() && shard_bytes + bytes > static_cast<uint64_t>(max_shard_bytes)) {
      shards.emplace_back();
      shard_bytes = 0;
    }
    shards.back().emplace(name, t);
    shard_bytes += bytes;
    total += bytes;
  }
  if (shards.size() == 1) {
    save_safetensors(dir + "/" + kSingleName, tensors, metadata);
    fs::remove(dir + "/" + kIndexName);  // a stale index would win over the new file
    return;
  }
  std::string weight_map;
  for (size_t i = 0; i < shards.size(); ++i) {
    std::string file = fmt::format("model-{:05d}-of-{:05d}.safetensors", i + 1, shards.size());
    save_safetensors(dir + "/" + file, shards[i], metadata);
    for (const auto& kv : shards[i])
      weight_map += fmt::format("{}\n    {}: {}", weight_map.empty() ? "" : ",",
                                json_quote(kv.first), json_quote(file));
  }
  std::string index = fmt::format(
      "{{\n  \"metadata\": {{\"total_size\": {}}},\n  \"weight_map\": {{{}\n  }}\n}}\n", total,
      weight_map);
  write_file_atomic(dir + "/" + kIndexName, index);
}

TensorMap load_safetensors_dir(const std::string& dir,
                               std::map<std::string, std::string>* metadata) {
  namespace fs = std::filesystem;
  std::string index_path = dir + "/" + kIndexName;
  if (!fs::exists(index_path)) {
    if (!fs::exists(dir + "/" + kSingleName))
      throw IoError(dir + ": holds neither " + kIndexName + " nor " + kSingleName);
    return load_safetensors(dir + "/" + kSingleName, metadata);
  }
  YAML::Node index = load_json_file(index_path);
  YAML::Node weight_map = index.IsMap() ? index["weight_map"] : YAML::Node();
  if (!weight_map || !weight_map.IsMap()) fail(index_path, "has no \"weight_map\" object");
  std::map<std::string, std::set<std::string>> names_by_file;
  for (const auto& kv : weight_map) {
    if (!is_string(kv.first) || !is_string(kv.second))
      fail(index_path, "weight_map must map tensor names to file names");
    const std::string& file = kv.second.Scalar();
    if (file.empty() || file.find('/') != std::string::npos || file == "." || file == "..")
      fail(index_path, "weight_map names '" + file + "', which is not a file in " + dir);
    if (!names_by_file[file].insert(kv.first.Scalar()).second)
      fail(index_path, "tensor '" + kv.first.Scalar() + "' listed twice");
  }
  TensorMap out;
  bool first = true;
  for (const auto& [file, names] : names_by_file) {
    std::string path = dir + "/" + file;
    TensorMap shard = load_safetensors(path, first ? metadata : nullptr);
    first = false;
    for (const std::string& name : names)
      if (!shard.count(name)) fail(index_path, "lists '" + name + "' in " + file + ", which lacks it");
    for (auto& [name, t] : shard) {
      if (!names.count(name)) fail(path, "holds '" + name + "', which " + kIndexName + " does not list there");
      if (!out.emplace(name, std::move(t)).second) fail(path, "tensor '" + name + "' appears in two shards");
    }
  }
  return out;
}

}  // namespace st
