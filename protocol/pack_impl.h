// msgpack writing shared by the graph codec (codec.cc) and the broker messages
// (broker_messages.cc): a packer that appends to a std::string, and str / bin writers.
// Internal to protocol/.
#ifndef GLASSBOX_PROTOCOL_PACK_IMPL_H_
#define GLASSBOX_PROTOCOL_PACK_IMPL_H_

#include <cstdint>
#include <msgpack.hpp>
#include <string>
#include <string_view>

#include "base/check.h"

namespace glassbox::protocol::internal {

class StringSink {
 public:
  explicit StringSink(std::string* out) : out_(out) {}
  void write(const char* data, size_t size) { out_->append(data, size); }

 private:
  std::string* out_;
};

using Packer = msgpack::packer<StringSink>;

// Precondition (checked in every build): under 4 GiB, msgpack's length limit.
inline void PackStr(Packer& pk, std::string_view s) {
  GLASSBOX_CHECK(s.size() <= UINT32_MAX, "a string of " + std::to_string(s.size()) + " bytes");
  pk.pack_str(static_cast<uint32_t>(s.size()));
  pk.pack_str_body(s.data(), static_cast<uint32_t>(s.size()));
}

inline void PackBin(Packer& pk, std::string_view s) {
  GLASSBOX_CHECK(s.size() <= UINT32_MAX, "binary data of " + std::to_string(s.size()) + " bytes");
  pk.pack_bin(static_cast<uint32_t>(s.size()));
  pk.pack_bin_body(s.data(), static_cast<uint32_t>(s.size()));
}

}  // namespace glassbox::protocol::internal

#endif  // GLASSBOX_PROTOCOL_PACK_IMPL_H_
