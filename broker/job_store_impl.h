// Internal to broker/: where the broker keeps what must survive it — job records, queues,
// results, API keys and usage. A JobStore is the broker's only view of Redis, so unit tests
// swap in MemoryJobStore (LevelDB's Env is the model), and a Clock is injected the same way.
#ifndef GLASSBOX_BROKER_JOB_STORE_IMPL_H_
#define GLASSBOX_BROKER_JOB_STORE_IMPL_H_

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "base/status.h"
#include "broker/broker.h"
#include "protocol/broker_messages.h"

namespace glassbox::broker::internal {

using protocol::JobState;

// Wall-clock milliseconds since the Unix epoch. Implementations must be thread-safe.
class Clock {
 public:
  virtual ~Clock() = default;
  virtual int64_t NowMs() const = 0;
};

class SystemClock : public Clock {
 public:
  int64_t NowMs() const override {
    return std::chrono::duration_cast<std::chrono::milliseconds>(
               std::chrono::system_clock::now().time_since_epoch())
        .count();
  }
};

// A stored API key (Redis keeps it under the SHA-256 of its secret).
struct ApiKeyRecord {
  std::string id;
  std::string name;
  KeyLimits limits;
  int64_t created_ms = 0;
  bool revoked = false;
};

// One job as stored. `times` holds, per state name, when the job last entered it.
struct JobRecord {
  std::string id;     // 32 hex digits
  std::string owner;  // the API key id ("dev" in development mode)
  std::string model;
  std::string ref;  // the client's request id, if it gave one
  JobState state = JobState::kReceived;
  std::map<std::string, int64_t> times;
  int64_t attempts = 0;  // runs lost to dead workers
  int64_t request_bytes = 0;
  int64_t result_bytes = 0;
  int64_t result_chunks = 0;
  std::string code;     // ERROR / CANCELLED: status code name
  std::string message;  // ERROR / CANCELLED: why
  int64_t seq = 0;      // order of arrival, for rebuilding queues after a restart
};

// The bytes a submission stores that its client chose: the request, the ref (in the record
// and in the ref index) and the model name. Counted against the key: checked against
// KeyLimits::max_request_bytes and added to KeyUsage::bytes_stored.
inline int64_t StoredBytes(const JobRecord& job, const std::string& request) {
  return static_cast<int64_t>(request.size() + 2 * job.ref.size() + job.model.size());
}

// Every method is one atomic step (a Redis transaction or script). Failures to reach the
// store are UNAVAILABLE with a message starting "job store unavailable"; callers retry
// later. Not thread-safe: the broker calls it from one thread.
class JobStore {
 public:
  virtual ~JobStore() = default;

  virtual Status PutApiKey(const std::string& key_hash, const ApiKeyRecord& record) = 0;
  // nullopt: no key with that hash.
  virtual StatusOr<std::optional<ApiKeyRecord>> FindApiKey(const std::string& key_hash) = 0;
  virtual StatusOr<std::vector<ApiKeyRecord>> ListApiKeys() = 0;
  virtual Status RevokeApiKey(const std::string& key_id) = 0;  // NOT_FOUND
  virtual StatusOr<KeyUsage> GetUsage(const std::string& key_id) = 0;

  // Stores a new job in state QUEUED (times of RECEIVED and QUEUED set), its request bytes,
  // its place in its model's queue, and counts it (and its StoredBytes) in the owner's usage.
  // If the owner already stored a job with the same non-empty `ref`, stores nothing and
  // returns that job's id.
  virtual StatusOr<std::string> CreateJob(const JobRecord& job, const std::string& request) = 0;
  virtual StatusOr<std::optional<JobRecord>> GetJob(const std::string& id) = 0;
  // QUEUED -> RUNNING: leaves its queue, joins the running set. Returns the request bytes.
  virtual StatusOr<std::string> MarkRunning(const JobRecord& job, int64_t now_ms) = 0;
  // RUNNING -> QUEUED again (its worker died, or the broker restarted), with job.attempts.
  virtual Status Requeue(const JobRecord& job, int64_t now_ms) = 0;
  // Into job.state (terminal): result chunks stored with the result time-to-live, request
  // dropped, record kept for the record time-to-live, compute time added to usage.
  virtual Status Finish(const JobRecord& job, const std::vector<std::string>& chunks,
                        int64_t now_ms, int64_t compute_ms) = 0;
  // One stored result chunk (nullopt: expired or absent); its size is added to the owner's
  // bytes returned.
  virtual StatusOr<std::optional<std::string>> FetchResultChunk(const JobRecord& job,
                                                                int64_t index) = 0;
  // Adds to the owner's bytes returned (a chunk served from the broker's memory).
  virtual Status AddBytesReturned(const std::string& owner, int64_t bytes) = 0;
  // Every job QUEUED or RUNNING, in order of arrival.
  virtual StatusOr<std::vector<JobRecord>> LoadUnfinished() = 0;
};

struct StoreTtls {
  int64_t result_ms = int64_t{3600} * 1000;
  int64_t record_ms = int64_t{7} * 24 * 3600 * 1000;
  int64_t ref_ms = int64_t{24} * 3600 * 1000;  // how long a submit's ref stays idempotent
};

// How long the broker waits on Redis. A call blocks the broker for at most about
// `timeout_ms` (then UNAVAILABLE); after a failure, calls fail at once for `retry_ms` before
// the connection is tried again.
struct RedisTimeouts {
  int64_t timeout_ms = 2000;
  int64_t retry_ms = 200;
};

// Redis at "host:port", reached lazily: a lost connection is retried on a later call, so
// the broker resumes by itself when Redis returns.
std::unique_ptr<JobStore> NewRedisJobStore(const std::string& address, const StoreTtls& ttls,
                                           const RedisTimeouts& timeouts = {});
// In memory, for unit tests; TTLs follow `clock` (not owned, must outlive the store).
std::unique_ptr<JobStore> NewMemoryJobStore(const Clock* clock, const StoreTtls& ttls);

// Secrets and ids (libsodium).
std::string RandomHex(size_t bytes);             // 2*bytes lowercase hex digits
std::string Sha256Hex(const std::string& data);  // 64 lowercase hex digits

}  // namespace glassbox::broker::internal

#endif  // GLASSBOX_BROKER_JOB_STORE_IMPL_H_
