#include "train/optimizer.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <cmath>

namespace st {

bool AdamW::decays(const std::string& name, const torch::Tensor& p, const OptimConfig& cfg) {
  if (cfg.decay_norms_and_embeddings) return true;
  return p.dim() >= 2 && name.rfind("embed_tokens", 0) != 0;
}

AdamW::AdamW(std::vector<NamedParameter> params, const OptimConfig& cfg) : cfg_(cfg) {
  for (auto& p : params) {
    bool decay = decays(p.name, p.param, cfg);
    slots_.push_back({p, torch::zeros_like(p.param, torch::kFloat32), torch::zeros_like(p.param, torch::kFloat32), decay});
  }
}

void AdamW::step(double lr) {
  torch::NoGradGuard no_grad;
  ++steps_;
  const double bc1 = 1 - std::pow(cfg_.beta1, double(steps_));
  const double bc2 = 1 - std::pow(cfg_.beta2, double(steps_));
  for (auto& s : slots_) {
    auto& p = s.p.param;
    if (!p.grad().defined()) continue;
    auto g = p.grad().to(torch::kFloat32);
    s.exp_avg.lerp_(g, 1 - cfg_.beta1);
    s.exp_avg_sq.mul_(cfg_.beta2).addcmul_(g, g, 1 - cfg_.beta2);
    if (s.decay && cfg_.weight_decay > 0) p.mul_(1 - lr * cfg_.weight_decay);
    auto denom = (s.exp_avg_sq.sqrt() / std::sqrt(bc2)).add_(cfg_.eps);
    p.addcdiv_(s.exp_avg, denom, -lr / bc1);
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
