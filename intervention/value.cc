// Conversions between protocol values and runtime values.
#include "intervention/value.h"

#include <ATen/ops/empty.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <sstream>

namespace glassbox::intervention {
namespace {

using protocol::DType;

std::optional<at::ScalarType> ToScalarType(DType dtype) {
  switch (dtype) {
    case DType::kFloat32: return at::kFloat;
    case DType::kFloat16: return at::kHalf;
    case DType::kBFloat16: return at::kBFloat16;
    case DType::kInt64: return at::kLong;
    case DType::kInt32: return at::kInt;
    case DType::kBool: return at::kBool;
    case DType::kUInt8: return at::kByte;
  }
  return std::nullopt;
}

std::optional<DType> ToDType(at::ScalarType type) {
  switch (type) {
    case at::kFloat: return DType::kFloat32;
    case at::kHalf: return DType::kFloat16;
    case at::kBFloat16: return DType::kBFloat16;
    case at::kLong: return DType::kInt64;
    case at::kInt: return DType::kInt32;
    case at::kBool: return DType::kBool;
    case at::kByte: return DType::kUInt8;
    default: return std::nullopt;
  }
}

}  // namespace

RuntimeValue RuntimeValue::FromTensor(at::Tensor t) {
  RuntimeValue v;
  v.kind = Kind::kTensor;
  v.tensor = std::move(t);
  return v;
}
RuntimeValue RuntimeValue::Int(int64_t x) { RuntimeValue v; v.kind = Kind::kInt; v.int_value = x; return v; }
RuntimeValue RuntimeValue::Float(double x) { RuntimeValue v; v.kind = Kind::kFloat; v.float_value = x; return v; }
RuntimeValue RuntimeValue::Bool(bool x) { RuntimeValue v; v.kind = Kind::kBool; v.bool_value = x; return v; }
RuntimeValue RuntimeValue::Unknown() { RuntimeValue v; v.kind = Kind::kUnknown; return v; }
RuntimeValue RuntimeValue::List(std::vector<RuntimeValue> x) {
  RuntimeValue v;
  v.kind = Kind::kList;
  v.list = std::move(x);
  return v;
}

bool RuntimeValue::HasUnknown() const {
  if (kind == Kind::kUnknown) return true;
  return std::any_of(list.begin(), list.end(), [](const RuntimeValue& v) { return v.HasUnknown(); });
}

std::optional<at::ScalarType> ScalarTypeFromName(const std::string& name) {
  static const std::map<std::string, at::ScalarType> kTypes = {
      {"float32", at::kFloat}, {"float", at::kFloat},   {"float16", at::kHalf},
      {"half", at::kHalf},     {"bfloat16", at::kBFloat16}, {"float64", at::kDouble},
      {"int64", at::kLong},    {"long", at::kLong},     {"int32", at::kInt},
      {"int", at::kInt},       {"bool", at::kBool},     {"uint8", at::kByte}};
  auto it = kTypes.find(name);
  if (it == kTypes.end()) return std::nullopt;
  return it->second;
}

std::string ScalarTypeName(at::ScalarType type) {
  if (std::optional<DType> dtype = ToDType(type)) return protocol::DTypeName(*dtype);
  switch (type) {
    case at::kDouble: return "float64";
    case at::kShort: return "int16";
    case at::kChar: return "int8";
    default: return c10::toString(type);
  }
}

int64_t RuntimeValue::Bytes() const {
  if (kind == Kind::kTensor) return tensor.numel() * static_cast<int64_t>(tensor.element_size());
  int64_t total = 0;
  for (const RuntimeValue& v : list) total += v.Bytes();
  return total;
}

const char* KindName(RuntimeValue::Kind kind) {
  switch (kind) {
    case RuntimeValue::Kind::kNone: return "None";
    case RuntimeValue::Kind::kBool: return "bool";
    case RuntimeValue::Kind::kInt: return "int";
    case RuntimeValue::Kind::kFloat: return "float";
    case RuntimeValue::Kind::kString: return "string";
    case RuntimeValue::Kind::kList: return "list";
    case RuntimeValue::Kind::kSlice: return "slice";
    case RuntimeValue::Kind::kEllipsis: return "Ellipsis";
    case RuntimeValue::Kind::kTensor: return "tensor";
    case RuntimeValue::Kind::kUnknown: return "unknown";
  }
  return "?";
}

std::string RuntimeValue::Describe() const {
  std::ostringstream out;
  out << KindName(kind);
  if (kind == Kind::kTensor) out << " " << tensor.scalar_type() << " " << tensor.sizes();
  if (kind == Kind::kInt) out << " " << int_value;
  if (kind == Kind::kFloat) out << " " << float_value;
  if (kind == Kind::kList) out << "(" << list.size() << ")";
  if (kind == Kind::kString) out << " '" << string_value << "'";
  return out.str();
}

StatusOr<RuntimeValue> FromLiteral(const protocol::Value& value, at::Device device) {
  using K = protocol::Value::Kind;
  RuntimeValue out;
  switch (value.kind) {
    case K::kNone: return out;
    case K::kBool: return RuntimeValue::Bool(value.bool_value);
    case K::kInt: return RuntimeValue::Int(value.int_value);
    case K::kFloat: return RuntimeValue::Float(value.float_value);
    case K::kString: out.kind = RuntimeValue::Kind::kString; out.string_value = value.string_value; return out;
    case K::kSlice: out.kind = RuntimeValue::Kind::kSlice; out.slice = value.slice; return out;
    case K::kEllipsis: out.kind = RuntimeValue::Kind::kEllipsis; return out;
    case K::kList: {
      std::vector<RuntimeValue> items;
      for (const protocol::Value& v : value.list) {
        GLASSBOX_ASSIGN_OR_RETURN(RuntimeValue item, FromLiteral(v, device));
        items.push_back(std::move(item));
      }
      return RuntimeValue::List(std::move(items));
    }
    case K::kTensor: {
      const protocol::TensorData& t = *value.tensor;
      std::optional<at::ScalarType> type = ToScalarType(t.dtype);
      if (!type) return InvalidArgument("unsupported tensor dtype");
      if (static_cast<int64_t>(t.bytes.size()) != t.NumElements() * protocol::DTypeSize(t.dtype)) {
        return InvalidArgument("tensor literal has " + std::to_string(t.bytes.size()) +
                               " bytes, its dtype and shape need " +
                               std::to_string(t.NumElements() * protocol::DTypeSize(t.dtype)));
      }
      if (device.is_meta()) return RuntimeValue::FromTensor(at::empty(t.shape, at::TensorOptions().dtype(*type).device(device)));
      at::Tensor tensor = at::empty(t.shape, at::TensorOptions().dtype(*type));
      std::memcpy(tensor.data_ptr(), t.bytes.data(), t.bytes.size());
      // Written once to the model's device, where every op on it runs.
      return RuntimeValue::FromTensor(device.is_cpu() ? tensor : tensor.to(device));
    }
    case K::kRef: return Internal("a reference is not a literal");
  }
  return Internal("unknown value kind");
}

StatusOr<protocol::Value> ToProtocolValue(const RuntimeValue& value) {
  using K = RuntimeValue::Kind;
  switch (value.kind) {
    case K::kNone: return protocol::Value::None();
    case K::kBool: return protocol::Value::Bool(value.bool_value);
    case K::kInt: return protocol::Value::Int(value.int_value);
    case K::kFloat: return protocol::Value::Float(value.float_value);
    case K::kString: return protocol::Value::String(value.string_value);
    case K::kSlice: return protocol::Value::MakeSlice(value.slice);
    case K::kEllipsis: return protocol::Value::MakeEllipsis();
    case K::kList: {
      std::vector<protocol::Value> items;
      for (const RuntimeValue& v : value.list) {
        GLASSBOX_ASSIGN_OR_RETURN(protocol::Value item, ToProtocolValue(v));
        items.push_back(std::move(item));
      }
      return protocol::Value::List(std::move(items));
    }
    case K::kUnknown: return Internal("an unknown value cannot be returned");
    case K::kTensor: {
      at::Tensor t = value.tensor.detach().to(at::kCPU).contiguous();
      std::optional<DType> dtype = ToDType(t.scalar_type());
      if (!dtype) t = t.to(at::kFloat), dtype = DType::kFloat32;
      protocol::TensorData data;
      data.dtype = *dtype;
      data.shape = t.sizes().vec();
      data.bytes.assign(static_cast<const char*>(t.data_ptr()), t.numel() * t.element_size());
      return protocol::Value::Tensor(std::move(data));
    }
  }
  return Internal("unknown value kind");
}

}  // namespace glassbox::intervention
