// The plain-data side of the intervention-graph model: Value constructors, equality (used by
// the codec round-trip tests and by callers comparing graphs) and the DType table.
#include "protocol/graph.h"

#include <cmath>
#include <cstring>
#include <utility>

namespace glassbox::protocol {

namespace {

struct DTypeInfo {
  DType dtype;
  const char* name;
  int64_t size;
};

constexpr DTypeInfo kDTypes[] = {
    {DType::kFloat32, "float32", 4},   {DType::kFloat16, "float16", 2},
    {DType::kBFloat16, "bfloat16", 2}, {DType::kInt64, "int64", 8},
    {DType::kInt32, "int32", 4},       {DType::kBool, "bool", 1},
    {DType::kUInt8, "uint8", 1},
};

const DTypeInfo& Info(DType dtype) {
  for (const DTypeInfo& info : kDTypes) {
    if (info.dtype == dtype) return info;
  }
  return kDTypes[0];  // unreachable for a valid enum value
}

// Floats compare by value, except that NaN equals NaN (with the same bits), so a decoded
// NaN literal compares equal to the one that was encoded.
bool SameFloat(double a, double b) {
  if (std::isnan(a) || std::isnan(b)) return std::memcmp(&a, &b, sizeof a) == 0;
  return a == b;
}

bool SameTensor(const std::shared_ptr<const TensorData>& a,
                const std::shared_ptr<const TensorData>& b) {
  if (a == b) return true;
  if (!a || !b) return false;
  return a->dtype == b->dtype && a->shape == b->shape && a->bytes == b->bytes;
}

bool SameSlice(const Slice& a, const Slice& b) {
  return a.start == b.start && a.stop == b.stop && a.step == b.step;
}

}  // namespace

const char* DTypeName(DType dtype) { return Info(dtype).name; }

std::optional<DType> DTypeFromName(const std::string& name) {
  for (const DTypeInfo& info : kDTypes) {
    if (name == info.name) return info.dtype;
  }
  return std::nullopt;
}

int64_t DTypeSize(DType dtype) { return Info(dtype).size; }

int64_t TensorData::NumElements() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;  // the codecs reject shapes whose product overflows
  return n;
}

Value Value::Bool(bool v) {
  Value value;
  value.kind = Kind::kBool;
  value.bool_value = v;
  return value;
}

Value Value::Int(int64_t v) {
  Value value;
  value.kind = Kind::kInt;
  value.int_value = v;
  return value;
}

Value Value::Float(double v) {
  Value value;
  value.kind = Kind::kFloat;
  value.float_value = v;
  return value;
}

Value Value::String(std::string v) {
  Value value;
  value.kind = Kind::kString;
  value.string_value = std::move(v);
  return value;
}

Value Value::List(std::vector<Value> v) {
  Value value;
  value.kind = Kind::kList;
  value.list = std::move(v);
  return value;
}

Value Value::Ref(int64_t node_id) {
  Value value;
  value.kind = Kind::kRef;
  value.int_value = node_id;
  return value;
}

Value Value::MakeSlice(Slice s) {
  Value value;
  value.kind = Kind::kSlice;
  value.slice = s;
  return value;
}

Value Value::MakeEllipsis() {
  Value value;
  value.kind = Kind::kEllipsis;
  return value;
}

Value Value::Tensor(TensorData t) {
  Value value;
  value.kind = Kind::kTensor;
  value.tensor = std::make_shared<const TensorData>(std::move(t));
  return value;
}

// Only the fields that belong to the kind take part.
bool Value::operator==(const Value& other) const {
  if (kind != other.kind) return false;
  switch (kind) {
    case Kind::kNone:
    case Kind::kEllipsis:
      return true;
    case Kind::kBool:
      return bool_value == other.bool_value;
    case Kind::kInt:
    case Kind::kRef:
      return int_value == other.int_value;
    case Kind::kFloat:
      return SameFloat(float_value, other.float_value);
    case Kind::kString:
      return string_value == other.string_value;
    case Kind::kList:
      return list == other.list;
    case Kind::kSlice:
      return SameSlice(slice, other.slice);
    case Kind::kTensor:
      return SameTensor(tensor, other.tensor);
  }
  return false;
}

bool Node::operator==(const Node& other) const {
  return id == other.id && op == other.op && args == other.args && kwargs == other.kwargs &&
         source == other.source;
}

bool GenerateOptions::operator==(const GenerateOptions& o) const {
  return max_new_tokens == o.max_new_tokens && SameFloat(temperature, o.temperature) &&
         top_k == o.top_k && SameFloat(top_p, o.top_p) && seed == o.seed && stop_ids == o.stop_ids;
}

bool Trace::operator==(const Trace& other) const {
  return invokes == other.invokes && generate == other.generate && nodes == other.nodes;
}

bool Request::operator==(const Request& other) const {
  return version == other.version && model == other.model && traces == other.traces &&
         scan == other.scan;
}

bool SavedValue::operator==(const SavedValue& other) const {
  return name == other.name && node == other.node && value == other.value;
}

bool NodeShape::operator==(const NodeShape& other) const {
  return node == other.node && step == other.step && name == other.name && dtype == other.dtype &&
         shape == other.shape;
}

bool Result::operator==(const Result& other) const {
  return version == other.version && saved == other.saved && generated == other.generated &&
         shapes == other.shapes;
}

}  // namespace glassbox::protocol
