// Learning-rate schedules: linear warmup, then cosine decay, warmup-stable-decay (WSD), or
// constant. Pure functions of the step so that resuming needs no schedule state.
#pragma once
#include <cstdint>

#include "config/recipe.h"

namespace st {

// Learning rate for optimizer step `step` (0-based) of `total` steps.
double learning_rate(const ScheduleConfig& s, double peak_lr, int64_t step, int64_t total);

}  // namespace st
