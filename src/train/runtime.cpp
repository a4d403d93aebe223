#include "train/runtime.h"

#include <ATen/autocast_mode.h>
#include <ATen/cuda/CUDAContext.h>
#include <fmt/format.h>
#include <torch/cuda.h>
#ifdef SPARSETRAIN_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#endif

namespace st {

std::string Runtime::describe() const { return fmt::format("{} ({})", device.str(), precision); }

std::string Runtime::device_name() const {
  if (!device.is_cuda()) return "CPU";
  return at::cuda::getDeviceProperties(device.index() < 0 ? 0 : device.index())->name;
}

Runtime make_runtime(const TrainConfig& cfg) {
  Runtime rt;
  const bool cuda = torch::cuda::is_available();
  if (cfg.device == "cuda" && !cuda) throw ConfigError("train.device: 'cuda' requested but no CUDA device is visible");
  if (cfg.device == "cuda" || (cfg.device == "auto" && cuda)) {
    rt.device = torch::Device(torch::kCUDA, 0);
    rt.device_kind = "cuda";
  }
  rt.precision = cfg.precision == "auto" ? (rt.device_kind == "cuda" ? "bf16" : "fp32") : cfg.precision;
  return rt;
}

int64_t peak_device_memory(const Runtime& rt) {
#ifdef SPARSETRAIN_CUDA
  if (rt.device_kind == "cuda") {
    auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(rt.device.index());
    return stats.allocated_bytes[size_t(c10::CachingAllocator::StatType::AGGREGATE)].peak;
  }
#endif
  return 0;
}

AutocastScope::AutocastScope(const Runtime& rt)
    : enabled_(rt.precision == "bf16"), type_(rt.device.type()) {
  if (!enabled_) return;
  at::autocast::set_autocast_dtype(type_, at::kBFloat16);
  at::autocast::set_autocast_enabled(type_, true);
}

AutocastScope::~AutocastScope() {
  if (!enabled_) return;
  at::autocast::set_autocast_enabled(type_, false);
  at::autocast::clear_cache();
}

}  // namespace st
