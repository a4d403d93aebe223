#include <gtest/gtest.h>

#include <fstream>

#include "cli.h"
#include "data/bpe_tokenizer.h"
#include "data/nfc.h"
#include "data/pretokenize.h"
#include "data/shard.h"
#include "io/read_file.h"
#include "oracle.h"

namespace st {
namespace {

std::vector<uint32_t> read_ids(const std::string& path) {
  std::string b = read_file(path);
  std::vector<uint32_t> ids(b.size() / 4);
  std::memcpy(ids.data(), b.data(), ids.size() * 4);
  return ids;
}

std::vector<std::string> pieces(std::string_view text, SplitPattern p) {
  std::vector<std::string> out;
  for (std::string_view s : pretokenize(text, p)) out.emplace_back(s);
  return out;
}

using Pieces = std::vector<std::string>;

TEST(Pretokenize, Gpt2Pattern) {
  EXPECT_EQ(pieces("Hello  world's 123 ab12!!  \n x", SplitPattern::kGpt2),
            (Pieces{"Hello", " ", " world", "'s", " 123", " ab", "12", "!!", "  \n", " x"}));
  EXPECT_EQ(pieces("I'M  ", SplitPattern::kGpt2), (Pieces{"I", "'", "M", "  "}));  // case-sensitive
  EXPECT_EQ(pieces("über 中文", SplitPattern::kGpt2), (Pieces{"über", " 中文"}));
}

TEST(Pretokenize, Llama3AndQwen2Patterns) {
  EXPECT_EQ(pieces("I'M 12345 (foo)\n\n  bar", SplitPattern::kLlama3),
            (Pieces{"I", "'M", " ", "123", "45", " (", "foo", ")\n\n", " ", " bar"}));
  EXPECT_EQ(pieces("x  \n \n  y", SplitPattern::kLlama3), (Pieces{"x", "  \n \n", " ", " y"}));
  EXPECT_EQ(pieces("12345", SplitPattern::kQwen2), (Pieces{"1", "2", "3", "4", "5"}));
  EXPECT_EQ(pieces("$abc", SplitPattern::kLlama3), (Pieces{"$abc"}));
  // Invalid UTF-8 bytes are single "other" characters and survive unchanged.
  std::string bad = "a\xff\xfe b";
  std::string joined;
  for (const std::string& p : pieces(bad, SplitPattern::kLlama3)) joined += p;
  EXPECT_EQ(joined, bad);
}

// A tokenizer.json trained by the `tokenizers` library on a few MB of prose, code, many
// scripts, emoji, contractions, digit and whitespace runs, with special tokens inside the
// text: our ids must equal the library's, id for id, and decode back to the text.
void expect_same_ids_as_tokenizers(const std::string& kind) {
  test::TempDir dir;
  ASSERT_EQ(test::run_oracle("bpe_oracle.py", dir.path().string() + " " + kind), 0);
  const std::string text = read_file(dir.file("text.txt"));
  const std::vector<uint32_t> want = read_ids(dir.file("ids.bin"));
  ASSERT_GT(text.size(), 3000000u);
  for (const char* json : {"tokenizer.json", "legacy/tokenizer.json"}) {
    SCOPED_TRACE(std::string(kind) + " " + json);
    auto tok = load_bpe_tokenizer(dir.file(json));
    EXPECT_EQ(tok->vocab_size(), kind == "qwen2nfc" ? 3001u : 3000u);  // + one added token
    EXPECT_EQ(tok->eos(), 0u);  // <|endoftext|>, the first special token
    std::vector<uint32_t> got = tok->encode(text);
    size_t first_diff = 0;
    while (first_diff < std::min(got.size(), want.size()) && got[first_diff] == want[first_diff]) ++first_diff;
    if (first_diff < std::max(got.size(), want.size())) {
      auto context = [&](const std::vector<uint32_t>& ids) {
        size_t b = first_diff >= 5 ? first_diff - 5 : 0, e = std::min(ids.size(), first_diff + 5);
        return tok->decode(std::vector<uint32_t>(ids.begin() + b, ids.begin() + e));
      };
      ADD_FAILURE() << "ids differ at " << first_diff << " of " << want.size() << "\nours:   [" << context(got)
                    << "]\ntheirs: [" << context(want) << "]";
    }
    EXPECT_EQ(tok->decode(want), kind == "qwen2nfc" ? read_file(dir.file("nfc.txt")) : text);
  }
}

TEST(BpeTokenizer, Gpt2StyleMatchesTokenizersLibrary) { expect_same_ids_as_tokenizers("gpt2"); }
TEST(BpeTokenizer, Llama3StyleMatchesTokenizersLibrary) { expect_same_ids_as_tokenizers("llama3"); }
TEST(BpeTokenizer, Qwen2StyleMatchesTokenizersLibrary) { expect_same_ids_as_tokenizers("qwen2"); }
TEST(BpeTokenizer, Qwen2WithNfcMatchesTokenizersLibrary) { expect_same_ids_as_tokenizers("qwen2nfc"); }

// NFC against Python's unicodedata on the same text: every canonically decomposable
// character up to U+3000 in both forms, reordering cases, Hangul, exclusions, singletons.
TEST(Nfc, MatchesUnicodedata) {
  test::TempDir dir;
  ASSERT_EQ(test::run_oracle("bpe_oracle.py", dir.path().string() + " gpt2"), 0);
  const std::string want = read_file(dir.file("nfc.txt"));
  EXPECT_NE(want, read_file(dir.file("text.txt")));
  EXPECT_TRUE(nfc(read_file(dir.file("text.txt"))) == want);
  EXPECT_EQ(nfc("A\u030a \u212b \u1100\u1161\u11a8 a\u0307\u0323"), "\u00c5 \u00c5 \uac01 \u1ea1\u0307");
  EXPECT_EQ(nfc("\xff\xfe caf\u00e9"), "\xff\xfe caf\u00e9");  // invalid bytes pass through
}

TEST(BpeTokenizer, EosAndUnsupportedFeatures) {
  test::TempDir dir;
  ASSERT_EQ(test::run_oracle("bpe_oracle.py", dir.path().string() + " llama3"), 0);
  const std::string json = read_file(dir.file("tokenizer.json"));
  std::ofstream(dir.file("tokenizer_config.json")) << R"({"eos_token": {"content": "<tool>"}})";
  EXPECT_EQ(load_bpe_tokenizer(dir.file("tokenizer.json"))->eos(), 2u);
  std::ofstream(dir.file("tokenizer_config.json")) << R"({"eos_token": "<nope>"})";
  EXPECT_THROW(load_bpe_tokenizer(dir.file("tokenizer.json")), DataError);

  auto expect_refused = [&](const std::string& from, const std::string& to, const std::string& needle) {
    std::string edited = json;
    size_t at = edited.find(from);
    ASSERT_NE(at, std::string::npos) << from;
    edited.replace(at, from.size(), to);
    std::filesystem::create_directories(dir.file("bad"));
    std::ofstream(dir.file("bad/tokenizer.json")) << edited;
    try {
      load_bpe_tokenizer(dir.file("bad/tokenizer.json"));
      ADD_FAILURE() << "accepted " << to;
    } catch (const DataError& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("bad/tokenizer.json"), std::string::npos) << e.what();
    }
  };
  expect_refused("\"normalizer\": null", "\"normalizer\": {\"type\": \"NFKC\"}", "normalizer 'NFKC'");
  expect_refused("\"type\": \"BPE\"", "\"type\": \"WordPiece\"", "model type 'WordPiece'");
  expect_refused("\"byte_fallback\": false", "\"byte_fallback\": true", "byte_fallback");
  expect_refused("\\\\p{N}{1,3}", "\\\\p{N}{1,4}", "Split regex");
  expect_refused("\"lstrip\": false", "\"lstrip\": true", "lstrip");
  expect_refused("\"behavior\": \"Isolated\"", "\"behavior\": \"Removed\"", "Isolated");
  expect_refused("\"type\": \"Split\"", "\"type\": \"Digits\"", "Sequence");
}

TEST(BpeTokenizer, DataTokenizeUsesIt) {
  test::TempDir dir;
  ASSERT_EQ(test::run_oracle("bpe_oracle.py", dir.path().string() + " gpt2"), 0);
  std::ofstream(dir.file("in.txt")) << "Hello world, it's 2026.\n\nSecond document: 中文 <tool> done.\n";
  auto r = test::run_cli("data tokenize " + dir.file("in.txt") + " --tokenizer " + dir.file("tokenizer.json") +
                         " --out " + dir.file("s.bin"));
  ASSERT_EQ(r.code, 0) << r.output;
  auto tok = load_bpe_tokenizer(dir.file("tokenizer.json"));
  std::vector<uint32_t> want = tok->encode("Hello world, it's 2026.\n");
  want.push_back(tok->eos());
  std::vector<uint32_t> second = tok->encode("Second document: 中文 <tool> done.\n");
  want.insert(want.end(), second.begin(), second.end());
  want.push_back(tok->eos());
  TokenShard shard(dir.file("s.bin"));
  EXPECT_EQ(shard.vocab_size(), 3000u);
  ASSERT_EQ(shard.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) EXPECT_EQ(shard[i], want[i]) << i;
}

}  // namespace
}  // namespace st
