// RandomHex: names that must not collide between processes or restarts (a worker link's
// ZeroMQ identity, a client's request prefix, a worker process's group), from the system's
// random device.
#ifndef GLASSBOX_BASE_RANDOM_H_
#define GLASSBOX_BASE_RANDOM_H_

#include <cstdint>
#include <cstdio>
#include <random>
#include <string>

namespace glassbox {

// `words` random 64-bit words as lowercase hex, 16 digits each.
inline std::string RandomHex(int words) {
  std::random_device device;
  std::uniform_int_distribution<uint64_t> word;
  std::string out;
  for (int i = 0; i < words; ++i) {
    char digits[17];
    std::snprintf(digits, sizeof digits, "%016llx", static_cast<unsigned long long>(word(device)));
    out += digits;
  }
  return out;
}

}  // namespace glassbox

#endif  // GLASSBOX_BASE_RANDOM_H_
