// Names the transport types ProcessGroupGloo.hpp holds by pointer (see README.md).
#pragma once

namespace gloo {
namespace transport {
class Device;
class UnboundBuffer;
}  // namespace transport
}  // namespace gloo
