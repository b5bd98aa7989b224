// The JSON mirror: round trips, ints versus floats, tensor elements (rounding into float16
// and bfloat16, base64 input), and errors that name their JSON path.
#include "protocol/json.h"

#include <catch2/catch.hpp>
#include <cmath>
#include <limits>
#include <string>

#include "tests/protocol/protocol_test_util.h"

namespace glassbox::protocol {
namespace {

using nlohmann::json;
using testing::RawBytes;

json RequestWithArgs(const json& args) {
  json message = json::parse(R"({
    "glassbox": 1, "type": "request",
    "body": {"model": "m", "traces": [{"invokes": [{"ids": [1]}],
             "nodes": [{"id": 1, "op": "add"}]}]}})");
  message["body"]["traces"][0]["nodes"][0]["args"] = args;
  return message;
}

// The single argument of the single node of a request.
StatusOr<Value> DecodeArg(const json& arg) {
  auto request = RequestFromJson(RequestWithArgs(json::array({arg})));
  if (!request.ok()) return request.status();
  return request->traces[0].nodes[0].args[0];
}

std::string ArgError(const json& arg) {
  auto value = DecodeArg(arg);
  return value.ok() ? "" : value.status().message();
}

// The bytes a JSON tensor literal decodes to.
std::string TensorBytes(const std::string& dtype, const json& data) {
  json shape = json::array({data.size()});
  auto value = DecodeArg({{"tensor", {{"dtype", dtype}, {"shape", shape}, {"data", data}}}});
  REQUIRE(value.ok());
  return value->tensor->bytes;
}

TEST_CASE("JSON round-trips requests, results and error reports", "[protocol]") {
  const Request request = testing::SampleRequest();
  auto back = RequestFromJson(RequestToJson(request));
  REQUIRE(back.ok());
  CHECK(*back == request);
  // Through text as well: what nlohmann prints parses back to the same request.
  auto reparsed = RequestFromJson(json::parse(RequestToJson(request).dump()));
  REQUIRE(reparsed.ok());
  CHECK(*reparsed == request);

  const Result result = testing::SampleResult();
  auto result_back = ResultFromJson(json::parse(ResultToJson(result).dump()));
  REQUIRE(result_back.ok());
  CHECK(*result_back == result);

  ErrorReport error{1, "NOT_FOUND", "no hook point \"x\"", 4, "a.py:1"};
  auto error_back = ErrorReportFromJson(ErrorReportToJson(error));
  REQUIRE(error_back.ok());
  CHECK(*error_back == error);
}

TEST_CASE("JSON keeps ints and floats apart", "[protocol]") {
  CHECK(ValueToJson(Value::Int(3)).dump() == "3");
  CHECK(ValueToJson(Value::Float(3.0)).dump() == "3.0");
  CHECK(*DecodeArg(json::parse("3")) == Value::Int(3));
  CHECK(*DecodeArg(json::parse("3.0")) == Value::Float(3.0));
  CHECK(*DecodeArg(json::parse("-7")) == Value::Int(-7));
  CHECK(ArgError(json::parse("9223372036854775808")).find("does not fit in int64") !=
        std::string::npos);
}

TEST_CASE("JSON carries non-finite floats as tagged strings", "[protocol]") {
  const double inf = std::numeric_limits<double>::infinity();
  CHECK(ValueToJson(Value::Float(inf)).dump() == R"({"float":"inf"})");
  CHECK(ValueToJson(Value::Float(-inf)).dump() == R"({"float":"-inf"})");
  CHECK(ValueToJson(Value::Float(std::nan(""))).dump() == R"({"float":"nan"})");
  CHECK(*DecodeArg({{"float", "-inf"}}) == Value::Float(-inf));
  CHECK(std::isnan(DecodeArg({{"float", "nan"}})->float_value));
  CHECK(ArgError({{"float", "NaN"}}) ==
        "body.traces[0].nodes[0].args[0].float: expected \"nan\", \"inf\" or \"-inf\"");
}

TEST_CASE("JSON tensor elements of every dtype", "[protocol]") {
  CHECK(TensorBytes("float32", {1.5, -2, "inf"}) ==
        RawBytes<float>({1.5f, -2.0f, std::numeric_limits<float>::infinity()}));
  CHECK(TensorBytes("int64", {INT64_MIN, INT64_MAX}) == RawBytes<int64_t>({INT64_MIN, INT64_MAX}));
  CHECK(TensorBytes("int32", {-5, 2147483647}) == RawBytes<int32_t>({-5, 2147483647}));
  CHECK(TensorBytes("uint8", {0, 255}) == testing::Bytes({0, 255}));
  CHECK(TensorBytes("bool", {true, false}) == testing::Bytes({1, 0}));

  SECTION("float16 rounds to nearest even, through float32") {
    CHECK(TensorBytes("float16", {0.1, 1, 65504, 65519, 65520, -0.0}) ==
          RawBytes<uint16_t>({0x2E66, 0x3C00, 0x7BFF, 0x7BFF, 0x7C00, 0x8000}));
    const double unit = std::ldexp(1.0, -24);  // the smallest subnormal half
    CHECK(TensorBytes("float16", {unit / 2, unit * 1.5, unit * 2.5, "nan", "-inf"}) ==
          RawBytes<uint16_t>({0x0000, 0x0002, 0x0002, 0x7E00, 0xFC00}));
  }
  SECTION("bfloat16 rounds to nearest even") {
    CHECK(TensorBytes("bfloat16", {0.1, 1, -2.5, 3.4e38, "nan"}) ==
          RawBytes<uint16_t>({0x3DCD, 0x3F80, 0xC020, 0x7F80, 0x7FC0}));
  }
  SECTION("what comes out goes back in unchanged") {
    Value t = testing::MakeTensor(DType::kFloat16, {4},
                                  RawBytes<uint16_t>({0x0001, 0x3555, 0xFBFF, 0x7C00}));
    CHECK(*DecodeArg(ValueToJson(t)) == t);
    Value b =
        testing::MakeTensor(DType::kBFloat16, {3}, RawBytes<uint16_t>({0x0001, 0x4049, 0xFF80}));
    CHECK(*DecodeArg(ValueToJson(b)) == b);
  }
}

TEST_CASE("JSON tensors may come as base64", "[protocol]") {
  json shape = json::array({2});
  auto value = DecodeArg(
      {{"tensor", {{"dtype", "float32"}, {"shape", shape}, {"data_base64", "AADAPwAAAMA="}}}});
  REQUIRE(value.ok());
  CHECK(value->tensor->bytes == RawBytes<float>({1.5f, -2.0f}));
  const std::string at = "body.traces[0].nodes[0].args[0].tensor";
  CHECK(ArgError({{"tensor",
                   {{"dtype", "float32"}, {"shape", shape}, {"data_base64", "AADAPwAAAM"}}}}) ==
        at + ".data_base64: not valid base64 (standard alphabet, padded)");
  CHECK(ArgError(
            {{"tensor", {{"dtype", "float32"}, {"shape", shape}, {"data_base64", "AADAPw=="}}}}) ==
        at + ".data: holds 4 bytes, but shape [2] of float32 needs 8");
  CHECK(ArgError({{"tensor", {{"dtype", "float32"}, {"shape", shape}}}}) ==
        at + ": a tensor needs exactly one of \"data\" or \"data_base64\"");
}

TEST_CASE("JSON errors name their path", "[protocol]") {
  const std::string at = "body.traces[0].nodes[0].args[0].tensor";
  auto tensor = [](const std::string& dtype, json data) {
    json shape = json::array({data.size()});
    return json{{"tensor", {{"dtype", dtype}, {"shape", shape}, {"data", data}}}};
  };
  CHECK(ArgError(tensor("float32", {1, "abc"})) ==
        at + ".data[1]: expected a number (or \"nan\", \"inf\", \"-inf\")");
  CHECK(ArgError(tensor("int32", {1, 2147483648})) ==
        at + ".data[1]: integer does not fit in int32");
  CHECK(ArgError(tensor("uint8", {-1})) == at + ".data[0]: integer does not fit in uint8");
  CHECK(ArgError(tensor("int64", {1.5})) == at + ".data[0]: expected an int");
  CHECK(ArgError(tensor("bool", {1})) == at + ".data[0]: expected true or false");
  json wrong_count = tensor("float32", {1, 2});
  wrong_count["tensor"]["shape"] = {3};
  CHECK(ArgError(wrong_count) == at + ".data: has 2 elements, but the shape needs 3");

  json message = RequestWithArgs(json::array());
  message["body"]["traces"][0]["nodes"][0]["kwargs"] = {{"dim", {{"ref", "x"}}}};
  auto request = RequestFromJson(message);
  REQUIRE_FALSE(request.ok());
  CHECK(request.status().message() ==
        "body.traces[0].nodes[0].kwargs.dim.ref: expected an int, got string");
}

TEST_CASE("JSON decoding checks versions and limits like msgpack decoding", "[protocol]") {
  json message = RequestWithArgs(json::array());
  message["glassbox"] = 2;
  auto newer = RequestFromJson(message);
  REQUIRE_FALSE(newer.ok());
  CHECK(newer.status().message().rfind("client speaks protocol 2, this server speaks protocol 1",
                                       0) == 0);

  // Built in place: copying a deep nlohmann::json recurses (the decoder itself does not).
  json bomb_message = RequestWithArgs(json::array({nullptr}));
  json* slot = &bomb_message["body"]["traces"][0]["nodes"][0]["args"][0];
  for (int i = 0; i < 10000; ++i) {
    *slot = json::array({nullptr});
    slot = &(*slot)[0];
  }
  auto bomb = RequestFromJson(bomb_message);
  REQUIRE_FALSE(bomb.ok());
  CHECK(bomb.status().code() == StatusCode::kResourceExhausted);
  CHECK(bomb.status().message().find("nested deeper than 64 levels") != std::string::npos);

  DecodeLimits limits;
  limits.max_list_length = 2;
  auto long_list = RequestFromJson(RequestWithArgs(json::array({json::array({1, 2, 3})})), limits);
  REQUIRE_FALSE(long_list.ok());
  CHECK(long_list.status().message() ==
        "body.traces[0].nodes[0].args[0]: a list of 3 elements is over the limit of 2");

  CHECK_FALSE(RequestFromJson(json("not a message")).ok());
  CHECK_FALSE(ResultFromJson(json::array()).ok());
  CHECK_FALSE(ErrorReportFromJson(nullptr).ok());
}

}  // namespace
}  // namespace glassbox::protocol
