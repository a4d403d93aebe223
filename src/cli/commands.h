// Each subcommand registers itself on the CLI11 app; main.cpp calls these.
#pragma once
#include <cstdint>
#include <string>

namespace CLI { class App; }

namespace st {
void add_train_command(CLI::App& app);
void add_eval_command(CLI::App& app);
void add_data_command(CLI::App& app);
void add_hf_commands(CLI::App& app);  // import hf, export --format hf
void add_bench_command(CLI::App& app);  // bench attention
void add_sweep_command(CLI::App& app);  // sweep SWEEP.yaml: variants x target sparsities
void add_launch_command(CLI::App& app);  // launch -- CMD: one process per rank

// One entry of a --lengths list: "65536", "64K" or "64k" -> 65536; CLI::ValidationError
// (a usage error naming --lengths) on anything else.
int64_t parse_length(const std::string& s);
}  // namespace st
