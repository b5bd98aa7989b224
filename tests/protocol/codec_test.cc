// The msgpack codec: round trips, determinism, and hostile input (truncation, wrong types,
// size claims the bytes cannot back, depth bombs, limits, other protocol versions).
#include "protocol/codec.h"
#include "protocol/json.h"

#include <catch2/catch.hpp>
#include <cmath>
#include <limits>
#include <string>

#include "tests/protocol/protocol_test_util.h"

namespace glassbox::protocol {
namespace {

using nlohmann::json;
using testing::Bytes;
using testing::Msgpack;

// A small valid request as JSON, to be bent by each test before encoding with Msgpack().
json MinimalRequest() {
  return json::parse(R"({
    "glassbox": 1, "type": "request",
    "body": {"model": "m", "scan": false, "traces": [{
      "invokes": [{"prompt": "x"}],
      "nodes": [{"id": 1, "op": "read", "args": [], "kwargs": {"point": "lm_head.output"}}]
    }]}})");
}

json& FirstNode(json& request) { return request["body"]["traces"][0]["nodes"][0]; }

// The error message of decoding `message` as a request ("" if it decodes).
std::string RequestError(const json& message, const DecodeLimits& limits = {}) {
  auto decoded = DecodeRequest(Msgpack(message), limits);
  return decoded.ok() ? "" : decoded.status().message();
}

TEST_CASE("DType names, sizes and element counts", "[protocol]") {
  for (DType d : {DType::kFloat32, DType::kFloat16, DType::kBFloat16, DType::kInt64, DType::kInt32,
                  DType::kBool, DType::kUInt8}) {
    REQUIRE(DTypeFromName(DTypeName(d)) == d);
  }
  CHECK(std::string(DTypeName(DType::kBFloat16)) == "bfloat16");
  CHECK(DTypeSize(DType::kInt64) == 8);
  CHECK(DTypeSize(DType::kFloat16) == 2);
  CHECK(DTypeSize(DType::kBool) == 1);
  CHECK_FALSE(DTypeFromName("float64").has_value());
  TensorData t;
  CHECK(t.NumElements() == 1);  // a scalar
  t.shape = {2, 3, 4};
  CHECK(t.NumElements() == 24);
  t.shape = {5, 0};
  CHECK(t.NumElements() == 0);
}

TEST_CASE("Value equality looks only at the kind's own fields", "[protocol]") {
  CHECK(Value::Int(3) != Value::Float(3.0));
  CHECK(Value::Int(3) != Value::Ref(3));
  CHECK(Value::Float(std::nan("")) == Value::Float(std::nan("")));
  CHECK(Value::Float(0.0) == Value::Float(-0.0));
  CHECK(Value::MakeSlice({1, std::nullopt, std::nullopt}) !=
        Value::MakeSlice({std::nullopt, 1, std::nullopt}));
  CHECK(testing::MakeTensor(DType::kUInt8, {1}, "a") ==
        testing::MakeTensor(DType::kUInt8, {1}, "a"));
  CHECK(testing::MakeTensor(DType::kUInt8, {1}, "a") !=
        testing::MakeTensor(DType::kBool, {1}, "a"));
  CHECK(Value::List({Value::None()}) != Value::List({}));
}

TEST_CASE("Requests, results and error reports round-trip", "[protocol]") {
  const Request request = testing::SampleRequest();
  const std::string bytes = EncodeRequest(request);
  auto decoded = DecodeRequest(bytes);
  REQUIRE(decoded.ok());
  CHECK(*decoded == request);
  CHECK(EncodeRequest(*decoded) == bytes);  // deterministic

  const Result result = testing::SampleResult();
  auto decoded_result = DecodeResult(EncodeResult(result));
  REQUIRE(decoded_result.ok());
  CHECK(*decoded_result == result);

  ErrorReport error = ErrorReport::FromStatus(InvalidArgument("bad op"), 7, "exp.py:9");
  CHECK(error.code == "INVALID_ARGUMENT");
  auto decoded_error = DecodeErrorReport(EncodeErrorReport(error));
  REQUIRE(decoded_error.ok());
  CHECK(*decoded_error == error);
  error.node.reset();
  error.source.clear();
  decoded_error = DecodeErrorReport(EncodeErrorReport(error));
  REQUIRE(decoded_error.ok());
  CHECK(*decoded_error == error);
}

TEST_CASE("A scan's shapes round-trip and are optional in a result", "[protocol]") {
  Result scan;
  scan.shapes = {{1, 0, "", "float32", std::vector<std::optional<int64_t>>{1, 6, 64}},
                 {1, 1, "", "float32", std::vector<std::optional<int64_t>>{1, std::nullopt}},
                 {2, 0, "model.layers.0.output", "float32", std::vector<std::optional<int64_t>>{}},
                 {3, 0, "", "unknown", std::nullopt}};
  auto decoded = DecodeResult(EncodeResult(scan));
  REQUIRE(decoded.ok());
  CHECK(*decoded == scan);
  auto from_json = ResultFromJson(json::parse(ResultToJson(scan).dump()));
  REQUIRE(from_json.ok());
  CHECK(*from_json == scan);
  // A result without the key (every result but a scan's) decodes with no shapes.
  auto plain = DecodeResult(EncodeResult(Result()));
  REQUIRE(plain.ok());
  CHECK(plain->shapes.empty());
  json bad = ResultToJson(scan);
  bad["body"]["shapes"][1]["shape"][0] = "one";
  auto refused = DecodeResult(Msgpack(bad));
  REQUIRE_FALSE(refused.ok());
  CHECK(refused.status().message() == "body.shapes[1].shape[0]: expected an int, got string");
  bad = ResultToJson(scan);
  bad["body"]["shapes"][0].erase("dtype");
  refused = DecodeResult(Msgpack(bad));
  REQUIRE_FALSE(refused.ok());
  CHECK_THAT(refused.status().message(), Catch::Contains("body.shapes[0]") && Catch::Contains("dtype"));
}

TEST_CASE("Floats are always float64, ints take their smallest form", "[protocol]") {
  SavedValue saved{"x", 1,
                   Value::List({Value::Float(3.0), Value::Float(-0.0), Value::Int(3),
                                Value::Int(-33), Value::Int(256)})};
  Result result;
  result.saved.push_back(saved);
  const std::string hex = testing::ToHex(EncodeResult(result));
  CHECK(hex.find("95"                              // a list of 5
                 "cb4008000000000000"              // 3.0
                 "cb8000000000000000"              // -0.0, sign kept
                 "03"                              // 3
                 "d0df"                            // -33
                 "cd0100") != std::string::npos);  // 256
  auto decoded = DecodeResult(EncodeResult(result));
  REQUIRE(decoded.ok());
  CHECK(std::signbit(decoded->saved[0].value.list[1].float_value));
  CHECK(decoded->saved[0].value.list[0].kind == Value::Kind::kFloat);
}

TEST_CASE("PeekEnvelope tells the message types apart", "[protocol]") {
  auto request = PeekEnvelope(EncodeRequest(testing::SampleRequest()));
  REQUIRE(request.ok());
  CHECK(request->type == MessageType::kRequest);
  auto result = PeekEnvelope(EncodeResult(Result{}));
  REQUIRE(result.ok());
  CHECK(result->type == MessageType::kResult);
  ErrorReport error{7, "INTERNAL", "boom", std::nullopt, ""};
  auto peeked = PeekEnvelope(EncodeErrorReport(error));
  REQUIRE(peeked.ok());
  CHECK(peeked->type == MessageType::kError);
  CHECK(peeked->version == 7);
}

TEST_CASE("A message of the wrong type is refused by name", "[protocol]") {
  auto as_request = DecodeRequest(EncodeResult(Result{}));
  REQUIRE_FALSE(as_request.ok());
  CHECK(as_request.status().message() == "type: expected a request message, got a result message");
  auto as_result = DecodeResult(EncodeErrorReport(ErrorReport{}));
  REQUIRE_FALSE(as_result.ok());
  CHECK(as_result.status().message() == "type: expected a result message, got an error message");
  auto as_error = DecodeErrorReport(EncodeRequest(Request{}));
  REQUIRE_FALSE(as_error.ok());
  CHECK(as_error.status().message() == "type: expected an error message, got a request message");
}

TEST_CASE("Other protocol versions are refused naming both versions", "[protocol]") {
  Request request = testing::SampleRequest();
  request.version = kProtocolVersion + 1;
  auto newer = DecodeRequest(EncodeRequest(request));
  REQUIRE_FALSE(newer.ok());
  CHECK(newer.status().code() == StatusCode::kInvalidArgument);
  CHECK(newer.status().message() ==
        "client speaks protocol 2, this server speaks protocol 1; upgrade the server, or "
        "install a glassbox client that speaks protocol 1");
  request.version = kProtocolVersion - 1;
  auto older = DecodeRequest(EncodeRequest(request));
  REQUIRE_FALSE(older.ok());
  CHECK(older.status().message() ==
        "client speaks protocol 0, this server speaks protocol 1; upgrade the client: pip "
        "install --upgrade glassbox");

  Result result;
  result.version = kProtocolVersion + 1;
  auto newer_server = DecodeResult(EncodeResult(result));
  REQUIRE_FALSE(newer_server.ok());
  CHECK(newer_server.status().message() ==
        "server speaks protocol 2, this client speaks protocol 1; upgrade the client: pip "
        "install --upgrade glassbox");

  SECTION("the version is judged before a type it may not know") {
    json message = MinimalRequest();
    message["glassbox"] = 3;
    message["type"] = "hologram";
    CHECK(RequestError(message).rfind("client speaks protocol 3", 0) == 0);
  }
  SECTION("error reports decode whatever their version") {
    ErrorReport error{kProtocolVersion + 5, "UNAVAILABLE", "down", 3, ""};
    auto decoded = DecodeErrorReport(EncodeErrorReport(error));
    REQUIRE(decoded.ok());
    CHECK(*decoded == error);
  }
}

TEST_CASE("Every truncation of a message is an error, never a crash", "[protocol]") {
  const std::string request = EncodeRequest(testing::SampleRequest());
  const std::string result = EncodeResult(testing::SampleResult());
  const std::string error = EncodeErrorReport(ErrorReport{1, "INTERNAL", "x", 1, "y"});
  for (const std::string* bytes : {&request, &result, &error}) {
    for (size_t cut = 0; cut < bytes->size(); ++cut) {
      const std::string_view prefix(bytes->data(), cut);
      INFO("cut at " << cut << " of " << bytes->size());
      CHECK_FALSE(DecodeRequest(prefix).ok());
      CHECK_FALSE(DecodeResult(prefix).ok());
      CHECK_FALSE(DecodeErrorReport(prefix).ok());
      CHECK_FALSE(PeekEnvelope(prefix).ok());
    }
  }
  auto truncated = DecodeRequest(std::string_view(request.data(), request.size() / 2));
  CHECK(truncated.status().message().find("truncated") != std::string::npos);
}

TEST_CASE("Trailing bytes and non-messages are refused", "[protocol]") {
  std::string bytes = EncodeResult(Result{});
  CHECK(DecodeResult(bytes + "x").status().message().find("trailing bytes") != std::string::npos);
  CHECK(DecodeResult("").status().message() == "empty message");
  CHECK(DecodeResult(Bytes({0xc1})).status().message().find("malformed msgpack") !=
        std::string::npos);
  CHECK(DecodeRequest(Msgpack(json::array({1, 2}))).status().message() ==
        "message: not a Glassbox message: expected a map, got list");
  CHECK(DecodeRequest(Msgpack({{"type", "request"}})).status().message() ==
        "message: not a Glassbox message: no \"glassbox\" version key");
}

TEST_CASE("Wrong types are refused naming their position", "[protocol]") {
  json message = MinimalRequest();
  SECTION("a tensor that is not a map") {
    FirstNode(message)["args"] = json::array({"x", {{"tensor", "abc"}}});
    CHECK(RequestError(message) ==
          "body.traces[0].nodes[0].args[1].tensor: expected a tensor map, got string");
  }
  SECTION("a node id that is not an int") {
    FirstNode(message)["id"] = "one";
    CHECK(RequestError(message) == "body.traces[0].nodes[0].id: expected an int, got string");
  }
  SECTION("a float where an int belongs") {
    FirstNode(message)["id"] = 1.0;
    CHECK(RequestError(message) == "body.traces[0].nodes[0].id: expected an int, got float");
  }
  SECTION("an int past int64") {
    FirstNode(message)["id"] = std::numeric_limits<uint64_t>::max();
    CHECK(RequestError(message) ==
          "body.traces[0].nodes[0].id: integer 18446744073709551615 does not fit in int64");
  }
  SECTION("traces that are not a list") {
    message["body"]["traces"] = {{"a", 1}};
    CHECK(RequestError(message) == "body.traces: expected a list of traces, got map");
  }
  SECTION("a missing key") {
    message["body"].erase("model");
    CHECK(RequestError(message) == "body: missing key \"model\"");
  }
  SECTION("a kwarg value that is binary") {
    FirstNode(message)["kwargs"]["point"] = json::binary({1, 2});
    CHECK(RequestError(message).rfind("body.traces[0].nodes[0].kwargs.point: expected a value",
                                      0) == 0);
  }
  SECTION("a value map with two keys") {
    FirstNode(message)["args"] = json::array({{{"ref", 1}, {"slice", nullptr}}});
    CHECK(RequestError(message).rfind(
              "body.traces[0].nodes[0].args[0]: expected a value map with one key", 0) == 0);
  }
  SECTION("an unknown value kind") {
    FirstNode(message)["args"] = json::array({{{"complex", json::array({1, 2})}}});
    CHECK(RequestError(message).rfind(
              "body.traces[0].nodes[0].args[0]: unknown value kind \"complex\"", 0) == 0);
  }
  SECTION("a slice of the wrong length") {
    FirstNode(message)["args"] = json::array({{{"slice", json::array({1, 2})}}});
    CHECK(RequestError(message).rfind("body.traces[0].nodes[0].args[0].slice: expected a list",
                                      0) == 0);
  }
  SECTION("an ellipsis that is not true") {
    FirstNode(message)["args"] = json::array({{{"ellipsis", false}}});
    CHECK(RequestError(message) == "body.traces[0].nodes[0].args[0].ellipsis: expected true");
  }
  SECTION("an invoke with both a prompt and ids") {
    message["body"]["traces"][0]["invokes"][0]["ids"] = json::array({1});
    CHECK(RequestError(message) ==
          "body.traces[0].invokes[0]: an invoke needs exactly one of \"prompt\" or \"ids\"");
  }
  SECTION("a negative seed") {
    message["body"]["traces"][0]["generate"] = {{"seed", -1}};
    CHECK(RequestError(message) ==
          "body.traces[0].generate.seed: expected a non-negative int, got a negative one");
  }
  SECTION("a repeated key") {
    // nlohmann cannot write duplicate keys: patch "op" into a second "id".
    std::string bytes = Msgpack(message);
    const std::string op_key = Bytes({0xa2, 'o', 'p', 0xa4, 'r', 'e', 'a', 'd'});
    const size_t at = bytes.find(op_key);
    REQUIRE(at != std::string::npos);
    bytes.replace(at, op_key.size(), Bytes({0xa2, 'i', 'd', 0x02, 0xa2, 'o', 'p', 0xa0}));
    bytes.replace(bytes.find(Bytes({0x84})), 1, Bytes({0x85}));  // node map: 4 -> 5 entries
    auto decoded = DecodeRequest(bytes);
    REQUIRE_FALSE(decoded.ok());
    CHECK(decoded.status().message() == "body.traces[0].nodes[0]: duplicate key \"id\"");
  }
  SECTION("a string that is not UTF-8") {
    std::string bytes = Msgpack(message);  // nlohmann refuses to write bad UTF-8 itself
    bytes.replace(bytes.find("read"), 4, "re\xff\xfe");
    auto decoded = DecodeRequest(bytes);
    REQUIRE_FALSE(decoded.ok());
    CHECK(decoded.status().message() == "body.traces[0].nodes[0].op: string is not valid UTF-8");
  }
  SECTION("msgpack ext items") {
    FirstNode(message)["args"] = json::array({json::binary({1, 2, 3, 4}, 5)});  // fixext 4
    CHECK(RequestError(message).find("ext types are not part of the protocol") !=
          std::string::npos);
  }
}

TEST_CASE("Strings must be valid UTF-8", "[protocol]") {
  auto op_error = [](const std::string& op) {
    std::string bytes = Msgpack(MinimalRequest());
    bytes.replace(bytes.find(Bytes({0xa4, 'r', 'e', 'a', 'd'})), 5,
                  Bytes({static_cast<int>(0xa0 + op.size())}) + op);
    auto decoded = DecodeRequest(bytes);
    return decoded.ok() ? std::string() : decoded.status().message();
  };
  CHECK(op_error("r\u00e9ad") == "");         // 2 bytes
  CHECK(op_error("\xe2\x98\x83") == "");      // U+2603
  CHECK(op_error("\xf0\x9d\x94\xbe") == "");  // U+1D53E
  const std::string bad = "body.traces[0].nodes[0].op: string is not valid UTF-8";
  CHECK(op_error("\xc0\x80") == bad);              // overlong NUL
  CHECK(op_error("\xed\xa0\x80") == bad);          // a surrogate
  CHECK(op_error("\xf4\x90\x80\x80") == bad);      // past U+10FFFF
  CHECK(op_error("\xe2\x98") == bad);              // cut short
  CHECK(op_error("\x80") == bad);                  // a lone continuation byte
  CHECK(op_error("\xf8\x88\x80\x80\x80") == bad);  // a 5-byte form
}

TEST_CASE("Unknown keys are skipped for forward compatibility", "[protocol]") {
  json message = MinimalRequest();
  message["broker_hint"] = "x";
  message["body"]["priority"] = 3;
  FirstNode(message)["future_field"] = {{"deep", json::array({1, 2})}};
  message["body"]["traces"][0]["invokes"][0]["attention_mask"] = json::array({1});
  auto decoded = DecodeRequest(Msgpack(message));
  REQUIRE(decoded.ok());
  CHECK(decoded->traces[0].nodes[0].op == "read");
  CHECK(decoded->traces[0].nodes[0].kwargs.at("point") == Value::String("lm_head.output"));
}

TEST_CASE("Floats accept ints and float32, ints never accept floats", "[protocol]") {
  json message = MinimalRequest();
  message["body"]["traces"][0]["generate"] = {{"temperature", 1}, {"top_p", 0.5}};
  auto decoded = DecodeRequest(Msgpack(message));  // nlohmann packs 0.5 as float32
  REQUIRE(decoded.ok());
  CHECK(decoded->traces[0].generate->temperature == 1.0);
  CHECK(decoded->traces[0].generate->top_p == 0.5);
  CHECK(decoded->traces[0].generate->max_new_tokens == 1);  // absent: the default
}

TEST_CASE("Tensors are checked against their dtype and shape", "[protocol]") {
  json message = MinimalRequest();
  auto tensor = [&](const std::string& dtype, json shape, std::vector<uint8_t> data) {
    FirstNode(message)["args"] = json::array(
        {{{"tensor", {{"dtype", dtype}, {"shape", shape}, {"data", json::binary(data)}}}}});
    return RequestError(message);
  };
  const std::string at = "body.traces[0].nodes[0].args[0].tensor";
  CHECK(tensor("float32", {2}, std::vector<uint8_t>(8)).empty());
  CHECK(tensor("float32", {2}, std::vector<uint8_t>(7)) ==
        at + ".data: holds 7 bytes, but shape [2] of float32 needs 8");
  CHECK(tensor("float64", {1}, std::vector<uint8_t>(8)).rfind(at + ".dtype: unknown dtype", 0) ==
        0);
  CHECK(tensor("int32", {2, -1}, {}) == at + ".shape[1]: dimension -1 is negative");
  CHECK(tensor("bool", {3}, {1, 0, 2}) ==
        at + ".data: bool element 2 is 2; bool elements must be 0 or 1");
  CHECK(tensor("int64", {INT64_C(1) << 62, INT64_C(1) << 62}, {}) ==
        at + ".shape: shape [4611686018427387904, 4611686018427387904] has too many elements");
  CHECK(tensor("int64", {INT64_C(1) << 61}, {}).find("is over the limit of") !=
        std::string::npos);  // numel fits, the byte count overflows
  DecodeLimits small;
  small.max_tensor_bytes = 16;
  FirstNode(message)["args"] = json::array(
      {{{"tensor", {{"dtype", "float32"}, {"shape", {5}}, {"data", json::binary({})}}}}});
  auto decoded = DecodeRequest(Msgpack(message), small);
  REQUIRE_FALSE(decoded.ok());
  CHECK(decoded.status().code() == StatusCode::kResourceExhausted);
}

TEST_CASE("Size claims the bytes cannot back allocate nothing", "[protocol]") {
  DecodeLimits open;  // limits raised as far as msgpack can claim
  open.max_list_length = 0xFFFFFFFF;
  open.max_string_bytes = 0xFFFFFFFF;
  open.max_tensor_bytes = 0xFFFFFFFF;
  open.max_items = SIZE_MAX;
  // array32 of 2^31 elements, map32 of 2^32-1 entries, str32 and bin32 of 4 GiB: 10 bytes.
  for (const std::string& bytes : {Bytes({0xdd, 0x80, 0, 0, 0, 1, 2, 3, 4, 5}),
                                   Bytes({0xdf, 0xff, 0xff, 0xff, 0xff, 0xa1, 'a', 1, 2, 3}),
                                   Bytes({0xdb, 0xff, 0xff, 0xff, 0xff, 'a', 'b', 'c', 'd', 'e'}),
                                   Bytes({0xc6, 0xff, 0xff, 0xff, 0xff, 1, 2, 3, 4, 5})}) {
    // msgpack's parser waits for a string's bytes before showing it, so a string or binary
    // claim is refused as truncated rather than as over the limit: either way, nothing is
    // allocated.
    CHECK_FALSE(DecodeRequest(bytes).ok());
    auto opened = DecodeRequest(bytes, open);
    REQUIRE_FALSE(opened.ok());
    CHECK(opened.status().message().find("truncated") != std::string::npos);
  }
  // Nested claims: 60 array32 headers each claiming 2^31 elements.
  std::string nested;
  for (int i = 0; i < 60; ++i) nested += Bytes({0xdd, 0x80, 0, 0, 0});
  auto decoded = DecodeRequest(nested, open);
  REQUIRE_FALSE(decoded.ok());
  CHECK(decoded.status().message().find("truncated") != std::string::npos);
}

TEST_CASE("Depth bombs stop at the depth limit", "[protocol]") {
  SECTION("in raw msgpack") {
    std::string bomb(100000, static_cast<char>(0x91));  // [[[[...
    bomb.push_back(static_cast<char>(0xc0));
    auto decoded = DecodeRequest(bomb);
    REQUIRE_FALSE(decoded.ok());
    CHECK(decoded.status().code() == StatusCode::kResourceExhausted);
    std::string expected;
    for (int i = 0; i < 64; ++i) expected += "[0]";
    CHECK(decoded.status().message() == expected + ": nested deeper than 64 levels (the limit)");
  }
  SECTION("inside a value: 57 nested lists fit in args, 58 do not") {
    for (int depth : {57, 58}) {
      json value = 1;
      for (int i = 0; i < depth; ++i) value = json::array({value});
      json message = MinimalRequest();
      FirstNode(message)["args"] = json::array({value});
      auto decoded = DecodeRequest(Msgpack(message));
      CHECK(decoded.ok() == (depth == 57));
      if (!decoded.ok()) {
        CHECK(decoded.status().message().find("nested deeper than 64 levels") != std::string::npos);
      }
    }
  }
}

TEST_CASE("Limits on nodes, values, items, lists, strings and message size", "[protocol]") {
  const std::string bytes = EncodeRequest(testing::SampleRequest());  // 6 nodes
  auto refused = [&](DecodeLimits limits, const std::string& text) {
    auto decoded = DecodeRequest(bytes, limits);
    REQUIRE_FALSE(decoded.ok());
    CHECK(decoded.status().code() == StatusCode::kResourceExhausted);
    CHECK(decoded.status().message().find(text) != std::string::npos);
  };
  DecodeLimits limits;
  limits.max_nodes = 5;
  refused(limits, "body.traces[1].nodes[1]: more than 5 nodes in one request (the limit)");
  limits = {};
  limits.max_values = 10;
  refused(limits, "more than 10 values in one message");
  limits = {};
  limits.max_items = 50;
  refused(limits, "more than 50 msgpack items in one message");
  limits = {};
  limits.max_list_length = 6;
  refused(limits, "body.traces[0].nodes[2].args[0]: a list of 9 elements is over the limit of 6");
  limits = {};
  limits.max_string_bytes = 20;
  refused(limits, "body.model: a string of 21 bytes is over the limit of 20");
  limits = {};
  limits.max_message_bytes = bytes.size() - 1;
  refused(limits, "bytes is over the limit of");
  limits.max_message_bytes = bytes.size();
  CHECK(DecodeRequest(bytes, limits).ok());
}

}  // namespace
}  // namespace glassbox::protocol
