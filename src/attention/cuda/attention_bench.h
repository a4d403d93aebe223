// Timing of the block-sparse attention core against LibTorch SDPA (dense causal, flash
// backend) on the same GPU, in the same process. One implementation behind
// `sparsetrain bench attention` (src/cli/bench.cpp) and tools/kernel_dev's `kernel_check bench`.
#pragma once
#ifdef SPARSETRAIN_CUDA
#include <cstdint>
#include <string>
#include <vector>

namespace st::cuda {

struct AttentionBenchConfig {
  std::vector<int64_t> lengths{8192, 16384, 32768, 65536, 131072};
  std::vector<int64_t> kv_heads{2, 8};
  std::vector<double> sparsities{0.75, 0.875, 0.9375};
  int64_t q_heads = 32, head_dim = 128;  // batch 1, bf16
  std::string json_path;                 // empty: no JSON file
  std::string command;                   // recorded in the JSON
};

// Prints one table row per measurement as it is taken (stdout), then writes the JSON file.
// Throws std::runtime_error without a CUDA device.
void run_attention_bench(const AttentionBenchConfig& cfg);

}  // namespace st::cuda
#endif  // SPARSETRAIN_CUDA
