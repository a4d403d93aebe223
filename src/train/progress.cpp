#include "train/progress.h"

#include <fmt/format.h>
#include <unistd.h>

#include <cstdio>

namespace st {

std::string format_duration(double s) {
  if (!(s >= 0) || s > 1e8) return "?";
  const int64_t t = int64_t(s + 0.5);
  if (t >= 3600) return fmt::format("{}h{:02d}m", t / 3600, (t / 60) % 60);
  if (t >= 60) return fmt::format("{}m{:02d}s", t / 60, t % 60);
  return fmt::format("{}s", t);
}

Progress::Progress(const std::string& mode, int64_t plain_every) : every_(plain_every) {
  off_ = mode == "off";
  bar_ = mode == "bar" || (mode == "auto" && ::isatty(STDOUT_FILENO));
}

void Progress::step(const StepReport& r) {
  if (off_) return;
  const double eta = r.step > 0 ? r.elapsed_s / double(r.step) * double(r.total - r.step) : -1;
  const std::string line = fmt::format("step {}/{} | loss {:.4f} | lr {:.2e} | gnorm {:.3f} | {:.0f} tok/s | MFU {:.1f}% | ETA {}",
                                       r.step, r.total, r.loss, r.lr, r.grad_norm, r.tokens_per_s, 100 * r.mfu, format_duration(eta));
  if (bar_) {
    bar_line_ = line;
    fmt::print("\r\033[K{}", line);
    bar_drawn_ = true;
    std::fflush(stdout);
  } else if (r.step % every_ == 0 || r.step == r.total) {
    fmt::print("{}\n", line);
    std::fflush(stdout);
  }
}

void Progress::message(const std::string& line) {
  if (off_) return;
  if (!bar_drawn_) {
    fmt::print("{}\n", line);
  } else {
    fmt::print("\r\033[K{}\n{}", line, bar_line_);
  }
  std::fflush(stdout);
}

void Progress::finish() {
  if (bar_drawn_) fmt::print("\n");
  bar_drawn_ = false;
  std::fflush(stdout);
}

}  // namespace st
