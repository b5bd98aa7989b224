// Helpers shared by the protocol tests: files, hex, hand-built msgpack and a request that
// uses every kind of value.
#ifndef GLASSBOX_TESTS_PROTOCOL_PROTOCOL_TEST_UTIL_H_
#define GLASSBOX_TESTS_PROTOCOL_PROTOCOL_TEST_UTIL_H_

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "protocol/graph.h"

namespace glassbox::protocol::testing {

inline std::string ReadFile(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

// Files of a directory, sorted by name (empty if it does not exist).
inline std::vector<std::filesystem::path> ListFiles(const std::filesystem::path& dir,
                                                    const std::string& extension = "") {
  std::vector<std::filesystem::path> files;
  if (!std::filesystem::is_directory(dir)) return files;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    if (!entry.is_regular_file()) continue;
    if (!extension.empty() && entry.path().extension() != extension) continue;
    files.push_back(entry.path());
  }
  std::sort(files.begin(), files.end());
  return files;
}

inline std::string FromHex(const std::string& hex) {
  std::string out;
  for (size_t i = 0; i + 1 < hex.size(); i += 2) {
    out.push_back(static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16)));
  }
  return out;
}

inline std::string ToHex(const std::string& bytes) {
  static const char* kDigits = "0123456789abcdef";
  std::string out;
  for (unsigned char c : bytes) {
    out.push_back(kDigits[c >> 4]);
    out.push_back(kDigits[c & 15]);
  }
  return out;
}

// msgpack bytes for a hand-written message (nlohmann's encoder: fine for decoder tests,
// though it may pick float32 where Glassbox encoders always write float64).
inline std::string Msgpack(const nlohmann::json& json) {
  std::vector<uint8_t> bytes = nlohmann::json::to_msgpack(json);
  return std::string(bytes.begin(), bytes.end());
}

inline std::string Bytes(std::initializer_list<int> bytes) {
  std::string out;
  for (int b : bytes) out.push_back(static_cast<char>(b));
  return out;
}

template <typename T>
std::string RawBytes(const std::vector<T>& values) {  // little-endian hosts only (x86, arm)
  std::string out(values.size() * sizeof(T), '\0');
  if (!values.empty()) std::memcpy(out.data(), values.data(), out.size());
  return out;
}

inline Value MakeTensor(DType dtype, std::vector<int64_t> shape, std::string bytes) {
  TensorData t;
  t.dtype = dtype;
  t.shape = std::move(shape);
  t.bytes = std::move(bytes);
  return Value::Tensor(std::move(t));
}

// A request that uses every kind of value, every dtype, two traces and generation.
inline Request SampleRequest() {
  Request request;
  request.model = "SmolLM2-135M-Instruct";
  Trace first;
  first.invokes.push_back(Invoke{std::string("The capital of France is"), std::nullopt});
  first.invokes.push_back(Invoke{std::nullopt, std::vector<int64_t>{1, 2, 3}});
  Node read{1, "read", {}, {{"point", Value::String("model.layers.5.output")}}, "exp.py:3"};
  Node index{
      2,
      "getitem",
      {Value::Ref(1), Value::List({Value::MakeEllipsis(), Value::MakeSlice({1, std::nullopt, 2}),
                                   Value::None(), Value::Int(-3)})},
      {},
      ""};
  Node literals{3,
                "cat",
                {Value::List({Value::Bool(true), Value::Bool(false), Value::Int(INT64_MIN),
                              Value::Int(INT64_MAX), Value::Float(3.0), Value::Float(-0.0),
                              Value::Float(std::numeric_limits<double>::quiet_NaN()),
                              Value::Float(-std::numeric_limits<double>::infinity()),
                              Value::String("h\xc3\xa9llo")})},
                {{"dim", Value::Int(0)}, {"alpha", Value::Float(0.5)}},
                ""};
  Node tensors{
      4,
      "add",
      {MakeTensor(DType::kFloat32, {2}, RawBytes<float>({1.5f, -2.0f})),
       MakeTensor(DType::kFloat16, {1}, RawBytes<uint16_t>({0x3C00})),
       MakeTensor(DType::kBFloat16, {1, 1}, RawBytes<uint16_t>({0x3F80})),
       MakeTensor(DType::kInt64, {}, RawBytes<int64_t>({-5})),
       MakeTensor(DType::kInt32, {0, 3}, ""), MakeTensor(DType::kBool, {3}, Bytes({1, 0, 1})),
       MakeTensor(DType::kUInt8, {2}, Bytes({0, 255}))},
      {},
      ""};
  first.nodes = {read, index, literals, tensors};
  Trace second;
  second.invokes.push_back(Invoke{std::string("Once upon a time"), std::nullopt});
  GenerateOptions generate;
  generate.max_new_tokens = 5;
  generate.temperature = 0.7;
  generate.top_k = 40;
  generate.top_p = 0.9;
  generate.seed = std::numeric_limits<uint64_t>::max();
  generate.stop_ids = {2};
  second.generate = generate;
  second.nodes = {
      Node{5, "write", {Value::Ref(2)}, {{"point", Value::String("model.norm.output")}}, ""},
      Node{6, "save", {Value::Ref(5)}, {{"name", Value::String("out")}}, ""}};
  request.traces = {first, second};
  return request;
}

inline Result SampleResult() {
  Result result;
  result.saved.push_back(
      SavedValue{"mlp5", 2, MakeTensor(DType::kFloat32, {1, 2}, RawBytes<float>({0.25f, 4.0f}))});
  result.saved.push_back(SavedValue{"count", 3, Value::Int(42)});
  result.saved.push_back(SavedValue{"shape", 4, Value::List({Value::Int(1), Value::Int(6)})});
  result.saved.push_back(SavedValue{"nothing", 5, Value::None()});
  result.generated = {{504, 3717}, {}};
  return result;
}

}  // namespace glassbox::protocol::testing

#endif  // GLASSBOX_TESTS_PROTOCOL_PROTOCOL_TEST_UTIL_H_
