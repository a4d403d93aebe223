// End to end: the `sparsetrain data` subcommands as a user runs them.
#include <gtest/gtest.h>

#include <fstream>

#include "data/byte_tokenizer.h"
#include "data/shard.h"
#include "cli.h"
#include "oracle.h"

namespace st {
namespace {

using test::run_cli;
using Result = test::CliResult;

std::string shard_text(const TokenShard& shard, uint64_t begin, uint64_t end) {
  std::vector<uint32_t> ids;
  for (uint64_t i = begin; i < end; ++i) ids.push_back(shard[i] == ByteTokenizer::kEos ? '|' : shard[i]);
  return ByteTokenizer().decode(ids);
}

TEST(DataCli, TokenizeSplitsParagraphsIntoDocuments) {
  test::TempDir dir;
  std::ofstream(dir.file("a.txt")) << "first doc\nline two\n\n\n  \nsecond\n";
  std::ofstream(dir.file("b.txt")) << "third\n\nfourth";
  Result r = run_cli("data tokenize " + dir.file("a.txt") + " " + dir.file("b.txt") + " --out " + dir.file("t.bin"));
  ASSERT_EQ(r.code, 0) << r.output;
  TokenShard shard(dir.file("t.bin"));
  EXPECT_EQ(shard.vocab_size(), 257u);
  EXPECT_EQ(shard_text(shard, 0, shard.size()), "first doc\nline two\n|second\n|third\n|fourth|");

  r = run_cli("data tokenize " + dir.file("a.txt") + " --split file --out " + dir.file("f.bin"));
  ASSERT_EQ(r.code, 0) << r.output;
  TokenShard whole(dir.file("f.bin"));
  EXPECT_EQ(shard_text(whole, 0, whole.size()), "first doc\nline two\n\n\n  \nsecond\n|");
}

TEST(DataCli, ValidationFractionTakesEvenlySpreadDocuments) {
  test::TempDir dir;
  {
    std::ofstream f(dir.file("c.txt"));
    for (int i = 0; i < 100; ++i) f << "doc " << i << "\n\n";
  }
  Result r = run_cli("data tokenize " + dir.file("c.txt") + " --out " + dir.file("train.bin") +
                     " --val-fraction 0.1 --val-out " + dir.file("val.bin"));
  ASSERT_EQ(r.code, 0) << r.output;
  TokenShard train(dir.file("train.bin")), val(dir.file("val.bin"));
  std::string v = shard_text(val, 0, val.size());
  EXPECT_EQ(v, "doc 9\n|doc 19\n|doc 29\n|doc 39\n|doc 49\n|doc 59\n|doc 69\n|doc 79\n|doc 89\n|doc 99\n|");
  std::string t = shard_text(train, 0, train.size());
  EXPECT_EQ(std::count(t.begin(), t.end(), '|'), 90);
  EXPECT_EQ(t.find("doc 9\n"), std::string::npos);

  r = run_cli("data tokenize " + dir.file("c.txt") + " --out " + dir.file("x.bin") + " --val-fraction 0.1");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.output.find("--val-out"), std::string::npos) << r.output;
}

TEST(DataCli, SynthWritesSpansAndCheckValidates) {
  test::TempDir dir;
  Result r = run_cli("data synth --task passkey --length 777 --count 4 --seed 5 --out " + dir.file("p.bin"));
  ASSERT_EQ(r.code, 0) << r.output;
  TokenShard shard(dir.file("p.bin"));
  EXPECT_EQ(shard.size(), 4u * 777u);
  ASSERT_EQ(shard.spans().size(), 4u);
  EXPECT_EQ(shard.spans()[3].answer_end, 4u * 777u);

  r = run_cli("data check " + dir.file("p.bin"));
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("answer spans 4"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("ok"), std::string::npos) << r.output;
}

TEST(DataCli, CheckFindsBadTokensAndCorruption) {
  test::TempDir dir;
  write_shard(dir.file("s.bin"), {1, 2, 3, 200}, 257);
  {  // claim a vocabulary of 100: token 200 at index 3 is now out of range
    std::fstream f(dir.file("s.bin"), std::ios::in | std::ios::out | std::ios::binary);
    uint64_t vocab = 100;
    f.seekp(24);
    f.write(reinterpret_cast<const char*>(&vocab), 8);
  }
  Result r = run_cli("data check " + dir.file("s.bin"));
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.output.find("token 200 at index 3"), std::string::npos) << r.output;

  std::ofstream(dir.file("junk.bin")) << std::string(100, 'x');
  r = run_cli("data check " + dir.file("junk.bin"));
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.output.find(dir.file("junk.bin") + ": bad magic"), std::string::npos) << r.output;
}

}  // namespace
}  // namespace st
