// The Glassbox wire format: msgpack encoding and decoding of requests, results and error
// reports, each wrapped in a versioned envelope {"glassbox": version, "type": ..., "body": ...}.
// protocol/SPEC.md is the specification; protocol/vectors/ holds byte samples that this codec
// and the Python one (client/glassbox/_wire.py) must both reproduce.
//
// Encoding is deterministic: the same message always gives the same bytes. Decoding never
// trusts its input: every size claim is checked against DecodeLimits and against the bytes
// actually present before anything is allocated, every type is checked, and every failure
// comes back as a Status naming the position in the message
// ("body.traces[0].nodes[3].args[1]: expected ..."); no exception escapes.
// All functions are thread-safe (they share no state).
#ifndef GLASSBOX_PROTOCOL_CODEC_H_
#define GLASSBOX_PROTOCOL_CODEC_H_

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "base/status.h"
#include "protocol/graph.h"

namespace glassbox::protocol {

// What a decoder accepts. Going over a limit gives kResourceExhausted; malformed or
// mistyped input gives kInvalidArgument. The defaults suit the public service.
struct DecodeLimits {
  size_t max_message_bytes = size_t{256} << 20;  // the whole encoded message
  size_t max_depth = 64;                // nesting of lists and maps, the envelope's map included
  size_t max_items = size_t{8} << 20;   // msgpack items (scalars, strings, lists, maps) in all
  size_t max_nodes = 100000;            // nodes across all traces of a request
  size_t max_values = size_t{1} << 20;  // Values, list elements included, in one message
  size_t max_list_length = size_t{1} << 20;     // elements of one list, entries of one map
  size_t max_string_bytes = size_t{1} << 20;    // one string (a prompt, an op name, a key)
  size_t max_tensor_bytes = size_t{256} << 20;  // one tensor's data
};

enum class MessageType { kRequest, kResult, kError };
const char* MessageTypeName(MessageType type);  // "request", "result", "error"

// The envelope of a message, read without judging its version.
struct Envelope {
  int64_t version = kProtocolVersion;
  MessageType type = MessageType::kRequest;
};

// What a peer sends instead of a result: a status code name (base/status.h, e.g.
// "INVALID_ARGUMENT"), a message naming the cause, the graph node it concerns (if any) and
// that node's `source` ("experiment.py:42", if known). Its encoding never changes
// incompatibly, so an error decodes whatever protocol version its sender speaks.
struct ErrorReport {
  int64_t version = kProtocolVersion;
  std::string code;
  std::string message;
  std::optional<int64_t> node;
  std::string source;

  // Fills code and message from a non-OK status.
  static ErrorReport FromStatus(const Status& status, std::optional<int64_t> node = std::nullopt,
                                std::string source = {});
  bool operator==(const ErrorReport& other) const;
};

// Encoders write `version` fields into the envelope as given (kProtocolVersion by default).
// Precondition (checked in every build): no string or tensor reaches 4 GiB, msgpack's size
// field limit; peers refuse far smaller ones anyway (DecodeLimits), so check sizes before
// building results.
std::string EncodeRequest(const Request& request);
std::string EncodeResult(const Result& result);
std::string EncodeErrorReport(const ErrorReport& error);

// Decoders return the message, or an error if the bytes are not a well-formed message of
// that type within `limits`. A request or result of another protocol version is refused with
// a message naming both versions and what to upgrade; an error report of any version decodes.
StatusOr<Request> DecodeRequest(std::string_view bytes, const DecodeLimits& limits = {});
StatusOr<Result> DecodeResult(std::string_view bytes, const DecodeLimits& limits = {});
StatusOr<ErrorReport> DecodeErrorReport(std::string_view bytes, const DecodeLimits& limits = {});

// Reads only the envelope (version and type) of a well-formed message, e.g. to tell a result
// from an error report before decoding it. The version is reported, not checked.
StatusOr<Envelope> PeekEnvelope(std::string_view bytes, const DecodeLimits& limits = {});

}  // namespace glassbox::protocol

#endif  // GLASSBOX_PROTOCOL_CODEC_H_
