#include "data/mix.h"

#include <fmt/format.h>

#include <cmath>
#include <memory>

#include "data/shard.h"
#include "data/splitmix.h"

namespace st {

std::vector<MixedInput> mix_shards(const std::vector<MixInput>& inputs, const std::string& out, int64_t window,
                                   int64_t windows, uint64_t seed) {
  std::vector<std::unique_ptr<TokenShard>> shards;
  std::vector<MixedInput> used(inputs.size());
  std::vector<double> cumulative;
  double total_weight = 0;
  uint64_t vocab = 0;
  for (size_t i = 0; i < inputs.size(); ++i) {
    if (!(inputs[i].weight > 0 && std::isfinite(inputs[i].weight)))
      throw DataError(fmt::format("{}: weight {} (expected a number > 0)", inputs[i].path, inputs[i].weight));
    shards.push_back(std::make_unique<TokenShard>(inputs[i].path));
    used[i].windows_available = int64_t(shards[i]->size() / uint64_t(window));
    if (used[i].windows_available == 0)
      throw DataError(fmt::format("{}: {} tokens, shorter than one window of {}", inputs[i].path, shards[i]->size(), window));
    vocab = std::max(vocab, shards[i]->vocab_size());
    cumulative.push_back(total_weight += inputs[i].weight);
  }

  std::vector<uint32_t> tokens;
  tokens.reserve(size_t(windows * window));
  std::vector<AnswerSpan> spans;
  std::vector<size_t> next_span(inputs.size(), 0);  // per input: first span not before its window
  for (int64_t w = 0; w < windows; ++w) {
    // A uniform draw in [0, total_weight) from (seed, window index).
    const double u = double(splitmix64(seed ^ splitmix64(uint64_t(w))) >> 11) * 0x1.0p-53 * total_weight;
    size_t i = 0;
    while (i + 1 < inputs.size() && u >= cumulative[i]) ++i;
    const TokenShard& shard = *shards[i];
    const int64_t k = used[i].windows_used++ % used[i].windows_available;
    if (k == 0) next_span[i] = 0;  // starting over
    const uint64_t begin = uint64_t(k * window), end = begin + uint64_t(window), out_begin = tokens.size();
    for (uint64_t t = begin; t < end; ++t) tokens.push_back(shard[t]);
    const auto& in_spans = shard.spans();
    size_t& s = next_span[i];
    while (s < in_spans.size() && in_spans[s].example_begin < begin) ++s;
    for (; s < in_spans.size() && in_spans[s].answer_end <= end; ++s)
      spans.push_back({in_spans[s].example_begin - begin + out_begin, in_spans[s].answer_begin - begin + out_begin,
                       in_spans[s].answer_end - begin + out_begin});
  }
  write_shard(out, tokens, vocab, spans);
  return used;
}

}  // namespace st
