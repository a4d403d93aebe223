// Timing of whole attention variants (selection + core, as the model runs them) against
// LibTorch SDPA: `sparsetrain bench attention --variant dense|dash|nsa|infllmv2`.
#pragma once
#ifdef SPARSETRAIN_CUDA
#include <cstdint>
#include <string>
#include <vector>

namespace st::cuda {

struct VariantBenchConfig {
  std::vector<std::string> variants{"dash"};
  std::vector<int64_t> lengths{16384, 32768, 65536, 131072};
  std::vector<double> sparsities{0.75, 0.875, 0.9375};
  int64_t q_heads = 32, kv_heads = 2, head_dim = 128;  // batch 1, bf16 q/k/v
  int64_t dash_route_positions = 1;                   // model.attention.dash.route_positions
  std::string json_path;                              // empty: no JSON file
  int top_kernels = 0;                                // > 0: profile a f+b per row, list this many kernels
  std::string trace_dir;                              // with top_kernels: a Chrome trace per row here
  std::string command;                                // recorded in the JSON
};

// Per variant, length and target sparsity: the knob that reaches the target (NSA top_n,
// InfLLMv2 top_k from their block counts; Dash's temperature by bisection on the routing's
// measured sparsity), the measured sparsity, forward and forward+backward of the variant's
// module (impl auto), its selection stage alone, the selection's share of each, and SDPA.
// A row that runs out of GPU memory is reported as such and the bench goes on. With
// top_kernels, one more forward+backward per row runs under the Kineto profiler and the GPU
// kernels that took the most time in it are listed (total ms, calls, share), in the JSON too,
// with the GPU's idle time between that profile's kernels (host round trips, launch gaps).
void run_variant_bench(const VariantBenchConfig& cfg);

}  // namespace st::cuda
#endif  // SPARSETRAIN_CUDA
