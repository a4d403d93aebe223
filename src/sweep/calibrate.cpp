#include "sweep/calibrate.h"

#include <fmt/format.h>

#include <cmath>

#include "train/evaluate.h"
#include "train/model_state.h"

namespace st {

Knob sparsity_knob(const AttentionConfig& a, int64_t length) {
  auto blocks = [&](int64_t block) { return double((length + block - 1) / block); };
  if (a.variant == "nsa")
    return {"model.attention.nsa.top_n", true, double(std::max<int64_t>(1, a.nsa.init_blocks + a.nsa.local_blocks)),
            blocks(a.nsa.sel_block)};
  if (a.variant == "infllmv2")
    return {"model.attention.infllmv2.top_k", true,
            double(std::max<int64_t>(1, a.infllmv2.init_blocks + a.infllmv2.local_blocks)), blocks(a.infllmv2.block)};
  if (a.variant == "dash") return {"model.attention.dash.temperature", false, 1e-4, 1e6};
  throw ConfigError(fmt::format("model.attention.variant: {} attention has no sparsity knob to calibrate", a.variant));
}

void set_knob(AttentionConfig& a, double value) {
  if (a.variant == "nsa") a.nsa.top_n = int64_t(std::lround(value));
  else if (a.variant == "infllmv2") a.infllmv2.top_k = int64_t(std::lround(value));
  else if (a.variant == "dash") a.dash.temperature = value;
  else throw ConfigError(fmt::format("model.attention.variant: {} attention has no sparsity knob", a.variant));
}

Calibrator::Calibrator(const Recipe& recipe, const TensorMap& dense, std::shared_ptr<const TokenShard> shard,
                       int64_t length, int64_t batches)
    : recipe_(recipe),
      rt_(make_runtime(recipe.train)),
      knob_(sparsity_knob(recipe.model.attention, length)),
      shard_(std::move(shard)),
      length_(length),
      batches_(batches) {
  // As train() starts a continual-pretraining run: seeded initialisation, then the dense weights.
  torch::manual_seed(uint64_t(recipe.train.seed));
  model_ = Transformer(recipe.model);
  model_->init_weights(uint64_t(recipe.train.seed));
  load_model_state(model_, dense, /*allow_new_variant_params=*/true, recipe.train.init_from);
  model_->to(rt_.device);
}

// Swaps in attention modules built with the knob at `value` (the knob changes no parameter
// shapes; the variant's parameters are carried over), then measures on the calibration data.
double Calibrator::measure(double value) {
  if (auto it = probes_.find(value); it != probes_.end()) return it->second;
  ModelConfig cfg = recipe_.model;
  set_knob(cfg.attention, value);
  for (auto& layer : *model_->layers) {
    auto& attention = layer->as<BlockImpl>()->self_attn;
    std::shared_ptr<AttentionVariant> fresh = make_attention(cfg);
    fresh->to(rt_.device);
    {
      torch::NoGradGuard no_grad;
      auto old = attention->variant->named_parameters();
      for (auto& p : fresh->named_parameters()) p.value().copy_(old[p.key()]);
    }
    attention->replace_module("variant", fresh);
    attention->variant = fresh;
  }
  const double sparsity = 100.0 * evaluate(model_, *shard_, rt_, length_, 1, batches_).sparsity();
  probes_[value] = sparsity;
  if (report_) report_(value, sparsity);
  return sparsity;
}

// Sparsity falls as the knob grows: find neighbours k, k + 1 with s(k) > target >= s(k + 1).
void Calibrator::search_integer(double target) {
  int64_t lo = int64_t(knob_.lo), hi = int64_t(knob_.hi);
  if (measure(double(lo)) <= target || measure(double(hi)) >= target) return;  // the target is at or past an end
  while (hi - lo > 1) {
    const int64_t mid = (lo + hi) / 2;
    (measure(double(mid)) > target ? lo : hi) = mid;
  }
}

// Sparsity rises with the temperature: bracket the target by factors of 4 from the
// configured value, then bisect on log s until within a quarter of the tolerance.
void Calibrator::search_real(double target, double tolerance) {
  double lo = 0, hi = 0, s = std::clamp(recipe_.model.attention.dash.temperature, knob_.lo, knob_.hi);
  bool have_lo = false, have_hi = false;
  while (!(have_lo && have_hi)) {
    const double sparsity = measure(s);
    if (std::fabs(sparsity - target) <= tolerance / 4) return;
    if (sparsity < target) lo = s, have_lo = true;
    else hi = s, have_hi = true;
    s = have_lo ? s * 4 : s / 4;
    if (!(have_lo && have_hi) && (s > knob_.hi || s < knob_.lo)) return;  // out of reach in the range
  }
  for (int i = 0; i < 30; ++i) {
    const double mid = std::sqrt(lo * hi);
    const double sparsity = measure(mid);
    if (std::fabs(sparsity - target) <= tolerance / 4) return;
    (sparsity < target ? lo : hi) = mid;
  }
}

Calibration Calibrator::calibrate(double target, double tolerance, const std::function<void(double, double)>& report) {
  report_ = report;
  if (knob_.integer) search_integer(target);
  else search_real(target, tolerance);
  Calibration c;
  c.target = target;
  c.knob = knob_.key;
  c.probes = probes_;
  // Every probe so far is a candidate (earlier targets' probes included): keep the closest.
  c.value = probes_.begin()->first;
  for (const auto& [value, sparsity] : probes_)
    if (std::fabs(sparsity - target) < std::fabs(probes_[c.value] - target)) c.value = value;
  c.sparsity = probes_[c.value];
  c.within_tolerance = std::fabs(c.error()) <= tolerance;
  return c;
}

}  // namespace st
