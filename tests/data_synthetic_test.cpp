#include <gtest/gtest.h>

#include <regex>

#include "data/byte_tokenizer.h"
#include "data/synthetic.h"

namespace st {
namespace {

// A tokenizer whose tokens are byte pairs: lengths in tokens and in bytes differ, so exact
// lengths cannot come from counting bytes.
class PairTokenizer : public Tokenizer {
 public:
  std::vector<uint32_t> encode(std::string_view text) const override {
    std::vector<uint32_t> ids;
    for (size_t i = 0; i < text.size(); i += 2)
      ids.push_back(i + 1 < text.size() ? 256 + 256 * uint8_t(text[i]) + uint8_t(text[i + 1]) : uint8_t(text[i]));
    return ids;
  }
  std::string decode(const std::vector<uint32_t>& ids) const override {
    std::string s;
    for (uint32_t id : ids) {
      if (id < 256) s += char(id);
      else s += std::string{char((id - 256) / 256), char((id - 256) % 256)};
    }
    return s;
  }
  uint64_t vocab_size() const override { return 256 + 65536 + 1; }
  uint32_t eos() const override { return 256 + 65536; }
};

std::string decode_range(const Tokenizer& tok, const SyntheticTasks& t, uint64_t begin, uint64_t end) {
  return tok.decode(std::vector<uint32_t>(t.tokens.begin() + begin, t.tokens.begin() + end));
}

// Examples are back to back, exactly `length` tokens, each ending with its last answer.
void expect_layout(const SyntheticTasks& t, int64_t length, int64_t count, size_t answers_per_example) {
  ASSERT_EQ(t.tokens.size(), size_t(length * count));
  ASSERT_EQ(t.spans.size(), size_t(count) * answers_per_example);
  for (int64_t k = 0; k < count; ++k) {
    for (size_t a = 0; a < answers_per_example; ++a) {
      const AnswerSpan& s = t.spans[k * answers_per_example + a];
      EXPECT_EQ(s.example_begin, uint64_t(k * length));
      EXPECT_LT(s.answer_begin, s.answer_end);
      if (a + 1 == answers_per_example) {
        EXPECT_EQ(s.answer_end, uint64_t((k + 1) * length));
      }
    }
  }
}

TEST(Synthetic, ExactLengthsForEveryTaskAndTokenizer) {
  ByteTokenizer bytes;
  PairTokenizer pairs;
  for (const std::string& task : synthetic_task_names())
    for (const Tokenizer* tok : {static_cast<const Tokenizer*>(&bytes), static_cast<const Tokenizer*>(&pairs)})
      for (int64_t length : {500, 1001, 4099, 65537}) {
        SCOPED_TRACE(task + " " + std::to_string(length));
        expect_layout(make_synthetic(task, length, 3, 11, *tok), length, 3, task == "mqar" ? 4 : 1);
      }
}

TEST(Synthetic, PasskeyAnswerIsTheHiddenKey) {
  ByteTokenizer tok;
  auto t = make_synthetic("passkey", 3000, 8, 1, tok);
  std::set<uint64_t> needle_positions;
  for (const AnswerSpan& s : t.spans) {
    std::string answer = decode_range(tok, t, s.answer_begin, s.answer_end);
    std::string prompt = decode_range(tok, t, s.example_begin, s.answer_begin);
    EXPECT_TRUE(std::regex_match(answer, std::regex("[0-9]{5}"))) << answer;
    size_t at = prompt.find("The pass key is " + answer + ". Remember it. " + answer + " is the pass key.");
    EXPECT_NE(at, std::string::npos);
    needle_positions.insert(at);
    EXPECT_TRUE(prompt.size() >= 38 && prompt.substr(prompt.size() - 38) == "What is the pass key? The pass key is ")
        << prompt.substr(prompt.size() - 60);
  }
  EXPECT_GT(needle_positions.size(), 4u);  // the depth varies between examples
}

TEST(Synthetic, NeedleAnswerBelongsToTheAskedKey) {
  ByteTokenizer tok;
  auto t = make_synthetic("niah", 5000, 6, 2, tok);
  for (const AnswerSpan& s : t.spans) {
    std::string prompt = decode_range(tok, t, s.example_begin, s.answer_begin);
    std::string answer = decode_range(tok, t, s.answer_begin, s.answer_end);
    std::smatch m;
    ASSERT_TRUE(std::regex_search(prompt, m, std::regex("special magic number for ([a-z]+-[a-z]+)\\? ")));
    std::string key = m[1];
    EXPECT_NE(prompt.find("One of the special magic numbers for " + key + " is: " + answer + "."), std::string::npos);
    int needles = 0;
    for (size_t at = prompt.find("One of the special"); at != std::string::npos; at = prompt.find("One of the special", at + 1))
      ++needles;
    EXPECT_EQ(needles, 4);
  }
}

TEST(Synthetic, AssociativeRecallAnswersMatchTheirKeys) {
  ByteTokenizer tok;
  const int64_t length = 2000;
  auto t = make_synthetic("mqar", length, 3, 3, tok);
  for (const AnswerSpan& s : t.spans) {
    std::string prompt = decode_range(tok, t, s.example_begin, s.answer_begin);
    std::string answer = decode_range(tok, t, s.answer_begin, s.answer_end);
    std::string key = prompt.substr(prompt.size() - 5, 4);  // "....key=" ends the prompt
    ASSERT_EQ(prompt.back(), '=');
    size_t recall = prompt.find("Recall the values.");
    ASSERT_NE(recall, std::string::npos);
    // The pair was stated earlier, exactly once.
    std::string list = prompt.substr(0, recall);
    size_t at = list.find("\n" + key + "=");
    ASSERT_NE(at, std::string::npos) << key;
    EXPECT_EQ(list.substr(at + 6, answer.size() + 1), answer + "\n");
    EXPECT_EQ(list.find("\n" + key + "=", at + 1), std::string::npos);
  }
  // Most of the context is pairs, not filler.
  std::string first = decode_range(tok, t, 0, length);
  EXPECT_GT(std::count(first.begin(), first.end(), '='), 150);
}

TEST(Synthetic, VariableTrackingAnswerIsTheChain) {
  ByteTokenizer tok;
  auto t = make_synthetic("vt", 3000, 5, 4, tok);
  for (const AnswerSpan& s : t.spans) {
    std::string prompt = decode_range(tok, t, s.example_begin, s.answer_begin);
    std::string answer = decode_range(tok, t, s.answer_begin, s.answer_end);
    std::smatch m;
    ASSERT_TRUE(std::regex_search(prompt, m, std::regex("assigned the value ([0-9]{5}) ")));
    std::string value = m[1];
    ASSERT_TRUE(std::regex_match(answer, std::regex("[A-Z]{5}( [A-Z]{5}){3}"))) << answer;
    std::vector<std::string> names;
    for (size_t i = 0; i < answer.size(); i += 6) names.push_back(answer.substr(i, 5));
    size_t at = prompt.find("VAR " + names[0] + " = " + value + ".");
    ASSERT_NE(at, std::string::npos);
    for (size_t h = 1; h < names.size(); ++h) {
      size_t next = prompt.find("VAR " + names[h] + " = VAR " + names[h - 1] + ".");
      ASSERT_NE(next, std::string::npos);
      EXPECT_GT(next, at);  // assignments appear in chain order
      at = next;
    }
    EXPECT_EQ(std::count(prompt.begin(), prompt.end(), '='), 8);  // plus a distractor chain
  }
}

TEST(Synthetic, DeterministicPerSeedAndIndependentOfCount) {
  ByteTokenizer tok;
  for (const std::string& task : synthetic_task_names()) {
    auto a = make_synthetic(task, 700, 2, 9, tok);
    auto b = make_synthetic(task, 700, 5, 9, tok);
    auto c = make_synthetic(task, 700, 2, 10, tok);
    EXPECT_TRUE(std::equal(a.tokens.begin(), a.tokens.end(), b.tokens.begin())) << task;
    EXPECT_NE(a.tokens, c.tokens) << task;
    EXPECT_NE(std::vector<uint32_t>(a.tokens.begin(), a.tokens.begin() + 700),
              std::vector<uint32_t>(a.tokens.begin() + 700, a.tokens.end()))
        << task;
  }
}

TEST(Synthetic, TooShortOrUnknownIsAnError) {
  ByteTokenizer tok;
  for (const std::string& task : synthetic_task_names()) {
    try {
      make_synthetic(task, 50, 1, 0, tok);
      ADD_FAILURE() << task;
    } catch (const DataError& e) {
      EXPECT_NE(std::string(e.what()).find("needs at least"), std::string::npos) << e.what();
    }
  }
  EXPECT_THROW(make_synthetic("sorting", 1000, 1, 0, tok), DataError);
}

}  // namespace
}  // namespace st
