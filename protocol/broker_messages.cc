// Encoding and decoding of the broker messages (SPEC.md §9). One table lists, per message
// type, the body keys it carries and which are required; the encoder and the decoder both
// read it, so they cannot disagree.
#include "protocol/broker_messages.h"

#include <array>
#include <exception>
#include <msgpack.hpp>
#include <new>

#include "protocol/graph.h"
#include "protocol/pack_impl.h"

namespace glassbox::protocol {
namespace {

// clang-format off: tables read better as tables
enum class Field {
  kApiKey,
  kRef,
  kJob,
  kModel,
  kCatalogue,
  kState,
  kCode,
  kMessage,
  kReason,
  kRequest,
  kData,
  kTimeMs,
  kPosition,
  kIndex,
  kCount,
  kTotalBytes,
  kHeartbeatMs,
  kTimeLimitMs,
  kModels,
  kText,
  kBatch,
  kGroup,
  kAttempts,
};

const char* FieldKey(Field f) {
  static constexpr std::array<const char*, 23> kKeys = {
      "api_key", "ref",         "job",          "model",         "catalogue", "state",    "code",
      "message", "reason",      "request",      "data",          "time_ms",   "position", "index",
      "count",   "total_bytes", "heartbeat_ms", "time_limit_ms", "models",    "text",     "batch",
      "group",   "attempts"};
  return kKeys[static_cast<size_t>(f)];
}
// clang-format on

struct FieldSpec {
  Field field;
  bool required;
};

struct TypeSpec {
  BrokerMessageType type;
  const char* name;
  std::vector<FieldSpec> fields;  // in encoding order
};

// clang-format off
const std::vector<TypeSpec>& TypeSpecs() {
  using F = Field;
  using T = BrokerMessageType;
  static const std::vector<TypeSpec> kSpecs = {
      {T::kSubmit, "submit", {{F::kApiKey, false}, {F::kRef, false}, {F::kRequest, true}}},
      {T::kQuery, "query", {{F::kApiKey, false}, {F::kRef, false}, {F::kJob, true}}},
      {T::kFetch, "fetch",
       {{F::kApiKey, false}, {F::kRef, false}, {F::kJob, true}, {F::kIndex, true}}},
      {T::kCancel, "cancel",
       {{F::kApiKey, false}, {F::kRef, false}, {F::kJob, true}, {F::kReason, false}}},
      {T::kListModels, "list_models", {{F::kApiKey, false}, {F::kRef, false}}},
      {T::kTokenize, "tokenize",
       {{F::kApiKey, false}, {F::kRef, false}, {F::kModel, true}, {F::kText, true}}},
      {T::kAck, "ack", {{F::kRef, false}, {F::kJob, true}, {F::kTimeMs, true}}},
      {T::kStatus, "status",
       {{F::kRef, false}, {F::kJob, true}, {F::kState, true}, {F::kTimeMs, true},
        {F::kPosition, false}, {F::kCode, false}, {F::kMessage, false}, {F::kCount, false},
        {F::kTotalBytes, false}, {F::kBatch, false}}},
      {T::kResultChunk, "result_chunk",
       {{F::kRef, false}, {F::kJob, true}, {F::kIndex, true}, {F::kCount, true},
        {F::kTotalBytes, true}, {F::kData, true}}},
      {T::kModels, "models", {{F::kRef, false}, {F::kModels, true}}},
      {T::kTokens, "tokens", {{F::kRef, false}, {F::kData, true}}},
      {T::kError, "error",
       {{F::kCode, true}, {F::kMessage, true}, {F::kRef, false}, {F::kJob, false}}},
      {T::kHeartbeat, "heartbeat", {}},
      {T::kDisconnect, "disconnect", {{F::kReason, false}}},
      {T::kReady, "ready",
       {{F::kModel, true}, {F::kCatalogue, true}, {F::kHeartbeatMs, false}, {F::kJob, false},
        {F::kGroup, false}}},
      {T::kJobResult, "job_result",
       {{F::kJob, true}, {F::kIndex, true}, {F::kCount, true}, {F::kData, true},
        {F::kCode, false}, {F::kMessage, false}}},
      {T::kJob, "job",
       {{F::kJob, true}, {F::kRequest, true}, {F::kTimeLimitMs, true}, {F::kAttempts, false}}},
      {T::kRunning, "running", {{F::kJob, true}, {F::kBatch, true}}},
  };
  return kSpecs;
}
// clang-format on

const TypeSpec& SpecOf(BrokerMessageType type) {
  for (const TypeSpec& spec : TypeSpecs()) {
    if (spec.type == type) return spec;
  }
  GLASSBOX_CHECK(false, "every type has a spec");
  return TypeSpecs().front();
}

std::string* StringField(BrokerMessage& m, Field f) {
  switch (f) {
    case Field::kApiKey:
      return &m.api_key;
    case Field::kRef:
      return &m.ref;
    case Field::kJob:
      return &m.job;
    case Field::kModel:
      return &m.model;
    case Field::kCatalogue:
      return &m.catalogue;
    case Field::kCode:
      return &m.code;
    case Field::kMessage:
      return &m.message;
    case Field::kReason:
      return &m.reason;
    case Field::kText:
      return &m.text;
    case Field::kGroup:
      return &m.group;
    default:
      return nullptr;
  }
}

int64_t* IntField(BrokerMessage& m, Field f) {
  switch (f) {
    case Field::kTimeMs:
      return &m.time_ms;
    case Field::kPosition:
      return &m.position;
    case Field::kIndex:
      return &m.index;
    case Field::kCount:
      return &m.count;
    case Field::kTotalBytes:
      return &m.total_bytes;
    case Field::kHeartbeatMs:
      return &m.heartbeat_ms;
    case Field::kTimeLimitMs:
      return &m.time_limit_ms;
    case Field::kBatch:
      return &m.batch;
    case Field::kAttempts:
      return &m.attempts;
    default:
      return nullptr;
  }
}

// ---------------------------------------------------------------------------------------
// Encoding.

using internal::PackBin;
using internal::Packer;
using internal::PackStr;
using internal::StringSink;

void PackModels(Packer& pk, const std::vector<ModelInfo>& models) {
  pk.pack_array(static_cast<uint32_t>(models.size()));
  for (const ModelInfo& m : models) {
    pk.pack_map(6);
    PackStr(pk, "name");
    PackStr(pk, m.name);
    PackStr(pk, "workers");
    pk.pack_int64(m.workers);
    PackStr(pk, "slots");
    pk.pack_int64(m.slots);
    PackStr(pk, "running");
    pk.pack_int64(m.running);
    PackStr(pk, "queued");
    pk.pack_int64(m.queued);
    PackStr(pk, "catalogue");
    PackStr(pk, m.catalogue_json);
  }
}

bool IsPresent(const BrokerMessage& m, Field f) {
  auto& mm = const_cast<BrokerMessage&>(m);
  if (const std::string* s = StringField(mm, f)) return !s->empty();
  if (const int64_t* i = IntField(mm, f)) return *i >= 0;
  if (f == Field::kState) return m.state.has_value();
  return true;  // request, data, models: written whenever the type has them
}

void PackField(Packer& pk, const BrokerMessage& m, Field f) {
  auto& mm = const_cast<BrokerMessage&>(m);
  PackStr(pk, FieldKey(f));
  if (const std::string* s = StringField(mm, f)) return PackStr(pk, *s);
  if (const int64_t* i = IntField(mm, f)) {
    pk.pack_int64(*i);
    return;
  }
  switch (f) {
    case Field::kState:
      return PackStr(pk, JobStateName(*m.state));
    case Field::kRequest:
    case Field::kData:
      return PackBin(pk, m.payload);
    case Field::kModels:
      return PackModels(pk, m.models);
    default:
      GLASSBOX_CHECK(false, "unhandled field");
  }
}

// ---------------------------------------------------------------------------------------
// Decoding: msgpack-cxx builds a tree under size limits (strings and binaries referenced in
// place), then the body is read against the type's field table.

using msgpack::object;

const char* KindName(const object& o) {
  switch (o.type) {
    case msgpack::type::NIL:
      return "null";
    case msgpack::type::BOOLEAN:
      return "bool";
    case msgpack::type::POSITIVE_INTEGER:
    case msgpack::type::NEGATIVE_INTEGER:
      return "int";
    case msgpack::type::FLOAT32:
    case msgpack::type::FLOAT64:
      return "float";
    case msgpack::type::STR:
      return "string";
    case msgpack::type::BIN:
      return "binary";
    case msgpack::type::ARRAY:
      return "list";
    case msgpack::type::MAP:
      return "map";
    default:
      return "ext";
  }
}

std::string_view AsView(const object& o) { return {o.via.str.ptr, o.via.str.size}; }

Status Mistyped(const std::string& path, const char* what, const object& o) {
  return InvalidArgument(path + ": expected " + what + ", got " + KindName(o));
}

StatusOr<std::string> ReadString(const object& o, const std::string& path) {
  if (o.type != msgpack::type::STR) return Mistyped(path, "a string", o);
  return std::string(AsView(o));
}

StatusOr<int64_t> ReadNonNegative(const object& o, const std::string& path) {
  if (o.type != msgpack::type::POSITIVE_INTEGER) {
    if (o.type == msgpack::type::NEGATIVE_INTEGER) {
      return InvalidArgument(path + ": must not be negative, got " + std::to_string(o.via.i64));
    }
    return Mistyped(path, "a non-negative int", o);
  }
  if (o.via.u64 > static_cast<uint64_t>(INT64_MAX)) {
    return InvalidArgument(path + ": integer does not fit in int64");
  }
  return static_cast<int64_t>(o.via.u64);
}

template <typename F>
Status ForEachEntry(const object& map, const std::string& path, F f) {
  for (uint32_t i = 0; i < map.via.map.size; ++i) {
    const msgpack::object_kv& kv = map.via.map.ptr[i];
    if (kv.key.type != msgpack::type::STR) {
      return InvalidArgument(path + ": map keys must be strings, got " + KindName(kv.key));
    }
    GLASSBOX_RETURN_IF_ERROR(f(AsView(kv.key), kv.val));
  }
  return Status::Ok();
}

StatusOr<ModelInfo> ReadModel(const object& o, const std::string& path) {
  if (o.type != msgpack::type::MAP) return Mistyped(path, "a model map", o);
  ModelInfo model;
  bool has_name = false;
  GLASSBOX_RETURN_IF_ERROR(ForEachEntry(o, path, [&](std::string_view key, const object& v) {
    const std::string sub = path + "." + std::string(key);
    if (key == "name") {
      GLASSBOX_ASSIGN_OR_RETURN(model.name, ReadString(v, sub));
      has_name = true;
    } else if (key == "workers") {
      GLASSBOX_ASSIGN_OR_RETURN(model.workers, ReadNonNegative(v, sub));
    } else if (key == "slots") {
      GLASSBOX_ASSIGN_OR_RETURN(model.slots, ReadNonNegative(v, sub));
    } else if (key == "running") {
      GLASSBOX_ASSIGN_OR_RETURN(model.running, ReadNonNegative(v, sub));
    } else if (key == "queued") {
      GLASSBOX_ASSIGN_OR_RETURN(model.queued, ReadNonNegative(v, sub));
    } else if (key == "catalogue") {
      GLASSBOX_ASSIGN_OR_RETURN(model.catalogue_json, ReadString(v, sub));
    }
    return Status::Ok();
  }));
  if (!has_name) return InvalidArgument(path + ": missing key \"name\"");
  return model;
}

Status ReadModels(const object& o, const std::string& path, const BrokerDecodeLimits& limits,
                  std::vector<ModelInfo>* models) {
  if (o.type != msgpack::type::ARRAY) return Mistyped(path, "a list of models", o);
  if (o.via.array.size > limits.max_models) {
    return ResourceExhausted(path + ": " + std::to_string(o.via.array.size) +
                             " models is over the limit of " + std::to_string(limits.max_models));
  }
  for (uint32_t i = 0; i < o.via.array.size; ++i) {
    GLASSBOX_ASSIGN_OR_RETURN(ModelInfo m,
                              ReadModel(o.via.array.ptr[i], path + "[" + std::to_string(i) + "]"));
    models->push_back(std::move(m));
  }
  return Status::Ok();
}

Status ReadField(const object& v, Field f, const BrokerDecodeLimits& limits, BrokerMessage* m) {
  const std::string path = std::string("body.") + FieldKey(f);
  if (std::string* s = StringField(*m, f)) {
    GLASSBOX_ASSIGN_OR_RETURN(*s, ReadString(v, path));
    return Status::Ok();
  }
  if (int64_t* i = IntField(*m, f)) {
    GLASSBOX_ASSIGN_OR_RETURN(*i, ReadNonNegative(v, path));
    return Status::Ok();
  }
  switch (f) {
    case Field::kState: {
      GLASSBOX_ASSIGN_OR_RETURN(std::string name, ReadString(v, path));
      m->state = JobStateFromName(name);
      if (!m->state) return InvalidArgument(path + ": unknown job state \"" + name + "\"");
      return Status::Ok();
    }
    case Field::kRequest:
    case Field::kData:
      if (v.type != msgpack::type::BIN) return Mistyped(path, "binary data", v);
      m->payload.assign(v.via.bin.ptr, v.via.bin.size);
      return Status::Ok();
    case Field::kModels:
      return ReadModels(v, path, limits, &m->models);
    default:
      return Internal(path + ": unhandled field");
  }
}

Status ReadBody(const object& body, const TypeSpec& spec, const BrokerDecodeLimits& limits,
                BrokerMessage* m) {
  if (body.type != msgpack::type::MAP) return Mistyped("body", "a map", body);
  std::vector<bool> seen(spec.fields.size(), false);
  GLASSBOX_RETURN_IF_ERROR(ForEachEntry(body, "body", [&](std::string_view key, const object& v) {
    for (size_t i = 0; i < spec.fields.size(); ++i) {
      if (key != FieldKey(spec.fields[i].field)) continue;
      if (seen[i]) return InvalidArgument("body: duplicate key \"" + std::string(key) + "\"");
      seen[i] = true;
      return ReadField(v, spec.fields[i].field, limits, m);
    }
    return Status::Ok();  // unknown keys are skipped
  }));
  for (size_t i = 0; i < spec.fields.size(); ++i) {
    if (spec.fields[i].required && !seen[i]) {
      return InvalidArgument(std::string("body: missing key \"") + FieldKey(spec.fields[i].field) +
                             "\" (required in a " + spec.name + " message)");
    }
  }
  return Status::Ok();
}

struct Envelope {
  const object* version = nullptr;
  const object* type = nullptr;
  const object* body = nullptr;
};

StatusOr<Envelope> ReadEnvelope(const object& root) {
  if (root.type != msgpack::type::MAP) {
    return InvalidArgument(std::string("not a Glassbox message: expected a map, got ") +
                           KindName(root));
  }
  Envelope env;
  GLASSBOX_RETURN_IF_ERROR(
      ForEachEntry(root, "message", [&](std::string_view key, const object& v) {
        const object** slot = key == "glassbox" ? &env.version
                              : key == "type"   ? &env.type
                              : key == "body"   ? &env.body
                                                : nullptr;
        if (slot == nullptr) return Status::Ok();
        if (*slot) return InvalidArgument("message: duplicate key \"" + std::string(key) + "\"");
        *slot = &v;
        return Status::Ok();
      }));
  if (!env.version) return InvalidArgument("not a Glassbox message: no \"glassbox\" version key");
  if (!env.type) return InvalidArgument("message: missing key \"type\"");
  return env;
}

StatusOr<BrokerMessage> ReadMessage(const object& root, const BrokerDecodeLimits& limits) {
  GLASSBOX_ASSIGN_OR_RETURN(Envelope env, ReadEnvelope(root));
  BrokerMessage m;
  GLASSBOX_ASSIGN_OR_RETURN(m.version, ReadNonNegative(*env.version, "glassbox"));
  GLASSBOX_ASSIGN_OR_RETURN(std::string type_name, ReadString(*env.type, "type"));
  if (type_name != "error" && m.version != kProtocolVersion) {
    return InvalidArgument("peer speaks protocol " + std::to_string(m.version) +
                           ", this one speaks protocol " + std::to_string(kProtocolVersion) +
                           "; upgrade the older side (client: pip install --upgrade glassbox)");
  }
  std::optional<BrokerMessageType> type = BrokerMessageTypeFromName(type_name);
  if (!type) {
    return InvalidArgument("type: unknown message type \"" + type_name.substr(0, 64) + "\"");
  }
  m.type = *type;
  if (!env.body) return InvalidArgument("message: missing key \"body\"");
  GLASSBOX_RETURN_IF_ERROR(ReadBody(*env.body, SpecOf(*type), limits, &m));
  return m;
}

}  // namespace

const char* BrokerMessageTypeName(BrokerMessageType type) { return SpecOf(type).name; }

std::optional<BrokerMessageType> BrokerMessageTypeFromName(std::string_view name) {
  for (const TypeSpec& spec : TypeSpecs()) {
    if (name == spec.name) return spec.type;
  }
  return std::nullopt;
}

const char* JobStateName(JobState state) {
  switch (state) {
    case JobState::kReceived:
      return "RECEIVED";
    case JobState::kQueued:
      return "QUEUED";
    case JobState::kRunning:
      return "RUNNING";
    case JobState::kCompleted:
      return "COMPLETED";
    case JobState::kError:
      return "ERROR";
    case JobState::kCancelled:
      return "CANCELLED";
    case JobState::kExpired:
      return "EXPIRED";
  }
  return "UNKNOWN";
}

std::optional<JobState> JobStateFromName(std::string_view name) {
  for (JobState s :
       {JobState::kReceived, JobState::kQueued, JobState::kRunning, JobState::kCompleted,
        JobState::kError, JobState::kCancelled, JobState::kExpired}) {
    if (name == JobStateName(s)) return s;
  }
  return std::nullopt;
}

bool IsTerminal(JobState state) {
  return state == JobState::kCompleted || state == JobState::kError ||
         state == JobState::kCancelled || state == JobState::kExpired;
}

std::string EncodeTokenIds(const std::vector<int64_t>& ids) {
  std::string out;
  out.reserve(ids.size() * 8);
  for (int64_t id : ids) {
    const auto bits = static_cast<uint64_t>(id);
    for (int byte = 0; byte < 8; ++byte) out.push_back(static_cast<char>((bits >> (8 * byte)) & 0xff));
  }
  return out;
}

StatusOr<std::vector<int64_t>> DecodeTokenIds(std::string_view data) {
  if (data.size() % 8 != 0) {
    return InvalidArgument("body.data: token ids take 8 bytes each, got " +
                           std::to_string(data.size()) + " bytes");
  }
  std::vector<int64_t> ids(data.size() / 8);
  for (size_t i = 0; i < ids.size(); ++i) {
    uint64_t bits = 0;
    for (int byte = 7; byte >= 0; --byte) {
      bits = (bits << 8) | static_cast<unsigned char>(data[i * 8 + byte]);
    }
    ids[i] = static_cast<int64_t>(bits);
  }
  return ids;
}

bool BrokerMessage::operator==(const BrokerMessage& o) const {
  return version == o.version && type == o.type && api_key == o.api_key && ref == o.ref &&
         job == o.job && model == o.model && catalogue == o.catalogue && state == o.state &&
         code == o.code && message == o.message && reason == o.reason && text == o.text &&
         group == o.group &&
         payload == o.payload &&
         time_ms == o.time_ms && position == o.position && index == o.index && count == o.count &&
         total_bytes == o.total_bytes && heartbeat_ms == o.heartbeat_ms &&
         time_limit_ms == o.time_limit_ms && batch == o.batch && attempts == o.attempts &&
         models == o.models;
}

std::string EncodeBrokerMessage(const BrokerMessage& message) {
  const TypeSpec& spec = SpecOf(message.type);
  std::string out;
  out.reserve(message.payload.size() + 256);  // one allocation for a result chunk
  StringSink sink(&out);
  Packer pk(sink);
  pk.pack_map(3);
  PackStr(pk, "glassbox");
  pk.pack_int64(message.version);
  PackStr(pk, "type");
  PackStr(pk, spec.name);
  PackStr(pk, "body");
  uint32_t present = 0;
  for (const FieldSpec& f : spec.fields) {
    GLASSBOX_CHECK(!f.required ||
                       IntField(const_cast<BrokerMessage&>(message), f.field) == nullptr ||
                       IsPresent(message, f.field),
                   std::string("required field missing in a ") + spec.name + " message");
    if (f.required || IsPresent(message, f.field)) ++present;
  }
  pk.pack_map(present);
  for (const FieldSpec& f : spec.fields) {
    if (f.required || IsPresent(message, f.field)) PackField(pk, message, f.field);
  }
  return out;
}

StatusOr<BrokerMessage> DecodeBrokerMessage(std::string_view bytes,
                                            const BrokerDecodeLimits& limits) {
  if (bytes.size() > limits.max_message_bytes) {
    return ResourceExhausted("message of " + std::to_string(bytes.size()) +
                             " bytes is over the limit of " +
                             std::to_string(limits.max_message_bytes));
  }
  if (bytes.empty()) return InvalidArgument("empty message");
  try {
    // Broker messages are shallow: depth 4 (envelope, body, models list, model map).
    const msgpack::unpack_limit unpack_limit(limits.max_models, 64, limits.max_string_bytes,
                                             limits.max_message_bytes, 0, 4);
    auto in_place = [](msgpack::type::object_type, size_t, void*) { return true; };
    size_t offset = 0;
    msgpack::object_handle handle =
        msgpack::unpack(bytes.data(), bytes.size(), offset, in_place, nullptr, unpack_limit);
    if (offset != bytes.size()) {
      return InvalidArgument("trailing bytes: the message ends at offset " +
                             std::to_string(offset) + " of " + std::to_string(bytes.size()));
    }
    return ReadMessage(handle.get(), limits);
  } catch (const msgpack::depth_size_overflow&) {
    return ResourceExhausted("message nested deeper than a broker message can be");
  } catch (const msgpack::size_overflow& e) {
    return ResourceExhausted(std::string("message over a size limit: ") + e.what());
  } catch (const std::bad_alloc&) {
    return ResourceExhausted("out of memory while decoding a message");
  } catch (const std::exception& e) {
    return InvalidArgument(std::string("malformed msgpack: ") + e.what());
  }
}

BrokerMessage MakeErrorMessage(const Status& status, std::string job, std::string ref) {
  BrokerMessage m;
  m.type = BrokerMessageType::kError;
  m.code = StatusCodeName(status.code());
  m.message = status.message();
  m.job = std::move(job);
  m.ref = std::move(ref);
  return m;
}

BrokerMessage MakeStatusMessage(std::string job, JobState state, int64_t time_ms) {
  BrokerMessage m;
  m.type = BrokerMessageType::kStatus;
  m.job = std::move(job);
  m.state = state;
  m.time_ms = time_ms;
  return m;
}

StatusOr<std::string> PeekRequestModel(std::string_view request_bytes) {
  try {
    const msgpack::unpack_limit limit(1 << 20, 1 << 16, 1 << 20, size_t{1} << 30, 0, 65);
    auto in_place = [](msgpack::type::object_type, size_t, void*) { return true; };
    msgpack::object_handle handle =
        msgpack::unpack(request_bytes.data(), request_bytes.size(), in_place, nullptr, limit);
    const object& root = handle.get();
    if (root.type != msgpack::type::MAP) return InvalidArgument("request is not a msgpack map");
    GLASSBOX_ASSIGN_OR_RETURN(Envelope env, ReadEnvelope(root));
    GLASSBOX_ASSIGN_OR_RETURN(std::string type, ReadString(*env.type, "request.type"));
    if (type != "request") {
      return InvalidArgument("submitted message is a \"" + type.substr(0, 64) +
                             "\" message, not a request");
    }
    if (!env.body || env.body->type != msgpack::type::MAP) {
      return InvalidArgument("request has no body map");
    }
    std::optional<std::string> model;
    GLASSBOX_RETURN_IF_ERROR(ForEachEntry(
        *env.body, "request.body", [&](std::string_view key, const object& v) -> Status {
          if (key != "model") return Status::Ok();
          GLASSBOX_ASSIGN_OR_RETURN(model, ReadString(v, "request.body.model"));
          return Status::Ok();
        }));
    if (!model) return InvalidArgument("request has no body.model");
    return *model;
  } catch (const std::exception& e) {
    return InvalidArgument(std::string("request is not valid msgpack: ") + e.what());
  }
}

}  // namespace glassbox::protocol
