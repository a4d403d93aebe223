// Synthetic long-context tasks, generated in memory at any length (the `data synth`
// command writes them to shards; eval code calls make_synthetic directly).
//
//   passkey  a 5-digit pass key hidden at a random depth of repeated filler text
//   niah     multi-key needle in a haystack: four "special magic number for <key>"
//            needles at random depths; one key is asked for
//   mqar     multi-query associative recall: as many key=value pairs as fit, then four of
//            the keys asked for in turn, each answer a span of its own
//   vt       variable tracking: a chain VAR A = 12345, VAR B = VAR A, ... and a distractor
//            chain hidden in filler; the answer lists every name holding the value
//
// Each example is exactly `length` tokens and ends with its last answer; examples follow
// one another with no separator. Example k depends only on (task, seed, k), so asking for
// more examples leaves the first ones unchanged. Pieces of text are tokenized separately and
// concatenated, so lengths are exact for any tokenizer.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "data/shard.h"
#include "data/tokenizer.h"

namespace st {

struct SyntheticTasks {
  std::vector<uint32_t> tokens;
  std::vector<AnswerSpan> spans;  // in token order; one per answer
};

// Throws DataError for an unknown task or a length too short for the task (the message
// says the minimum).
SyntheticTasks make_synthetic(const std::string& task, int64_t length, int64_t count,
                              uint64_t seed, const Tokenizer& tokenizer);

const std::vector<std::string>& synthetic_task_names();

}  // namespace st
