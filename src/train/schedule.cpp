#include "train/schedule.h"

#include <algorithm>
#include <cmath>

namespace st {

double learning_rate(const ScheduleConfig& s, double peak_lr, int64_t step, int64_t total) {
  if (s.warmup_steps > 0 && step < s.warmup_steps) return peak_lr * double(step + 1) / double(s.warmup_steps);
  const double floor = peak_lr * s.min_lr_ratio;
  if (s.kind == "constant") return peak_lr;
  if (s.kind == "cosine") {
    const double span = std::max<int64_t>(1, total - s.warmup_steps);
    const double progress = std::min(1.0, double(step - s.warmup_steps) / span);
    return floor + (peak_lr - floor) * 0.5 * (1 + std::cos(M_PI * progress));
  }
  // wsd: hold the peak, then decay linearly to the floor over the last decay_fraction.
  const int64_t decay_steps = std::max<int64_t>(1, int64_t(std::llround(total * s.decay_fraction)));
  const int64_t decay_start = total - decay_steps;
  if (step < decay_start) return peak_lr;
  const double progress = std::min(1.0, double(step - decay_start + 1) / double(decay_steps));
  return peak_lr + (floor - peak_lr) * progress;
}

}  // namespace st
