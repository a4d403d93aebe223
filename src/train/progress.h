// Progress output: a live line redrawn in place on a terminal, plain lines when piped.
#pragma once
#include <cstdint>
#include <string>

namespace st {

struct StepReport {
  int64_t step = 0, total = 0;
  double loss = 0, lr = 0, grad_norm = 0, tokens_per_s = 0, mfu = 0, elapsed_s = 0;
};

class Progress {
 public:
  // mode: auto (bar on a terminal, plain otherwise) | bar | plain | off
  Progress(const std::string& mode, int64_t plain_every);
  void step(const StepReport& r);
  // A line that must stay (eval results, checkpoint saved, warnings).
  void message(const std::string& line);
  void finish();

 private:
  bool bar_ = false, off_ = false, bar_drawn_ = false;
  std::string bar_line_;  // redrawn under messages, so the live line stays the last one
  int64_t every_;
};

std::string format_duration(double seconds);

}  // namespace st
