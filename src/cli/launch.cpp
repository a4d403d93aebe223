// sparsetrain launch --nproc-per-node N [--nnodes M --node-rank R --master-addr A --master-port P]
//   -- train RECIPE ...
#include <CLI/CLI.hpp>
#include <unistd.h>

#include <climits>
#include <cstdlib>

#include "cli/commands.h"
#include "dist/launcher.h"

namespace st {
namespace {

std::string this_executable() {
  char buf[PATH_MAX];
  const ssize_t n = ::readlink("/proc/self/exe", buf, sizeof buf - 1);
  if (n <= 0) throw std::runtime_error("launch: cannot find the sparsetrain executable (/proc/self/exe)");
  return std::string(buf, size_t(n));
}

}  // namespace

void add_launch_command(CLI::App& app) {
  auto opt = std::make_shared<LaunchOptions>();
  auto command = std::make_shared<std::vector<std::string>>();
  auto* cmd = app.add_subcommand(
      "launch", "Run a sparsetrain command on N ranks of this node (torchrun-style env rendezvous); supervises them");
  cmd->add_option("--nproc-per-node", opt->nproc_per_node, "Ranks on this node (usually its GPU count)")
      ->capture_default_str();
  cmd->add_option("--nnodes", opt->nnodes, "Nodes in the job")->capture_default_str();
  cmd->add_option("--node-rank", opt->node_rank, "This node's index, 0..nnodes-1")->capture_default_str();
  cmd->add_option("--master-addr", opt->master_addr, "Address of node 0 (hosts the rendezvous store)")
      ->capture_default_str();
  cmd->add_option("--master-port", opt->master_port, "Rendezvous port (default: a free port; required with --nnodes > 1)");
  cmd->add_option("--grace", opt->grace_s, "Seconds the ranks get to stop (SIGTERM) before SIGKILL after a failure")
      ->capture_default_str();
  cmd->add_option("command", *command, "The sparsetrain command each rank runs, after --: -- train RECIPE ...");
  cmd->footer("Example: sparsetrain launch --nproc-per-node 4 -- train recipes/1b-8k.yaml");
  cmd->callback([opt, command] {
    if (command->empty()) throw CLI::ValidationError("launch", "expected the command to run after --, e.g. -- train RECIPE");
    const int code = launch(*opt, this_executable(), *command);
    if (code != 0) std::exit(code);
  });
}

}  // namespace st
