// See ../../README.md: held by shared_ptr / unique_ptr only.
#pragma once

namespace gloo::transport {
class Device;
class UnboundBuffer;
}  // namespace gloo::transport
