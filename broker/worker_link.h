// The worker's side of the broker connection, free of LibTorch: an engine worker process
// (`glassbox-engine serve`) calls ServeJobs with a handler that runs one encoded request and
// returns the encoded result. ServeJobs registers with the broker (READY), keeps heartbeats
// flowing from its own thread while the handler computes on another, passes cancellations
// and the time limit to the handler through JobContext, sends large results in chunks, and
// reconnects when the broker goes silent (a restarted broker gets READY again).
#ifndef GLASSBOX_BROKER_WORKER_LINK_H_
#define GLASSBOX_BROKER_WORKER_LINK_H_

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <vector>

#include "base/status.h"

namespace glassbox::broker {

// The token ids a trace would give `text` as its prompt. Called on the link's thread, also
// while a job's handler computes on another: it must be safe to run beside the handler.
using TextTokenizer = std::function<StatusOr<std::vector<int64_t>>(const std::string& text)>;

struct WorkerParams {
  std::string broker_endpoint = "tcp://127.0.0.1:5556";
  std::string model_name;      // the name clients ask for
  // The worker process this link is a batch slot of (the same for every link of a process;
  // "" for a process with one link): `glassbox status` counts processes by it.
  std::string group;
  std::string catalogue_json;  // the model's hook catalogue, served to clients by the broker
  int heartbeat_interval_ms = 1000;
  int heartbeat_liveness = 5;  // missed heartbeats before the broker is presumed dead (reconnect)
  size_t result_chunk_bytes = size_t{1} << 20;  // results larger than this travel in chunks
  // Result chunks queued for the broker at most (ZeroMQ's send high-water mark): a bigger
  // result waits for the broker to take them, so memory stays near this many chunks.
  int send_queue_chunks = 16;
  // CURVE authentication (BrokerParams::worker_*): the broker's public key for the worker
  // socket and this worker's secret key, Z85 (40 characters each). Both empty: a plain
  // connection, which a broker that authenticates workers refuses.
  std::string curve_server_key;
  std::string curve_secret_key;
  // Answers the broker's `tokenize` at once, between or during jobs (empty: answered
  // UNIMPLEMENTED). Texts over max_tokenize_bytes are refused (INVALID_ARGUMENT) so that
  // tokenizing never holds up heartbeats for long.
  TextTokenizer tokenizer;
  size_t max_tokenize_bytes = size_t{1} << 20;
};

// Fills params->curve_server_key and curve_secret_key from the files `glassbox-broker
// curve-keygen` writes: the broker's worker public key (PREFIX.pub) and this worker's
// secret key (PREFIX.key). NOT_FOUND / INVALID_ARGUMENT naming a file that cannot be read or
// does not hold a key.
Status ReadWorkerCurveKeys(const std::string& broker_public_key_file,
                           const std::string& worker_secret_key_file, WorkerParams* params);

// One job, as the handler sees it. Thread-safe: the link stops it from its own thread.
class JobContext {
 public:
  // `time_limit_ms` counts from construction; `attempts`: earlier runs of the job lost with
  // their worker. (Built by ServeJobs; tests may build their own.)
  JobContext(std::string job_id, int64_t time_limit_ms, int64_t attempts = 0);

  const std::string& job_id() const { return job_id_; }
  // Earlier runs of this job that died with their worker (the broker counts them): a batching
  // worker runs such a job alone, so a job that crashes workers cannot take the jobs batched
  // with it to the poison limit.
  int64_t attempts() const { return attempts_; }
  // Milliseconds left before the job's deadline; 0 once it has passed.
  int64_t RemainingMs() const;
  // True once the broker cancelled the job or its deadline passed: stop between hook points.
  bool ShouldStop() const;
  std::string StopReason() const;  // "cancelled by the user" / "time limit of 60 s exceeded"
  // Makes ShouldStop true with `reason` (the first reason given wins).
  void RequestStop(const std::string& reason);
  // The handler's note that the job shares one engine pass with others, `jobs` in all
  // (worker/batcher.h); the link tells the broker (a `running` message), which shows it to
  // the job's owner. Any thread.
  void ReportBatch(int64_t jobs) const { batch_report_.store(jobs); }
  // The last ReportBatch not yet taken, or 0.
  int64_t TakeBatchReport() { return batch_report_.exchange(0); }

 private:
  const std::string job_id_;
  const int64_t time_limit_ms_;
  const int64_t attempts_;
  const std::chrono::steady_clock::time_point deadline_;
  std::atomic<bool> stopped_{false};
  mutable std::atomic<int64_t> batch_report_{0};
  mutable std::mutex mu_;
  std::string reason_;  // guarded by mu_
};

// Runs one job: `request` holds the encoded protocol request message; returns the encoded
// result message, or an encoded error message (protocol error report) — never throws.
using JobHandler = std::function<std::string(const JobContext& job, const std::string& request)>;

// Connects, sends READY, serves jobs one at a time until `stop` becomes true. Heartbeats
// keep flowing while the handler computes: the handler runs on a compute thread of its own,
// the calling thread keeps the socket and the heartbeats. Large results are sent in chunks. A handler that throws or returns bytes that are neither a result nor an error
// report yields an INTERNAL error report for that job. On stop, a running job is asked to
// stop (ShouldStop), its outcome is dropped and the broker told to run it elsewhere
// (DISCONNECT); then ServeJobs returns OK. `stop` may be set from a signal handler (SIGTERM):
// the ZeroMQ calls the signal interrupts (EINTR) are no error. Errors: an endpoint ZeroMQ
// cannot use (INVALID_ARGUMENT).
Status ServeJobs(const WorkerParams& params, const JobHandler& handler,
                 const std::atomic<bool>& stop);

}  // namespace glassbox::broker

#endif  // GLASSBOX_BROKER_WORKER_LINK_H_
