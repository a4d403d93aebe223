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
#include <optional>
#include <string>
#include <vector>

#include "data/shard.h"
#include "data/tokenizer.h"

namespace st {

struct SyntheticTasks {
  std::vector<uint32_t> tokens;
  std::vector<AnswerSpan> spans;  // in token order; one per answer
};

// `depth`, a fraction of the filler in [0, 1], places the needle that is asked for (passkey,
// niah) at that depth instead of a random one; everything else about each example stays as
// without it, so one seed at several depths moves only the needle. Throws DataError for an
// unknown task, a length too short for the task (the message says the minimum), or a depth
// out of range or given for a task without one needle asked for.
SyntheticTasks make_synthetic(const std::string& task, int64_t length, int64_t count,
                              uint64_t seed, const Tokenizer& tokenizer,
                              std::optional<double> depth = std::nullopt);

// Whether make_synthetic can place the task's asked-for needle at a depth.
bool synthetic_task_has_depth(const std::string& task);

const std::vector<std::string>& synthetic_task_names();

}  // namespace st
