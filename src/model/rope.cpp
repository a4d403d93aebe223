#include "model/rope.h"

#include <cmath>

namespace st {

torch::Tensor rope_inv_freq(const ModelConfig& cfg) {
  const int64_t d = cfg.head_dim_or_default();
  auto inv = 1.0 / torch::pow(cfg.rope_theta, torch::arange(0, d, 2, torch::kFloat64) / double(d));
  const RopeScaling& s = cfg.rope_scaling;
  if (s.type == "linear") {
    inv = inv / s.factor;
  } else if (s.type == "llama3") {
    // Llama 3.1: long wavelengths are slowed by `factor`, short ones kept, and the band in
    // between interpolated smoothly.
    const double low_wavelen = s.original_max_position / s.low_freq_factor;
    const double high_wavelen = s.original_max_position / s.high_freq_factor;
    auto wavelen = 2 * M_PI / inv;
    auto smooth = (s.original_max_position / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
    auto mid = (1 - smooth) * inv / s.factor + smooth * inv;
    inv = torch::where(wavelen > low_wavelen, inv / s.factor, torch::where(wavelen < high_wavelen, inv, mid));
  }
  return inv;
}

RopeTables rope_tables(const ModelConfig& cfg, int64_t seq_len, torch::Device device) {
  auto pos = torch::arange(seq_len, torch::kFloat64);
  auto angles = torch::outer(pos, rope_inv_freq(cfg));  // [T, d/2]
  auto full = torch::cat({angles, angles}, -1);          // rotate-half layout
  return {full.cos().to(device, torch::kFloat32), full.sin().to(device, torch::kFloat32)};
}

torch::Tensor apply_rope(const torch::Tensor& x, const RopeTables& rope) {
  const int64_t half = x.size(-1) / 2;
  auto x1 = x.narrow(-1, 0, half), x2 = x.narrow(-1, half, half);
  auto rotated = torch::cat({-x2, x1}, -1);
  auto cos = rope.cos.to(x.scalar_type()), sin = rope.sin.to(x.scalar_type());
  return x * cos + rotated * sin;
}

}  // namespace st
