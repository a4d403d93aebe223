// `data mix`: whole windows from weighted sources, spans carried along, deterministic.
#include <gtest/gtest.h>

#include "cli.h"
#include "data/mix.h"
#include "data/shard.h"
#include "io/read_file.h"
#include "oracle.h"

namespace st {
namespace {

constexpr int64_t kWindow = 10;

// A shard whose window w holds tokens base + w (every token of the window), so each output
// window names its source and position; `spans` marks [2, 5) as the answer of an example
// spanning [0, 6) in every window, plus one span that crosses from window 0 into window 1.
void write_source(const std::string& path, uint32_t base, int64_t windows, bool spans) {
  std::vector<uint32_t> tokens;
  std::vector<AnswerSpan> s;
  for (int64_t w = 0; w < windows; ++w) {
    for (int64_t t = 0; t < kWindow; ++t) tokens.push_back(base + uint32_t(w));
    const uint64_t b = uint64_t(w * kWindow);
    if (spans) s.push_back({b, b + 2, b + 5});
    if (spans && w == 0) s.push_back({b + 7, b + 9, b + 12});  // cut by the window edge: dropped
  }
  write_shard(path, tokens, 1000, s);
}

TEST(DataMix, CopiesWholeWindowsByWeightWithTheirSpans) {
  test::TempDir dir;
  write_source(dir.file("a.bin"), 100, 7, false);
  write_source(dir.file("b.bin"), 500, 3, true);
  const int64_t windows = 400;
  auto used = mix_shards({{dir.file("a.bin"), 3}, {dir.file("b.bin"), 1}}, dir.file("m.bin"), kWindow, windows, 5);
  ASSERT_EQ(used.size(), 2u);
  EXPECT_EQ(used[0].windows_available, 7);
  EXPECT_EQ(used[1].windows_available, 3);
  EXPECT_EQ(used[0].windows_used + used[1].windows_used, windows);
  EXPECT_NEAR(double(used[0].windows_used) / windows, 0.75, 0.07);

  TokenShard m(dir.file("m.bin"));
  ASSERT_EQ(m.size(), uint64_t(windows * kWindow));
  int64_t next_a = 0, next_b = 0;
  size_t span = 0;
  for (int64_t w = 0; w < windows; ++w) {
    const uint64_t b = uint64_t(w * kWindow);
    const uint32_t first = m[b];
    for (int64_t t = 1; t < kWindow; ++t) ASSERT_EQ(m[b + t], first) << "window " << w << " is not one source window";
    if (first < 500) {
      EXPECT_EQ(first, 100 + uint32_t(next_a++ % 7)) << "source a out of order at window " << w;
    } else {
      EXPECT_EQ(first, 500 + uint32_t(next_b++ % 3)) << "source b out of order at window " << w;
      ASSERT_LT(span, m.spans().size());
      EXPECT_EQ(m.spans()[span].example_begin, b);
      EXPECT_EQ(m.spans()[span].answer_begin, b + 2);
      EXPECT_EQ(m.spans()[span].answer_end, b + 5);
      ++span;
    }
  }
  EXPECT_EQ(span, m.spans().size());

  mix_shards({{dir.file("a.bin"), 3}, {dir.file("b.bin"), 1}}, dir.file("same.bin"), kWindow, windows, 5);
  mix_shards({{dir.file("a.bin"), 3}, {dir.file("b.bin"), 1}}, dir.file("other.bin"), kWindow, windows, 6);
  EXPECT_EQ(read_file(dir.file("same.bin")), read_file(dir.file("m.bin")));
  EXPECT_NE(read_file(dir.file("other.bin")), read_file(dir.file("m.bin")));
}

TEST(DataMix, CliTakesWeightsAndRefusesBadInput) {
  test::TempDir dir;
  write_source(dir.file("a.bin"), 100, 7, false);
  write_source(dir.file("b.bin"), 500, 3, true);
  auto r = test::run_cli("data mix " + dir.file("a.bin") + ":2 " + dir.file("b.bin") + " --window 10 --out " +
                         dir.file("m.bin"));
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_EQ(TokenShard(dir.file("m.bin")).size(), 100u);  // default: the 7 + 3 windows of the inputs
  EXPECT_NE(r.output.find("weight 2"), std::string::npos) << r.output;

  r = test::run_cli("data mix " + dir.file("a.bin") + ":0 --window 10 --out " + dir.file("x.bin"));
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.output.find("a.bin: weight 0 (expected a number > 0)"), std::string::npos) << r.output;
  r = test::run_cli("data mix " + dir.file("a.bin") + " --window 71 --out " + dir.file("x.bin"));
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.output.find("shorter than one window of 71"), std::string::npos) << r.output;
}

}  // namespace
}  // namespace st
