// GLASSBOX_CHECK: an invariant that only a bug can break, checked in every build (assert is
// compiled out under NDEBUG, and RelWithDebInfo defines it). On failure it prints the
// condition, the place and the message, and aborts.
#ifndef GLASSBOX_BASE_CHECK_H_
#define GLASSBOX_BASE_CHECK_H_

#include <cstdio>
#include <cstdlib>
#include <string>

namespace glassbox::internal {

[[noreturn]] inline void CheckFailed(const char* condition, const char* file, int line,
                                     const std::string& message) {
  std::fprintf(stderr, "%s:%d: invariant broken: %s: %s\n", file, line, condition,
               message.c_str());
  std::abort();
}

}  // namespace glassbox::internal

#define GLASSBOX_CHECK(condition, message)                                          \
  do {                                                                              \
    if (!(condition)) {                                                             \
      ::glassbox::internal::CheckFailed(#condition, __FILE__, __LINE__, (message)); \
    }                                                                               \
  } while (false)

#endif  // GLASSBOX_BASE_CHECK_H_
