// libFuzzer entry point: feeds arbitrary bytes to every msgpack decoder. Decoding must never
// crash, hang or leak whatever the input; errors are the expected outcome. Built with
// -DGLASSBOX_FUZZ=ON (clang); its corpus in protocol/fuzz/corpus is replayed by
// tests/protocol/vectors_test.cc in every build.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "protocol/codec.h"
#include "protocol/json.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  namespace protocol = glassbox::protocol;
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  protocol::DecodeLimits limits;
  limits.max_tensor_bytes = 1 << 20;  // keeps the fuzzer's memory use small
  if (auto request = protocol::DecodeRequest(bytes, limits); request.ok()) {
    // What decodes must re-encode to a message that decodes to the same request.
    auto again = protocol::DecodeRequest(protocol::EncodeRequest(*request), limits);
    if (!again.ok() || !(*again == *request)) __builtin_trap();
    (void)protocol::RequestToJson(*request).dump();
  }
  if (auto result = protocol::DecodeResult(bytes, limits); result.ok()) {
    auto again = protocol::DecodeResult(protocol::EncodeResult(*result), limits);
    if (!again.ok() || !(*again == *result)) __builtin_trap();
    auto json_again = protocol::ResultFromJson(protocol::ResultToJson(*result), limits);
    if (!json_again.ok()) __builtin_trap();
  }
  (void)protocol::DecodeErrorReport(bytes, limits);
  (void)protocol::PeekEnvelope(bytes, limits);
  return 0;
}
