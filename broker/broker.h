// The Glassbox broker: the front door of the broker room. It accepts jobs from clients over
// ZeroMQ, keeps their state in Redis, hands them to engine workers (broker/worker_link.h)
// and pushes every status change back (protocol/SPEC.md §9). It never links LibTorch and
// never decodes graphs (it reads only a request's `body.model`).
//
// Clients use broker/client.h; engine workers use broker/worker_link.h; the command line is
// `glassbox-broker` (broker/main.cc).
#ifndef GLASSBOX_BROKER_BROKER_H_
#define GLASSBOX_BROKER_BROKER_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "base/status.h"

namespace glassbox::broker {

// What one API key may do at once. Going over a limit is refused with RESOURCE_EXHAUSTED.
struct KeyLimits {
  int64_t max_queued = 1000;                      // jobs waiting in queues
  int64_t max_running = 4;                        // jobs on workers at once
  // One submission as stored: the encoded request plus the client-chosen strings stored
  // with it (its ref, twice, and the model name).
  int64_t max_request_bytes = int64_t{64} << 20;
};

struct BrokerParams {
  std::string client_endpoint = "tcp://*:5555";  // ROUTER for clients
  std::string worker_endpoint = "tcp://*:5556";  // ROUTER for engine workers
  std::string redis_address = "127.0.0.1:6379";  // host:port
  // Development only: no API keys; every client is the one user "dev" with default_limits.
  bool dev_no_auth = false;
  KeyLimits default_limits;          // for dev mode, and for `keys create` when no limit is given
  int heartbeat_interval_ms = 1000;  // broker -> worker heartbeats (a worker says its own)
  int heartbeat_liveness = 5;        // missed worker heartbeats before it is presumed dead
  // Workers that may die while running one job: at this many the job is poison, failed
  // with INTERNAL at once and never offered to another worker. A worker that leaves (or
  // that the job never reached) does not count.
  int max_attempts = 2;
  int64_t time_limit_ms = 60000;     // per job; the worker stops between hook points
  // After time_limit_ms + this, the broker fails the job itself (a worker that did not stop).
  int64_t time_limit_grace_ms = 5000;
  // Redis: one call blocks the broker at most about this long before it counts as
  // unavailable; after a failure the broker waits redis_retry_ms before reconnecting.
  int64_t redis_timeout_ms = 2000;
  int64_t redis_retry_ms = 200;
  // An API key is read again from Redis after this long (how soon a revocation bites).
  int64_t key_cache_ms = 1000;
  int64_t result_ttl_ms = int64_t{3600} * 1000;           // results stay fetchable this long
  int64_t record_ttl_ms = int64_t{7} * 24 * 3600 * 1000;  // job records (status by id)
  int64_t max_client_message_bytes = int64_t{80} << 20;   // ZMQ_MAXMSGSIZE on the client socket
  // Bytes the broker holds for one client connection that has not read them yet (fetched
  // chunks, statuses); past it, fetches on that connection are refused (RESOURCE_EXHAUSTED)
  // and other messages to it dropped. All connections together: client_unread_total_bytes.
  int64_t client_unread_bytes = int64_t{64} << 20;
  int64_t client_unread_total_bytes = int64_t{1} << 30;
  // Longest `ref` a client may give (it is stored in Redis with a submitted job).
  int64_t max_ref_bytes = 256;
  int64_t max_result_bytes = int64_t{1} << 30;            // larger results fail their job
  // Results of recently finished jobs also kept in the broker's memory, up to this many bytes
  // (oldest dropped first), so fetching right after completion does not read them back from
  // Redis. 0 turns this off.
  int64_t result_cache_bytes = int64_t{256} << 20;
  // A `tokenize` goes to a worker of its model at once (not through the job queue; the worker
  // answers between its jobs' steps). Unanswered after this long, the client is told
  // UNAVAILABLE.
  int64_t tokenize_timeout_ms = 10000;
  // Optional CURVE encryption of the client socket: a file holding the broker's Z85 secret
  // key (40 characters; `glassbox-broker curve-keygen` makes one). Clients then need the
  // matching public key (ClientParams::curve_server_key); plain clients get no answer.
  std::string curve_secret_key_file;
  // Worker authentication (CURVE): with both set, the worker socket is encrypted with the
  // secret key in worker_curve_secret_key_file and only workers whose public key is a line
  // of worker_public_keys_file may connect (`glassbox-broker curve-keygen` makes the pairs;
  // a worker takes the broker's public key and its own secret key, WorkerParams::curve_*).
  // Any other process is refused during the handshake (logged): it never registers, gets no
  // job and cannot send a result. With neither set, any process that reaches
  // worker_endpoint may register as a worker (development; the broker says so at start).
  std::string worker_curve_secret_key_file;
  std::string worker_public_keys_file;
  // What registered workers may make the broker hold: workers at once, models remembered
  // (each with the catalogue its last worker sent), and one frame from a worker. A READY
  // over a limit is answered DISCONNECT with the reason.
  int64_t max_workers = 1024;
  int64_t max_models = 256;
  int64_t max_worker_message_bytes = int64_t{64} << 20;
};

// Serves until `stop` becomes true (checked at least every 50 ms), then returns OK. Errors:
// endpoints that cannot be bound (UNAVAILABLE / INVALID_ARGUMENT). Redis being down is not an
// error: submissions are refused with UNAVAILABLE until it returns. Logs to stderr.
Status RunBroker(const BrokerParams& params, const std::atomic<bool>& stop);

// API keys. The secret is shown once, at creation; Redis holds only its SHA-256.
struct KeyUsage {
  int64_t jobs = 0;
  int64_t compute_ms = 0;
  int64_t bytes_returned = 0;
  // Bytes of client-chosen data the key's submissions stored in Redis (StoredBytes).
  int64_t bytes_stored = 0;
};
struct ApiKeyInfo {
  std::string id;  // public: names the key in `keys list` / `keys revoke`, and owns its jobs
  std::string name;
  KeyLimits limits;
  int64_t created_ms = 0;
  bool revoked = false;
  KeyUsage usage;
};
struct NewApiKey {
  ApiKeyInfo info;
  std::string secret;  // "gbk_" + 64 hex digits: what clients pass as their API key
};
// Each talks to the Redis at `redis_address`; UNAVAILABLE if it cannot be reached.
StatusOr<NewApiKey> CreateApiKey(const std::string& redis_address, const std::string& name,
                                 const KeyLimits& limits);
StatusOr<std::vector<ApiKeyInfo>> ListApiKeys(const std::string& redis_address);
Status RevokeApiKey(const std::string& redis_address, const std::string& key_id);  // NOT_FOUND

// CURVE keys (Z85 text, 40 characters each) for encrypting client connections.
struct CurveKeyPair {
  std::string public_key;
  std::string secret_key;
};
StatusOr<CurveKeyPair> MakeCurveKeyPair();  // UNIMPLEMENTED if libzmq lacks CURVE
// The key stored in `path` (surrounding whitespace ignored); INVALID_ARGUMENT if it is not one.
StatusOr<std::string> ReadCurveKeyFile(const std::string& path);
// The keys stored in `path`, one per line (blank lines and lines starting with '#' ignored);
// INVALID_ARGUMENT naming the line that is not a key, or if there is none.
StatusOr<std::vector<std::string>> ReadCurveKeyListFile(const std::string& path);

}  // namespace glassbox::broker

#endif  // GLASSBOX_BROKER_BROKER_H_
