// Where and in what precision a run computes: the device, and bf16 autocast (fp32 master
// weights) on GPU.
#pragma once
#include <torch/types.h>

#include <string>

#include "config/recipe.h"

namespace st {

struct Runtime {
  torch::Device device = torch::kCPU;
  std::string device_kind = "cpu";  // cpu | cuda
  std::string precision = "fp32";   // fp32 | bf16
  std::string describe() const;     // "cuda:0 (bf16)"
  std::string device_name() const;  // "NVIDIA H200", or "CPU"
};

// Resolves train.device / train.precision "auto"; throws ConfigError when CUDA is asked
// for and not available.
Runtime make_runtime(const TrainConfig& cfg);

// Peak bytes the caching allocator has handed out on the run's GPU since start (0 on CPU).
int64_t peak_device_memory(const Runtime& rt);

// Enables bf16 autocast for its lifetime when the runtime says so.
class AutocastScope {
 public:
  explicit AutocastScope(const Runtime& rt);
  ~AutocastScope();
  AutocastScope(const AutocastScope&) = delete;
  AutocastScope& operator=(const AutocastScope&) = delete;

 private:
  bool enabled_;
  at::DeviceType type_;
};

}  // namespace st
