// Synthetic long-context tasks (passkey, niah, mqar, vt from data/synthetic.h) scored by
// teacher-forced exact match: one forward pass per example, no sampling. An example is
// correct when the argmax of the logits at every answer position, each predicting the next
// token from the prefix, is the answer token. Beside it, answer-token accuracy (the fraction
// of answer tokens predicted right) shows progress that exact match hides, such as a model
// that gets some digits of a passkey. Both are reported per (length, needle depth), and
// attention sparsity per layer per length.
#pragma once
#include <optional>
#include <string>
#include <vector>

#include "data/shard.h"
#include "data/tokenizer.h"
#include "model/transformer.h"
#include "train/runtime.h"
#include "util/json.h"

namespace st {

struct TaskEvalConfig {
  std::string task;
  std::vector<int64_t> lengths;
  std::vector<double> depths;  // used only by tasks that can place their needle (passkey, niah)
  int64_t count = 8;           // examples per (length, depth)
  uint64_t seed = 0;           // the same examples at every depth: only the needle moves
};

struct TaskCell {
  int64_t length = 0;
  std::optional<double> depth;  // none: the generator's random depths
  int64_t correct = 0, total = 0;                // examples
  int64_t answer_tokens_correct = 0, answer_tokens = 0;
  double accuracy() const { return total > 0 ? double(correct) / double(total) : 0.0; }
  double token_accuracy() const { return answer_tokens > 0 ? double(answer_tokens_correct) / double(answer_tokens) : 0.0; }
};

struct TaskLengthSparsity {
  int64_t length = 0;
  std::vector<AttentionStats> layers;  // summed over every example at this length
};

struct TaskEvalResult {
  std::vector<TaskCell> cells;               // lengths outer, depths inner
  std::vector<TaskLengthSparsity> sparsity;  // one per length
};

// One example's answers: how many answer tokens the argmax predicts, out of how many.
struct AnswerScore {
  int64_t correct = 0, total = 0;
  bool exact() const { return correct == total; }
};

// logits [T, V] and tokens [T] of one example; spans are that example's answers, with
// positions in the stream the example starts at span.example_begin.
AnswerScore score_answers(const torch::Tensor& logits, const torch::Tensor& tokens, const std::vector<AnswerSpan>& spans);

// Throws DataError (unknown task, a length too short for it, a depth outside [0, 1]).
TaskEvalResult evaluate_task(Transformer& model, const Tokenizer& tokenizer, const Runtime& rt,
                             const TaskEvalConfig& cfg);

// JSON keys and table cells name a depth by its value; tasks without one say "random".
std::string depth_name(std::optional<double> depth);
// Every cell's counts summed (length and depth left unset): its accuracy() and
// token_accuracy() are the overall ones.
TaskCell all_cells(const TaskEvalResult& r);
// {"<length>": {"accuracy": {"<depth>": a}, "correct": {"<depth>": n},
//  "token_accuracy": {"<depth>": t}, "sparsity": s, "layer_sparsity": [..]}, ...}: what
// `eval --task --json` writes under "lengths".
JsonObject lengths_json(const TaskEvalResult& r);

}  // namespace st
