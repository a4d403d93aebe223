#include "train/optimizer.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <ATen/ATen.h>

#include <cmath>

namespace st {

bool AdamW::decays(const std::string& name, int64_t dim, const OptimConfig& cfg) {
  if (cfg.decay_norms_and_embeddings) return true;
  return dim >= 2 && name.rfind("embed_tokens", 0) != 0;
}

bool AdamW::decays(const std::string& name, const torch::Tensor& p, const OptimConfig& cfg) {
  return decays(name, p.dim(), cfg);
}

AdamW::AdamW(std::vector<NamedParameter> params, const OptimConfig& cfg) : cfg_(cfg) {
  for (auto& p : params) {
    bool decay = decays(p.name, p.whole_dim ? p.whole_dim : p.param.dim(), cfg);
    slots_.push_back({p, torch::zeros_like(p.param, torch::kFloat32), torch::zeros_like(p.param, torch::kFloat32), decay});
  }
}

void AdamW::step(double lr) {
  torch::NoGradGuard no_grad;
  ++steps_;
  // One multi-tensor kernel per decay group (ATen's fused AdamW, CPU and CUDA) instead of
  // eight elementwise passes per parameter: on a 1B model this is most of the step's
  // optimizer time. The step count is read, not incremented, by the kernel.
  for (bool decay : {true, false}) {
    std::vector<torch::Tensor> params, grads, exp_avgs, exp_avg_sqs, steps;
    for (auto& s : slots_) {
      if (s.decay != decay || !s.p.param.grad().defined()) continue;
      params.push_back(s.p.param);
      grads.push_back(s.p.param.grad());
      exp_avgs.push_back(s.exp_avg);
      exp_avg_sqs.push_back(s.exp_avg_sq);
    }
    if (params.empty()) continue;
    auto step = torch::full({}, double(steps_), params[0].options().dtype(torch::kFloat32));
    steps.assign(params.size(), step);
    at::_fused_adamw_(params, grads, exp_avgs, exp_avg_sqs, /*max_exp_avg_sqs=*/{}, steps, lr, cfg_.beta1, cfg_.beta2,
                      decay ? cfg_.weight_decay : 0.0, cfg_.eps, /*amsgrad=*/false, /*maximize=*/false);
  }
}

void AdamW::zero_grad() {
  for (auto& s : slots_) s.p.param.mutable_grad() = torch::Tensor();
}

TensorMap AdamW::state() const {
  TensorMap out;
  for (const auto& s : slots_) {
    out["exp_avg." + s.p.name] = s.exp_avg;
    out["exp_avg_sq." + s.p.name] = s.exp_avg_sq;
  }
  out["step"] = torch::tensor({steps_}, torch::kInt64);
  return out;
}

void AdamW::load_state(const TensorMap& state) {
  torch::NoGradGuard no_grad;
  auto take = [&](const std::string& key, torch::Tensor& dst) {
    auto it = state.find(key);
    if (it == state.end()) throw IoError(fmt::format("optimizer state has no '{}'", key));
    if (it->second.sizes() != dst.sizes())
      throw IoError(fmt::format("optimizer state '{}' has shape {}, expected {}", key,
                                fmt::join(it->second.sizes(), "x"), fmt::join(dst.sizes(), "x")));
    dst.copy_(it->second);
  };
  for (auto& s : slots_) {
    take("exp_avg." + s.p.name, s.exp_avg);
    take("exp_avg_sq." + s.p.name, s.exp_avg_sq);
  }
  auto it = state.find("step");
  if (it == state.end()) throw IoError("optimizer state has no 'step'");
  steps_ = it->second.item<int64_t>();
}

}  // namespace st
