// Reading a training run's metrics.jsonl in tests.
#pragma once
#include <yaml-cpp/yaml.h>

#include <fstream>
#include <map>
#include <string>
#include <vector>

namespace st::test {

inline std::vector<YAML::Node> metrics(const std::string& run_dir) {
  std::vector<YAML::Node> out;
  std::ifstream in(run_dir + "/metrics.jsonl");
  for (std::string line; std::getline(in, line);) out.push_back(YAML::Load(line));
  return out;
}

// Loss values of training steps (not eval lines) as the exact text written.
inline std::map<int64_t, std::string> step_losses(const std::string& run_dir) {
  std::map<int64_t, std::string> out;
  for (auto& m : metrics(run_dir))
    if (m["loss"]) out[m["step"].as<int64_t>()] = m["loss"].Scalar();
  return out;
}

}  // namespace st::test
