// Declares gloo::rendezvous::Store's virtual interface as far as ProcessGroupGloo.hpp's
// GlooStore overrides it (see README.md). The V2 extensions stay off: GLOO_STORE_HAS_STORE_V2
// is not defined, so the header does not override them.
#pragma once
#include <chrono>
#include <string>
#include <vector>

namespace gloo {
namespace rendezvous {
class Store {
 public:
  virtual ~Store() = default;
  virtual void set(const std::string& key, const std::vector<char>& data) = 0;
  virtual std::vector<char> get(const std::string& key) = 0;
  virtual void wait(const std::vector<std::string>& keys) = 0;
  virtual void wait(
      const std::vector<std::string>& keys,
      const std::chrono::milliseconds& timeout) = 0;
};
}  // namespace rendezvous
}  // namespace gloo
