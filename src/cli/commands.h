// Each subcommand registers itself on the CLI11 app; main.cpp calls these.
#pragma once
namespace CLI { class App; }

namespace st {
void add_train_command(CLI::App& app);
void add_eval_command(CLI::App& app);
void add_data_command(CLI::App& app);
void add_hf_commands(CLI::App& app);  // import hf, export --format hf
void add_bench_command(CLI::App& app);  // bench attention
}  // namespace st
