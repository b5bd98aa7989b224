// The JSON mirror of Glassbox messages: builders from the protocol structs, and the JSON
// adapter through which SchemaDecoder (schema_impl.h) reads them back with the same checks as
// the msgpack decoder. Tensor elements are converted here, to and from JSON numbers.
#include "protocol/json.h"

#include <cmath>
#include <cstring>
#include <exception>
#include <limits>
#include <new>
#include <string>
#include <vector>

#include "protocol/schema_impl.h"

namespace glassbox::protocol {

namespace {

using internal::Kind;
using internal::Path;
using internal::PathError;
using Json = nlohmann::json;

// ---------------------------------------------------------------------------------------
// Element conversions. JSON numbers reach 16-bit floats through float32, rounding to nearest
// even at each step (SPEC.md); the Python codec does the same, so both give the same bits.

uint32_t FloatBits(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof bits);
  return bits;
}

float FloatFromBits(uint32_t bits) {
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

uint16_t FloatToHalf(float value) {
  const uint32_t f = FloatBits(value);
  const auto sign = static_cast<uint16_t>((f >> 16) & 0x8000);
  const uint32_t abs = f & 0x7FFFFFFF;
  if (abs > 0x7F800000) return sign | 0x7E00 | ((abs >> 13) & 0x3FF);  // NaN, kept quiet
  if (abs >= 0x477FF000) return sign | 0x7C00;  // 65520 and up round to infinity
  if (abs < 0x38800000) {  // below 2^-14: a subnormal half (units of 2^-24) or zero
    const float units = std::nearbyint(std::fabs(value) * 16777216.0f);
    return sign | static_cast<uint16_t>(units);
  }
  const uint32_t rounded = abs + 0xFFF + ((abs >> 13) & 1);
  return sign | static_cast<uint16_t>((rounded - 0x38000000) >> 13);
}

float HalfToFloat(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
  const uint32_t exponent = (h >> 10) & 0x1F;
  const uint32_t mantissa = h & 0x3FF;
  if (exponent == 0) {
    const float magnitude = std::ldexp(static_cast<float>(mantissa), -24);
    return sign ? -magnitude : magnitude;
  }
  if (exponent == 31) return FloatFromBits(sign | 0x7F800000 | (mantissa << 13));
  return FloatFromBits(sign | ((exponent + 112) << 23) | (mantissa << 13));
}

uint16_t FloatToBFloat16(float value) {
  const uint32_t f = FloatBits(value);
  if ((f & 0x7FFFFFFF) > 0x7F800000) return static_cast<uint16_t>((f >> 16) | 0x40);  // NaN
  return static_cast<uint16_t>((f + 0x7FFF + ((f >> 16) & 1)) >> 16);
}

float BFloat16ToFloat(uint16_t b) { return FloatFromBits(static_cast<uint32_t>(b) << 16); }

uint64_t LoadLE(const char* p, int size) {
  uint64_t v = 0;
  for (int i = size - 1; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(p[i]);
  return v;
}

void StoreLE(uint64_t v, int size, std::string* out) {
  for (int i = 0; i < size; ++i) out->push_back(static_cast<char>((v >> (8 * i)) & 0xFF));
}

Json FloatElement(double v) {
  if (std::isnan(v)) return "nan";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  return v;
}

Json TensorElement(const TensorData& t, int64_t i) {
  const int size = static_cast<int>(DTypeSize(t.dtype));
  const uint64_t raw = LoadLE(t.bytes.data() + i * size, size);
  switch (t.dtype) {
    case DType::kFloat32:
      return FloatElement(FloatFromBits(static_cast<uint32_t>(raw)));
    case DType::kFloat16:
      return FloatElement(HalfToFloat(static_cast<uint16_t>(raw)));
    case DType::kBFloat16:
      return FloatElement(BFloat16ToFloat(static_cast<uint16_t>(raw)));
    case DType::kInt64:
      return static_cast<int64_t>(raw);
    case DType::kInt32:
      return static_cast<int32_t>(static_cast<uint32_t>(raw));
    case DType::kBool:
      return raw != 0;
    case DType::kUInt8:
      return static_cast<int64_t>(raw);
  }
  return nullptr;
}

// Appends one JSON element of a tensor of `dtype`, or says what is wrong with it.
Status AppendElement(const Json& e, DType dtype, const Path& path, std::string* out) {
  const bool is_float_dtype =
      dtype == DType::kFloat32 || dtype == DType::kFloat16 || dtype == DType::kBFloat16;
  if (is_float_dtype) {
    double v = 0;
    if (e.is_number()) {
      v = e.get<double>();
    } else if (e.is_string() && e.get_ref<const std::string&>() == "nan") {
      v = std::numeric_limits<double>::quiet_NaN();
    } else if (e.is_string() && e.get_ref<const std::string&>() == "inf") {
      v = std::numeric_limits<double>::infinity();
    } else if (e.is_string() && e.get_ref<const std::string&>() == "-inf") {
      v = -std::numeric_limits<double>::infinity();
    } else {
      return PathError(path, "expected a number (or \"nan\", \"inf\", \"-inf\")");
    }
    const auto f = static_cast<float>(v);
    if (dtype == DType::kFloat32) StoreLE(FloatBits(f), 4, out);
    if (dtype == DType::kFloat16) StoreLE(FloatToHalf(f), 2, out);
    if (dtype == DType::kBFloat16) StoreLE(FloatToBFloat16(f), 2, out);
    return Status::Ok();
  }
  if (dtype == DType::kBool) {
    if (!e.is_boolean()) return PathError(path, "expected true or false");
    out->push_back(e.get<bool>() ? 1 : 0);
    return Status::Ok();
  }
  if (!e.is_number_integer()) return PathError(path, "expected an int");
  const bool is_unsigned = e.is_number_unsigned();
  const uint64_t u = is_unsigned ? e.get<uint64_t>() : 0;
  const int64_t v = is_unsigned ? static_cast<int64_t>(u) : e.get<int64_t>();
  const bool negative = !is_unsigned && v < 0;
  if (dtype == DType::kInt64) {
    if (is_unsigned && u > static_cast<uint64_t>(INT64_MAX)) {
      return PathError(path, "integer does not fit in int64");
    }
    StoreLE(static_cast<uint64_t>(v), 8, out);
  } else if (dtype == DType::kInt32) {
    if ((is_unsigned && u > INT32_MAX) || (!is_unsigned && (v < INT32_MIN || v > INT32_MAX))) {
      return PathError(path, "integer does not fit in int32");
    }
    StoreLE(static_cast<uint32_t>(static_cast<int32_t>(v)), 4, out);
  } else {  // uint8
    if (negative || (is_unsigned ? u : static_cast<uint64_t>(v)) > 255) {
      return PathError(path, "integer does not fit in uint8");
    }
    out->push_back(static_cast<char>(v));
  }
  return Status::Ok();
}

// Standard base64 with padding (RFC 4648 section 4), nothing else accepted.
std::optional<std::string> DecodeBase64(const std::string& text) {
  auto sextet = [](char c) -> int {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
  };
  if (text.size() % 4 != 0) return std::nullopt;
  std::string out;
  out.reserve(text.size() / 4 * 3);
  for (size_t i = 0; i < text.size(); i += 4) {
    const bool last = i + 4 == text.size();
    const size_t pad = last ? (text[i + 3] == '=') + (text[i + 2] == '=') : 0;
    if (pad == 1 && text[i + 2] == '=') return std::nullopt;
    uint32_t group = 0;
    for (size_t j = 0; j < 4; ++j) {
      const int s = j >= 4 - pad ? 0 : sextet(text[i + j]);
      if (s < 0) return std::nullopt;
      group = (group << 6) | static_cast<uint32_t>(s);
    }
    for (size_t j = 0; j < 3 - pad; ++j) out.push_back(static_cast<char>(group >> (16 - 8 * j)));
  }
  return out;
}

// ---------------------------------------------------------------------------------------
// The JSON adapter for SchemaDecoder.
struct JsonTree {
  using Item = Json;
  static constexpr bool kIsJson = true;

  static Kind KindOf(const Item& item) {
    switch (item.type()) {
      case Json::value_t::null:
        return Kind::kNull;
      case Json::value_t::boolean:
        return Kind::kBool;
      case Json::value_t::number_integer:
      case Json::value_t::number_unsigned:
        return Kind::kInt;
      case Json::value_t::number_float:
        return Kind::kFloat;
      case Json::value_t::string:
        return Kind::kString;
      case Json::value_t::binary:
        return Kind::kBinary;
      case Json::value_t::array:
        return Kind::kList;
      case Json::value_t::object:
        return Kind::kMap;
      default:
        return Kind::kOther;
    }
  }
  static bool AsBool(const Item& item) { return item.get<bool>(); }
  static std::optional<int64_t> AsInt64(const Item& item) {
    if (item.is_number_unsigned()) {
      const auto u = item.get<uint64_t>();
      if (u > static_cast<uint64_t>(INT64_MAX)) return std::nullopt;
      return static_cast<int64_t>(u);
    }
    return item.get<int64_t>();
  }
  static std::optional<uint64_t> AsUInt64(const Item& item) {
    if (item.is_number_unsigned()) return item.get<uint64_t>();
    const auto v = item.get<int64_t>();
    if (v < 0) return std::nullopt;
    return static_cast<uint64_t>(v);
  }
  static double AsDouble(const Item& item) { return item.get<double>(); }
  static std::string_view AsString(const Item& item) { return item.get_ref<const std::string&>(); }
  static size_t Size(const Item& item) { return item.size(); }
  static const Item& At(const Item& item, size_t i) { return item[i]; }

  template <typename F>
  static Status ForEach(const Item& map, const Path&, F f) {
    for (const auto& [key, value] : map.items()) {
      GLASSBOX_RETURN_IF_ERROR(f(std::string_view(key), value));
    }
    return Status::Ok();
  }

  static StatusOr<std::string> TensorBytes(const Item* data, const Item* data_base64, DType dtype,
                                           int64_t numel, const Path& path, const DecodeLimits&) {
    if ((data == nullptr) == (data_base64 == nullptr)) {
      return PathError(path, "a tensor needs exactly one of \"data\" or \"data_base64\"");
    }
    if (data_base64) {
      const Path b64_path(path, "data_base64");
      if (!data_base64->is_string()) return PathError(b64_path, "expected a base64 string");
      std::optional<std::string> bytes = DecodeBase64(data_base64->get_ref<const std::string&>());
      if (!bytes) return PathError(b64_path, "not valid base64 (standard alphabet, padded)");
      return *std::move(bytes);
    }
    const Path data_path(path, "data");
    if (!data->is_array()) return PathError(data_path, "expected a list of numbers");
    if (static_cast<int64_t>(data->size()) != numel) {
      return PathError(data_path, "has " + std::to_string(data->size()) +
                                      " elements, but the shape needs " + std::to_string(numel));
    }
    std::string bytes;
    bytes.reserve(static_cast<size_t>(numel * DTypeSize(dtype)));
    for (size_t i = 0; i < data->size(); ++i) {
      GLASSBOX_RETURN_IF_ERROR(AppendElement((*data)[i], dtype, Path(data_path, i), &bytes));
    }
    return bytes;
  }
};

template <typename T, typename Read>
StatusOr<T> Decode(const Json& json, const DecodeLimits& limits, Read read) {
  try {
    internal::SchemaDecoder<JsonTree> decoder(limits);
    return read(decoder, json);
  } catch (const std::bad_alloc&) {
    return ResourceExhausted("out of memory while decoding a message");
  } catch (const std::exception& e) {  // not expected: every access is type-checked first
    return Internal(std::string("JSON decoding failed: ") + e.what());
  }
}

// ---------------------------------------------------------------------------------------
// Building JSON.

Json OptionalInt(const std::optional<int64_t>& v) { return v ? Json(*v) : Json(nullptr); }

Json TensorToJson(const TensorData& t) {
  Json data = Json::array();
  const int64_t numel = static_cast<int64_t>(t.bytes.size()) / DTypeSize(t.dtype);
  for (int64_t i = 0; i < numel; ++i) data.push_back(TensorElement(t, i));
  return {{"dtype", DTypeName(t.dtype)}, {"shape", t.shape}, {"data", std::move(data)}};
}

Json NodeToJson(const Node& node) {
  Json args = Json::array();
  for (const Value& v : node.args) args.push_back(ValueToJson(v));
  Json kwargs = Json::object();
  for (const auto& [key, v] : node.kwargs) kwargs[key] = ValueToJson(v);
  Json json = {
      {"id", node.id}, {"op", node.op}, {"args", std::move(args)}, {"kwargs", std::move(kwargs)}};
  if (!node.source.empty()) json["source"] = node.source;
  return json;
}

Json InvokeToJson(const Invoke& invoke) {
  Json json = Json::object();
  if (invoke.prompt) json["prompt"] = *invoke.prompt;
  if (invoke.ids) json["ids"] = *invoke.ids;
  return json;
}

Json GenerateToJson(const GenerateOptions& g) {
  return {{"max_new_tokens", g.max_new_tokens},
          {"temperature", g.temperature},
          {"top_k", g.top_k},
          {"top_p", g.top_p},
          {"seed", g.seed},
          {"stop_ids", g.stop_ids}};
}

Json TraceToJson(const Trace& trace) {
  Json invokes = Json::array();
  for (const Invoke& invoke : trace.invokes) invokes.push_back(InvokeToJson(invoke));
  Json nodes = Json::array();
  for (const Node& node : trace.nodes) nodes.push_back(NodeToJson(node));
  Json json = {{"invokes", std::move(invokes)}, {"nodes", std::move(nodes)}};
  if (trace.generate) json["generate"] = GenerateToJson(*trace.generate);
  return json;
}

Json EnvelopeJson(int64_t version, MessageType type, Json body) {
  return {{"glassbox", version}, {"type", MessageTypeName(type)}, {"body", std::move(body)}};
}

Json NodeShapeToJson(const NodeShape& shape) {
  Json out = {{"node", shape.node}, {"step", shape.step}};
  if (!shape.name.empty()) out["name"] = shape.name;
  out["dtype"] = shape.dtype;
  out["shape"] = nullptr;
  if (shape.shape) {
    out["shape"] = Json::array();
    for (const std::optional<int64_t>& size : *shape.shape) out["shape"].push_back(OptionalInt(size));
  }
  return out;
}

}  // namespace

Json ValueToJson(const Value& value) {
  switch (value.kind) {
    case Value::Kind::kNone:
      return nullptr;
    case Value::Kind::kBool:
      return value.bool_value;
    case Value::Kind::kInt:
      return value.int_value;
    case Value::Kind::kFloat:
      if (std::isfinite(value.float_value)) return value.float_value;
      return {{"float", FloatElement(value.float_value)}};
    case Value::Kind::kString:
      return value.string_value;
    case Value::Kind::kList: {
      Json list = Json::array();
      for (const Value& v : value.list) list.push_back(ValueToJson(v));
      return list;
    }
    case Value::Kind::kRef:
      return {{"ref", value.int_value}};
    case Value::Kind::kSlice:
      return {{"slice", Json::array({OptionalInt(value.slice.start), OptionalInt(value.slice.stop),
                                     OptionalInt(value.slice.step)})}};
    case Value::Kind::kEllipsis:
      return {{"ellipsis", true}};
    case Value::Kind::kTensor:
      return {{"tensor", TensorToJson(*value.tensor)}};
  }
  return nullptr;
}

Json RequestToJson(const Request& request) {
  Json traces = Json::array();
  for (const Trace& trace : request.traces) traces.push_back(TraceToJson(trace));
  return EnvelopeJson(
      request.version, MessageType::kRequest,
      {{"model", request.model}, {"traces", std::move(traces)}, {"scan", request.scan}});
}

Json ResultToJson(const Result& result) {
  Json saved = Json::array();
  for (const SavedValue& s : result.saved) {
    saved.push_back({{"name", s.name}, {"node", s.node}, {"value", ValueToJson(s.value)}});
  }
  Json body = {{"saved", std::move(saved)}, {"generated", result.generated}};
  if (!result.shapes.empty()) {
    Json shapes = Json::array();
    for (const NodeShape& s : result.shapes) shapes.push_back(NodeShapeToJson(s));
    body["shapes"] = std::move(shapes);
  }
  return EnvelopeJson(result.version, MessageType::kResult, std::move(body));
}

Json ErrorReportToJson(const ErrorReport& error) {
  Json body = {{"code", error.code}, {"message", error.message}};
  if (error.node) body["node"] = *error.node;
  if (!error.source.empty()) body["source"] = error.source;
  return EnvelopeJson(error.version, MessageType::kError, std::move(body));
}

StatusOr<Request> RequestFromJson(const Json& json, const DecodeLimits& limits) {
  return Decode<Request>(json, limits,
                         [](auto& decoder, const Json& root) { return decoder.ReadRequest(root); });
}

StatusOr<Result> ResultFromJson(const Json& json, const DecodeLimits& limits) {
  return Decode<Result>(json, limits,
                        [](auto& decoder, const Json& root) { return decoder.ReadResult(root); });
}

StatusOr<ErrorReport> ErrorReportFromJson(const Json& json, const DecodeLimits& limits) {
  return Decode<ErrorReport>(
      json, limits, [](auto& decoder, const Json& root) { return decoder.ReadErrorReport(root); });
}

}  // namespace glassbox::protocol
