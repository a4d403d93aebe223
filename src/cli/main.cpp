// sparsetrain: one binary, one subcommand per file in src/cli/.
#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include "cli/commands.h"
#include "config/recipe.h"

int main(int argc, char** argv) {
  CLI::App app{"sparsetrain: long-context LM training with hierarchical sparse attention"};
  app.require_subcommand(1);
  app.set_help_all_flag("--help-all", "Show help for every subcommand");
  st::add_train_command(app);
  st::add_eval_command(app);
  st::add_data_command(app);
  st::add_hf_commands(app);
  st::add_bench_command(app);
  st::add_sweep_command(app);
  st::add_launch_command(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const st::ConfigError& e) {
    fmt::print(stderr, "error: {}\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    fmt::print(stderr, "error: {}\n", e.what());
    return 1;
  }
  return 0;
}
