#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>

#include "io/read_file.h"
#include "io/safetensors.h"
#include "oracle.h"

namespace st {
namespace {

using test::TempDir;

// A file with the given header text and n data bytes, bypassing the writer.
std::string craft(const std::string& header, size_t data_bytes, uint64_t declared_len = 0) {
  uint64_t n = declared_len ? declared_len : header.size();
  std::string out(reinterpret_cast<const char*>(&n), 8);
  return out + header + std::string(data_bytes, '\0');
}

bool same_bits(const torch::Tensor& a, const torch::Tensor& b) {
  return a.scalar_type() == b.scalar_type() && a.sizes() == b.sizes() &&
         std::memcmp(a.data_ptr(), b.data_ptr(), a.numel() * a.element_size()) == 0;
}

// Every dtype, with random bit patterns (NaNs and denormals included for floats), plus a
// scalar, an empty tensor and a non-contiguous view.
TensorMap sample_tensors() {
  torch::manual_seed(7);
  TensorMap m;
  auto bits = [](int64_t bytes) { return torch::randint(0, 256, {bytes}, torch::kUInt8); };
  m["f64"] = bits(8 * 6).view(torch::kFloat64).view({2, 3});
  m["f32"] = bits(4 * 35).view(torch::kFloat32).view({5, 7});
  m["f16"] = bits(2 * 10).view(torch::kFloat16);
  m["bf16"] = bits(2 * 12).view(torch::kBFloat16).view({3, 2, 2});
  m["i64"] = bits(8 * 3).view(torch::kInt64);
  m["i32"] = bits(4 * 5).view(torch::kInt32);
  m["i16"] = bits(2 * 7).view(torch::kInt16);
  m["i8"] = bits(9).view(torch::kInt8);
  m["u8"] = bits(13);
  m["bool"] = torch::randint(0, 2, {11}, torch::kUInt8).to(torch::kBool);
  m["scalar"] = torch::tensor(3.5f);
  m["empty"] = torch::zeros({0, 4});
  m["layers.0.self_attn.q_proj.weight"] = torch::randn({4, 6}).t();  // non-contiguous
  return m;
}

void expect_same(const TensorMap& want, const TensorMap& got) {
  ASSERT_EQ(want.size(), got.size());
  for (const auto& [name, t] : want) {
    ASSERT_TRUE(got.count(name)) << name;
    EXPECT_TRUE(same_bits(t.contiguous(), got.at(name))) << name;
  }
}

TEST(Safetensors, RoundTripIsBitExactForEveryDtype) {
  TempDir dir;
  TensorMap tensors = sample_tensors();
  save_safetensors(dir.file("a.safetensors"), tensors, {{"step", "12"}});
  std::map<std::string, std::string> meta;
  TensorMap back = load_safetensors(dir.file("a.safetensors"), &meta);
  expect_same(tensors, back);
  EXPECT_EQ(meta.at("format"), "pt");
  EXPECT_EQ(meta.at("step"), "12");
  EXPECT_FALSE(std::filesystem::exists(dir.file("a.safetensors.tmp." + std::to_string(getpid()))));
}

TEST(Safetensors, HeaderIsPaddedAndTensorsAligned) {
  TempDir dir;
  TensorMap t{{"a", torch::ones({3}, torch::kUInt8)}, {"b", torch::ones({2}, torch::kFloat64)},
              {"c", torch::ones({1}, torch::kInt16)}};
  save_safetensors(dir.file("a.safetensors"), t);
  std::string bytes = read_file(dir.file("a.safetensors"));
  uint64_t n = 0;
  std::memcpy(&n, bytes.data(), 8);
  EXPECT_EQ(n % 8, 0u);
  EXPECT_EQ(bytes.size(), 8 + n + 16 + 2 + 3);
  std::string header = bytes.substr(8, n);
  EXPECT_EQ(header.find("\"__metadata__\":{\"format\":\"pt\"}"), 1u) << header;
  // Wider dtypes come first, so each tensor starts at a multiple of its element size.
  EXPECT_NE(header.find("\"b\":{\"dtype\":\"F64\",\"shape\":[2],\"data_offsets\":[0,16]}"),
            std::string::npos);
  EXPECT_NE(header.find("\"c\":{\"dtype\":\"I16\",\"shape\":[1],\"data_offsets\":[16,18]}"),
            std::string::npos);
}

TEST(Safetensors, UnsupportedDtypeIsRefusedByName) {
  TempDir dir;
  TensorMap t{{"z", torch::zeros({2}, torch::kComplexFloat)}};
  try {
    save_safetensors(dir.file("a.safetensors"), t);
    FAIL() << "expected IoError";
  } catch (const IoError& e) {
    EXPECT_NE(std::string(e.what()).find("tensor 'z'"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(std::filesystem::exists(dir.file("a.safetensors")));
}

TEST(Safetensors, InteroperatesWithPythonSafetensors) {
  TempDir dir;
  TensorMap tensors = sample_tensors();
  save_safetensors(dir.file("ours.safetensors"), tensors, {{"origin", "sparsetrain"}});
  // Python reads our file, checks our metadata, and writes its own file from what it read.
  ASSERT_EQ(test::run_oracle("safetensors_roundtrip.py",
                             dir.file("ours.safetensors") + " " + dir.file("theirs.safetensors")),
            0);
  std::map<std::string, std::string> meta;
  expect_same(tensors, load_safetensors(dir.file("theirs.safetensors"), &meta));
  EXPECT_EQ(meta.at("origin"), "python");
}

TEST(Safetensors, ShardedSaveWritesIndexAndLoadsBack) {
  TempDir dir;
  TensorMap tensors;
  for (int i = 0; i < 5; ++i) tensors["w" + std::to_string(i)] = torch::full({100}, float(i));
  save_safetensors_sharded(dir.file("m"), tensors, 1000);  // 400 bytes each: two per shard
  for (int k = 1; k <= 3; ++k)
    EXPECT_TRUE(std::filesystem::exists(
        dir.file(fmt::format("m/model-{:05d}-of-00003.safetensors", k))));
  std::string index = read_file(dir.file("m/model.safetensors.index.json"));
  EXPECT_NE(index.find("\"total_size\": 2000"), std::string::npos) << index;
  EXPECT_NE(index.find("\"w4\": \"model-00003-of-00003.safetensors\""), std::string::npos);
  expect_same(tensors, load_safetensors_dir(dir.file("m")));

  // One shard's worth: a single model.safetensors, and the stale index is gone.
  save_safetensors_sharded(dir.file("m"), tensors, 1 << 20);
  EXPECT_TRUE(std::filesystem::exists(dir.file("m/model.safetensors")));
  EXPECT_FALSE(std::filesystem::exists(dir.file("m/model.safetensors.index.json")));
  expect_same(tensors, load_safetensors_dir(dir.file("m")));
}

TEST(Safetensors, ShardIndexMustAgreeWithShards) {
  TempDir dir;
  TensorMap tensors{{"a", torch::ones({100})}, {"b", torch::ones({100})}};
  save_safetensors_sharded(dir.file("m"), tensors, 400);
  std::string index_path = dir.file("m/model.safetensors.index.json");
  std::string index = read_file(index_path);
  auto expect_error = [&](const std::string& text, const std::string& needle) {
    test::write_file(index_path, text);
    try {
      load_safetensors_dir(dir.file("m"));
      ADD_FAILURE() << "expected IoError for " << text;
    } catch (const IoError& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  std::string moved = index;
  moved.replace(moved.find("00002-of"), 5, "00001");  // b claimed to live in shard 1
  expect_error(moved, "lacks it");
  expect_error("{\"weight_map\": {\"a\": \"../x.safetensors\"}}", "not a file");
  expect_error("{\"weight_map\": [1, 2]}", "weight_map");
  expect_error("{\"weight_map\": {\"a\": \"model-00001-of-00002.safetensors\"", "not valid JSON");
  EXPECT_THROW(load_safetensors_dir(dir.file("nowhere")), IoError);
}

// Every crafted defect is an IoError whose message names the file and the defect.
TEST(Safetensors, MalformedFilesGiveClearErrors) {
  TempDir dir;
  std::string path = dir.file("bad.safetensors");
  auto expect_error = [&](const std::string& bytes, const std::string& needle) {
    test::write_file(path, bytes);
    try {
      load_safetensors(path);
      ADD_FAILURE() << "expected IoError mentioning '" << needle << "'";
    } catch (const IoError& e) {
      std::string msg = e.what();
      EXPECT_NE(msg.find(path), std::string::npos) << msg;
      EXPECT_NE(msg.find(needle), std::string::npos) << msg;
    }
  };
  auto one = [](const std::string& dtype, const std::string& shape, const std::string& offs) {
    return "{\"t\":{\"dtype\":\"" + dtype + "\",\"shape\":" + shape + ",\"data_offsets\":" + offs + "}}";
  };
  expect_error("", "truncated");
  expect_error(std::string("\x10\0\0\0", 4), "truncated");
  expect_error(craft("{}", 0, 1ull << 62), "exceeds");
  expect_error(craft("{}", 0, 100), "truncated: header length 100");
  expect_error(craft(one("F32", "[2]", "[0,8]"), 4), "out of range");
  expect_error(craft(one("F32", "[2]", "[8,0]"), 8), "out of range");
  expect_error(craft(one("F32", "[3]", "[0,8]"), 8), "needs 12 bytes");
  expect_error(craft(one("F32", "[4294967296,4294967296,4294967296]", "[0,8]"), 8), "needs too many");
  expect_error(craft(one("F32", "[2]", "[0,8]"), 12), "cover only 8");
  expect_error(craft(one("Q4", "[2]", "[0,8]"), 8), "unsupported dtype 'Q4'");
  expect_error(craft(one("F32", "[-2]", "[0,8]"), 8), "non-negative integer");
  expect_error(craft(one("F32", "[2.0]", "[0,8]"), 8), "non-negative integer");
  expect_error(craft(one("F32", "[\"2\"]", "[0,8]"), 8), "non-negative integer");
  expect_error(craft(one("F32", "[2]", "[0]"), 8), "data_offsets");
  expect_error(craft(one("F32", "[2]", "[0,99999999999999999999]"), 8), "data_offsets");
  expect_error(craft(one("F32", "2", "[0,8]"), 8), "shape is not a list");
  expect_error(craft("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                     "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
                     12),
               "overlap");
  expect_error(craft("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                     "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]}}",
                     12),
               "belong to no tensor");
  expect_error(craft("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                     "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
                     8),
               "duplicate tensor name 'a'");
  expect_error(craft("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4],\"x\":1}}", 4),
               "unknown key 'x'");
  expect_error(craft("{\"__metadata__\":{\"format\":1}}", 0), "strings to strings");
  expect_error(craft("[1,2]", 0), "not a JSON object");
  expect_error(craft("{\"a\":", 0), "not valid JSON");
  expect_error(craft("{\"a\": &x [*x]}", 0), "not valid JSON");  // YAML alias
  expect_error(craft(std::string(5000, '[') + std::string(5000, ']'), 0), "nested deeper");
  expect_error(craft(std::string("{\"a\0\":1}", 9), 0), "control character");
  expect_error(craft(one("BOOL", "[2]", "[0,2]"), 0) + std::string("\x01\x07", 2), "BOOL");
  std::string dims65 = "[1";
  for (int i = 0; i < 64; ++i) dims65 += ",1";
  expect_error(craft(one("F32", dims65 + "]", "[0,4]"), 4), "more than 64 dimensions");
}

TEST(Safetensors, TruncationAtEveryLengthIsAnIoError) {
  TempDir dir;
  TensorMap t{{"a", torch::arange(6, torch::kFloat32).view({2, 3})},
              {"b", torch::tensor({1, 2}, torch::kInt64)}};
  save_safetensors(dir.file("ok.safetensors"), t);
  std::string good = read_file(dir.file("ok.safetensors"));
  for (size_t len = 0; len < good.size(); ++len) {
    test::write_file(dir.file("cut.safetensors"), good.substr(0, len));
    EXPECT_THROW(load_safetensors(dir.file("cut.safetensors")), IoError) << "length " << len;
  }
}

// Random byte flips and splices anywhere in the header: the reader either loads a file
// that passes every check or throws IoError — never another exception, never a crash.
TEST(Safetensors, RandomHeaderCorruptionNeverCrashes) {
  TempDir dir;
  TensorMap t{{"embed_tokens.weight", torch::randn({4, 3})},
              {"mask", torch::ones({5}, torch::kBool)},
              {"step", torch::tensor(int64_t(3))}};
  save_safetensors(dir.file("ok.safetensors"), t, {{"note", "x"}});
  const std::string good = read_file(dir.file("ok.safetensors"));
  uint64_t header_len = 0;
  std::memcpy(&header_len, good.data(), 8);
  std::mt19937 rng(1234);
  const char interesting[] = "{}[]\":,0123456789-.eE \\ntfu\x00\xff";
  int loaded = 0, refused = 0;
  for (int iter = 0; iter < 4000; ++iter) {
    std::string bytes = good;
    int flips = 1 + static_cast<int>(rng() % 4);
    for (int f = 0; f < flips; ++f) {
      size_t pos = rng() % (8 + header_len);  // the length field and the header text
      bytes[pos] = (rng() % 2) ? static_cast<char>(rng() % 256)
                               : interesting[rng() % (sizeof(interesting) - 1)];
    }
    test::write_file(dir.file("fuzz.safetensors"), bytes);
    try {
      TensorMap back = load_safetensors(dir.file("fuzz.safetensors"));
      size_t bytes_loaded = 0;
      for (auto& kv : back) bytes_loaded += kv.second.numel() * kv.second.element_size();
      EXPECT_EQ(bytes_loaded, good.size() - 8 - header_len);  // what loads, tiles the data
      ++loaded;
    } catch (const IoError&) {
      ++refused;
    } catch (const std::exception& e) {
      ADD_FAILURE() << "iteration " << iter << ": non-IoError exception: " << e.what();
    }
  }
  EXPECT_GT(refused, 3000);
  EXPECT_GT(loaded, 0);  // flips inside names or metadata values keep a valid file
}

}  // namespace
}  // namespace st
