// The intervention-graph data model shared by the wire codecs (msgpack and its JSON mirror),
// the validator and the interpreter. Plain data: no LibTorch, no msgpack, so the broker and
// every tool can hold graphs and results. See protocol/SPEC.md for the encodings.
#ifndef GLASSBOX_PROTOCOL_GRAPH_H_
#define GLASSBOX_PROTOCOL_GRAPH_H_

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace glassbox::protocol {

// Bumped on any incompatible change of the schema; peers of different versions refuse each
// other with an error that names both versions.
inline constexpr int64_t kProtocolVersion = 1;

enum class DType { kFloat32, kFloat16, kBFloat16, kInt64, kInt32, kBool, kUInt8 };
const char* DTypeName(DType dtype);            // "float32", "float16", "bfloat16", "int64", ...
std::optional<DType> DTypeFromName(const std::string& name);
int64_t DTypeSize(DType dtype);                // bytes per element

// A dense tensor: row-major, little-endian element bytes (bool and uint8: one byte each).
struct TensorData {
  DType dtype = DType::kFloat32;
  std::vector<int64_t> shape;
  std::string bytes;  // exactly NumElements() * DTypeSize(dtype) bytes
  int64_t NumElements() const;
};

// Python-style slice; unset parts are None.
struct Slice {
  std::optional<int64_t> start, stop, step;
};

// An argument of a node: a literal, a reference to an earlier node's value, or an indexing
// element (slice, ellipsis). Lists nest (e.g. an index tuple, a shape).
struct Value {
  enum class Kind { kNone, kBool, kInt, kFloat, kString, kList, kRef, kSlice, kEllipsis, kTensor };
  Kind kind = Kind::kNone;
  bool bool_value = false;
  int64_t int_value = 0;  // kInt, and the node id for kRef
  double float_value = 0;
  std::string string_value;
  std::vector<Value> list;
  Slice slice;
  std::shared_ptr<const TensorData> tensor;

  static Value None() { return Value(); }
  static Value Bool(bool v);
  static Value Int(int64_t v);
  static Value Float(double v);
  static Value String(std::string v);
  static Value List(std::vector<Value> v);
  static Value Ref(int64_t node_id);
  static Value MakeSlice(Slice s);
  static Value MakeEllipsis();
  static Value Tensor(TensorData t);
  bool operator==(const Value& other) const;
  bool operator!=(const Value& other) const { return !(*this == other); }
};

// One operation. `op` names an entry of the documented whitelist (intervention/OPS.md);
// positional `args` and named `kwargs` are Values. `source` is where the client built it
// ("experiment.py:42"), echoed in errors.
struct Node {
  int64_t id = 0;
  std::string op;
  std::vector<Value> args;
  std::map<std::string, Value> kwargs;
  std::string source;
  bool operator==(const Node& other) const;
};

// One prompt of a batch: text (tokenized by the server) or token ids.
struct Invoke {
  std::optional<std::string> prompt;
  std::optional<std::vector<int64_t>> ids;
  bool operator==(const Invoke& other) const { return prompt == other.prompt && ids == other.ids; }
};

struct GenerateOptions {
  int64_t max_new_tokens = 1;
  double temperature = 0.0;  // 0: greedy
  int64_t top_k = 0;
  double top_p = 1.0;
  uint64_t seed = 0;
  std::vector<int64_t> stop_ids;  // empty: the model's eos
  bool operator==(const GenerateOptions& o) const;
};

// One forward pass (or one generation) over a batch of invokes, with its nodes.
struct Trace {
  std::vector<Invoke> invokes;
  std::optional<GenerateOptions> generate;  // absent: a single forward pass
  std::vector<Node> nodes;
  bool operator==(const Trace& other) const;
};

// What a client submits: one or more traces (a session). Node ids are unique across the
// whole request, so a later trace may reference values of an earlier one.
struct Request {
  int64_t version = kProtocolVersion;
  std::string model;
  std::vector<Trace> traces;
  bool scan = false;  // dry run: shapes and dtypes only, no weights touched
  bool operator==(const Request& other) const;
};

// A saved value: a tensor, or a plain value (number, list) for non-tensor results.
struct SavedValue {
  std::string name;  // the client's name for it (defaults to "node_<id>")
  int64_t node = 0;
  Value value;
  bool operator==(const SavedValue& other) const;
};

// The dtype and shape of one node's value as a scan (dry run) found them, without running
// the weights. `dtype` is a tensor dtype name ("float32", ..., also "float64"), a plain
// value's kind ("int", "float", "bool", "string", "list", "none"), or "unknown" when only a
// real run can tell (a value that depends on data, e.g. item()). `shape` is set for tensors:
// one entry per dim, nullopt for a size only a real run can tell.
struct NodeShape {
  int64_t node = 0;
  int64_t step = 0;   // the generation step (0 for a single forward pass and constants)
  std::string name;   // cache nodes: the saved name of one cached point; empty otherwise
  std::string dtype;
  std::optional<std::vector<std::optional<int64_t>>> shape;
  bool operator==(const NodeShape& other) const;
};

struct Result {
  int64_t version = kProtocolVersion;
  std::vector<SavedValue> saved;
  std::vector<std::vector<int64_t>> generated;  // per invoke across traces, when generating
  std::vector<NodeShape> shapes;  // a scan's answer: every node's value, in the order found
  bool operator==(const Result& other) const;
};

}  // namespace glassbox::protocol

#endif  // GLASSBOX_PROTOCOL_GRAPH_H_
