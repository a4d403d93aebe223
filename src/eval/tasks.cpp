#include "eval/tasks.h"

#include <fmt/format.h>

#include "data/synthetic.h"
#include "train/evaluate.h"

namespace st {

AnswerScore score_answers(const torch::Tensor& logits, const torch::Tensor& tokens, const std::vector<AnswerSpan>& spans) {
  const torch::Tensor predicted = logits.argmax(-1).to(torch::kCPU);
  const torch::Tensor expected = tokens.to(torch::kCPU).to(torch::kLong);
  AnswerScore score;
  for (const AnswerSpan& s : spans) {
    const int64_t begin = int64_t(s.answer_begin - s.example_begin), end = int64_t(s.answer_end - s.example_begin);
    // The logits at position p predict token p + 1.
    score.correct += predicted.slice(0, begin - 1, end - 1).eq(expected.slice(0, begin, end)).sum().item<int64_t>();
    score.total += end - begin;
  }
  return score;
}

namespace {

// Scores `count` examples of one (length, depth), one forward pass each (a batch of long
// sequences' logits would not fit), adding each layer's attention stats to `layers`.
TaskCell score_cell(Transformer& model, const Tokenizer& tokenizer, const Runtime& rt, const TaskEvalConfig& cfg,
                    int64_t length, std::optional<double> depth, std::vector<AttentionStats>& layers) {
  const SyntheticTasks data = make_synthetic(cfg.task, length, cfg.count, cfg.seed, tokenizer, depth);
  const auto variants = model->attention_variants();
  const torch::Tensor all = torch::tensor(std::vector<int64_t>(data.tokens.begin(), data.tokens.end()), torch::kLong);
  TaskCell cell{length, depth, 0, cfg.count, 0, 0};
  size_t next_span = 0;
  for (int64_t k = 0; k < cfg.count; ++k) {
    const uint64_t begin = uint64_t(k * length);
    std::vector<AnswerSpan> spans;
    while (next_span < data.spans.size() && data.spans[next_span].example_begin == begin)
      spans.push_back(data.spans[next_span++]);
    const torch::Tensor tokens = all.slice(0, int64_t(begin), int64_t(begin) + length);
    torch::Tensor logits;
    {
      AutocastScope autocast(rt);
      logits = model(tokens.unsqueeze(0).to(rt.device))[0];
    }
    const AnswerScore score = score_answers(logits, tokens, spans);
    cell.correct += score.exact();
    cell.answer_tokens_correct += score.correct;
    cell.answer_tokens += score.total;
    for (size_t l = 0; l < variants.size(); ++l) layers[l] += variants[l]->stats;
  }
  return cell;
}

}  // namespace

TaskEvalResult evaluate_task(Transformer& model, const Tokenizer& tokenizer, const Runtime& rt,
                             const TaskEvalConfig& cfg) {
  torch::NoGradGuard no_grad;
  model->eval();
  const auto variants = model->attention_variants();
  for (auto& v : variants) v->record_stats = true;
  std::vector<std::optional<double>> depths = {std::nullopt};
  if (synthetic_task_has_depth(cfg.task)) depths.assign(cfg.depths.begin(), cfg.depths.end());
  TaskEvalResult r;
  for (int64_t length : cfg.lengths) {
    TaskLengthSparsity sparsity{length, std::vector<AttentionStats>(variants.size())};
    for (const auto& depth : depths) r.cells.push_back(score_cell(model, tokenizer, rt, cfg, length, depth, sparsity.layers));
    r.sparsity.push_back(std::move(sparsity));
  }
  for (auto& v : variants) v->record_stats = false;
  model->train();
  return r;
}

std::string depth_name(std::optional<double> depth) { return depth ? fmt::format("{}", *depth) : "random"; }

TaskCell all_cells(const TaskEvalResult& r) {
  TaskCell sum;
  for (const TaskCell& c : r.cells) {
    sum.correct += c.correct;
    sum.total += c.total;
    sum.answer_tokens_correct += c.answer_tokens_correct;
    sum.answer_tokens += c.answer_tokens;
  }
  return sum;
}

JsonObject lengths_json(const TaskEvalResult& r) {
  JsonObject by_length;
  for (const TaskLengthSparsity& s : r.sparsity) {
    JsonObject accuracy, correct, token_accuracy;
    for (const TaskCell& c : r.cells)
      if (c.length == s.length) {
        accuracy.add(depth_name(c.depth), c.accuracy());
        correct.add(depth_name(c.depth), c.correct);
        token_accuracy.add(depth_name(c.depth), c.token_accuracy());
      }
    by_length.add(std::to_string(s.length), JsonObject().add("accuracy", accuracy).add("correct", correct)
                                                 .add("token_accuracy", token_accuracy)
                                                 .add("sparsity", sparsity_of_all(s.layers))
                                                 .add("layer_sparsity", sparsity_per_layer(s.layers)));
  }
  return by_length;
}

}  // namespace st
