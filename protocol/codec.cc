// The msgpack form of Glassbox messages: a deterministic encoder and a decoder for hostile
// input. Decoding runs in three passes over the bytes:
//   1. BoundsCheck walks the bytes without allocating (msgpack's SAX parser) and proves the
//      message is one complete msgpack item within the limits, so every size a header
//      claims is backed by bytes that are really there;
//   2. msgpack::unpack builds the object tree, referencing strings and binaries in place;
//   3. SchemaDecoder (schema_impl.h) reads the tree into protocol structs, checking types.
#include "protocol/codec.h"

#include <cstring>
#include <exception>
#include <msgpack.hpp>
#include <new>
#include <vector>

#include "protocol/pack_impl.h"
#include "protocol/schema_impl.h"

namespace glassbox::protocol {

namespace internal {

bool IsValidUtf8(std::string_view bytes) {
  static constexpr uint32_t kMinCodePoint[] = {0, 0x80, 0x800, 0x10000};  // by trailing bytes
  const auto* p = reinterpret_cast<const unsigned char*>(bytes.data());
  const auto* end = p + bytes.size();
  while (p < end) {
    const unsigned char lead = *p;
    const size_t trailing = lead < 0x80             ? 0
                            : (lead & 0xE0) == 0xC0 ? 1
                            : (lead & 0xF0) == 0xE0 ? 2
                            : (lead & 0xF8) == 0xF0 ? 3
                                                    : 4;
    if (trailing == 4 || static_cast<size_t>(end - p) <= trailing) return false;
    uint32_t cp = trailing == 0 ? lead : lead & (0x3F >> trailing);
    for (size_t i = 1; i <= trailing; ++i) {
      if ((p[i] & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (p[i] & 0x3F);
    }
    if (cp < kMinCodePoint[trailing] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) {
      return false;
    }
    p += trailing + 1;
  }
  return true;
}

Status CheckTensorBytes(const TensorData& tensor, const Path& data_path) {
  if (tensor.dtype != DType::kBool) return Status::Ok();
  for (size_t i = 0; i < tensor.bytes.size(); ++i) {
    const auto b = static_cast<unsigned char>(tensor.bytes[i]);
    if (b > 1) {
      return PathError(data_path, "bool element " + std::to_string(i) + " is " + std::to_string(b) +
                                      "; bool elements must be 0 or 1");
    }
  }
  return Status::Ok();
}

}  // namespace internal

namespace {

using internal::Kind;
using internal::Path;
using internal::PathError;

// ---------------------------------------------------------------------------------------
// Encoding. Map keys go out in the order SPEC.md lists them; ints take msgpack's smallest
// form, floats are always float64, so the bytes match the Python encoder's.

using internal::Packer;
using internal::StringSink;

// The packer and the string it appends to.
struct Writer {
  explicit Writer(std::string* out) : sink(out), pk(sink) {}
  StringSink sink;
  Packer pk;
};

// Always float64. (msgpack-cxx 4's pack_double writes integral doubles as ints, and -0.0 as
// 0; Glassbox keeps 3.0 a float.)
void PackFloat64(Writer& w, double d) {
  uint64_t bits;
  std::memcpy(&bits, &d, sizeof bits);
  char buf[9];
  buf[0] = static_cast<char>(0xcb);
  for (int i = 0; i < 8; ++i) buf[1 + i] = static_cast<char>(bits >> (56 - 8 * i));
  w.sink.write(buf, sizeof buf);
}

void PackString(Writer& w, std::string_view s) { internal::PackStr(w.pk, s); }

void PackOptionalInt(Writer& w, const std::optional<int64_t>& v) {
  if (v) {
    w.pk.pack_int64(*v);
  } else {
    w.pk.pack_nil();
  }
}

void PackIntList(Writer& w, const std::vector<int64_t>& values) {
  w.pk.pack_array(static_cast<uint32_t>(values.size()));
  for (int64_t v : values) w.pk.pack_int64(v);
}

void PackNodeShape(Writer& w, const NodeShape& shape) {
  w.pk.pack_map(shape.name.empty() ? 4 : 5);
  PackString(w, "node");
  w.pk.pack_int64(shape.node);
  PackString(w, "step");
  w.pk.pack_int64(shape.step);
  if (!shape.name.empty()) {
    PackString(w, "name");
    PackString(w, shape.name);
  }
  PackString(w, "dtype");
  PackString(w, shape.dtype);
  PackString(w, "shape");
  if (!shape.shape) {
    w.pk.pack_nil();
    return;
  }
  w.pk.pack_array(static_cast<uint32_t>(shape.shape->size()));
  for (const std::optional<int64_t>& size : *shape.shape) PackOptionalInt(w, size);
}

void PackTensor(Writer& w, const TensorData& tensor) {
  w.pk.pack_map(1);
  PackString(w, "tensor");
  w.pk.pack_map(3);
  PackString(w, "dtype");
  PackString(w, DTypeName(tensor.dtype));
  PackString(w, "shape");
  PackIntList(w, tensor.shape);
  PackString(w, "data");
  internal::PackBin(w.pk, tensor.bytes);
}

void PackValue(Writer& w, const Value& value) {
  switch (value.kind) {
    case Value::Kind::kNone:
      w.pk.pack_nil();
      return;
    case Value::Kind::kBool:
      if (value.bool_value) {
        w.pk.pack_true();
      } else {
        w.pk.pack_false();
      }
      return;
    case Value::Kind::kInt:
      w.pk.pack_int64(value.int_value);
      return;
    case Value::Kind::kFloat:
      PackFloat64(w, value.float_value);
      return;
    case Value::Kind::kString:
      PackString(w, value.string_value);
      return;
    case Value::Kind::kList:
      w.pk.pack_array(static_cast<uint32_t>(value.list.size()));
      for (const Value& v : value.list) PackValue(w, v);
      return;
    case Value::Kind::kRef:
      w.pk.pack_map(1);
      PackString(w, "ref");
      w.pk.pack_int64(value.int_value);
      return;
    case Value::Kind::kSlice:
      w.pk.pack_map(1);
      PackString(w, "slice");
      w.pk.pack_array(3);
      PackOptionalInt(w, value.slice.start);
      PackOptionalInt(w, value.slice.stop);
      PackOptionalInt(w, value.slice.step);
      return;
    case Value::Kind::kEllipsis:
      w.pk.pack_map(1);
      PackString(w, "ellipsis");
      w.pk.pack_true();
      return;
    case Value::Kind::kTensor:
      GLASSBOX_CHECK(value.tensor != nullptr, "a tensor Value without a tensor");
      PackTensor(w, *value.tensor);
      return;
  }
}

void PackNode(Writer& w, const Node& node) {
  w.pk.pack_map(node.source.empty() ? 4 : 5);
  PackString(w, "id");
  w.pk.pack_int64(node.id);
  PackString(w, "op");
  PackString(w, node.op);
  PackString(w, "args");
  w.pk.pack_array(static_cast<uint32_t>(node.args.size()));
  for (const Value& v : node.args) PackValue(w, v);
  PackString(w, "kwargs");
  w.pk.pack_map(static_cast<uint32_t>(node.kwargs.size()));
  for (const auto& [key, v] : node.kwargs) {  // std::map: sorted by bytes
    PackString(w, key);
    PackValue(w, v);
  }
  if (!node.source.empty()) {
    PackString(w, "source");
    PackString(w, node.source);
  }
}

void PackInvoke(Writer& w, const Invoke& invoke) {
  w.pk.pack_map((invoke.prompt ? 1 : 0) + (invoke.ids ? 1 : 0));
  if (invoke.prompt) {
    PackString(w, "prompt");
    PackString(w, *invoke.prompt);
  }
  if (invoke.ids) {
    PackString(w, "ids");
    PackIntList(w, *invoke.ids);
  }
}

void PackGenerate(Writer& w, const GenerateOptions& g) {
  w.pk.pack_map(6);
  PackString(w, "max_new_tokens");
  w.pk.pack_int64(g.max_new_tokens);
  PackString(w, "temperature");
  PackFloat64(w, g.temperature);
  PackString(w, "top_k");
  w.pk.pack_int64(g.top_k);
  PackString(w, "top_p");
  PackFloat64(w, g.top_p);
  PackString(w, "seed");
  w.pk.pack_uint64(g.seed);
  PackString(w, "stop_ids");
  PackIntList(w, g.stop_ids);
}

void PackTrace(Writer& w, const Trace& trace) {
  w.pk.pack_map(trace.generate ? 3 : 2);
  PackString(w, "invokes");
  w.pk.pack_array(static_cast<uint32_t>(trace.invokes.size()));
  for (const Invoke& invoke : trace.invokes) PackInvoke(w, invoke);
  if (trace.generate) {
    PackString(w, "generate");
    PackGenerate(w, *trace.generate);
  }
  PackString(w, "nodes");
  w.pk.pack_array(static_cast<uint32_t>(trace.nodes.size()));
  for (const Node& node : trace.nodes) PackNode(w, node);
}

// {"glassbox": version, "type": type, "body": <what pack_body writes>}
template <typename PackBody>
std::string EncodeEnvelope(int64_t version, MessageType type, PackBody pack_body) {
  std::string out;
  Writer w(&out);
  w.pk.pack_map(3);
  PackString(w, "glassbox");
  w.pk.pack_int64(version);
  PackString(w, "type");
  PackString(w, MessageTypeName(type));
  PackString(w, "body");
  pack_body(w);
  return out;
}

// ---------------------------------------------------------------------------------------
// Decoding, pass 1: bounds. Visits every item without allocating per claimed size, and keeps
// the position (map keys, list indices) for its error messages.
class BoundsCheck : public msgpack::null_visitor {
 public:
  explicit BoundsCheck(const DecodeLimits& limits) : limits_(limits) {}
  const Status& status() const { return status_; }

  bool visit_nil() { return CountItem(); }
  bool visit_boolean(bool) { return CountItem(); }
  bool visit_positive_integer(uint64_t) { return CountItem(); }
  bool visit_negative_integer(int64_t) { return CountItem(); }
  bool visit_float32(float) { return CountItem(); }
  bool visit_float64(double) { return CountItem(); }
  bool visit_str(const char* data, uint32_t size) {
    if (!frames_.empty() && frames_.back().in_key) {
      frames_.back().key = std::string_view(data, size);
    }
    if (!CountItem() || !CheckSize(size, limits_.max_string_bytes, "a string")) return false;
    // Every string, even one in a key the decoder will skip, as the Python decoder does.
    if (internal::IsValidUtf8(std::string_view(data, size))) return true;
    return Fail(InvalidArgument(Where() + ": string is not valid UTF-8"));
  }
  bool visit_bin(const char*, uint32_t size) {
    return CountItem() && CheckSize(size, limits_.max_tensor_bytes, "binary data");
  }
  bool visit_ext(const char*, uint32_t) {
    return Fail(InvalidArgument(Where() + ": msgpack ext types are not part of the protocol"));
  }
  bool start_array(uint32_t size) { return StartContainer(size, false); }
  bool end_array_item() { return Advance(); }
  bool end_array() { return EndContainer(); }
  bool start_map(uint32_t size) { return StartContainer(size, true); }
  bool start_map_key() {
    frames_.back().in_key = true;
    frames_.back().key = "?";  // replaced if the key is a string
    return true;
  }
  bool end_map_key() {
    frames_.back().in_key = false;
    return true;
  }
  bool end_map_value() { return Advance(); }
  bool end_map() { return EndContainer(); }
  void parse_error(size_t, size_t error_offset) {
    Fail(InvalidArgument("malformed msgpack: invalid byte at offset " +
                         std::to_string(error_offset - 1)));
  }
  void insufficient_bytes(size_t, size_t) {
    if (status_.ok()) {
      Fail(InvalidArgument(Where() + ": truncated message (it ends inside an item)"));
    }
  }

 private:
  struct Frame {
    bool is_map = false;
    bool in_key = false;
    size_t index = 0;
    std::string_view key;
  };

  bool Fail(Status status) {
    if (status_.ok()) status_ = std::move(status);
    return false;
  }

  bool CountItem() {
    if (++items_ <= limits_.max_items) return true;
    return Fail(ResourceExhausted(Where() + ": more than " + std::to_string(limits_.max_items) +
                                  " msgpack items in one message (the limit)"));
  }

  bool CheckSize(size_t size, size_t limit, const char* what) {
    if (size <= limit) return true;
    return Fail(ResourceExhausted(Where() + ": " + what + " of " + std::to_string(size) +
                                  " bytes is over the limit of " + std::to_string(limit)));
  }

  bool StartContainer(uint32_t size, bool is_map) {
    if (!CountItem()) return false;
    if (frames_.size() + 1 > limits_.max_depth) {
      return Fail(ResourceExhausted(Where() + ": nested deeper than " +
                                    std::to_string(limits_.max_depth) + " levels (the limit)"));
    }
    if (size > limits_.max_list_length) {
      return Fail(ResourceExhausted(Where() + ": " + (is_map ? "a map of " : "a list of ") +
                                    std::to_string(size) + (is_map ? " entries" : " elements") +
                                    " is over the limit of " +
                                    std::to_string(limits_.max_list_length)));
    }
    frames_.push_back(Frame{is_map, false, 0, {}});
    return true;
  }

  bool EndContainer() {
    frames_.pop_back();
    return true;
  }

  bool Advance() {
    ++frames_.back().index;
    return true;
  }

  // The position being visited, spelled like the decoder's paths.
  std::string Where() const {
    std::vector<Path> paths;
    paths.reserve(frames_.size() + 1);  // Paths point at their parents: no reallocation
    paths.emplace_back();
    for (const Frame& f : frames_) {
      if (f.is_map) {
        paths.emplace_back(paths.back(), f.in_key ? std::string_view("<key>") : f.key);
      } else {
        paths.emplace_back(paths.back(), f.index);
      }
    }
    return paths.back().ToString();
  }

  const DecodeLimits& limits_;
  Status status_;
  size_t items_ = 0;
  std::vector<Frame> frames_;  // one per open list or map: at most max_depth
};

Status CheckBounds(std::string_view bytes, const DecodeLimits& limits) {
  if (bytes.size() > limits.max_message_bytes) {
    return ResourceExhausted("message of " + std::to_string(bytes.size()) +
                             " bytes is over the limit of " +
                             std::to_string(limits.max_message_bytes));
  }
  if (bytes.empty()) return InvalidArgument("empty message");
  BoundsCheck check(limits);
  size_t offset = 0;
  const bool parsed = msgpack::parse(bytes.data(), bytes.size(), offset, check);
  if (!check.status().ok()) return check.status();
  if (!parsed) return InvalidArgument("malformed msgpack");
  if (offset != bytes.size()) {
    return InvalidArgument("trailing bytes: the message ends at offset " + std::to_string(offset) +
                           " of " + std::to_string(bytes.size()));
  }
  return Status::Ok();
}

// ---------------------------------------------------------------------------------------
// Decoding, pass 3: the msgpack adapter for SchemaDecoder.
struct MsgpackTree {
  using Item = msgpack::object;
  static constexpr bool kIsJson = false;

  static Kind KindOf(const Item& item) {
    switch (item.type) {
      case msgpack::type::NIL:
        return Kind::kNull;
      case msgpack::type::BOOLEAN:
        return Kind::kBool;
      case msgpack::type::POSITIVE_INTEGER:
      case msgpack::type::NEGATIVE_INTEGER:
        return Kind::kInt;
      case msgpack::type::FLOAT32:
      case msgpack::type::FLOAT64:
        return Kind::kFloat;
      case msgpack::type::STR:
        return Kind::kString;
      case msgpack::type::BIN:
        return Kind::kBinary;
      case msgpack::type::ARRAY:
        return Kind::kList;
      case msgpack::type::MAP:
        return Kind::kMap;
      default:
        return Kind::kOther;
    }
  }
  static bool AsBool(const Item& item) { return item.via.boolean; }
  static std::optional<int64_t> AsInt64(const Item& item) {
    if (item.type == msgpack::type::NEGATIVE_INTEGER) return item.via.i64;
    if (item.via.u64 > static_cast<uint64_t>(INT64_MAX)) return std::nullopt;
    return static_cast<int64_t>(item.via.u64);
  }
  static std::optional<uint64_t> AsUInt64(const Item& item) {
    if (item.type == msgpack::type::NEGATIVE_INTEGER) return std::nullopt;
    return item.via.u64;
  }
  static double AsDouble(const Item& item) {
    if (item.type == msgpack::type::POSITIVE_INTEGER) return static_cast<double>(item.via.u64);
    if (item.type == msgpack::type::NEGATIVE_INTEGER) return static_cast<double>(item.via.i64);
    return item.via.f64;  // msgpack-cxx widens float32 into f64 as well
  }
  static std::string_view AsString(const Item& item) {
    return std::string_view(item.via.str.ptr, item.via.str.size);
  }
  static size_t Size(const Item& item) {
    return item.type == msgpack::type::ARRAY ? item.via.array.size : item.via.map.size;
  }
  static const Item& At(const Item& item, size_t i) { return item.via.array.ptr[i]; }

  template <typename F>
  static Status ForEach(const Item& map, const Path& path, F f) {
    for (uint32_t i = 0; i < map.via.map.size; ++i) {
      const msgpack::object_kv& kv = map.via.map.ptr[i];
      if (kv.key.type != msgpack::type::STR) {
        return PathError(path, std::string("map keys must be strings, got ") +
                                   internal::KindName(KindOf(kv.key)));
      }
      GLASSBOX_RETURN_IF_ERROR(f(AsString(kv.key), kv.val));
    }
    return Status::Ok();
  }

  static StatusOr<std::string> TensorBytes(const Item* data, const Item* /*data_base64*/, DType,
                                           int64_t, const Path& path, const DecodeLimits&) {
    if (data == nullptr) return PathError(path, "missing key \"data\"");
    if (data->type != msgpack::type::BIN) {
      return PathError(Path(path, "data"), std::string("expected binary data, got ") +
                                               internal::KindName(KindOf(*data)));
    }
    return std::string(data->via.bin.ptr, data->via.bin.size);
  }
};

// Runs the three passes; `read` gets the decoder and the object tree.
template <typename T, typename Read>
StatusOr<T> Decode(std::string_view bytes, const DecodeLimits& limits, Read read) {
  try {
    GLASSBOX_RETURN_IF_ERROR(CheckBounds(bytes, limits));
    const msgpack::unpack_limit unpack_limit(limits.max_list_length, limits.max_list_length,
                                             limits.max_string_bytes, limits.max_tensor_bytes,
                                             /*ext=*/0, limits.max_depth + 1);
    auto reference_in_place = [](msgpack::type::object_type, size_t, void*) { return true; };
    msgpack::object_handle handle =
        msgpack::unpack(bytes.data(), bytes.size(), reference_in_place, nullptr, unpack_limit);
    internal::SchemaDecoder<MsgpackTree> decoder(limits);
    return read(decoder, handle.get());
  } catch (const std::bad_alloc&) {
    return ResourceExhausted("out of memory while decoding a message");
  } catch (const std::exception& e) {
    return InvalidArgument(std::string("malformed msgpack: ") + e.what());
  }
}

}  // namespace

const char* MessageTypeName(MessageType type) {
  switch (type) {
    case MessageType::kRequest:
      return "request";
    case MessageType::kResult:
      return "result";
    case MessageType::kError:
      return "error";
  }
  return "unknown";
}

ErrorReport ErrorReport::FromStatus(const Status& status, std::optional<int64_t> node,
                                    std::string source) {
  ErrorReport report;
  report.code = StatusCodeName(status.code());
  report.message = status.message();
  report.node = node;
  report.source = std::move(source);
  return report;
}

bool ErrorReport::operator==(const ErrorReport& other) const {
  return version == other.version && code == other.code && message == other.message &&
         node == other.node && source == other.source;
}

std::string EncodeRequest(const Request& request) {
  return EncodeEnvelope(request.version, MessageType::kRequest, [&](Writer& w) {
    w.pk.pack_map(3);
    PackString(w, "model");
    PackString(w, request.model);
    PackString(w, "traces");
    w.pk.pack_array(static_cast<uint32_t>(request.traces.size()));
    for (const Trace& trace : request.traces) PackTrace(w, trace);
    PackString(w, "scan");
    w.pk.pack(request.scan);
  });
}

std::string EncodeResult(const Result& result) {
  return EncodeEnvelope(result.version, MessageType::kResult, [&](Writer& w) {
    w.pk.pack_map(result.shapes.empty() ? 2 : 3);
    PackString(w, "saved");
    w.pk.pack_array(static_cast<uint32_t>(result.saved.size()));
    for (const SavedValue& saved : result.saved) {
      w.pk.pack_map(3);
      PackString(w, "name");
      PackString(w, saved.name);
      PackString(w, "node");
      w.pk.pack_int64(saved.node);
      PackString(w, "value");
      PackValue(w, saved.value);
    }
    PackString(w, "generated");
    w.pk.pack_array(static_cast<uint32_t>(result.generated.size()));
    for (const auto& ids : result.generated) PackIntList(w, ids);
    if (result.shapes.empty()) return;
    PackString(w, "shapes");
    w.pk.pack_array(static_cast<uint32_t>(result.shapes.size()));
    for (const NodeShape& shape : result.shapes) PackNodeShape(w, shape);
  });
}

std::string EncodeErrorReport(const ErrorReport& error) {
  return EncodeEnvelope(error.version, MessageType::kError, [&](Writer& w) {
    w.pk.pack_map(2 + (error.node ? 1 : 0) + (error.source.empty() ? 0 : 1));
    PackString(w, "code");
    PackString(w, error.code);
    PackString(w, "message");
    PackString(w, error.message);
    if (error.node) {
      PackString(w, "node");
      w.pk.pack_int64(*error.node);
    }
    if (!error.source.empty()) {
      PackString(w, "source");
      PackString(w, error.source);
    }
  });
}

StatusOr<Request> DecodeRequest(std::string_view bytes, const DecodeLimits& limits) {
  return Decode<Request>(bytes, limits, [](auto& decoder, const msgpack::object& root) {
    return decoder.ReadRequest(root);
  });
}

StatusOr<Result> DecodeResult(std::string_view bytes, const DecodeLimits& limits) {
  return Decode<Result>(bytes, limits, [](auto& decoder, const msgpack::object& root) {
    return decoder.ReadResult(root);
  });
}

StatusOr<ErrorReport> DecodeErrorReport(std::string_view bytes, const DecodeLimits& limits) {
  return Decode<ErrorReport>(bytes, limits, [](auto& decoder, const msgpack::object& root) {
    return decoder.ReadErrorReport(root);
  });
}

StatusOr<Envelope> PeekEnvelope(std::string_view bytes, const DecodeLimits& limits) {
  return Decode<Envelope>(bytes, limits, [](auto& decoder, const msgpack::object& root) {
    return decoder.ReadEnvelope(root);
  });
}

}  // namespace glassbox::protocol
