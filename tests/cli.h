// Running the built `sparsetrain` binary from tests, as a user would.
#pragma once
#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <string>

namespace st::test {

struct CliResult {
  int code = -1;
  std::string output;  // stdout and stderr together
};

// Runs a shell command from the source tree (recipes name configs/ and data/ relative to
// it); stdout and stderr together.
inline CliResult run_shell(const std::string& command) {
  const std::string cmd = std::string("cd ") + SPARSETRAIN_SOURCE_DIR + " && " + command + " 2>&1";
  CliResult r;
  FILE* pipe = ::popen(cmd.c_str(), "r");
  if (!pipe) return r;
  std::array<char, 4096> buf;
  size_t n;
  while ((n = std::fread(buf.data(), 1, buf.size(), pipe)) > 0) r.output.append(buf.data(), n);
  int status = ::pclose(pipe);
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : 128;
  return r;
}

// Runs `sparsetrain <args>` from the source tree.
inline CliResult run_cli(const std::string& args) { return run_shell(std::string(SPARSETRAIN_BINARY) + " " + args); }

inline std::string source_path(const std::string& rel) { return std::string(SPARSETRAIN_SOURCE_DIR) + "/" + rel; }

}  // namespace st::test
