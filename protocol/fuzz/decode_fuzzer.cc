// libFuzzer entry point: feeds arbitrary bytes to every msgpack decoder and, when they parse
// as JSON, to the JSON decoders. Decoding must never crash, hang or leak whatever the input;
// errors are the expected outcome, and whatever decodes must survive a round trip.
// Build and run (clang only; scripts/fuzz/run.sh decode does all of it, in build-asan/):
//   CXX=clang++ cmake -S . -B build-fuzz -G Ninja -DGLASSBOX_FUZZ=ON
//   cmake --build build-fuzz --target protocol_decode_fuzzer
//   mkdir -p /tmp/fuzz && build-fuzz/bin/protocol_decode_fuzzer /tmp/fuzz protocol/fuzz/corpus \
//     -dict=protocol/fuzz/decode.dict -max_total_time=300
//   build-fuzz/bin/protocol_decode_fuzzer -merge=1 protocol/fuzz/corpus /tmp/fuzz  # keep finds
// The corpus in protocol/fuzz/corpus is replayed by tests/protocol/vectors_test.cc and
// tests/python/test_wire.py in every build (and under ASan + UBSan by
// scripts/sanitize_check.sh).
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

  const nlohmann::json json = nlohmann::json::parse(bytes, nullptr, /*allow_exceptions=*/false);
  if (json.is_discarded()) return 0;
  if (auto request = protocol::RequestFromJson(json, limits); request.ok()) {
    auto again = protocol::RequestFromJson(protocol::RequestToJson(*request), limits);
    if (!again.ok()) __builtin_trap();
    (void)protocol::DecodeRequest(protocol::EncodeRequest(*request), limits);
  }
  if (auto result = protocol::ResultFromJson(json, limits); result.ok()) {
    if (!protocol::DecodeResult(protocol::EncodeResult(*result), limits).ok()) __builtin_trap();
  }
  (void)protocol::ErrorReportFromJson(json, limits);
  return 0;
}
