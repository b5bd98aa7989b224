// Internal to protocol/: the message schema, written once and read from either tree form of
// a message, a msgpack object (codec.cc) or a JSON document (json.cc). Each form supplies a
// small adapter (`Tree`, described above SchemaDecoder); the decoder does every check and
// names every error's position. Nothing outside protocol/ includes this header.
#ifndef GLASSBOX_PROTOCOL_SCHEMA_IMPL_H_
#define GLASSBOX_PROTOCOL_SCHEMA_IMPL_H_

#include <array>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "base/status.h"
#include "protocol/codec.h"
#include "protocol/graph.h"

namespace glassbox::protocol::internal {

// A position inside a message ("body.traces[0].nodes[3]"), kept as a chain of stack frames so
// that making one costs nothing; it is spelled out only when an error needs it.
class Path {
 public:
  Path() = default;  // the top level
  Path(const Path& parent, std::string_view key)
      : parent_(&parent), key_(key), depth_(parent.depth_ + 1) {}
  Path(const Path& parent, size_t index)
      : parent_(&parent), index_(index), is_index_(true), depth_(parent.depth_ + 1) {}

  // How many lists and maps enclose the item at this position.
  size_t depth() const { return depth_; }
  std::string ToString() const;

 private:
  const Path* parent_ = nullptr;
  std::string_view key_;
  size_t index_ = 0;
  bool is_index_ = false;
  size_t depth_ = 0;
};

inline std::string Path::ToString() const {
  std::vector<const Path*> frames;
  for (const Path* p = this; p->parent_ != nullptr; p = p->parent_) frames.push_back(p);
  std::string out;
  for (auto it = frames.rbegin(); it != frames.rend(); ++it) {
    const Path& frame = **it;
    if (frame.is_index_) {
      out += "[" + std::to_string(frame.index_) + "]";
      continue;
    }
    if (!out.empty()) out += ".";
    constexpr size_t kMaxKey = 64;  // a hostile key must not make a huge message
    out += frame.key_.size() <= kMaxKey ? std::string(frame.key_)
                                        : std::string(frame.key_.substr(0, kMaxKey)) + "...";
  }
  return out.empty() ? "message" : out;
}

// "path: message" as kInvalidArgument (malformed, mistyped) or kResourceExhausted (a limit).
inline Status PathError(const Path& path, const std::string& message) {
  return InvalidArgument(path.ToString() + ": " + message);
}
inline Status PathLimit(const Path& path, const std::string& message) {
  return ResourceExhausted(path.ToString() + ": " + message);
}

// The kinds of item a tree holds, named the same in both forms.
enum class Kind { kNull, kBool, kInt, kFloat, kString, kBinary, kList, kMap, kOther };

inline const char* KindName(Kind kind) {
  switch (kind) {
    case Kind::kNull:
      return "null";
    case Kind::kBool:
      return "bool";
    case Kind::kInt:
      return "int";
    case Kind::kFloat:
      return "float";
    case Kind::kString:
      return "string";
    case Kind::kBinary:
      return "binary";
    case Kind::kList:
      return "list";
    case Kind::kMap:
      return "map";
    case Kind::kOther:
      return "ext";
  }
  return "unknown";
}

inline std::string Quote(std::string_view s) {
  constexpr size_t kMax = 64;
  return "\"" + std::string(s.substr(0, kMax)) + (s.size() > kMax ? "...\"" : "\"");
}

// "[2, 3]", shortened for absurd ranks.
inline std::string ShapeString(const std::vector<int64_t>& shape) {
  std::string out = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i == 8) return out + ", ...]";
    out += (i ? ", " : "") + std::to_string(shape[i]);
  }
  return out + "]";
}

// The text every Glassbox peer gives for a request or result of another protocol version.
// `expected` says which side we are: a server decodes requests, a client decodes results.
inline std::string VersionMismatchMessage(MessageType expected, int64_t theirs) {
  const bool server = expected == MessageType::kRequest;
  const std::string peer = server ? "client" : "server";
  const std::string self = server ? "server" : "client";
  std::string text = peer + " speaks protocol " + std::to_string(theirs) + ", this " + self +
                     " speaks protocol " + std::to_string(kProtocolVersion) + "; ";
  const bool upgrade_client = server ? theirs < kProtocolVersion : theirs > kProtocolVersion;
  if (upgrade_client) return text + "upgrade the client: pip install --upgrade glassbox";
  const int64_t client_version = server ? kProtocolVersion : theirs;
  return text + "upgrade the server, or install a glassbox client that speaks protocol " +
         std::to_string(client_version);
}

inline std::optional<MessageType> MessageTypeFromName(std::string_view name) {
  if (name == "request") return MessageType::kRequest;
  if (name == "result") return MessageType::kResult;
  if (name == "error") return MessageType::kError;
  return std::nullopt;
}

// True if `bytes` is valid UTF-8 (no overlong forms, surrogates or code points past U+10FFFF).
bool IsValidUtf8(std::string_view bytes);

// Checks a tensor's data against its dtype (bool elements must be 0 or 1).
Status CheckTensorBytes(const TensorData& tensor, const Path& data_path);

// Reads messages from a tree. `Tree` adapts one form and provides:
//   using Item;                          an item of the tree
//   static constexpr bool kIsJson;       JSON carries non-finite floats as {"float": "nan"}
//   static Kind KindOf(const Item&);
//   static bool AsBool(const Item&);
//   static std::optional<int64_t> AsInt64(const Item&);    kInt within int64
//   static std::optional<uint64_t> AsUInt64(const Item&);  kInt, not negative
//   static double AsDouble(const Item&);                   kFloat or kInt
//   static std::string_view AsString(const Item&);
//   static size_t Size(const Item&);                       kList or kMap
//   static const Item& At(const Item&, size_t);            kList
//   static Status ForEach(const Item& map, const Path&, F f);  f(string_view key, const Item&)
//                                        returns Status; non-string keys are an error
//   static StatusOr<std::string> TensorBytes(const Item* data, const Item* data_base64,
//       DType, int64_t numel, const Path& tensor_path, const DecodeLimits&);
// One decoder reads one message: it counts nodes and values against the limits.
template <typename Tree>
class SchemaDecoder {
 public:
  using Item = typename Tree::Item;
  explicit SchemaDecoder(const DecodeLimits& limits) : limits_(limits) {}

  // The envelope alone (PeekEnvelope): its version is reported, not judged.
  StatusOr<Envelope> ReadEnvelope(const Item& root) {
    GLASSBOX_ASSIGN_OR_RETURN(Opened opened, Open(root));
    GLASSBOX_RETURN_IF_ERROR(CheckKnownType(opened));
    return Envelope{opened.version, *opened.type};
  }

  StatusOr<Request> ReadRequest(const Item& root) {
    GLASSBOX_ASSIGN_OR_RETURN(const Item* body, Expect(root, MessageType::kRequest));
    const Path path(root_, "body");
    Request request;
    GLASSBOX_ASSIGN_OR_RETURN(
        auto f, ReadFields<3>(*body, path, "a request body map", {"model", "traces", "scan"}));
    GLASSBOX_RETURN_IF_ERROR(Require(f[0], path, "model"));
    GLASSBOX_RETURN_IF_ERROR(Require(f[1], path, "traces"));
    GLASSBOX_ASSIGN_OR_RETURN(request.model, ReadString(*f[0], Path(path, "model")));
    const Path traces(path, "traces");
    GLASSBOX_RETURN_IF_ERROR(CheckList(*f[1], traces, "a list of traces"));
    for (size_t i = 0; i < Tree::Size(*f[1]); ++i) {
      GLASSBOX_ASSIGN_OR_RETURN(Trace trace, ReadTrace(Tree::At(*f[1], i), Path(traces, i)));
      request.traces.push_back(std::move(trace));
    }
    if (f[2]) {
      GLASSBOX_ASSIGN_OR_RETURN(request.scan, ReadBool(*f[2], Path(path, "scan")));
    }
    return request;
  }

  StatusOr<Result> ReadResult(const Item& root) {
    GLASSBOX_ASSIGN_OR_RETURN(const Item* body, Expect(root, MessageType::kResult));
    const Path path(root_, "body");
    Result result;
    GLASSBOX_ASSIGN_OR_RETURN(
        auto f, ReadFields<3>(*body, path, "a result body map", {"saved", "generated", "shapes"}));
    GLASSBOX_RETURN_IF_ERROR(Require(f[0], path, "saved"));
    GLASSBOX_RETURN_IF_ERROR(Require(f[1], path, "generated"));
    const Path saved(path, "saved");
    GLASSBOX_RETURN_IF_ERROR(CheckList(*f[0], saved, "a list of saved values"));
    for (size_t i = 0; i < Tree::Size(*f[0]); ++i) {
      GLASSBOX_ASSIGN_OR_RETURN(SavedValue s, ReadSaved(Tree::At(*f[0], i), Path(saved, i)));
      result.saved.push_back(std::move(s));
    }
    const Path generated(path, "generated");
    GLASSBOX_RETURN_IF_ERROR(CheckList(*f[1], generated, "a list of token id lists"));
    for (size_t i = 0; i < Tree::Size(*f[1]); ++i) {
      GLASSBOX_ASSIGN_OR_RETURN(auto ids, ReadIntList(Tree::At(*f[1], i), Path(generated, i)));
      result.generated.push_back(std::move(ids));
    }
    if (f[2]) {
      const Path shapes(path, "shapes");
      GLASSBOX_RETURN_IF_ERROR(CheckList(*f[2], shapes, "a list of node shapes"));
      for (size_t i = 0; i < Tree::Size(*f[2]); ++i) {
        GLASSBOX_ASSIGN_OR_RETURN(NodeShape s, ReadNodeShape(Tree::At(*f[2], i), Path(shapes, i)));
        result.shapes.push_back(std::move(s));
      }
    }
    return result;
  }

  // Error reports of any version decode: their body never changes incompatibly.
  StatusOr<ErrorReport> ReadErrorReport(const Item& root) {
    GLASSBOX_ASSIGN_OR_RETURN(Opened opened, Open(root));
    GLASSBOX_RETURN_IF_ERROR(CheckKnownType(opened));
    if (*opened.type != MessageType::kError) return WrongType(MessageType::kError, *opened.type);
    GLASSBOX_RETURN_IF_ERROR(Require(opened.body, root_, "body"));
    const Path path(root_, "body");
    ErrorReport error;
    error.version = opened.version;
    GLASSBOX_ASSIGN_OR_RETURN(auto f, ReadFields<4>(*opened.body, path, "an error body map",
                                                    {"code", "message", "node", "source"}));
    GLASSBOX_RETURN_IF_ERROR(Require(f[0], path, "code"));
    GLASSBOX_RETURN_IF_ERROR(Require(f[1], path, "message"));
    GLASSBOX_ASSIGN_OR_RETURN(error.code, ReadString(*f[0], Path(path, "code")));
    GLASSBOX_ASSIGN_OR_RETURN(error.message, ReadString(*f[1], Path(path, "message")));
    if (f[2] && Tree::KindOf(*f[2]) != Kind::kNull) {
      GLASSBOX_ASSIGN_OR_RETURN(error.node, ReadInt(*f[2], Path(path, "node")));
    }
    if (f[3]) {
      GLASSBOX_ASSIGN_OR_RETURN(error.source, ReadString(*f[3], Path(path, "source")));
    }
    return error;
  }

 private:
  template <size_t N>
  using Fields = std::array<const Item*, N>;

  struct Opened {
    int64_t version = 0;
    std::string type_name;
    std::optional<MessageType> type;  // unset: a type this version does not know
    const Item* body = nullptr;
  };

  // The envelope's fields, checked for their types only.
  StatusOr<Opened> Open(const Item& root) {
    if (Tree::KindOf(root) != Kind::kMap) {
      return PathError(root_, std::string("not a Glassbox message: expected a map, got ") +
                                  KindName(Tree::KindOf(root)));
    }
    GLASSBOX_ASSIGN_OR_RETURN(auto f,
                              ReadFields<3>(root, root_, "a map", {"glassbox", "type", "body"}));
    if (!f[0]) return PathError(root_, "not a Glassbox message: no \"glassbox\" version key");
    GLASSBOX_RETURN_IF_ERROR(Require(f[1], root_, "type"));
    Opened opened;
    GLASSBOX_ASSIGN_OR_RETURN(opened.version, ReadInt(*f[0], Path(root_, "glassbox")));
    GLASSBOX_ASSIGN_OR_RETURN(opened.type_name, ReadString(*f[1], Path(root_, "type")));
    opened.type = MessageTypeFromName(opened.type_name);
    opened.body = f[2];
    return opened;
  }

  Status CheckKnownType(const Opened& opened) {
    if (opened.type) return Status::Ok();
    return PathError(Path(root_, "type"), "unknown message type " + Quote(opened.type_name) +
                                              " (protocol " + std::to_string(opened.version) + ")");
  }

  // The body of a request or result of this protocol version. A peer of another version may
  // use types this one does not know, so the version is judged before the type.
  StatusOr<const Item*> Expect(const Item& root, MessageType expected) {
    GLASSBOX_ASSIGN_OR_RETURN(Opened opened, Open(root));
    if (opened.type_name != "error" && opened.version != kProtocolVersion) {
      return InvalidArgument(VersionMismatchMessage(expected, opened.version));
    }
    GLASSBOX_RETURN_IF_ERROR(CheckKnownType(opened));
    if (*opened.type != expected) return WrongType(expected, *opened.type);
    GLASSBOX_RETURN_IF_ERROR(Require(opened.body, root_, "body"));
    return opened.body;
  }

  Status WrongType(MessageType expected, MessageType got) {
    auto spell = [](MessageType t) {
      return std::string(t == MessageType::kError ? "an " : "a ") + MessageTypeName(t) + " message";
    };
    return PathError(Path(root_, "type"), "expected " + spell(expected) + ", got " + spell(got));
  }

  // The entries of a map that a struct knows, in the order of `names`; unknown keys are
  // skipped (a newer peer may add some), a repeated known key is an error.
  template <size_t N>
  StatusOr<Fields<N>> ReadFields(const Item& item, const Path& path, const char* what,
                                 const std::array<const char*, N>& names) {
    if (Tree::KindOf(item) != Kind::kMap) return Mistyped(item, path, what);
    Fields<N> fields{};
    Status status = Tree::ForEach(item, path, [&](std::string_view key, const Item& value) {
      for (size_t i = 0; i < N; ++i) {
        if (key != names[i]) continue;
        if (fields[i]) return PathError(path, "duplicate key " + Quote(key));
        fields[i] = &value;
      }
      return Status::Ok();
    });
    if (!status.ok()) return status;
    return fields;
  }

  static Status Require(const Item* field, const Path& path, const char* key) {
    if (field) return Status::Ok();
    return PathError(path, std::string("missing key \"") + key + "\"");
  }

  static Status Mistyped(const Item& item, const Path& path, const char* what) {
    return PathError(path,
                     std::string("expected ") + what + ", got " + KindName(Tree::KindOf(item)));
  }

  Status CheckList(const Item& item, const Path& path, const char* what) {
    if (Tree::KindOf(item) != Kind::kList) return Mistyped(item, path, what);
    if (Tree::Size(item) > limits_.max_list_length) {
      return PathLimit(path, "a list of " + std::to_string(Tree::Size(item)) +
                                 " elements is over the limit of " +
                                 std::to_string(limits_.max_list_length));
    }
    return Status::Ok();
  }

  StatusOr<int64_t> ReadInt(const Item& item, const Path& path) {
    if (Tree::KindOf(item) != Kind::kInt) return Mistyped(item, path, "an int");
    std::optional<int64_t> v = Tree::AsInt64(item);
    if (!v)
      return PathError(
          path, "integer " + std::to_string(*Tree::AsUInt64(item)) + " does not fit in int64");
    return *v;
  }

  StatusOr<uint64_t> ReadUInt(const Item& item, const Path& path) {
    if (Tree::KindOf(item) != Kind::kInt) return Mistyped(item, path, "a non-negative int");
    std::optional<uint64_t> v = Tree::AsUInt64(item);
    if (!v) return PathError(path, "expected a non-negative int, got a negative one");
    return *v;
  }

  // Ints are accepted where a float is expected; floats are never accepted as ints.
  StatusOr<double> ReadFloat(const Item& item, const Path& path) {
    Kind kind = Tree::KindOf(item);
    if (kind != Kind::kFloat && kind != Kind::kInt) return Mistyped(item, path, "a float");
    return Tree::AsDouble(item);
  }

  StatusOr<bool> ReadBool(const Item& item, const Path& path) {
    if (Tree::KindOf(item) != Kind::kBool) return Mistyped(item, path, "a bool");
    return Tree::AsBool(item);
  }

  StatusOr<std::string> ReadString(const Item& item, const Path& path) {
    if (Tree::KindOf(item) != Kind::kString) return Mistyped(item, path, "a string");
    std::string_view s = Tree::AsString(item);
    if (s.size() > limits_.max_string_bytes) {
      return PathLimit(path, "a string of " + std::to_string(s.size()) +
                                 " bytes is over the limit of " +
                                 std::to_string(limits_.max_string_bytes));
    }
    if (!IsValidUtf8(s)) return PathError(path, "string is not valid UTF-8");
    return std::string(s);
  }

  StatusOr<std::vector<int64_t>> ReadIntList(const Item& item, const Path& path) {
    GLASSBOX_RETURN_IF_ERROR(CheckList(item, path, "a list of ints"));
    std::vector<int64_t> out;
    out.reserve(Tree::Size(item));  // checked against the limit, and backed by real items
    for (size_t i = 0; i < Tree::Size(item); ++i) {
      GLASSBOX_ASSIGN_OR_RETURN(int64_t v, ReadInt(Tree::At(item, i), Path(path, i)));
      out.push_back(v);
    }
    return out;
  }

  StatusOr<Value> ReadValue(const Item& item, const Path& path) {
    if (++values_ > limits_.max_values) {
      return PathLimit(path, "more than " + std::to_string(limits_.max_values) +
                                 " values in one message (the limit)");
    }
    const Kind kind = Tree::KindOf(item);
    if ((kind == Kind::kList || kind == Kind::kMap) && path.depth() + 1 > limits_.max_depth) {
      return PathLimit(
          path, "nested deeper than " + std::to_string(limits_.max_depth) + " levels (the limit)");
    }
    switch (kind) {
      case Kind::kNull:
        return Value::None();
      case Kind::kBool:
        return Value::Bool(Tree::AsBool(item));
      case Kind::kInt: {
        GLASSBOX_ASSIGN_OR_RETURN(int64_t v, ReadInt(item, path));
        return Value::Int(v);
      }
      case Kind::kFloat:
        return Value::Float(Tree::AsDouble(item));
      case Kind::kString: {
        GLASSBOX_ASSIGN_OR_RETURN(std::string s, ReadString(item, path));
        return Value::String(std::move(s));
      }
      case Kind::kList:
        return ReadList(item, path);
      case Kind::kMap:
        return ReadTagged(item, path);
      default:
        return Mistyped(item, path,
                        "a value (null, bool, int, float, string, list, or a map tagged "
                        "\"ref\", \"slice\", \"ellipsis\" or \"tensor\")");
    }
  }

  StatusOr<Value> ReadList(const Item& item, const Path& path) {
    GLASSBOX_RETURN_IF_ERROR(CheckList(item, path, "a list"));
    std::vector<Value> list;
    list.reserve(Tree::Size(item));
    for (size_t i = 0; i < Tree::Size(item); ++i) {
      GLASSBOX_ASSIGN_OR_RETURN(Value v, ReadValue(Tree::At(item, i), Path(path, i)));
      list.push_back(std::move(v));
    }
    return Value::List(std::move(list));
  }

  // {"ref": id}, {"slice": [start, stop, step]}, {"ellipsis": true}, {"tensor": {...}} and,
  // in JSON only, {"float": "nan" | "inf" | "-inf"}.
  StatusOr<Value> ReadTagged(const Item& item, const Path& path) {
    if (Tree::Size(item) != 1) {
      return PathError(path,
                       "expected a value map with one key (\"ref\", \"slice\", "
                       "\"ellipsis\" or \"tensor\"), got a map with " +
                           std::to_string(Tree::Size(item)) + " keys");
    }
    std::string_view tag;
    const Item* inner = nullptr;
    Status status = Tree::ForEach(item, path, [&](std::string_view key, const Item& v) {
      tag = key;
      inner = &v;
      return Status::Ok();
    });
    if (!status.ok()) return status;
    const Path inner_path(path, tag);
    if (tag == "ref") {
      GLASSBOX_ASSIGN_OR_RETURN(int64_t id, ReadInt(*inner, inner_path));
      return Value::Ref(id);
    }
    if (tag == "slice") return ReadSlice(*inner, inner_path);
    if (tag == "ellipsis") {
      if (Tree::KindOf(*inner) != Kind::kBool || !Tree::AsBool(*inner)) {
        return PathError(inner_path, "expected true");
      }
      return Value::MakeEllipsis();
    }
    if (tag == "tensor") return ReadTensor(*inner, inner_path);
    if (Tree::kIsJson && tag == "float") return ReadNonFinite(*inner, inner_path);
    return PathError(path, "unknown value kind " + Quote(tag) +
                               " (expected \"ref\", \"slice\", \"ellipsis\" or \"tensor\")");
  }

  StatusOr<Value> ReadSlice(const Item& item, const Path& path) {
    if (Tree::KindOf(item) != Kind::kList || Tree::Size(item) != 3) {
      return Mistyped(item, path, "a list [start, stop, step] of ints or nulls");
    }
    std::optional<int64_t> parts[3];
    for (size_t i = 0; i < 3; ++i) {
      const Item& part = Tree::At(item, i);
      if (Tree::KindOf(part) == Kind::kNull) continue;
      GLASSBOX_ASSIGN_OR_RETURN(parts[i], ReadInt(part, Path(path, i)));
    }
    return Value::MakeSlice(Slice{parts[0], parts[1], parts[2]});
  }

  StatusOr<Value> ReadNonFinite(const Item& item, const Path& path) {
    std::string_view s = Tree::KindOf(item) == Kind::kString ? Tree::AsString(item) : "";
    if (s == "nan") return Value::Float(std::numeric_limits<double>::quiet_NaN());
    if (s == "inf") return Value::Float(std::numeric_limits<double>::infinity());
    if (s == "-inf") return Value::Float(-std::numeric_limits<double>::infinity());
    return PathError(path, "expected \"nan\", \"inf\" or \"-inf\"");
  }

  StatusOr<Value> ReadTensor(const Item& item, const Path& path) {
    GLASSBOX_ASSIGN_OR_RETURN(auto f, ReadFields<4>(item, path, "a tensor map",
                                                    {"dtype", "shape", "data", "data_base64"}));
    GLASSBOX_RETURN_IF_ERROR(Require(f[0], path, "dtype"));
    GLASSBOX_RETURN_IF_ERROR(Require(f[1], path, "shape"));
    const Path dtype_path(path, "dtype");
    GLASSBOX_ASSIGN_OR_RETURN(std::string dtype_name, ReadString(*f[0], dtype_path));
    std::optional<DType> dtype = DTypeFromName(dtype_name);
    if (!dtype) {
      return PathError(dtype_path, "unknown dtype " + Quote(dtype_name) +
                                       " (expected float32, float16, bfloat16, int64, "
                                       "int32, bool or uint8)");
    }
    TensorData tensor;
    tensor.dtype = *dtype;
    GLASSBOX_ASSIGN_OR_RETURN(tensor.shape, ReadIntList(*f[1], Path(path, "shape")));
    GLASSBOX_ASSIGN_OR_RETURN(int64_t numel, CountElements(tensor, Path(path, "shape")));
    GLASSBOX_ASSIGN_OR_RETURN(tensor.bytes,
                              Tree::TensorBytes(f[2], f[3], tensor.dtype, numel, path, limits_));
    const Path data_path(path, "data");
    const uint64_t expected = static_cast<uint64_t>(numel) * DTypeSize(tensor.dtype);
    if (tensor.bytes.size() != expected) {
      return PathError(data_path, "holds " + std::to_string(tensor.bytes.size()) +
                                      " bytes, but shape " + ShapeString(tensor.shape) + " of " +
                                      DTypeName(tensor.dtype) + " needs " +
                                      std::to_string(expected));
    }
    GLASSBOX_RETURN_IF_ERROR(CheckTensorBytes(tensor, data_path));
    return Value::Tensor(std::move(tensor));
  }

  // The element count, checked for negative dimensions, overflow and the byte limit.
  StatusOr<int64_t> CountElements(const TensorData& tensor, const Path& path) {
    int64_t numel = 1;
    for (size_t i = 0; i < tensor.shape.size(); ++i) {
      if (tensor.shape[i] < 0) {
        return PathError(Path(path, i),
                         "dimension " + std::to_string(tensor.shape[i]) + " is negative");
      }
      if (__builtin_mul_overflow(numel, tensor.shape[i], &numel)) {
        return PathLimit(path, "shape " + ShapeString(tensor.shape) + " has too many elements");
      }
    }
    int64_t bytes = 0;
    if (__builtin_mul_overflow(numel, DTypeSize(tensor.dtype), &bytes) ||
        static_cast<uint64_t>(bytes) > limits_.max_tensor_bytes) {
      return PathLimit(path, "a tensor of shape " + ShapeString(tensor.shape) + " of " +
                                 DTypeName(tensor.dtype) + " is over the limit of " +
                                 std::to_string(limits_.max_tensor_bytes) + " bytes");
    }
    return numel;
  }

  StatusOr<Node> ReadNode(const Item& item, const Path& path) {
    GLASSBOX_ASSIGN_OR_RETURN(
        auto f, ReadFields<5>(item, path, "a node map", {"id", "op", "args", "kwargs", "source"}));
    GLASSBOX_RETURN_IF_ERROR(Require(f[0], path, "id"));
    GLASSBOX_RETURN_IF_ERROR(Require(f[1], path, "op"));
    Node node;
    GLASSBOX_ASSIGN_OR_RETURN(node.id, ReadInt(*f[0], Path(path, "id")));
    GLASSBOX_ASSIGN_OR_RETURN(node.op, ReadString(*f[1], Path(path, "op")));
    if (f[2]) {
      const Path args(path, "args");
      GLASSBOX_RETURN_IF_ERROR(CheckList(*f[2], args, "a list of arguments"));
      node.args.reserve(Tree::Size(*f[2]));
      for (size_t i = 0; i < Tree::Size(*f[2]); ++i) {
        GLASSBOX_ASSIGN_OR_RETURN(Value v, ReadValue(Tree::At(*f[2], i), Path(args, i)));
        node.args.push_back(std::move(v));
      }
    }
    if (f[3]) GLASSBOX_RETURN_IF_ERROR(ReadKwargs(*f[3], Path(path, "kwargs"), &node.kwargs));
    if (f[4]) {
      GLASSBOX_ASSIGN_OR_RETURN(node.source, ReadString(*f[4], Path(path, "source")));
    }
    return node;
  }

  Status ReadKwargs(const Item& item, const Path& path, std::map<std::string, Value>* kwargs) {
    if (Tree::KindOf(item) != Kind::kMap) return Mistyped(item, path, "a map of keyword arguments");
    if (Tree::Size(item) > limits_.max_list_length) {
      return PathLimit(path, "a map of " + std::to_string(Tree::Size(item)) +
                                 " entries is over the limit of " +
                                 std::to_string(limits_.max_list_length));
    }
    return Tree::ForEach(item, path, [&](std::string_view key, const Item& v) -> Status {
      const Path value_path(path, key);
      if (!IsValidUtf8(key)) return PathError(path, "a keyword is not valid UTF-8");
      GLASSBOX_ASSIGN_OR_RETURN(Value value, ReadValue(v, value_path));
      if (!kwargs->emplace(std::string(key), std::move(value)).second) {
        return PathError(path, "duplicate keyword " + Quote(key));
      }
      return Status::Ok();
    });
  }

  StatusOr<Invoke> ReadInvoke(const Item& item, const Path& path) {
    GLASSBOX_ASSIGN_OR_RETURN(auto f,
                              ReadFields<2>(item, path, "an invoke map", {"prompt", "ids"}));
    if ((f[0] == nullptr) == (f[1] == nullptr)) {
      return PathError(path, "an invoke needs exactly one of \"prompt\" or \"ids\"");
    }
    Invoke invoke;
    if (f[0]) {
      GLASSBOX_ASSIGN_OR_RETURN(invoke.prompt, ReadString(*f[0], Path(path, "prompt")));
    }
    if (f[1]) {
      GLASSBOX_ASSIGN_OR_RETURN(invoke.ids, ReadIntList(*f[1], Path(path, "ids")));
    }
    return invoke;
  }

  StatusOr<GenerateOptions> ReadGenerate(const Item& item, const Path& path) {
    GLASSBOX_ASSIGN_OR_RETURN(auto f, ReadFields<6>(item, path, "a generate options map",
                                                    {"max_new_tokens", "temperature", "top_k",
                                                     "top_p", "seed", "stop_ids"}));
    GenerateOptions g;  // absent keys keep their defaults
    if (f[0]) {
      GLASSBOX_ASSIGN_OR_RETURN(g.max_new_tokens, ReadInt(*f[0], Path(path, "max_new_tokens")));
    }
    if (f[1]) {
      GLASSBOX_ASSIGN_OR_RETURN(g.temperature, ReadFloat(*f[1], Path(path, "temperature")));
    }
    if (f[2]) {
      GLASSBOX_ASSIGN_OR_RETURN(g.top_k, ReadInt(*f[2], Path(path, "top_k")));
    }
    if (f[3]) {
      GLASSBOX_ASSIGN_OR_RETURN(g.top_p, ReadFloat(*f[3], Path(path, "top_p")));
    }
    if (f[4]) {
      GLASSBOX_ASSIGN_OR_RETURN(g.seed, ReadUInt(*f[4], Path(path, "seed")));
    }
    if (f[5]) {
      GLASSBOX_ASSIGN_OR_RETURN(g.stop_ids, ReadIntList(*f[5], Path(path, "stop_ids")));
    }
    return g;
  }

  StatusOr<Trace> ReadTrace(const Item& item, const Path& path) {
    GLASSBOX_ASSIGN_OR_RETURN(
        auto f, ReadFields<3>(item, path, "a trace map", {"invokes", "generate", "nodes"}));
    GLASSBOX_RETURN_IF_ERROR(Require(f[0], path, "invokes"));
    GLASSBOX_RETURN_IF_ERROR(Require(f[2], path, "nodes"));
    Trace trace;
    const Path invokes(path, "invokes");
    GLASSBOX_RETURN_IF_ERROR(CheckList(*f[0], invokes, "a list of invokes"));
    for (size_t i = 0; i < Tree::Size(*f[0]); ++i) {
      GLASSBOX_ASSIGN_OR_RETURN(Invoke inv, ReadInvoke(Tree::At(*f[0], i), Path(invokes, i)));
      trace.invokes.push_back(std::move(inv));
    }
    if (f[1] && Tree::KindOf(*f[1]) != Kind::kNull) {
      GLASSBOX_ASSIGN_OR_RETURN(trace.generate, ReadGenerate(*f[1], Path(path, "generate")));
    }
    const Path nodes(path, "nodes");
    GLASSBOX_RETURN_IF_ERROR(CheckList(*f[2], nodes, "a list of nodes"));
    for (size_t i = 0; i < Tree::Size(*f[2]); ++i) {
      const Path node_path(nodes, i);
      if (++nodes_ > limits_.max_nodes) {
        return PathLimit(node_path, "more than " + std::to_string(limits_.max_nodes) +
                                        " nodes in one request (the limit)");
      }
      GLASSBOX_ASSIGN_OR_RETURN(Node node, ReadNode(Tree::At(*f[2], i), node_path));
      trace.nodes.push_back(std::move(node));
    }
    return trace;
  }

  StatusOr<SavedValue> ReadSaved(const Item& item, const Path& path) {
    GLASSBOX_ASSIGN_OR_RETURN(
        auto f, ReadFields<3>(item, path, "a saved value map", {"name", "node", "value"}));
    GLASSBOX_RETURN_IF_ERROR(Require(f[0], path, "name"));
    GLASSBOX_RETURN_IF_ERROR(Require(f[1], path, "node"));
    GLASSBOX_RETURN_IF_ERROR(Require(f[2], path, "value"));
    SavedValue saved;
    GLASSBOX_ASSIGN_OR_RETURN(saved.name, ReadString(*f[0], Path(path, "name")));
    GLASSBOX_ASSIGN_OR_RETURN(saved.node, ReadInt(*f[1], Path(path, "node")));
    GLASSBOX_ASSIGN_OR_RETURN(saved.value, ReadValue(*f[2], Path(path, "value")));
    return saved;
  }

  StatusOr<NodeShape> ReadNodeShape(const Item& item, const Path& path) {
    GLASSBOX_ASSIGN_OR_RETURN(auto f, ReadFields<5>(item, path, "a node shape map",
                                                    {"node", "step", "name", "dtype", "shape"}));
    GLASSBOX_RETURN_IF_ERROR(Require(f[0], path, "node"));
    GLASSBOX_RETURN_IF_ERROR(Require(f[3], path, "dtype"));
    NodeShape shape;
    GLASSBOX_ASSIGN_OR_RETURN(shape.node, ReadInt(*f[0], Path(path, "node")));
    if (f[1]) {
      GLASSBOX_ASSIGN_OR_RETURN(shape.step, ReadInt(*f[1], Path(path, "step")));
    }
    if (f[2]) {
      GLASSBOX_ASSIGN_OR_RETURN(shape.name, ReadString(*f[2], Path(path, "name")));
    }
    GLASSBOX_ASSIGN_OR_RETURN(shape.dtype, ReadString(*f[3], Path(path, "dtype")));
    if (f[4] && Tree::KindOf(*f[4]) != Kind::kNull) {
      GLASSBOX_ASSIGN_OR_RETURN(shape.shape, ReadSizes(*f[4], Path(path, "shape")));
    }
    return shape;
  }

  // A shape whose unknown sizes are nil.
  StatusOr<std::vector<std::optional<int64_t>>> ReadSizes(const Item& item, const Path& path) {
    GLASSBOX_RETURN_IF_ERROR(CheckList(item, path, "a list of sizes"));
    std::vector<std::optional<int64_t>> out;
    out.reserve(Tree::Size(item));
    for (size_t i = 0; i < Tree::Size(item); ++i) {
      const Item& size = Tree::At(item, i);
      if (Tree::KindOf(size) == Kind::kNull) {
        out.emplace_back();
        continue;
      }
      GLASSBOX_ASSIGN_OR_RETURN(int64_t v, ReadInt(size, Path(path, i)));
      out.emplace_back(v);
    }
    return out;
  }

  const DecodeLimits& limits_;
  const Path root_;
  size_t nodes_ = 0;
  size_t values_ = 0;
};

}  // namespace glassbox::protocol::internal

#endif  // GLASSBOX_PROTOCOL_SCHEMA_IMPL_H_
