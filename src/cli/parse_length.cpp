#include <CLI/CLI.hpp>

#include <stdexcept>

#include "cli/commands.h"

namespace st {

int64_t parse_length(const std::string& s) {
  size_t used = 0;
  int64_t n = 0;
  try {
    n = std::stoll(s, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  const std::string rest = s.substr(used);
  if (used == 0 || !(rest.empty() || rest == "K" || rest == "k") || n <= 0)
    throw CLI::ValidationError("--lengths", "expected positive lengths like 8192 or 8K, got '" + s + "'");
  return rest.empty() ? n : n * 1024;
}

}  // namespace st
