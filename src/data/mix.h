// Mixing token shards by weight, one training window at a time: the output is `windows`
// windows of `window` tokens, each copied whole from one input, chosen at random with
// probability proportional to the input's weight; each input hands out its windows in
// order and starts over when it runs out. With window = train.seq_len + 1 every training
// sequence comes from one source, and a synthetic shard made with `data synth --length
// <window>` gives whole examples. Answer spans inside a copied window come along.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace st {

struct MixInput {
  std::string path;
  double weight = 1;
};

struct MixedInput {
  int64_t windows_available = 0;  // whole windows in the input
  int64_t windows_used = 0;       // copied into the output (more than available: repeated)
};

// Writes the mixed shard atomically; vocab size is the largest of the inputs'. Throws
// DataError naming the input that is shorter than one window or a weight that is not > 0.
std::vector<MixedInput> mix_shards(const std::vector<MixInput>& inputs, const std::string& out, int64_t window,
                                   int64_t windows, uint64_t seed);

}  // namespace st
