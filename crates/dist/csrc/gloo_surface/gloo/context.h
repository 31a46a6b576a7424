// Declares gloo::Context as far as ProcessGroupGloo.hpp uses it (see README.md).
#pragma once
#include <chrono>

namespace gloo {
class Context {
 public:
  // Named by ProcessGroupGloo::setTimeout's inline body; defined inside libtorch_cpu.
  void setTimeout(std::chrono::milliseconds timeout);
};
}  // namespace gloo
