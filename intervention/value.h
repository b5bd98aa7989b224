// RuntimeValue: what a graph node evaluates to while a graph runs (a tensor, or a plain
// value such as an int, a shape list or an index element). Internal to intervention/.
#ifndef GLASSBOX_INTERVENTION_VALUE_H_
#define GLASSBOX_INTERVENTION_VALUE_H_

#include <ATen/core/Tensor.h>

#include <optional>
#include <string>
#include <vector>

#include "base/status.h"
#include "protocol/graph.h"

namespace glassbox::intervention {

struct RuntimeValue {
  // kUnknown: only in a shape-only pass, a value that depends on data (e.g. item()).
  enum class Kind { kNone, kBool, kInt, kFloat, kString, kList, kSlice, kEllipsis, kTensor, kUnknown };
  Kind kind = Kind::kNone;
  bool bool_value = false;
  int64_t int_value = 0;
  double float_value = 0;
  std::string string_value;
  std::vector<RuntimeValue> list;
  protocol::Slice slice;
  at::Tensor tensor;

  static RuntimeValue FromTensor(at::Tensor t);
  static RuntimeValue Int(int64_t v);
  static RuntimeValue Float(double v);
  static RuntimeValue Bool(bool v);
  static RuntimeValue List(std::vector<RuntimeValue> v);
  static RuntimeValue Unknown();
  bool is_tensor() const { return kind == Kind::kTensor; }
  bool is_number() const { return kind == Kind::kInt || kind == Kind::kFloat || kind == Kind::kBool; }
  // Whether this value, or an element of it, is unknown.
  bool HasUnknown() const;
  // Bytes held (tensors only), for limits on saved results.
  int64_t Bytes() const;
  // "tensor float32 [1, 5, 576]", "int 3", "list(2)".
  std::string Describe() const;
};

const char* KindName(RuntimeValue::Kind kind);

// Dtype names as graphs spell them ("float32", "float", "int64", "long", ...), or nullopt.
std::optional<at::ScalarType> ScalarTypeFromName(const std::string& name);
// "float32", "bfloat16", "int64", ... (what a scan reports).
std::string ScalarTypeName(at::ScalarType type);

// Literal protocol values (not refs) to runtime values; tensors are copied into LibTorch on
// `device` (the model's), or for kMeta (a shape-only pass) become meta tensors of the same
// shape, holding no data.
StatusOr<RuntimeValue> FromLiteral(const protocol::Value& value, at::Device device = at::kCPU);
// Runtime values back to protocol values for results (tensors to little-endian bytes).
StatusOr<protocol::Value> ToProtocolValue(const RuntimeValue& value);

}  // namespace glassbox::intervention

#endif  // GLASSBOX_INTERVENTION_VALUE_H_
