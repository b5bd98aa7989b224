// The stored byte samples (protocol/vectors/, written by the Python codec) against the C++
// codec: every vector decodes, re-encodes byte for byte and matches its JSON form; refused
// vectors give their exact error text. Then the fuzzing corpus (protocol/fuzz/corpus/) is
// replayed through every decoder, which must never crash.
#include <catch2/catch.hpp>
#include <set>
#include <string>

#include "protocol/codec.h"
#include "protocol/json.h"
#include "tests/protocol/protocol_test_util.h"

namespace glassbox::protocol {
namespace {

using nlohmann::json;

// Decodes both forms of a vector, checks they agree and that encoding gives the bytes back.
template <typename T, typename DecodeBytes, typename FromJson, typename Encode, typename ToJson>
void CheckVector(const json& vector, DecodeBytes decode, FromJson from_json, Encode encode,
                 ToJson to_json) {
  const std::string bytes = testing::FromHex(vector.at("msgpack_hex").get<std::string>());
  StatusOr<T> decoded = decode(bytes, DecodeLimits{});
  StatusOr<T> from_text = from_json(vector.at("json"), DecodeLimits{});
  if (vector.contains("error")) {
    const std::string expected = vector.at("error").get<std::string>();
    REQUIRE_FALSE(decoded.ok());
    CHECK(decoded.status().message() == expected);
    REQUIRE_FALSE(from_text.ok());
    CHECK(from_text.status().message() == expected);
    return;
  }
  INFO((decoded.ok() ? "" : decoded.status().ToString()));
  REQUIRE(decoded.ok());
  INFO((from_text.ok() ? "" : from_text.status().ToString()));
  REQUIRE(from_text.ok());
  CHECK(*decoded == *from_text);
  CHECK(testing::ToHex(encode(*decoded)) == vector.at("msgpack_hex").get<std::string>());
  CHECK(testing::ToHex(encode(*from_text)) == vector.at("msgpack_hex").get<std::string>());
  // Compared as text, so that 3 and 3.0 differ.
  CHECK(to_json(*decoded).dump() == vector.at("json").dump());
}

TEST_CASE("Every test vector decodes, re-encodes byte for byte and matches its JSON",
          "[protocol]") {
  const auto files = testing::ListFiles("protocol/vectors", ".json");
  REQUIRE(files.size() >= 8);
  std::set<std::string> kinds;
  for (const auto& file : files) {
    INFO(file.string());
    const json vector = json::parse(testing::ReadFile(file));
    REQUIRE(vector.contains("meaning"));
    const std::string kind = vector.at("kind").get<std::string>();
    kinds.insert(kind);
    if (kind == "request") {
      CheckVector<Request>(
          vector, [](auto b, auto l) { return DecodeRequest(b, l); },
          [](const json& j, auto l) { return RequestFromJson(j, l); },
          [](const Request& r) { return EncodeRequest(r); },
          [](const Request& r) { return RequestToJson(r); });
    } else if (kind == "result") {
      CheckVector<Result>(
          vector, [](auto b, auto l) { return DecodeResult(b, l); },
          [](const json& j, auto l) { return ResultFromJson(j, l); },
          [](const Result& r) { return EncodeResult(r); },
          [](const Result& r) { return ResultToJson(r); });
    } else {
      REQUIRE(kind == "error");
      CheckVector<ErrorReport>(
          vector, [](auto b, auto l) { return DecodeErrorReport(b, l); },
          [](const json& j, auto l) { return ErrorReportFromJson(j, l); },
          [](const ErrorReport& e) { return EncodeErrorReport(e); },
          [](const ErrorReport& e) { return ErrorReportToJson(e); });
    }
  }
  CHECK(kinds == std::set<std::string>{"request", "result", "error"});
}

TEST_CASE("Every truncation of every vector is refused", "[protocol]") {
  for (const auto& file : testing::ListFiles("protocol/vectors", ".json")) {
    const json vector = json::parse(testing::ReadFile(file));
    const std::string bytes = testing::FromHex(vector.at("msgpack_hex").get<std::string>());
    for (size_t cut = 0; cut < bytes.size(); ++cut) {
      INFO(file.string() << " cut at " << cut);
      const std::string_view prefix(bytes.data(), cut);
      CHECK_FALSE(PeekEnvelope(prefix).ok());
    }
  }
}

TEST_CASE("The fuzzing corpus replays through every decoder without crashing", "[protocol]") {
  const auto files = testing::ListFiles("protocol/fuzz/corpus");
  REQUIRE(!files.empty());
  size_t decoded = 0;
  for (const auto& file : files) {
    INFO(file.string());
    const std::string bytes = testing::ReadFile(file);
    if (auto request = DecodeRequest(bytes); request.ok()) {
      ++decoded;
      auto again = DecodeRequest(EncodeRequest(*request));
      REQUIRE(again.ok());
      CHECK(*again == *request);
      CHECK_NOTHROW(RequestToJson(*request).dump());
    }
    if (auto result = DecodeResult(bytes); result.ok()) {
      ++decoded;
      auto again = DecodeResult(EncodeResult(*result));
      REQUIRE(again.ok());
      CHECK(*again == *result);
    }
    if (auto error = DecodeErrorReport(bytes); error.ok()) ++decoded;
    (void)PeekEnvelope(bytes);
    // Corpus files that parse as JSON go through the JSON decoders too.
    const json parsed = json::parse(bytes, nullptr, /*allow_exceptions=*/false);
    if (parsed.is_discarded()) continue;
    if (auto request = RequestFromJson(parsed); request.ok()) {
      ++decoded;
      CHECK(DecodeRequest(EncodeRequest(*request)).ok());
    }
    if (auto result = ResultFromJson(parsed); result.ok()) ++decoded;
    if (auto error = ErrorReportFromJson(parsed); error.ok()) ++decoded;
  }
  INFO(decoded << " of " << files.size() << " corpus files decode");
  SUCCEED();
}

}  // namespace
}  // namespace glassbox::protocol
