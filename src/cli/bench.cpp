// sparsetrain bench attention [--variant dense,dash,nsa,infllmv2] [--lengths 8K,16K,...] [--json FILE]
//                            [--kernels N [--trace DIR]] [--dash-route-positions R]
// Without --variant: the block-sparse attention core vs LibTorch SDPA on this machine's GPU
// (src/attention/cuda/attention_bench.h); with it: whole variants, selection included
// (src/attention/cuda/variant_bench.h). A build or machine without CUDA says so and exits
// non-zero.
#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <string>
#include <vector>

#include "cli/commands.h"
#ifdef SPARSETRAIN_CUDA
#include "attention/cuda/attention_bench.h"
#include "attention/cuda/variant_bench.h"
#endif

namespace st {

void add_bench_command(CLI::App& app) {
  auto* bench = app.add_subcommand("bench", "Speed benchmarks");
  bench->require_subcommand(1);
  struct Args {
    std::vector<std::string> lengths{"8K", "16K", "32K", "64K", "128K"};
    std::vector<std::string> variants;
    std::vector<double> sparsities{0.75, 0.875, 0.9375};
    std::string json;
    int kernels = 0;
    std::string trace_dir;
    int64_t dash_route_positions = 1;
  };
  auto args = std::make_shared<Args>();
  auto* cmd = bench->add_subcommand(
      "attention", "Block-sparse attention core (or with --variant, whole attention variants) vs LibTorch SDPA "
                   "(dense causal): Hq 32, d 128, batch 1, bf16, 75/87.5/93.75% sparsity; forward and "
                   "forward+backward");
  cmd->add_option("--variant", args->variants,
                  "Time these variants as the model runs them, selection included (Hkv 2; comma-separated)")
      ->delimiter(',')
      ->check(CLI::IsMember({"dense", "dash", "nsa", "infllmv2"}));
  cmd->add_option("--sparsities", args->sparsities, "With --variant: target sparsities (comma-separated)")
      ->delimiter(',')
      ->check(CLI::Range(0.0, 0.999));
  cmd->add_option("--lengths", args->lengths, "Sequence lengths (comma-separated, K = 1024)")->delimiter(',');
  cmd->add_option("--json", args->json, "Also write the results as JSON to this file");
  cmd->add_option("--kernels", args->kernels,
                  "With --variant: profile one forward+backward per row (Kineto/CUPTI) and list its N "
                  "most expensive GPU kernels")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--trace", args->trace_dir,
                  "With --kernels: write each row's profiled forward+backward as a Chrome trace "
                  "(chrome://tracing, Perfetto) into this existing directory")
      ->check(CLI::ExistingDirectory);
  cmd->add_option("--dash-route-positions", args->dash_route_positions,
                  "With --variant dash: model.attention.dash.route_positions (consecutive queries sharing one "
                  "routing; 1 = per query; a divisor of the chunk, 64)")
      ->check(CLI::IsMember({1, 2, 4, 8, 16, 32, 64}));
  cmd->callback([args] {
    std::vector<int64_t> lengths;
    for (const std::string& s : args->lengths) lengths.push_back(parse_length(s));
#ifdef SPARSETRAIN_CUDA
    auto joined = [](const std::vector<std::string>& v) {
      std::string s;
      for (size_t i = 0; i < v.size(); ++i) s += (i ? "," : "") + v[i];
      return s;
    };
    std::string command = "sparsetrain bench attention";
    if (!args->variants.empty()) command += " --variant " + joined(args->variants);
    std::vector<std::string> sparsities;
    for (double s : args->sparsities) sparsities.push_back(fmt::format("{}", s));
    if (!args->variants.empty()) command += " --sparsities " + joined(sparsities);
    command += " --lengths " + joined(args->lengths);
    if (!args->json.empty()) command += " --json " + args->json;
    if (args->kernels > 0) command += fmt::format(" --kernels {}", args->kernels);
    if (!args->trace_dir.empty()) command += " --trace " + args->trace_dir;
    if (args->dash_route_positions != 1) command += fmt::format(" --dash-route-positions {}", args->dash_route_positions);
    if (!args->variants.empty()) {
      cuda::VariantBenchConfig cfg;
      cfg.variants = args->variants;
      cfg.sparsities = args->sparsities;
      cfg.lengths = lengths;
      cfg.json_path = args->json;
      cfg.command = command;
      cfg.top_kernels = args->kernels;
      cfg.trace_dir = args->trace_dir;
      cfg.dash_route_positions = args->dash_route_positions;
      cuda::run_variant_bench(cfg);
      return;
    }
    cuda::AttentionBenchConfig cfg;
    cfg.lengths = lengths;
    cfg.json_path = args->json;
    cfg.command = command;
    cuda::run_attention_bench(cfg);
#else
    throw std::runtime_error("bench attention needs the CUDA kernels; this build has none (LibTorch without CUDA)");
#endif
  });
}

}  // namespace st
