// The broker messages (protocol/SPEC.md §9): what clients, the broker and engine workers say
// to each other around a job. Same versioned envelope as requests and results,
// {"glassbox": 1, "type": <type>, "body": {...}}; request and result payloads travel inside
// them as opaque msgpack `bin` (already-encoded protocol messages), so the broker never
// decodes graphs.
//
// One flat struct carries every type: each type uses the fields SPEC.md §9 lists for it,
// the rest keep their defaults and are not encoded. Decoding never trusts its input and
// never throws: malformed bytes, a wrong kind, a missing required key, an unknown type or
// another protocol version come back as a Status naming the key ("body.job: expected a
// string, got int"). All functions are thread-safe.
#ifndef GLASSBOX_PROTOCOL_BROKER_MESSAGES_H_
#define GLASSBOX_PROTOCOL_BROKER_MESSAGES_H_

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"

namespace glassbox::protocol {

enum class BrokerMessageType {
  // client -> broker
  kSubmit,      // request bytes (+ ref: client request id, makes retries idempotent)
  kQuery,       // ask for a job's status (and receive its later changes)
  kFetch,       // one chunk of a finished job's result
  kCancel,      // client -> broker: cancel a job; broker -> worker: stop the running job
  kListModels,  // the models served now, with their hook catalogues
  kTokenize,    // client -> broker -> a worker of the model: the token ids of a text
  // broker -> client
  kAck,          // the job is stored (state RECEIVED); carries its id
  kStatus,       // a job's state, pushed on every change and sent in reply to query/cancel
  kResultChunk,  // reply to fetch
  kModels,       // reply to list_models
  kTokens,       // reply to tokenize (worker -> broker -> client): ids as int64 little-endian
  // any direction
  kError,       // the request was refused or a peer sent garbage: code + message
  kHeartbeat,   // broker <-> worker (and client -> broker, answered in kind)
  kDisconnect,  // broker <-> worker: "forget me" / "I do not know you, send ready"
  // worker -> broker
  kReady,      // a worker of `model` is ready (or busy with `job` after a reconnect)
  kJobResult,  // one chunk of the encoded result (or error report) of a job
  kRunning,    // `job` runs in one engine pass with others: `batch` jobs in all
  // broker -> worker
  kJob,  // run this request within time_limit_ms
};
const char* BrokerMessageTypeName(BrokerMessageType type);  // "submit", "job_result", ...
std::optional<BrokerMessageType> BrokerMessageTypeFromName(std::string_view name);

// The lifecycle of a job. RECEIVED (stored, acknowledged) -> QUEUED -> RUNNING -> one of the
// four terminal states. A job may go back from RUNNING to QUEUED when its worker dies.
enum class JobState { kReceived, kQueued, kRunning, kCompleted, kError, kCancelled, kExpired };
const char* JobStateName(JobState state);  // "RECEIVED", "QUEUED", ...
std::optional<JobState> JobStateFromName(std::string_view name);
bool IsTerminal(JobState state);  // COMPLETED, ERROR, CANCELLED, EXPIRED

// One served model in a `models` reply.
struct ModelInfo {
  std::string name;
  int64_t workers = 0;         // live worker processes serving it
  int64_t queued = 0;          // jobs waiting for it
  std::string catalogue_json;  // the hook catalogue, as the worker gave it (JSON text)
  int64_t running = 0;         // jobs its workers run now
  int64_t slots = 0;           // jobs its workers can take at once (their batch slots)
  bool operator==(const ModelInfo& o) const {
    return name == o.name && workers == o.workers && running == o.running && slots == o.slots &&
           queued == o.queued &&
           catalogue_json == o.catalogue_json;
  }
};

// Integer fields hold -1 when absent; string fields are absent when empty (encoders leave
// out absent optional fields; required ones are always written).
struct BrokerMessage {
  int64_t version = 1;  // the envelope's protocol version
  BrokerMessageType type = BrokerMessageType::kHeartbeat;
  std::string api_key;  // client requests (absent only in the broker's development mode)
  std::string ref;      // client's id for a request, echoed in the reply; idempotency key of submit
  std::string job;      // job id: 32 lowercase hex digits
  std::string model;    // ready
  std::string catalogue;          // ready: hook catalogue JSON text
  std::optional<JobState> state;  // status
  std::string code;          // error, status (ERROR...), job_result (last chunk of an error report)
  std::string message;       // error, status, job_result
  std::string reason;        // cancel, disconnect
  std::string text;          // tokenize: the text to encode as a trace's prompt is
  std::string group;         // ready: the worker process this connection is a batch slot of
  std::string payload;  // "request" of submit/job, "data" of result_chunk/job_result/tokens
  int64_t time_ms = -1;      // ack, status: when the state was entered (ms since the Unix epoch)
  int64_t position = -1;     // status QUEUED: jobs ahead of this one in its model's queue
  int64_t index = -1;        // fetch, result_chunk, job_result: chunk index (from 0)
  int64_t count = -1;        // result_chunk, job_result; status when finished: chunks
  int64_t total_bytes = -1;  // result_chunk; status when finished: result size
  int64_t heartbeat_ms = -1;      // ready: the worker's heartbeat interval
  int64_t time_limit_ms = -1;     // job: the worker must stop after this long
  int64_t batch = -1;  // running; status RUNNING or finished: jobs sharing the job's engine pass
  int64_t attempts = -1;  // job: earlier runs of it lost to dead workers (absent: none)
  std::vector<ModelInfo> models;  // models

  bool operator==(const BrokerMessage& o) const;
};

// What a broker-message decoder accepts; over a limit is kResourceExhausted.
struct BrokerDecodeLimits {
  size_t max_message_bytes = size_t{320} << 20;  // a payload of 256 MiB plus headroom
  size_t max_string_bytes = size_t{16} << 20;    // one string (a catalogue may be large)
  size_t max_models = 10000;                     // entries of a models list
};

// Encodes `message` deterministically (keys in SPEC.md §9's order). Precondition (checked in
// every build): the required fields of its type are set.
std::string EncodeBrokerMessage(const BrokerMessage& message);

// Decodes one broker message. Refused: bytes that are not one msgpack map, an envelope of
// another protocol version (except `error`, readable from any version), an unknown type
// ("unknown message type \"x\""), a known key of the wrong kind, a missing required key.
// Unknown keys are skipped.
StatusOr<BrokerMessage> DecodeBrokerMessage(std::string_view bytes,
                                            const BrokerDecodeLimits& limits = {});

// Builders for the messages peers send most.
BrokerMessage MakeErrorMessage(const Status& status, std::string job = {}, std::string ref = {});
BrokerMessage MakeStatusMessage(std::string job, JobState state, int64_t time_ms);

// The `data` of a `tokens` message: each id as 8 bytes, little-endian two's complement.
std::string EncodeTokenIds(const std::vector<int64_t>& ids);
// Refuses data whose length is not a multiple of 8 (INVALID_ARGUMENT naming the length).
StatusOr<std::vector<int64_t>> DecodeTokenIds(std::string_view data);

// The `body.model` of an encoded request, read with a minimal msgpack walk (the graph is not
// decoded). Errors name what is missing ("request has no body.model").
StatusOr<std::string> PeekRequestModel(std::string_view request_bytes);

}  // namespace glassbox::protocol

#endif  // GLASSBOX_PROTOCOL_BROKER_MESSAGES_H_
