// Timing of the block-sparse attention core against LibTorch SDPA (dense causal, flash
// backend) on the same GPU, in the same process. One implementation behind
// `sparsetrain bench attention` (src/cli/bench.cpp) and tools/kernel_dev's `kernel_check bench`.
#pragma once
#ifdef SPARSETRAIN_CUDA
#include <ATen/ATen.h>

#include <cstdint>
#include <functional>
#include <initializer_list>
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

// Median of reps timed runs of fn after one warm-up, in ms (CUDA events, current stream).
double time_ms(const std::function<void()>& fn, int reps);

// Drops the .grad of the leaves a timed backward reaches, so that each run's backward writes
// its gradients instead of adding them to the previous run's (a full-size add each).
void clear_grads(std::initializer_list<at::Tensor> leaves);

// Dense causal SDPA (its flash backend alone) at q's shape, K/V at Hq heads (GQA expanded: same FLOPs).
struct Sdpa {
  double fwd_ms, fwd_bwd_ms, fwd_tflops, bwd_tflops;
};
Sdpa time_sdpa(const at::Tensor& q, const at::Tensor& dout, int reps);

// Reps per timing at length T: fewer for the long ones.
int bench_reps(int64_t T);

// One JSON file: the run's header fields, then the rows (each a JSON object).
void write_bench_json(const std::string& path, const std::string& command, const std::vector<std::string>& rows);

}  // namespace st::cuda
#endif  // SPARSETRAIN_CUDA
