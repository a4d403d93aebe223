#include "train/model_state.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

namespace st {

TensorMap model_state(Transformer& model) {
  TensorMap out;
  for (const auto& p : model->named_parameters()) out[p.key()] = p.value().detach().to(torch::kCPU, torch::kFloat32).clone();
  return out;
}

std::vector<std::string> load_model_state(Transformer& model, const TensorMap& weights,
                                          bool allow_new_variant_params, const std::string& origin) {
  torch::NoGradGuard no_grad;
  auto params = model->named_parameters();
  for (const auto& [name, t] : weights)
    if (!params.contains(name))
      throw IoError(fmt::format("{}: tensor '{}' matches no parameter of this model (different architecture?)", origin, name));
  std::vector<std::string> fresh;
  for (auto& p : params) {
    auto it = weights.find(p.key());
    if (it == weights.end()) {
      if (allow_new_variant_params && p.key().find(".variant.") != std::string::npos) {
        fresh.push_back(p.key());
        continue;
      }
      throw IoError(fmt::format("{}: no tensor for parameter '{}'", origin, p.key()));
    }
    if (it->second.sizes() != p.value().sizes())
      throw IoError(fmt::format("{}: '{}' has shape [{}], the model expects [{}]", origin, p.key(),
                                fmt::join(it->second.sizes(), ", "), fmt::join(p.value().sizes(), ", ")));
    p.value().copy_(it->second);
  }
  return fresh;
}

}  // namespace st
