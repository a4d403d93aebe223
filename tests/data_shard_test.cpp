#include <gtest/gtest.h>

#include <cstring>
#include <fstream>

#include "data/shard.h"
#include "io/read_file.h"
#include "oracle.h"

namespace st {
namespace {

using test::TempDir;

// The message names the file and contains `needle`.
void expect_data_error(const std::string& path, const std::string& needle) {
  try {
    TokenShard shard(path);
    ADD_FAILURE() << "expected DataError mentioning '" << needle << "'";
  } catch (const DataError& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find(path), std::string::npos) << msg;
    EXPECT_NE(msg.find(needle), std::string::npos) << msg;
  }
}

TEST(Shard, RoundTripUint16WithSpans) {
  TempDir dir;
  std::vector<uint32_t> tokens = {0, 1, 256, 65535, 7, 9, 11};
  std::vector<AnswerSpan> spans = {{0, 2, 4}, {4, 6, 7}};
  write_shard(dir.file("a.bin"), tokens, 65536, spans);
  TokenShard shard(dir.file("a.bin"));
  EXPECT_EQ(shard.bytes_per_token(), 2);
  EXPECT_EQ(shard.vocab_size(), 65536u);
  ASSERT_EQ(shard.size(), tokens.size());
  for (size_t i = 0; i < tokens.size(); ++i) EXPECT_EQ(shard[i], tokens[i]);
  std::vector<int64_t> out(3);
  shard.read(3, 3, out.data());
  EXPECT_EQ(out, (std::vector<int64_t>{65535, 7, 9}));
  ASSERT_EQ(shard.spans().size(), 2u);
  EXPECT_EQ(shard.spans()[1].example_begin, 4u);
  EXPECT_EQ(shard.spans()[1].answer_begin, 6u);
  EXPECT_EQ(shard.spans()[1].answer_end, 7u);
  EXPECT_EQ(read_file(dir.file("a.bin")).size(), 64 + 2 * tokens.size() + 24 * spans.size());
  EXPECT_THROW(shard.read(5, 3, out.data()), DataError);
}

TEST(Shard, RoundTripUint32) {
  TempDir dir;
  std::vector<uint32_t> tokens = {0, 65536, 151642, 3};
  write_shard(dir.file("a.bin"), tokens, 151643);
  TokenShard shard(dir.file("a.bin"));
  EXPECT_EQ(shard.bytes_per_token(), 4);
  for (size_t i = 0; i < tokens.size(); ++i) EXPECT_EQ(shard[i], tokens[i]);
  EXPECT_TRUE(shard.spans().empty());
}

TEST(Shard, WriterRefusesBadTokensAndSpans) {
  TempDir dir;
  EXPECT_THROW(write_shard(dir.file("a.bin"), {1, 257}, 257), DataError);
  EXPECT_THROW(write_shard(dir.file("a.bin"), {1, 2}, 257, {{0, 1, 3}}), DataError);
  EXPECT_THROW(write_shard(dir.file("a.bin"), {1, 2}, 257, {{0, 1, 1}}), DataError);
  EXPECT_FALSE(std::filesystem::exists(dir.file("a.bin")));
}

TEST(Shard, CorruptedShardsGiveClearErrors) {
  TempDir dir;
  write_shard(dir.file("good.bin"), {1, 2, 3, 4, 5}, 257, {{0, 3, 5}});
  const std::string good = read_file(dir.file("good.bin"));
  const std::string path = dir.file("bad.bin");
  auto with = [&](size_t offset, const void* value, size_t n) {
    std::string b = good;
    std::memcpy(&b[offset], value, n);
    return b;
  };

  test::write_file(path, good.substr(0, good.size() - 1));
  expect_data_error(path, "truncated or corrupted");
  test::write_file(path, good.substr(0, 40));
  expect_data_error(path, "truncated: 40 bytes");
  test::write_file(path, good + "x");
  expect_data_error(path, "but the file has");
  test::write_file(path, with(0, "NOTTOKEN", 8));
  expect_data_error(path, "bad magic");
  uint32_t v = 2;
  test::write_file(path, with(8, &v, 4));
  expect_data_error(path, "version 2");
  v = 3;
  test::write_file(path, with(12, &v, 4));
  expect_data_error(path, "3 bytes per token");
  uint64_t n = 6;
  test::write_file(path, with(16, &n, 8));
  expect_data_error(path, "header says 6 tokens");
  n = uint64_t(1) << 62;  // a size that overflows when multiplied out
  test::write_file(path, with(16, &n, 8));
  expect_data_error(path, "truncated or corrupted");
  n = 70000;
  test::write_file(path, with(24, &n, 8));
  expect_data_error(path, "vocab size 70000 does not fit 2-byte tokens");
  n = 9;
  test::write_file(path, with(64 + 10 + 8, &n, 8));  // the span's answer_begin
  expect_data_error(path, "span 0");
  test::write_file(path, with(50, "\x01", 1));
  expect_data_error(path, "reserved header byte 50");
  expect_data_error(dir.file("missing.bin"), "cannot open");
}

}  // namespace
}  // namespace st
