// The broker messages (SPEC.md §9): round trips of every type, determinism, and hostile
// input (not msgpack, wrong kinds, missing keys, unknown types, other versions, limits).
#include "protocol/broker_messages.h"

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "protocol/codec.h"

namespace glassbox::protocol {
namespace {

using nlohmann::json;

std::string Msgpack(const json& j) {
  std::vector<uint8_t> bytes = json::to_msgpack(j);
  return std::string(bytes.begin(), bytes.end());
}

std::string DecodeError(const std::string& bytes, const BrokerDecodeLimits& limits = {}) {
  auto decoded = DecodeBrokerMessage(bytes, limits);
  return decoded.ok() ? "" : decoded.status().ToString();
}

std::vector<BrokerMessage> OneOfEach() {
  std::vector<BrokerMessage> all;
  auto add = [&](BrokerMessageType type) -> BrokerMessage& {
    all.emplace_back();
    all.back().type = type;
    return all.back();
  };
  auto& submit = add(BrokerMessageType::kSubmit);
  submit.api_key = "gbk_abc";
  submit.ref = "r1";
  submit.payload = std::string("\x83\x00\xff", 3);
  add(BrokerMessageType::kQuery).job = "00ff";
  auto& fetch = add(BrokerMessageType::kFetch);
  fetch.job = "ab";
  fetch.index = 3;
  auto& cancel = add(BrokerMessageType::kCancel);
  cancel.job = "ab";
  cancel.reason = "cancelled by the user";
  add(BrokerMessageType::kListModels).ref = "x";
  auto& tokenize = add(BrokerMessageType::kTokenize);
  tokenize.api_key = "gbk_abc";
  tokenize.model = "smollm2";
  tokenize.text = "The capital of France is";
  auto& tokens = add(BrokerMessageType::kTokens);
  tokens.ref = "r2";
  tokens.payload = EncodeTokenIds({1, 504, -3});
  auto& ack = add(BrokerMessageType::kAck);
  ack.job = "ab";
  ack.time_ms = 1700000000000;
  BrokerMessage status = MakeStatusMessage("ab", JobState::kQueued, 5);
  status.position = 0;
  all.push_back(status);
  BrokerMessage done = MakeStatusMessage("ab", JobState::kCompleted, 6);
  done.count = 2;
  done.total_bytes = 2000000;
  done.batch = 3;
  all.push_back(done);
  auto& chunk = add(BrokerMessageType::kResultChunk);
  chunk.job = "ab";
  chunk.index = 1;
  chunk.count = 2;
  chunk.total_bytes = 10;
  chunk.payload = "hello";
  auto& models = add(BrokerMessageType::kModels);
  models.models = {{"smollm2", 2, 7, R"({"points":[]})", 1, 8}, {"tiny", 1, 0, ""}};
  all.push_back(MakeErrorMessage(ResourceExhausted("too many"), "ab", "r"));
  add(BrokerMessageType::kHeartbeat);
  add(BrokerMessageType::kDisconnect).reason = "bye";
  auto& ready = add(BrokerMessageType::kReady);
  ready.model = "smollm2";
  ready.catalogue = "{}";
  ready.heartbeat_ms = 200;
  ready.group = "node7:4242:0123456789abcdef";
  auto& result = add(BrokerMessageType::kJobResult);
  result.job = "ab";
  result.index = 0;
  result.count = 1;
  result.payload = std::string(100, 'x');
  result.code = "CANCELLED";
  result.message = "time limit of 1 s exceeded";
  auto& job = add(BrokerMessageType::kJob);
  job.job = "ab";
  job.payload = "req";
  job.time_limit_ms = 60000;
  job.attempts = 1;
  auto& running = add(BrokerMessageType::kRunning);
  running.job = "ab";
  running.batch = 4;
  return all;
}

TEST_CASE("Broker messages round-trip, every type", "[protocol]") {
  for (const BrokerMessage& m : OneOfEach()) {
    INFO(BrokerMessageTypeName(m.type));
    const std::string bytes = EncodeBrokerMessage(m);
    auto decoded = DecodeBrokerMessage(bytes);
    REQUIRE(decoded.ok());
    CHECK(*decoded == m);
    CHECK(EncodeBrokerMessage(*decoded) == bytes);  // deterministic
    CHECK(BrokerMessageTypeFromName(BrokerMessageTypeName(m.type)) == m.type);
  }
}

TEST_CASE("Broker messages use the documented envelope and keys", "[protocol]") {
  BrokerMessage ack;
  ack.type = BrokerMessageType::kAck;
  ack.job = "0123";
  ack.time_ms = 42;
  const std::string bytes = EncodeBrokerMessage(ack);
  json j = json::from_msgpack(std::vector<uint8_t>(bytes.begin(), bytes.end()));
  CHECK(j == json::parse(R"({"glassbox":1,"type":"ack","body":{"job":"0123","time_ms":42}})"));
}

TEST_CASE("Token ids travel as 8 little-endian bytes each", "[protocol]") {
  const std::string bytes = EncodeTokenIds({1, 0x0102, -1});
  CHECK(bytes == std::string("\x01\0\0\0\0\0\0\0\x02\x01\0\0\0\0\0\0", 16) +
                     std::string(8, '\xff'));
  CHECK(*DecodeTokenIds(bytes) == std::vector<int64_t>{1, 0x0102, -1});
  CHECK(DecodeTokenIds("").value().empty());
  CHECK(DecodeTokenIds(std::string(9, '\0')).status().ToString() ==
        "INVALID_ARGUMENT: body.data: token ids take 8 bytes each, got 9 bytes");
}

TEST_CASE("An error message decodes as a protocol error report too", "[protocol]") {
  const std::string bytes = EncodeBrokerMessage(MakeErrorMessage(NotFound("no job ab"), "ab"));
  auto report = DecodeErrorReport(bytes);
  REQUIRE(report.ok());
  CHECK(report->code == "NOT_FOUND");
  CHECK(report->message == "no job ab");
}

TEST_CASE("Malformed broker messages give errors naming the cause", "[protocol]") {
  CHECK(DecodeError("") == "INVALID_ARGUMENT: empty message");
  CHECK(DecodeError("\xc1").find("malformed msgpack") != std::string::npos);
  CHECK(DecodeError(Msgpack(json::array({1, 2}))) ==
        "INVALID_ARGUMENT: not a Glassbox message: expected a map, got list");
  CHECK(DecodeError(Msgpack({{"type", "ack"}, {"body", json::object()}})) ==
        "INVALID_ARGUMENT: not a Glassbox message: no \"glassbox\" version key");
  CHECK(DecodeError(Msgpack({{"glassbox", 1}, {"type", "frobnicate"}, {"body", json::object()}})) ==
        "INVALID_ARGUMENT: type: unknown message type \"frobnicate\"");
  CHECK(DecodeError(Msgpack({{"glassbox", 1}, {"type", "query"}, {"body", json::object()}})) ==
        "INVALID_ARGUMENT: body: missing key \"job\" (required in a query message)");
  CHECK(DecodeError(Msgpack({{"glassbox", 1}, {"type", "query"}, {"body", {{"job", 7}}}})) ==
        "INVALID_ARGUMENT: body.job: expected a string, got int");
  CHECK(DecodeError(Msgpack(
            {{"glassbox", 1}, {"type", "fetch"}, {"body", {{"job", "a"}, {"index", -1}}}})) ==
        "INVALID_ARGUMENT: body.index: must not be negative, got -1");
  CHECK(DecodeError(Msgpack({{"glassbox", 1}, {"type", "submit"}, {"body", {{"request", "x"}}}})) ==
        "INVALID_ARGUMENT: body.request: expected binary data, got string");
  CHECK(DecodeError(Msgpack({{"glassbox", 1},
                             {"type", "status"},
                             {"body", {{"job", "a"}, {"state", "DONE"}, {"time_ms", 1}}}})) ==
        "INVALID_ARGUMENT: body.state: unknown job state \"DONE\"");
  CHECK(DecodeError(Msgpack({{"glassbox", 2}, {"type", "heartbeat"}, {"body", json::object()}}))
            .find("peer speaks protocol 2, this one speaks protocol 1") != std::string::npos);
  std::string trailing = EncodeBrokerMessage(BrokerMessage{}) + "x";
  CHECK(DecodeError(trailing).find("trailing bytes") != std::string::npos);
  std::string truncated = EncodeBrokerMessage(OneOfEach()[0]);
  truncated.pop_back();
  CHECK(DecodeError(truncated).find("INVALID_ARGUMENT") == 0);
}

TEST_CASE("Broker messages from another version: errors still decode, keys skipped", "[protocol]") {
  auto e = DecodeBrokerMessage(Msgpack({{"glassbox", 9},
                                        {"type", "error"},
                                        {"body", {{"code", "X"}, {"message", "m"}, {"new", 1}}}}));
  REQUIRE(e.ok());
  CHECK(e->version == 9);
  CHECK(e->message == "m");
}

TEST_CASE("Broker message limits give RESOURCE_EXHAUSTED", "[protocol]") {
  BrokerDecodeLimits limits;
  limits.max_message_bytes = 100;
  BrokerMessage submit;
  submit.type = BrokerMessageType::kSubmit;
  submit.payload = std::string(200, 'x');
  CHECK(DecodeError(EncodeBrokerMessage(submit), limits).find("RESOURCE_EXHAUSTED: message of") ==
        0);
  json deep = 1;
  for (int i = 0; i < 20; ++i) deep = json::array({deep});
  CHECK(DecodeError(Msgpack({{"glassbox", 1}, {"type", "heartbeat"}, {"body", {{"x", deep}}}}))
            .find("RESOURCE_EXHAUSTED") == 0);
  // A 6-byte message claiming a list of 4 billion models costs nothing.
  CHECK(DecodeError(std::string("\xdd\xff\xff\xff\xff\x00", 6)).find("RESOURCE_EXHAUSTED") == 0);
}

TEST_CASE("PeekRequestModel reads body.model without decoding the graph", "[protocol]") {
  Request request;
  request.model = "smollm2";
  request.traces.emplace_back();
  auto model = PeekRequestModel(EncodeRequest(request));
  REQUIRE(model.ok());
  CHECK(*model == "smollm2");
  CHECK(PeekRequestModel(Msgpack({{"glassbox", 1}, {"type", "request"}, {"body", {{"x", 1}}}}))
            .status()
            .message() == "request has no body.model");
  CHECK(PeekRequestModel(EncodeErrorReport(ErrorReport::FromStatus(Internal("x"))))
            .status()
            .message() == "submitted message is a \"error\" message, not a request");
  CHECK(!PeekRequestModel("garbage").ok());
}

}  // namespace
}  // namespace glassbox::protocol
