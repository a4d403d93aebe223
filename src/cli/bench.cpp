// sparsetrain bench attention [--lengths 8K,16K,...] [--json FILE]
// The block-sparse attention core vs LibTorch SDPA on this machine's GPU (src/attention/cuda/
// attention_bench.h); a build or machine without CUDA says so and exits non-zero.
#include <CLI/CLI.hpp>

#include <string>
#include <vector>

#include "cli/commands.h"
#ifdef SPARSETRAIN_CUDA
#include "attention/cuda/attention_bench.h"
#endif

namespace st {

void add_bench_command(CLI::App& app) {
  auto* bench = app.add_subcommand("bench", "Speed benchmarks");
  bench->require_subcommand(1);
  struct Args {
    std::vector<std::string> lengths{"8K", "16K", "32K", "64K", "128K"};
    std::string json;
  };
  auto args = std::make_shared<Args>();
  auto* cmd = bench->add_subcommand(
      "attention", "Block-sparse attention core vs LibTorch SDPA (dense causal): Hq 32, Hkv 2 and 8, d 128, "
                   "batch 1, bf16, 75/87.5/93.75% sparsity; forward and forward+backward");
  cmd->add_option("--lengths", args->lengths, "Sequence lengths (comma-separated, K = 1024)")->delimiter(',');
  cmd->add_option("--json", args->json, "Also write the results as JSON to this file");
  cmd->callback([args] {
    std::vector<int64_t> lengths;
    for (const std::string& s : args->lengths) lengths.push_back(parse_length(s));
#ifdef SPARSETRAIN_CUDA
    cuda::AttentionBenchConfig cfg;
    cfg.lengths = lengths;
    cfg.json_path = args->json;
    cfg.command = "sparsetrain bench attention --lengths";
    for (size_t i = 0; i < args->lengths.size(); ++i) cfg.command += (i ? "," : " ") + args->lengths[i];
    if (!args->json.empty()) cfg.command += " --json " + args->json;
    cuda::run_attention_bench(cfg);
#else
    throw std::runtime_error("bench attention needs the CUDA kernels; this build has none (LibTorch without CUDA)");
#endif
  });
}

}  // namespace st
