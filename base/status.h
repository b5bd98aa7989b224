// Status and StatusOr: the expected-failure tier of Glassbox's error handling.
//
// Anything a user, a file or a peer can cause is returned as a Status with a code and a
// message naming the cause; the code tells a caller (the broker, later) whether a retry can
// help. Bugs are checks (base/check.h), not statuses. Both types are [[nodiscard]]: a status
// that is deliberately dropped says why, with a (void) cast and a comment. Header-only and
// free of LibTorch so every room, the broker included, can use it.
#ifndef GLASSBOX_BASE_STATUS_H_
#define GLASSBOX_BASE_STATUS_H_

#include <optional>
#include <string>
#include <utility>

#include "base/check.h"

namespace glassbox {

enum class StatusCode {
  kOk = 0,
  kInvalidArgument,    // the request or input is wrong; retrying will not help
  kNotFound,           // a named thing (file, hook point, tensor) does not exist
  kDataLoss,           // a file is truncated or corrupt
  kUnimplemented,      // valid but not supported (an architecture, a tensor type)
  kResourceExhausted,  // a limit was hit (memory, size caps)
  kUnavailable,        // a dependency is down; retrying later may help
  kInternal,           // a library failed underneath us (e.g. a c10::Error)
  kCancelled,          // stopped on purpose (early stop, cancellation, time limit)
  kUnauthenticated,    // no valid credentials (a missing, wrong or revoked API key)
};

const char* StatusCodeName(StatusCode code);

class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(StatusCode code, std::string message) : code_(code), message_(std::move(message)) {}

  static Status Ok() { return Status(); }
  bool ok() const { return code_ == StatusCode::kOk; }
  StatusCode code() const { return code_; }
  const std::string& message() const { return message_; }
  // "INVALID_ARGUMENT: message", or "OK".
  std::string ToString() const;
  // Returns a copy whose message is "context: message" (same code).
  Status WithContext(const std::string& context) const {
    return ok() ? *this : Status(code_, context + ": " + message_);
  }

 private:
  StatusCode code_ = StatusCode::kOk;
  std::string message_;
};

inline Status InvalidArgument(std::string m) { return {StatusCode::kInvalidArgument, std::move(m)}; }
inline Status NotFound(std::string m) { return {StatusCode::kNotFound, std::move(m)}; }
inline Status DataLoss(std::string m) { return {StatusCode::kDataLoss, std::move(m)}; }
inline Status Unimplemented(std::string m) { return {StatusCode::kUnimplemented, std::move(m)}; }
inline Status ResourceExhausted(std::string m) { return {StatusCode::kResourceExhausted, std::move(m)}; }
inline Status Unavailable(std::string m) { return {StatusCode::kUnavailable, std::move(m)}; }
inline Status Internal(std::string m) { return {StatusCode::kInternal, std::move(m)}; }
inline Status Cancelled(std::string m) { return {StatusCode::kCancelled, std::move(m)}; }
inline Status Unauthenticated(std::string m) { return {StatusCode::kUnauthenticated, std::move(m)}; }

// The first line of `text`: a library error's message without its backtrace (LibTorch
// appends one), for the message of a Status.
inline std::string FirstLine(const std::string& text) { return text.substr(0, text.find('\n')); }

inline const char* StatusCodeName(StatusCode code) {
  switch (code) {
    case StatusCode::kOk: return "OK";
    case StatusCode::kInvalidArgument: return "INVALID_ARGUMENT";
    case StatusCode::kNotFound: return "NOT_FOUND";
    case StatusCode::kDataLoss: return "DATA_LOSS";
    case StatusCode::kUnimplemented: return "UNIMPLEMENTED";
    case StatusCode::kResourceExhausted: return "RESOURCE_EXHAUSTED";
    case StatusCode::kUnavailable: return "UNAVAILABLE";
    case StatusCode::kInternal: return "INTERNAL";
    case StatusCode::kCancelled: return "CANCELLED";
    case StatusCode::kUnauthenticated: return "UNAUTHENTICATED";
  }
  return "UNKNOWN";
}

inline std::string Status::ToString() const {
  return ok() ? std::string("OK") : std::string(StatusCodeName(code_)) + ": " + message_;
}

// Either a value or a non-OK Status. Building one from an OK status, or reading the value
// of an error, is a bug: checked in every build (GLASSBOX_CHECK), not only with asserts on.
template <typename T>
class [[nodiscard]] StatusOr {
 public:
  StatusOr(Status status) : status_(std::move(status)) {  // NOLINT
    GLASSBOX_CHECK(!status_.ok(), "StatusOr built from an OK status");
  }
  StatusOr(T value) : value_(std::move(value)) {}                                  // NOLINT

  bool ok() const { return status_.ok(); }
  const Status& status() const { return status_; }
  T& value() & { CheckHasValue(); return *value_; }
  const T& value() const& { CheckHasValue(); return *value_; }
  T&& value() && { CheckHasValue(); return std::move(*value_); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T value_or(T fallback) const& { return ok() ? *value_ : std::move(fallback); }

 private:
  void CheckHasValue() const { GLASSBOX_CHECK(ok(), "value of an error: " + status_.ToString()); }

  Status status_;
  std::optional<T> value_;
};

}  // namespace glassbox

// Returns early from the enclosing function if `expr` (a Status) is not OK.
#define GLASSBOX_RETURN_IF_ERROR(expr)            \
  do {                                            \
    ::glassbox::Status _gb_status = (expr);       \
    if (!_gb_status.ok()) return _gb_status;      \
  } while (0)

#define GLASSBOX_CONCAT_INNER_(a, b) a##b
#define GLASSBOX_CONCAT_(a, b) GLASSBOX_CONCAT_INNER_(a, b)
// Declares `lhs` from a StatusOr, or returns its Status from the enclosing function.
#define GLASSBOX_ASSIGN_OR_RETURN(lhs, expr) \
  GLASSBOX_ASSIGN_OR_RETURN_IMPL_(GLASSBOX_CONCAT_(_gb_statusor_, __LINE__), lhs, expr)
#define GLASSBOX_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                                    \
  if (!tmp.ok()) return tmp.status();                   \
  lhs = std::move(tmp).value()

#endif  // GLASSBOX_BASE_STATUS_H_
