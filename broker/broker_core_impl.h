// Internal to broker/: the broker's logic without its sockets. BrokerCore takes decoded
// peer traffic and the passing of time, keeps the live state (queues, workers, jobs that are
// not finished) and writes everything that must survive to a JobStore before telling anyone.
// It sends through an Outbox, so unit tests drive it with an in-memory store, a fake clock
// and a recording outbox; broker.cc wires it to two ZeroMQ ROUTER sockets.
#ifndef GLASSBOX_BROKER_BROKER_CORE_IMPL_H_
#define GLASSBOX_BROKER_BROKER_CORE_IMPL_H_

#include <deque>
#include <list>
#include <map>
#include <set>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "broker/broker.h"
#include "broker/job_store_impl.h"
#include "protocol/broker_messages.h"

namespace glassbox::broker::internal {

using protocol::BrokerMessage;

// Where the core's messages go; `peer` is a ZeroMQ routing id. Sending must not call back
// into the core (report unreachable workers later, with OnWorkerUnreachable).
class Outbox {
 public:
  virtual ~Outbox() = default;
  virtual void ToClient(const std::string& peer, const BrokerMessage& message) = 0;
  // False when the message could not be handed to the worker's connection (it is gone): the
  // worker never gets it.
  virtual bool ToWorker(const std::string& peer, const BrokerMessage& message) = 0;
  // Bytes sent to one client connection, or to all, that are still held in memory because
  // the client has not read them.
  virtual int64_t ClientUnreadBytes(const std::string& /*peer*/) const { return 0; }
  virtual int64_t AllClientsUnreadBytes() const { return 0; }
};

// Not thread-safe: one thread calls everything. `store`, `clock` and `outbox` are not owned.
class BrokerCore {
 public:
  BrokerCore(const BrokerParams& params, JobStore* store, const Clock* clock, Outbox* outbox);

  // Loads the jobs an earlier broker left queued or running (running ones are queued again).
  // Until it succeeds, submissions are refused as UNAVAILABLE; Tick retries it.
  Status Recover();

  // One frame from a client or a worker. Garbage is answered with an error, never fatal.
  void OnClientMessage(const std::string& peer, std::string_view bytes);
  void OnWorkerMessage(const std::string& peer, std::string_view bytes);
  // A worker the socket could not reach (gone, or between two connections). One without a
  // job it took is forgotten; one with a job keeps it until its heartbeats resume (it
  // reconnected) or stay silent (it died: CheckWorkers).
  void OnWorkerUnreachable(const std::string& peer);
  // Heartbeats, dead workers, time limits, store writes to retry, dispatch. Call often (the
  // broker does every 10 to 50 ms). `workers_heard_until_ms`: a time such that every worker
  // that had sent anything by then has been read from since. A worker is judged by its
  // silence up to then, so the broker's own stalls (a frozen Redis) never make it look dead.
  void Tick(int64_t workers_heard_until_ms);
  void Tick() { Tick(clock_->NowMs()); }

  // For tests and logs.
  size_t LiveJobs() const { return jobs_.size(); }
  size_t Workers() const { return workers_.size(); }

 private:
  // A job that is not finished yet (QUEUED or RUNNING), or whose end is not stored yet.
  struct LiveJob {
    JobRecord record;
    std::string client;  // connection to push status changes to ("" if none)
    std::string worker;  // while RUNNING
    int64_t started_ms = 0;
    std::vector<std::string> chunks;  // result chunks received so far
    int64_t received_bytes = 0;
    bool finishing = false;  // terminal, waiting for the store
    int64_t compute_ms = 0;
    int64_t batch = 0;  // jobs in its engine pass, as its worker reported (0: not reported)
  };
  struct Worker {
    std::string peer;
    std::string model;
    std::string group;  // the worker process it is a batch slot of ("": a process of its own)
    int64_t heartbeat_ms = 1000;
    int64_t last_seen_ms = 0;
    int64_t next_heartbeat_ms = 0;
    bool busy = false;
    std::string job;  // busy with this job ("" if busy with one the broker does not know)
    bool reachable = true;  // false after a failed send, until the worker is heard again
    int64_t result_chunk_ms = 0;  // when its current result's last chunk came (0: none yet)
  };
  // One model's queue: a queue per owner, served in turn (round robin).
  struct ModelQueue {
    std::map<std::string, std::deque<std::string>> by_owner;
    std::list<std::string> turn;  // owners with queued jobs, next to be served first
  };
  struct Caller {
    std::string owner;
    KeyLimits limits;
  };
  // A tokenize passed to a worker, by the broker's own ref for it.
  struct PendingTokenize {
    std::string client;      // connection to answer
    std::string client_ref;  // the client's ref, echoed in the answer
    std::string worker;      // peer it was sent to
    int64_t deadline_ms = 0;
  };
  struct CachedKey {
    std::optional<ApiKeyRecord> record;
    int64_t fetched_ms = 0;
  };

  // Clients.
  void HandleClient(const std::string& peer, const BrokerMessage& m);
  StatusOr<Caller> Authenticate(const std::string& api_key);
  void Submit(const std::string& peer, const Caller& caller, const BrokerMessage& m);
  void AdoptStoredJob(const std::string& id, const std::string& peer);
  Status CheckSubmission(const Caller& caller, const BrokerMessage& m, const std::string& model);
  void Query(const std::string& peer, const Caller& caller, const BrokerMessage& m);
  void Fetch(const std::string& peer, const Caller& caller, const BrokerMessage& m);
  // RESOURCE_EXHAUSTED when a chunk of `chunk_bytes` more would hold too many unread bytes.
  Status CheckUnread(const std::string& peer, int64_t chunk_bytes) const;
  void Cancel(const std::string& peer, const Caller& caller, const BrokerMessage& m);
  void ListModels(const std::string& peer, const BrokerMessage& m);
  // Passes a tokenize to a worker of its model, idle or busy (never queued); the worker's
  // reply goes back to `peer` under the client's ref (AnswerTokenize).
  void Tokenize(const std::string& peer, const BrokerMessage& m);
  const Worker* PickTokenizer(const std::string& model) const;
  void AnswerTokenize(const Worker& worker, const BrokerMessage& m);
  // Fails tokenizes whose worker is gone or that passed tokenize_timeout_ms (UNAVAILABLE).
  void CheckTokenizes(int64_t now);
  // The job as its owner may see it; NOT_FOUND for other owners and unknown ids alike.
  StatusOr<JobRecord> FindOwnedJob(const Caller& caller, const std::string& id);
  BrokerMessage StatusOf(const JobRecord& record);
  void ReplyError(const std::string& peer, const Status& status, const BrokerMessage& request);

  // Workers.
  void HandleWorker(Worker& worker, const BrokerMessage& m);
  void Ready(const std::string& peer, const BrokerMessage& m);
  void AdoptBusyJob(Worker& worker, const std::string& job_id);
  void JobResult(Worker& worker, const BrokerMessage& m);
  void Running(const Worker& worker, const BrokerMessage& m);
  void ReleaseWorker(Worker& worker);
  void ResultStalled(const std::string& peer);
  void RemoveWorker(const std::string& peer, bool died);
  void WorkerLost(const std::string& job_id, bool died);

  // Queues and dispatch.
  void Enqueue(LiveJob& job, bool front);
  void Unqueue(const LiveJob& job);
  int64_t PositionOf(const LiveJob& job) const;
  void DispatchAll();
  void Dispatch(const std::string& model);
  std::string PickJob(ModelQueue& queue);
  enum class Start { kRunning, kStoreDown, kUnreachable };
  Start StartJob(Worker& worker, LiveJob& job);
  size_t LiveWorkersFor(const std::string& model) const;
  std::string RegistrationRefusal(const std::string& model);
  std::string ServedModels() const;

  // Ends.
  // Ends the job (stored at once, or by Tick when the store is back); `job` may be gone
  // afterwards. Returns the record as finished.
  JobRecord FinishJob(LiveJob& job, JobState state, const std::string& code,
                      const std::string& message);
  void FlushFinishing();
  void Push(LiveJob& job, BrokerMessage status);
  void CheckTimeLimits(int64_t now);
  void CheckWorkers(int64_t now, int64_t heard_until);
  void Remember(const JobRecord& record);
  void CacheResult(const JobRecord& record, std::vector<std::string> chunks, int64_t end_ms);
  // Chunk `index` of a job's result from the memory cache, counted in its owner's usage;
  // nullopt when the cache does not hold it.
  StatusOr<std::optional<std::string>> CachedChunk(const JobRecord& job, int64_t index);
  void CountBytesReturned(const std::string& owner, int64_t bytes);
  void FlushBytesReturned();

  BrokerParams params_;
  JobStore* store_;
  const Clock* clock_;
  Outbox* outbox_;
  bool recovered_ = false;
  int64_t seq_counter_ = 0;

  std::unordered_map<std::string, LiveJob> jobs_;
  std::map<std::string, ModelQueue> queues_;
  std::map<std::string, Worker> workers_;          // by peer
  std::map<std::string, std::string> catalogues_;  // by model, latest READY
  std::map<std::string, PendingTokenize> tokenizes_;
  int64_t tokenize_counter_ = 0;
  std::map<std::string, int64_t> queued_by_owner_;
  std::map<std::string, int64_t> running_by_owner_;
  std::map<std::string, KeyLimits> limits_by_owner_;
  std::map<std::string, CachedKey> key_cache_;  // by SHA-256 of the secret
  std::vector<std::string> finishing_;          // jobs whose end the store has not taken yet
  // Recently finished jobs, so a fetch right after COMPLETED needs no extra store read.
  std::unordered_map<std::string, JobRecord> recent_;
  std::deque<std::string> recent_order_;
  // Result chunks of recently finished jobs (also in the store), oldest first out, within
  // params_.result_cache_bytes.
  struct CachedResult {
    std::vector<std::string> chunks;
    int64_t bytes = 0;
    int64_t expires_ms = 0;
  };
  std::unordered_map<std::string, CachedResult> result_cache_;
  std::deque<std::string> result_cache_order_;
  int64_t result_cache_bytes_ = 0;
  // Bytes served from memory while the store was down, by owner: added to usage later.
  std::map<std::string, int64_t> unsaved_bytes_returned_;
};

std::string FormatSeconds(int64_t ms);  // "60 s", "1.5 s"
void LogLine(const std::string& line);  // one timestamped line on stderr

}  // namespace glassbox::broker::internal

#endif  // GLASSBOX_BROKER_BROKER_CORE_IMPL_H_
