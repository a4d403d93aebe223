// See ../README.md. ProcessGroupGloo::setTimeout (inline) calls Context::setTimeout.
#pragma once
#include <chrono>

namespace gloo {
class Context {
 public:
  void setTimeout(std::chrono::milliseconds timeout);
};
}  // namespace gloo
