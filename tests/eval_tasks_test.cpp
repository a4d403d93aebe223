// Synthetic-task evaluation: the exact-match scoring on hand-made logits, and `sparsetrain eval
// --task` end to end on a tiny checkpoint trained from the quickstart corpus (tools/test.sh
// prepares data/cache/kjv).
#include <gtest/gtest.h>
#include <torch/torch.h>
#include <yaml-cpp/yaml.h>

#include <filesystem>

#include "cli.h"
#include "data/synthetic.h"
#include "eval/tasks.h"
#include "oracle.h"

namespace st {
namespace {

// Logits [T, V] whose argmax at each position is `predicted[t]`.
torch::Tensor logits_predicting(const std::vector<int64_t>& predicted, int64_t vocab) {
  torch::Tensor logits = torch::zeros({int64_t(predicted.size()), vocab});
  for (size_t t = 0; t < predicted.size(); ++t) logits[int64_t(t)][predicted[t]] = 1.0;
  return logits;
}

TEST(EvalTasks, ExactMatchNeedsEveryAnswerTokenAndNothingElse) {
  // An example starting at stream position 100 whose answer is tokens [4, 6) = {7, 8}.
  const torch::Tensor tokens = torch::tensor({1, 2, 3, 4, 7, 8}, torch::kLong);
  const std::vector<AnswerSpan> spans = {{100, 104, 106}};
  auto score = [&](std::vector<int64_t> predicted, const std::vector<AnswerSpan>& s) {
    const AnswerScore a = score_answers(logits_predicting(predicted, 10), tokens, s);
    return std::make_tuple(a.exact(), a.correct, a.total);
  };
  // The logits at t predict token t + 1, so positions 3 and 4 must say 7 and 8.
  EXPECT_EQ(score({2, 3, 4, 7, 8, 0}, spans), std::make_tuple(true, 2, 2));
  EXPECT_EQ(score({2, 3, 4, 7, 9, 0}, spans), std::make_tuple(false, 1, 2));
  EXPECT_EQ(score({2, 3, 4, 5, 8, 0}, spans), std::make_tuple(false, 1, 2));
  EXPECT_EQ(score({2, 3, 4, 5, 9, 0}, spans), std::make_tuple(false, 0, 2));
  // Predictions outside the answer, and after its last token, do not matter.
  EXPECT_EQ(score({9, 9, 9, 7, 8, 9}, spans), std::make_tuple(true, 2, 2));
  // With two answers (mqar), both must match; tokens count over both.
  const std::vector<AnswerSpan> two = {{100, 101, 102}, {100, 104, 106}};
  EXPECT_EQ(score({2, 3, 4, 7, 8, 0}, two), std::make_tuple(true, 3, 3));
  EXPECT_EQ(score({5, 3, 4, 7, 8, 0}, two), std::make_tuple(false, 2, 3));
}

TEST(EvalTasks, DepthPlacesTheNeedleAndKeepsTheAnswer) {
  const auto tok = load_tokenizer("byte");
  const SyntheticTasks top = make_synthetic("passkey", 600, 1, 3, *tok, 0.0);
  const SyntheticTasks bottom = make_synthetic("passkey", 600, 1, 3, *tok, 1.0);
  const std::string a = tok->decode(top.tokens), b = tok->decode(bottom.tokens);
  EXPECT_EQ(a.find("The pass key is"), a.find('\n') + 1);  // right after the instruction line
  const std::string needle_end = "is the pass key. ";
  EXPECT_EQ(b.rfind(needle_end) + needle_end.size(), b.find("\nWhat is the pass key?"));  // right before the question
  const auto answer = [](const SyntheticTasks& t) {
    return std::vector<uint32_t>(t.tokens.begin() + long(t.spans[0].answer_begin), t.tokens.begin() + long(t.spans[0].answer_end));
  };
  EXPECT_EQ(answer(top), answer(bottom));
  EXPECT_THROW(make_synthetic("mqar", 600, 1, 3, *tok, 0.5), DataError);
  EXPECT_THROW(make_synthetic("niah", 600, 1, 3, *tok, 1.5), DataError);
}

TEST(EvalTasks, CliReportsAccuracyPerLengthAndDepthAndSparsityPerLayer) {
  if (!std::filesystem::exists(test::source_path("data/cache/kjv/train.bin")))
    FAIL() << "data/cache/kjv/train.bin is missing: run data/kjv.sh (tools/test.sh does)";
  test::TempDir dir;
  auto train = test::run_cli("train recipes/tiny.yaml --set run.out_dir=" + dir.file("runs") +
                             " --set run.name=t --set train.steps=2");
  ASSERT_EQ(train.code, 0) << train.output;
  const std::string run = dir.file("runs/t");

  auto r = test::run_cli("eval " + run + " --task passkey --lengths 512 --count 2 --json " + dir.file("out.json"));
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("sparsity per layer"), std::string::npos) << r.output;
  YAML::Node out = YAML::LoadFile(dir.file("out.json"));
  EXPECT_EQ(out["task"].as<std::string>(), "passkey");
  YAML::Node at512 = out["lengths"]["512"];
  ASSERT_TRUE(at512) << YAML::Dump(out);
  for (const char* depth : {"0", "0.25", "0.5", "0.75", "1"}) {
    ASSERT_TRUE(at512["accuracy"][depth]) << "depth " << depth << ": " << YAML::Dump(out);
    const double accuracy = at512["accuracy"][depth].as<double>(), tokens = at512["token_accuracy"][depth].as<double>();
    EXPECT_GE(accuracy, 0.0);
    EXPECT_LE(accuracy, 1.0);
    // Every exactly matched example has all its answer tokens right.
    EXPECT_GE(tokens, accuracy);
    EXPECT_LE(tokens, 1.0);
  }
  EXPECT_GE(out["token_accuracy"].as<double>(), out["accuracy"].as<double>());
  ASSERT_EQ(at512["layer_sparsity"].size(), 2u);  // configs/tiny.yaml has 2 layers
  for (const auto& s : at512["layer_sparsity"]) EXPECT_EQ(s.as<double>(), 0.0);  // dense attention

  auto bad = test::run_cli("eval " + run + " --task sudoku --lengths 512");
  EXPECT_EQ(bad.code, 2) << bad.output;
  EXPECT_NE(bad.output.find("unknown task 'sudoku'"), std::string::npos) << bad.output;
}

}  // namespace
}  // namespace st
