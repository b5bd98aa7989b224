// The broker's logic (see broker_core_impl.h): authentication and per-key limits, the job
// lifecycle, fair queues per model, dispatch to workers, heartbeats, retries after dead
// workers, time limits, and pushing every status change to the client that asked.
// Rule kept throughout: a job is written to the store before anyone is told about it.
#include <algorithm>
#include <cstdio>
#include <ctime>
#include <set>

#include "broker/broker_core_impl.h"
#include "protocol/codec.h"

namespace glassbox::broker::internal {

using protocol::BrokerMessageType;
using protocol::JobStateName;

namespace {

constexpr size_t kRecentJobs = 10000;

bool IsJobId(const std::string& id) {
  return id.size() == 32 && std::all_of(id.begin(), id.end(), [](char c) {
           return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
         });
}

std::string Shorten(const std::string& s) { return s.size() <= 64 ? s : s.substr(0, 64) + "..."; }

Status NoSuchJob(const std::string& id) { return NotFound("no job " + Shorten(id)); }

BrokerMessage Simple(BrokerMessageType type) {
  BrokerMessage m;
  m.type = type;
  return m;
}

}  // namespace

void LogLine(const std::string& line) {
  const std::time_t now = std::time(nullptr);
  char stamp[32];
  std::strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&now));
  std::fprintf(stderr, "%s glassbox-broker: %s\n", stamp, line.c_str());
}

std::string FormatSeconds(int64_t ms) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g s", static_cast<double>(ms) / 1000.0);
  return buf;
}

BrokerCore::BrokerCore(const BrokerParams& params, JobStore* store, const Clock* clock,
                       Outbox* outbox)
    : params_(params), store_(store), clock_(clock), outbox_(outbox) {}

// ---------------------------------------------------------------------------------------
// Recovery and time.

Status BrokerCore::Recover() {
  GLASSBOX_ASSIGN_OR_RETURN(std::vector<JobRecord> records, store_->LoadUnfinished());
  const int64_t now = clock_->NowMs();
  for (JobRecord& record : records) {
    if (record.state != JobState::kRunning) continue;
    record.state = JobState::kQueued;
    GLASSBOX_RETURN_IF_ERROR(store_->Requeue(record, now));
  }
  for (JobRecord& record : records) {
    LiveJob& job = jobs_[record.id];
    job.record = std::move(record);
    Enqueue(job, /*front=*/false);
  }
  recovered_ = true;
  if (!records.empty()) LogLine("recovered " + std::to_string(records.size()) + " unfinished jobs");
  DispatchAll();
  return Status::Ok();
}

void BrokerCore::Tick(int64_t workers_heard_until_ms) {
  const int64_t now = clock_->NowMs();
  if (!recovered_) {
    Status status = Recover();
    if (!status.ok()) return;
  }
  CheckWorkers(now, std::min(now, workers_heard_until_ms));
  CheckTimeLimits(now);
  CheckTokenizes(now);
  FlushFinishing();
  FlushBytesReturned();
  DispatchAll();
}

// Silence is measured up to `heard_until`, not `now`: what a worker sent while the broker
// was not reading (stalled on the store) counts as heard.
void BrokerCore::CheckWorkers(int64_t now, int64_t heard_until) {
  std::vector<std::string> dead;
  std::vector<std::string> stalled;
  for (auto& [peer, w] : workers_) {
    if (heard_until - w.last_seen_ms > w.heartbeat_ms * params_.heartbeat_liveness) {
      dead.push_back(peer);
      continue;
    }
    if (w.busy && w.result_chunk_ms > 0 &&
        heard_until - w.result_chunk_ms > params_.time_limit_grace_ms) {
      stalled.push_back(peer);
      continue;
    }
    if (now >= w.next_heartbeat_ms) {
      outbox_->ToWorker(peer, Simple(BrokerMessageType::kHeartbeat));
      w.next_heartbeat_ms = now + w.heartbeat_ms;
    }
  }
  for (const std::string& peer : stalled) ResultStalled(peer);
  for (const std::string& peer : dead) {
    LogLine("worker " + workers_[peer].model + " silent for " +
            std::to_string(params_.heartbeat_liveness) + " heartbeats: presumed dead");
    RemoveWorker(peer, /*died=*/true);
  }
}

// The worker began sending a result, then sent no chunk for the grace period while still
// heartbeating: chunks were lost. Its job (if still ours) fails, and the worker is forgotten
// and told to register again, which resets it.
void BrokerCore::ResultStalled(const std::string& peer) {
  Worker& worker = workers_.at(peer);
  LogLine("worker of \"" + Shorten(worker.model) + "\" stopped sending its result");
  BrokerMessage bye = Simple(BrokerMessageType::kDisconnect);
  bye.reason = "your result stopped arriving; register again";
  outbox_->ToWorker(peer, bye);
  auto it = jobs_.find(worker.job);
  if (it != jobs_.end() && !it->second.finishing && it->second.worker == peer) {
    const size_t received = it->second.chunks.size();
    it->second.chunks.clear();
    FinishJob(it->second, JobState::kError, "INTERNAL",
              "the worker's result stopped arriving after " + std::to_string(received) +
                  " chunks; submit it again");
  }
  workers_.erase(peer);
}

void BrokerCore::CheckTimeLimits(int64_t now) {
  std::vector<std::string> overdue;
  for (auto& [id, job] : jobs_) {
    if (job.record.state == JobState::kRunning && !job.finishing &&
        now > job.started_ms + params_.time_limit_ms + params_.time_limit_grace_ms) {
      overdue.push_back(id);
    }
  }
  for (const std::string& id : overdue) {
    LiveJob& job = jobs_[id];
    const std::string limit = "time limit of " + FormatSeconds(params_.time_limit_ms) + " exceeded";
    BrokerMessage cancel = Simple(BrokerMessageType::kCancel);
    cancel.job = id;
    cancel.reason = limit;
    outbox_->ToWorker(job.worker, cancel);
    FinishJob(job, JobState::kError, "CANCELLED",  // protocol/SPEC.md §7: past its limit
              limit + " (the worker did not stop within " +
                  FormatSeconds(params_.time_limit_grace_ms) + " of it)");
  }
}

// ---------------------------------------------------------------------------------------
// Clients.

void BrokerCore::OnClientMessage(const std::string& peer, std::string_view bytes) {
  protocol::BrokerDecodeLimits limits;
  limits.max_message_bytes = static_cast<size_t>(params_.max_client_message_bytes);
  auto m = protocol::DecodeBrokerMessage(bytes, limits);
  if (!m.ok()) {
    outbox_->ToClient(peer, protocol::MakeErrorMessage(m.status()));
    return;
  }
  HandleClient(peer, *m);
}

void BrokerCore::HandleClient(const std::string& peer, const BrokerMessage& m) {
  switch (m.type) {
    case BrokerMessageType::kHeartbeat:
      outbox_->ToClient(peer, Simple(BrokerMessageType::kHeartbeat));
      return;
    case BrokerMessageType::kSubmit:
    case BrokerMessageType::kQuery:
    case BrokerMessageType::kFetch:
    case BrokerMessageType::kCancel:
    case BrokerMessageType::kListModels:
    case BrokerMessageType::kTokenize:
      break;
    default:
      ReplyError(peer,
                 InvalidArgument(std::string("a client may not send a \"") +
                                 protocol::BrokerMessageTypeName(m.type) +
                                 "\" message (clients send submit, query, fetch, cancel, "
                                 "list_models, tokenize or heartbeat)"),
                 m);
      return;
  }
  if (static_cast<int64_t>(m.ref.size()) > params_.max_ref_bytes) {
    return ReplyError(peer,
                      InvalidArgument("ref of " + std::to_string(m.ref.size()) +
                                      " bytes is over the limit of " +
                                      std::to_string(params_.max_ref_bytes) + " bytes"),
                      m);
  }
  StatusOr<Caller> caller = Authenticate(m.api_key);
  if (!caller.ok()) return ReplyError(peer, caller.status(), m);
  switch (m.type) {
    case BrokerMessageType::kSubmit:
      return Submit(peer, *caller, m);
    case BrokerMessageType::kQuery:
      return Query(peer, *caller, m);
    case BrokerMessageType::kFetch:
      return Fetch(peer, *caller, m);
    case BrokerMessageType::kCancel:
      return Cancel(peer, *caller, m);
    case BrokerMessageType::kTokenize:
      return Tokenize(peer, m);
    default:
      return ListModels(peer, m);
  }
}

StatusOr<BrokerCore::Caller> BrokerCore::Authenticate(const std::string& api_key) {
  if (params_.dev_no_auth) return Caller{"dev", params_.default_limits};
  if (api_key.empty()) {
    return Unauthenticated(
        "no API key given; ask the operator for one "
        "(glassbox-broker keys create)");
  }
  const std::string hash = Sha256Hex(api_key);
  const int64_t now = clock_->NowMs();
  auto cached = key_cache_.find(hash);
  if (cached == key_cache_.end() || now - cached->second.fetched_ms >= params_.key_cache_ms) {
    StatusOr<std::optional<ApiKeyRecord>> record = store_->FindApiKey(hash);
    // Redis down: a key read before stays good (it cannot be revoked meanwhile either), so
    // what the broker holds in memory is still served.
    if (!record.ok() && (cached == key_cache_.end() ||
                         record.status().code() != StatusCode::kUnavailable)) {
      return record.status();
    }
    if (record.ok()) {
      if (key_cache_.size() > 10000) key_cache_.clear();
      cached = key_cache_.insert_or_assign(hash, CachedKey{std::move(*record), now}).first;
    }
  }
  const std::optional<ApiKeyRecord>& record = cached->second.record;
  if (!record || record->revoked) {
    return Unauthenticated("API key not recognised (unknown or revoked)");
  }
  limits_by_owner_[record->id] = record->limits;
  return Caller{record->id, record->limits};
}

Status BrokerCore::CheckSubmission(const Caller& caller, const BrokerMessage& m,
                                   const std::string& model) {
  if (static_cast<int64_t>(m.payload.size()) > caller.limits.max_request_bytes) {
    return ResourceExhausted("request of " + std::to_string(m.payload.size()) +
                             " bytes is over this API key's limit of " +
                             std::to_string(caller.limits.max_request_bytes) + " bytes");
  }
  JobRecord as_stored;
  as_stored.ref = m.ref;
  as_stored.model = model;
  const int64_t stored = StoredBytes(as_stored, m.payload);
  if (stored > caller.limits.max_request_bytes) {
    return ResourceExhausted("request of " + std::to_string(m.payload.size()) +
                             " bytes with its ref and model name (" + std::to_string(stored) +
                             " bytes stored) is over this API key's limit of " +
                             std::to_string(caller.limits.max_request_bytes) + " bytes");
  }
  if (LiveWorkersFor(model) == 0 && catalogues_.count(model) == 0 && queues_.count(model) == 0) {
    return NotFound("no worker serves model \"" + Shorten(model) +
                    "\" (served now: " + ServedModels() + ")");
  }
  if (queued_by_owner_[caller.owner] >= caller.limits.max_queued) {
    return ResourceExhausted("this API key already has " +
                             std::to_string(queued_by_owner_[caller.owner]) +
                             " jobs queued, its limit; wait for some to finish");
  }
  return Status::Ok();
}

void BrokerCore::Submit(const std::string& peer, const Caller& caller, const BrokerMessage& m) {
  if (!recovered_) {
    return ReplyError(peer,
                      Unavailable("job store unavailable: the broker has not reloaded "
                                  "its queues from redis yet; retry shortly"),
                      m);
  }
  StatusOr<std::string> model = protocol::PeekRequestModel(m.payload);
  if (!model.ok()) return ReplyError(peer, model.status(), m);
  Status allowed = CheckSubmission(caller, m, *model);
  if (!allowed.ok()) return ReplyError(peer, allowed, m);

  const int64_t now = clock_->NowMs();
  JobRecord record;
  record.id = RandomHex(16);
  record.owner = caller.owner;
  record.model = *model;
  record.ref = m.ref;
  record.state = JobState::kQueued;
  record.times = {{"RECEIVED", now}, {"QUEUED", now}};
  record.request_bytes = static_cast<int64_t>(m.payload.size());
  record.seq = now * 1000 + (seq_counter_++ % 1000);
  StatusOr<std::string> stored = store_->CreateJob(record, m.payload);
  if (!stored.ok()) return ReplyError(peer, stored.status(), m);

  BrokerMessage ack = Simple(BrokerMessageType::kAck);
  ack.job = *stored;
  ack.ref = m.ref;
  ack.time_ms = now;
  outbox_->ToClient(peer, ack);
  if (*stored != record.id) {  // a retry of a submission already stored
    auto live = jobs_.find(*stored);
    if (live != jobs_.end()) {
      live->second.client = peer;
    } else {
      AdoptStoredJob(*stored, peer);
    }
    return;
  }
  LiveJob& job = jobs_[record.id];
  job.record = std::move(record);
  job.client = peer;
  Enqueue(job, /*front=*/false);
  Push(job, StatusOf(job.record));
  Dispatch(job.record.model);
}

// A job in the store the broker does not hold: stored by a call whose answer never came (a
// store timeout), so its client was told UNAVAILABLE and retried. Queued here, it runs.
void BrokerCore::AdoptStoredJob(const std::string& id, const std::string& peer) {
  if (recent_.count(id) > 0) return;  // finished already
  StatusOr<std::optional<JobRecord>> stored = store_->GetJob(id);
  if (!stored.ok() || !stored->has_value() || protocol::IsTerminal((*stored)->state)) return;
  LiveJob& job = jobs_[id];
  job.record = std::move(**stored);
  job.client = peer;
  if (job.record.state == JobState::kRunning) {
    job.record.state = JobState::kQueued;
    Status requeued = store_->Requeue(job.record, clock_->NowMs());
    if (!requeued.ok()) LogLine("requeue not stored (recovery will redo it): " + requeued.ToString());
  }
  Enqueue(job, /*front=*/false);
  Push(job, StatusOf(job.record));
  Dispatch(job.record.model);
}

void BrokerCore::Query(const std::string& peer, const Caller& caller, const BrokerMessage& m) {
  StatusOr<JobRecord> record = FindOwnedJob(caller, m.job);
  if (!record.ok()) return ReplyError(peer, record.status(), m);
  auto live = jobs_.find(m.job);
  if (live != jobs_.end()) live->second.client = peer;  // later changes go to this connection
  BrokerMessage status = StatusOf(*record);
  status.ref = m.ref;
  outbox_->ToClient(peer, status);
}

void BrokerCore::Fetch(const std::string& peer, const Caller& caller, const BrokerMessage& m) {
  StatusOr<JobRecord> found = FindOwnedJob(caller, m.job);
  if (!found.ok()) return ReplyError(peer, found.status(), m);
  const JobRecord& job = *found;
  auto live = jobs_.find(job.id);
  if (!protocol::IsTerminal(job.state) || live != jobs_.end()) {
    return ReplyError(peer,
                      Unavailable("job " + job.id + " is " + JobStateName(job.state) +
                                  "; its result is not ready yet"),
                      m);
  }
  if (job.result_chunks == 0) {
    return ReplyError(
        peer, NotFound("job " + job.id + " is " + JobStateName(job.state) + " and has no result"),
        m);
  }
  if (m.index >= job.result_chunks) {
    return ReplyError(
        peer,
        InvalidArgument("job " + job.id + " has " + std::to_string(job.result_chunks) +
                        " result chunks; there is no chunk " + std::to_string(m.index)),
        m);
  }
  Status room = CheckUnread(peer, (job.result_bytes + job.result_chunks - 1) / job.result_chunks);
  if (!room.ok()) return ReplyError(peer, room, m);
  StatusOr<std::optional<std::string>> chunk = CachedChunk(job, m.index);
  if (chunk.ok() && !*chunk) chunk = store_->FetchResultChunk(job, m.index);
  if (!chunk.ok()) return ReplyError(peer, chunk.status(), m);
  if (!*chunk) {
    return ReplyError(peer,
                      NotFound("the result of job " + job.id + " expired (results are kept " +
                               FormatSeconds(params_.result_ttl_ms) + ")"),
                      m);
  }
  BrokerMessage reply = Simple(BrokerMessageType::kResultChunk);
  reply.ref = m.ref;
  reply.job = job.id;
  reply.index = m.index;
  reply.count = job.result_chunks;
  reply.total_bytes = job.result_bytes;
  reply.payload = std::move(**chunk);
  outbox_->ToClient(peer, reply);
}

Status BrokerCore::CheckUnread(const std::string& peer, int64_t chunk_bytes) const {
  const int64_t unread = outbox_->ClientUnreadBytes(peer);
  if (unread > 0 && unread + chunk_bytes > params_.client_unread_bytes) {
    return ResourceExhausted(std::to_string(unread) +
                             " bytes sent are still unread by this connection (the broker holds "
                             "at most " +
                             std::to_string(params_.client_unread_bytes) +
                             "); read them before fetching more");
  }
  const int64_t all = outbox_->AllClientsUnreadBytes();
  if (all > 0 && all + chunk_bytes > params_.client_unread_total_bytes) {
    return ResourceExhausted("the broker holds " + std::to_string(all) +
                             " bytes unread by its clients, its limit; fetch again shortly");
  }
  return Status::Ok();
}

void BrokerCore::Cancel(const std::string& peer, const Caller& caller, const BrokerMessage& m) {
  StatusOr<JobRecord> record = FindOwnedJob(caller, m.job);
  if (!record.ok()) return ReplyError(peer, record.status(), m);
  auto live = jobs_.find(m.job);
  if (live != jobs_.end() && !live->second.finishing) {
    LiveJob& job = live->second;
    if (job.record.state == JobState::kRunning) {
      BrokerMessage cancel = Simple(BrokerMessageType::kCancel);
      cancel.job = job.record.id;
      cancel.reason = "cancelled by the user";
      outbox_->ToWorker(job.worker, cancel);
    }
    job.client.clear();  // the reply below tells the canceller
    record = FinishJob(job, JobState::kCancelled, "CANCELLED", "cancelled by the user");
  }
  BrokerMessage status = StatusOf(*record);
  status.ref = m.ref;
  outbox_->ToClient(peer, status);
}

void BrokerCore::ListModels(const std::string& peer, const BrokerMessage& m) {
  BrokerMessage reply = Simple(BrokerMessageType::kModels);
  reply.ref = m.ref;
  for (const auto& [model, catalogue] : catalogues_) {
    protocol::ModelInfo info;
    info.name = model;
    // A worker process with N batch slots holds N connections, one group.
    std::set<std::string> processes;
    for (const auto& [peer, w] : workers_) {
      if (w.model != model) continue;
      ++info.slots;
      info.running += w.busy;
      processes.insert(w.group.empty() ? "peer:" + peer : "group:" + w.group);
    }
    info.workers = static_cast<int64_t>(processes.size());
    auto q = queues_.find(model);
    if (q != queues_.end()) {
      for (const auto& [owner, ids] : q->second.by_owner) info.queued += ids.size();
    }
    info.catalogue_json = catalogue;
    if (info.workers > 0 || info.queued > 0) reply.models.push_back(std::move(info));
  }
  outbox_->ToClient(peer, reply);
}

void BrokerCore::Tokenize(const std::string& peer, const BrokerMessage& m) {
  const Worker* worker = PickTokenizer(m.model);
  if (worker == nullptr) {
    if (catalogues_.count(m.model) == 0) {
      return ReplyError(peer,
                        NotFound("no worker serves model \"" + Shorten(m.model) +
                                 "\" (served now: " + ServedModels() + ")"),
                        m);
    }
    return ReplyError(peer,
                      Unavailable("no worker serves model \"" + Shorten(m.model) +
                                  "\" at the moment; try again when one has registered"),
                      m);
  }
  BrokerMessage forward = Simple(BrokerMessageType::kTokenize);
  forward.ref = "tokenize-" + std::to_string(++tokenize_counter_);
  forward.model = m.model;
  forward.text = m.text;
  if (!outbox_->ToWorker(worker->peer, forward)) {
    return ReplyError(peer, Unavailable("the worker of \"" + Shorten(m.model) +
                                        "\" could not be reached; try again"),
                      m);
  }
  tokenizes_[forward.ref] =
      PendingTokenize{peer, m.ref, worker->peer, clock_->NowMs() + params_.tokenize_timeout_ms};
}

// An idle worker if there is one (it answers at once), else any reachable one: a busy
// worker answers between the steps of the job it runs.
const BrokerCore::Worker* BrokerCore::PickTokenizer(const std::string& model) const {
  const Worker* busy = nullptr;
  for (const auto& [peer, w] : workers_) {
    if (w.model != model || !w.reachable) continue;
    if (!w.busy) return &w;
    if (busy == nullptr) busy = &w;
  }
  return busy;
}

void BrokerCore::AnswerTokenize(const Worker& worker, const BrokerMessage& m) {
  auto it = tokenizes_.find(m.ref);
  if (it == tokenizes_.end() || it->second.worker != worker.peer) return;  // timed out
  BrokerMessage answer = m;
  answer.ref = it->second.client_ref;
  outbox_->ToClient(it->second.client, answer);
  tokenizes_.erase(it);
}

void BrokerCore::CheckTokenizes(int64_t now) {
  for (auto it = tokenizes_.begin(); it != tokenizes_.end();) {
    const bool gone = workers_.count(it->second.worker) == 0;
    if (!gone && now < it->second.deadline_ms) {
      ++it;
      continue;
    }
    const std::string why = gone ? "the worker asked to tokenize the text went away"
                                 : "the worker did not tokenize the text within " +
                                       FormatSeconds(params_.tokenize_timeout_ms);
    outbox_->ToClient(it->second.client, protocol::MakeErrorMessage(
                                             Unavailable(why + "; try again"), "",
                                             it->second.client_ref));
    it = tokenizes_.erase(it);
  }
}

StatusOr<JobRecord> BrokerCore::FindOwnedJob(const Caller& caller, const std::string& id) {
  if (!IsJobId(id)) return NoSuchJob(id);
  if (auto live = jobs_.find(id); live != jobs_.end()) {
    if (live->second.record.owner != caller.owner) return NoSuchJob(id);
    return live->second.record;
  }
  if (auto recent = recent_.find(id); recent != recent_.end()) {
    if (recent->second.owner != caller.owner) return NoSuchJob(id);
    return recent->second;
  }
  GLASSBOX_ASSIGN_OR_RETURN(std::optional<JobRecord> stored, store_->GetJob(id));
  if (!stored || stored->owner != caller.owner) return NoSuchJob(id);
  return *stored;
}

BrokerMessage BrokerCore::StatusOf(const JobRecord& record) {
  JobState state = record.state;
  auto time = record.times.find(JobStateName(state));
  BrokerMessage m =
      protocol::MakeStatusMessage(record.id, state, time == record.times.end() ? 0 : time->second);
  m.code = record.code;
  m.message = record.message;
  auto live = jobs_.find(record.id);
  if (live != jobs_.end() && live->second.batch > 0 && state != JobState::kQueued) m.batch = live->second.batch;
  if (state == JobState::kQueued && live != jobs_.end()) {
    m.position = PositionOf(live->second);
    if (LiveWorkersFor(record.model) == 0) {
      m.message = "no worker serves model \"" + Shorten(record.model) +
                  "\" at the moment; the job waits for one";
    }
  }
  if (record.result_chunks > 0) {
    m.count = record.result_chunks;
    m.total_bytes = record.result_bytes;
    if (clock_->NowMs() >= m.time_ms + params_.result_ttl_ms) {
      m.state = JobState::kExpired;
      m.time_ms += params_.result_ttl_ms;
      m.message =
          "the result was kept " + FormatSeconds(params_.result_ttl_ms) + " and has expired";
    }
  }
  return m;
}

void BrokerCore::ReplyError(const std::string& peer, const Status& status,
                            const BrokerMessage& request) {
  outbox_->ToClient(peer, protocol::MakeErrorMessage(status, request.job, request.ref));
}

// ---------------------------------------------------------------------------------------
// Workers.

void BrokerCore::OnWorkerMessage(const std::string& peer, std::string_view bytes) {
  auto m = protocol::DecodeBrokerMessage(bytes);
  if (!m.ok()) {
    LogLine("garbage from a worker: " + m.status().ToString());
    outbox_->ToWorker(peer, protocol::MakeErrorMessage(m.status()));
    return;
  }
  if (m->type == BrokerMessageType::kReady) return Ready(peer, *m);
  auto it = workers_.find(peer);
  if (m->type == BrokerMessageType::kDisconnect) {
    if (it != workers_.end()) RemoveWorker(peer, /*died=*/false);
    return;
  }
  if (it == workers_.end()) {
    BrokerMessage bye = Simple(BrokerMessageType::kDisconnect);
    bye.reason = "unknown worker: send ready first";
    outbox_->ToWorker(peer, bye);
    return;
  }
  it->second.last_seen_ms = clock_->NowMs();
  it->second.reachable = true;
  HandleWorker(it->second, *m);
}

void BrokerCore::HandleWorker(Worker& worker, const BrokerMessage& m) {
  if (m.type == BrokerMessageType::kHeartbeat) return;
  if (m.type == BrokerMessageType::kJobResult) return JobResult(worker, m);
  if (m.type == BrokerMessageType::kRunning) return Running(worker, m);
  if (m.type == BrokerMessageType::kTokens ||
      (m.type == BrokerMessageType::kError && tokenizes_.count(m.ref) > 0)) {
    return AnswerTokenize(worker, m);
  }
  if (m.type == BrokerMessageType::kError) {
    LogLine("worker of " + worker.model + " reports: " + m.code + ": " + m.message);
    return;
  }
  outbox_->ToWorker(worker.peer, protocol::MakeErrorMessage(InvalidArgument(
                                     std::string("a worker may not send a \"") +
                                     protocol::BrokerMessageTypeName(m.type) + "\" message")));
}

// The worker runs its job batched with others: its owner sees how many share the pass.
// A pass holds at most one job per connection (batch slot) of the worker's process; a count
// beyond that (or below 2) is refused to the worker and shown to no one. (Not the busy ones:
// a job of the pass may have finished on its own connection before this report arrives.)
void BrokerCore::Running(const Worker& worker, const BrokerMessage& m) {
  auto it = jobs_.find(m.job);
  if (!worker.busy || worker.job != m.job || it == jobs_.end() || it->second.finishing) return;
  int64_t slots = 1;
  if (!worker.group.empty()) {
    slots = 0;
    for (const auto& [peer, w] : workers_) slots += w.group == worker.group;
  }
  if (m.batch < 2 || m.batch > slots) {
    outbox_->ToWorker(worker.peer, protocol::MakeErrorMessage(InvalidArgument(
                                       "a pass of " + std::to_string(m.batch) + " jobs: this worker process has " +
                                       std::to_string(slots) + " batch slots; not shown")));
    return;
  }
  it->second.batch = m.batch;
  Push(it->second, StatusOf(it->second.record));
}

void BrokerCore::Ready(const std::string& peer, const BrokerMessage& m) {
  const int64_t now = clock_->NowMs();
  auto known = workers_.find(peer);
  if (known != workers_.end() && !m.job.empty() && known->second.job == m.job) {
    known->second.last_seen_ms = now;  // reconnected mid-job: it keeps its job
    known->second.reachable = true;
    known->second.result_chunk_ms = 0;
    auto job = jobs_.find(m.job);  // and sends its result again from the first chunk
    if (job != jobs_.end() && !job->second.finishing) {
      job->second.chunks.clear();
      job->second.received_bytes = 0;
    }
    return;
  }
  if (known != workers_.end()) RemoveWorker(peer, /*died=*/false);
  const std::string refusal = RegistrationRefusal(m.model);
  if (!refusal.empty()) {
    LogLine("refused a worker of \"" + Shorten(m.model) + "\": " + refusal);
    BrokerMessage bye = Simple(BrokerMessageType::kDisconnect);
    bye.reason = refusal;
    outbox_->ToWorker(peer, bye);
    return;
  }
  Worker& w = workers_[peer];
  w.peer = peer;
  w.model = m.model;
  w.group = m.group.substr(0, 64);
  w.heartbeat_ms = m.heartbeat_ms > 0 ? m.heartbeat_ms : params_.heartbeat_interval_ms;
  w.last_seen_ms = now;
  w.next_heartbeat_ms = now + w.heartbeat_ms;
  catalogues_[m.model] = m.catalogue;
  LogLine("worker ready for model \"" + Shorten(m.model) + "\" (" +
          std::to_string(LiveWorkersFor(m.model)) + " now)");
  if (!m.job.empty()) AdoptBusyJob(w, m.job);
  Dispatch(m.model);
}

// A worker that reconnected mid-job: if the broker has that job queued again, the worker
// keeps it; otherwise the worker is busy until it reports, and its result is dropped.
void BrokerCore::AdoptBusyJob(Worker& worker, const std::string& job_id) {
  worker.busy = true;
  worker.job.clear();
  auto it = jobs_.find(job_id);
  if (it == jobs_.end() || it->second.finishing || it->second.record.state != JobState::kQueued) {
    return;
  }
  LiveJob& job = it->second;
  Unqueue(job);
  job.record.state = JobState::kRunning;
  StatusOr<std::string> request = store_->MarkRunning(job.record, clock_->NowMs());
  if (!request.ok()) {
    Enqueue(job, /*front=*/true);
    return;
  }
  worker.job = job_id;
  job.worker = worker.peer;
  job.started_ms = clock_->NowMs();
  ++running_by_owner_[job.record.owner];
  Push(job, StatusOf(job.record));
}

void BrokerCore::JobResult(Worker& worker, const BrokerMessage& m) {
  const bool last = m.index + 1 >= m.count;
  auto it = jobs_.find(m.job);
  const bool ours = worker.busy && worker.job == m.job && it != jobs_.end() &&
                    it->second.worker == worker.peer && !it->second.finishing;
  if (!ours) {  // cancelled, timed out, or a job the broker gave up on: drop the data
    if (worker.busy && (worker.job == m.job || worker.job.empty())) {
      worker.result_chunk_ms = clock_->NowMs();
      if (last) ReleaseWorker(worker);
    }
    return;
  }
  LiveJob& job = it->second;
  worker.result_chunk_ms = clock_->NowMs();
  if (m.index != static_cast<int64_t>(job.chunks.size()) || m.count < 1 || m.index >= m.count) {
    // Chunks were lost on the way: the result cannot be whole. The worker stays busy until
    // its last chunk (dropped) or until its result stalls (CheckWorkers).
    const std::string why = "the worker's result arrived incomplete (chunk " +
                            std::to_string(m.index) + " of " + std::to_string(m.count) +
                            " after " + std::to_string(job.chunks.size()) + " chunks)";
    outbox_->ToWorker(worker.peer, protocol::MakeErrorMessage(InvalidArgument(why)));
    job.chunks.clear();
    FinishJob(job, JobState::kError, "INTERNAL", why + "; submit it again");
    if (last) ReleaseWorker(worker);
    return;
  }
  job.received_bytes += static_cast<int64_t>(m.payload.size());
  if (job.received_bytes > params_.max_result_bytes) {
    job.chunks.clear();  // the worker stays busy until its last chunk, which is dropped
    FinishJob(job, JobState::kError, "RESOURCE_EXHAUSTED",
              "the result is over the service's limit of " +
                  std::to_string(params_.max_result_bytes) + " bytes; save less");
    return;
  }
  job.chunks.push_back(m.payload);
  if (!last) return;
  worker.busy = false;
  worker.job.clear();
  worker.result_chunk_ms = 0;
  job.compute_ms = clock_->NowMs() - job.started_ms;
  job.record.result_bytes = job.received_bytes;
  job.record.result_chunks = static_cast<int64_t>(job.chunks.size());
  FinishJob(job, m.code.empty() ? JobState::kCompleted : JobState::kError, m.code, m.message);
  Dispatch(worker.model);
}

// The worker is done with whatever it ran: it takes the next job.
void BrokerCore::ReleaseWorker(Worker& worker) {
  worker.busy = false;
  worker.job.clear();
  worker.result_chunk_ms = 0;
  Dispatch(worker.model);
}

void BrokerCore::OnWorkerUnreachable(const std::string& peer) {
  auto it = workers_.find(peer);
  if (it == workers_.end()) return;
  Worker& worker = it->second;
  worker.reachable = false;
  if (worker.busy && !worker.job.empty()) return;  // CheckWorkers decides by its heartbeats
  LogLine("worker of \"" + Shorten(worker.model) + "\" unreachable, no job on it: forgotten");
  RemoveWorker(peer, /*died=*/false);
}

void BrokerCore::RemoveWorker(const std::string& peer, bool died) {
  auto it = workers_.find(peer);
  if (it == workers_.end()) return;
  const std::string job = it->second.busy ? it->second.job : std::string();
  workers_.erase(it);
  if (!job.empty()) WorkerLost(job, died);
}

// The job's worker is gone: run it again elsewhere, or fail it after too many deaths.
void BrokerCore::WorkerLost(const std::string& job_id, bool died) {
  auto it = jobs_.find(job_id);
  if (it == jobs_.end() || it->second.finishing) return;
  LiveJob& job = it->second;
  --running_by_owner_[job.record.owner];
  job.worker.clear();
  job.chunks.clear();
  job.received_bytes = 0;
  job.record.state = JobState::kQueued;
  if (died) ++job.record.attempts;
  if (job.record.attempts >= params_.max_attempts) {  // poison: never offered again
    LogLine("job " + job_id + " killed " + std::to_string(job.record.attempts) +
            " workers: marked as poison");
    FinishJob(job, JobState::kError, "INTERNAL",
              "job " + job_id + " killed the worker running it " +
                  std::to_string(job.record.attempts) +
                  " times; it is marked as poison and not run again (report it: it may crash "
                  "every worker)");
    return;
  }
  Status stored = store_->Requeue(job.record, clock_->NowMs());
  if (!stored.ok()) LogLine("requeue not stored (recovery will redo it): " + stored.ToString());
  job.record.times["QUEUED"] = clock_->NowMs();
  Enqueue(job, /*front=*/true);
  BrokerMessage status = StatusOf(job.record);
  status.message = "its worker " + std::string(died ? "died" : "left") + "; queued again";
  Push(job, status);
  Dispatch(job.record.model);
}

// ---------------------------------------------------------------------------------------
// Queues and dispatch.

void BrokerCore::Enqueue(LiveJob& job, bool front) {
  ModelQueue& queue = queues_[job.record.model];
  std::deque<std::string>& ids = queue.by_owner[job.record.owner];
  if (ids.empty()) queue.turn.push_back(job.record.owner);
  if (front) {
    ids.push_front(job.record.id);
  } else {
    ids.push_back(job.record.id);
  }
  job.record.state = JobState::kQueued;
  ++queued_by_owner_[job.record.owner];
}

void BrokerCore::Unqueue(const LiveJob& job) {
  auto q = queues_.find(job.record.model);
  if (q == queues_.end()) return;
  auto owner = q->second.by_owner.find(job.record.owner);
  if (owner == q->second.by_owner.end()) return;
  auto& ids = owner->second;
  auto pos = std::find(ids.begin(), ids.end(), job.record.id);
  if (pos == ids.end()) return;
  ids.erase(pos);
  --queued_by_owner_[job.record.owner];
  if (ids.empty()) {
    q->second.turn.remove(job.record.owner);
    q->second.by_owner.erase(owner);
  }
}

// Jobs served before this one under round robin: k of its owner's own, and from each other
// owner up to k (k+1 if that owner's turn comes first).
int64_t BrokerCore::PositionOf(const LiveJob& job) const {
  auto q = queues_.find(job.record.model);
  if (q == queues_.end()) return 0;
  const auto& ids = q->second.by_owner.at(job.record.owner);
  const int64_t k = std::find(ids.begin(), ids.end(), job.record.id) - ids.begin();
  int64_t position = k;
  bool before = true;
  for (const std::string& owner : q->second.turn) {
    if (owner == job.record.owner) {
      before = false;
      continue;
    }
    const int64_t n = static_cast<int64_t>(q->second.by_owner.at(owner).size());
    position += std::min(n, before ? k + 1 : k);
  }
  return position;
}

void BrokerCore::DispatchAll() {
  for (auto& [model, queue] : queues_) {
    if (!queue.turn.empty()) Dispatch(model);
  }
}

void BrokerCore::Dispatch(const std::string& model) {
  auto q = queues_.find(model);
  if (q == queues_.end()) return;
  for (auto& [peer, worker] : workers_) {
    if (worker.busy || !worker.reachable || worker.model != model) continue;
    const std::string id = PickJob(q->second);
    if (id.empty()) return;
    LiveJob& job = jobs_[id];
    const Start started = StartJob(worker, job);
    if (started == Start::kRunning) continue;
    Enqueue(job, /*front=*/true);
    if (started == Start::kStoreDown) return;
  }
}

// The next job in turn whose owner is under its running limit ("" if none).
std::string BrokerCore::PickJob(ModelQueue& queue) {
  for (auto owner = queue.turn.begin(); owner != queue.turn.end(); ++owner) {
    auto limits = limits_by_owner_.find(*owner);
    const int64_t max_running = limits == limits_by_owner_.end()
                                    ? params_.default_limits.max_running
                                    : limits->second.max_running;
    if (running_by_owner_[*owner] >= max_running) continue;
    std::deque<std::string>& ids = queue.by_owner[*owner];
    std::string id = ids.front();
    ids.pop_front();
    --queued_by_owner_[*owner];
    const std::string served = *owner;
    queue.turn.erase(owner);
    if (ids.empty()) {
      queue.by_owner.erase(served);
    } else {
      queue.turn.push_back(served);
    }
    return id;
  }
  return "";
}

// kStoreDown: the store could not take the change; kUnreachable: the worker's connection is
// gone, so the job never reached it (not an attempt). Either way the caller queues the job
// again.
BrokerCore::Start BrokerCore::StartJob(Worker& worker, LiveJob& job) {
  const int64_t now = clock_->NowMs();
  job.record.state = JobState::kRunning;
  StatusOr<std::string> request = store_->MarkRunning(job.record, now);
  if (!request.ok() && request.status().code() == StatusCode::kUnavailable) {
    job.record.state = JobState::kQueued;
    return Start::kStoreDown;
  }
  const std::map<std::string, int64_t> times_before = job.record.times;
  job.record.times["RUNNING"] = now;
  job.worker = worker.peer;
  job.started_ms = now;
  ++running_by_owner_[job.record.owner];
  if (!request.ok()) {
    FinishJob(job, JobState::kError, StatusCodeName(request.status().code()),
              request.status().message());
    return Start::kRunning;
  }
  BrokerMessage run = Simple(BrokerMessageType::kJob);
  run.job = job.record.id;
  run.payload = std::move(*request);
  run.time_limit_ms = params_.time_limit_ms;
  if (job.record.attempts > 0) run.attempts = job.record.attempts;  // the worker runs it alone
  if (!outbox_->ToWorker(worker.peer, run)) {
    worker.reachable = false;
    --running_by_owner_[job.record.owner];
    job.worker.clear();
    job.record.state = JobState::kQueued;
    job.record.times = times_before;
    Status stored = store_->Requeue(job.record, now);
    if (!stored.ok()) LogLine("requeue not stored (recovery will redo it): " + stored.ToString());
    return Start::kUnreachable;
  }
  worker.busy = true;
  worker.job = job.record.id;
  job.batch = 0;  // until this worker says otherwise
  Push(job, StatusOf(job.record));
  return Start::kRunning;
}

// Why a new worker of `model` may not register (empty: it may): the broker holds at most
// max_workers workers and max_models catalogues. A catalogue no worker or queue needs any
// more makes room for a new model.
std::string BrokerCore::RegistrationRefusal(const std::string& model) {
  if (static_cast<int64_t>(workers_.size()) >= params_.max_workers) {
    return "the broker has " + std::to_string(workers_.size()) + " workers, its limit";
  }
  if (catalogues_.count(model) || static_cast<int64_t>(catalogues_.size()) < params_.max_models) {
    return {};
  }
  for (auto it = catalogues_.begin(); it != catalogues_.end(); ++it) {
    auto queue = queues_.find(it->first);
    if (LiveWorkersFor(it->first) == 0 &&
        (queue == queues_.end() || queue->second.by_owner.empty())) {
      catalogues_.erase(it);
      return {};
    }
  }
  return "the broker serves " + std::to_string(catalogues_.size()) + " models, its limit";
}

size_t BrokerCore::LiveWorkersFor(const std::string& model) const {
  size_t n = 0;
  for (const auto& [peer, w] : workers_) n += w.model == model;
  return n;
}

std::string BrokerCore::ServedModels() const {
  std::string out;
  for (const auto& [model, catalogue] : catalogues_) {
    if (LiveWorkersFor(model) == 0) continue;
    out += (out.empty() ? "\"" : ", \"") + Shorten(model) + "\"";
  }
  return out.empty() ? "none" : out;
}

// ---------------------------------------------------------------------------------------
// Ends.

JobRecord BrokerCore::FinishJob(LiveJob& job, JobState state, const std::string& code,
                                const std::string& message) {
  if (job.record.state == JobState::kRunning && !job.worker.empty()) {
    --running_by_owner_[job.record.owner];
    if (job.compute_ms == 0) job.compute_ms = clock_->NowMs() - job.started_ms;
  } else if (job.record.state == JobState::kQueued) {
    Unqueue(job);
  }
  job.record.state = state;
  job.record.code = code;
  job.record.message = message;
  job.record.times[JobStateName(state)] = clock_->NowMs();
  if (state == JobState::kError && job.chunks.empty()) {  // the broker's own error: fetchable
    protocol::ErrorReport report;
    report.code = code;
    report.message = message;
    job.chunks.push_back(protocol::EncodeErrorReport(report));
    job.record.result_chunks = 1;
    job.record.result_bytes = static_cast<int64_t>(job.chunks[0].size());
  }
  job.finishing = true;
  finishing_.push_back(job.record.id);
  JobRecord finished = job.record;
  FlushFinishing();  // may erase `job`
  return finished;
}

// Stores the ends of jobs in order; stops at the first failure (Redis down) and is retried
// by Tick, so a finished job is announced only once it is stored.
void BrokerCore::FlushFinishing() {
  while (!finishing_.empty()) {
    auto it = jobs_.find(finishing_.front());
    if (it == jobs_.end()) {
      finishing_.erase(finishing_.begin());
      continue;
    }
    LiveJob& job = it->second;
    const int64_t end_ms = job.record.times[JobStateName(job.record.state)];
    Status stored = store_->Finish(job.record, job.chunks, end_ms, job.compute_ms);
    if (!stored.ok()) {
      LogLine("job end not stored yet, will retry: " + stored.ToString());
      return;
    }
    JobRecord record = job.record;
    Push(job, StatusOf(record));
    CacheResult(record, std::move(job.chunks), end_ms);
    jobs_.erase(it);
    Remember(record);
    finishing_.erase(finishing_.begin());
  }
}

void BrokerCore::Push(LiveJob& job, BrokerMessage status) {
  if (!job.client.empty()) outbox_->ToClient(job.client, status);
}

void BrokerCore::CacheResult(const JobRecord& record, std::vector<std::string> chunks,
                             int64_t end_ms) {
  int64_t bytes = 0;
  for (const std::string& c : chunks) bytes += static_cast<int64_t>(c.size());
  if (bytes == 0 || bytes > params_.result_cache_bytes) return;
  while (result_cache_bytes_ + bytes > params_.result_cache_bytes && !result_cache_order_.empty()) {
    auto oldest = result_cache_.find(result_cache_order_.front());
    result_cache_bytes_ -= oldest->second.bytes;
    result_cache_.erase(oldest);
    result_cache_order_.pop_front();
  }
  result_cache_bytes_ += bytes;
  result_cache_order_.push_back(record.id);
  result_cache_[record.id] = CachedResult{std::move(chunks), bytes, end_ms + params_.result_ttl_ms};
}

StatusOr<std::optional<std::string>> BrokerCore::CachedChunk(const JobRecord& job, int64_t index) {
  auto it = result_cache_.find(job.id);
  if (it == result_cache_.end() || clock_->NowMs() >= it->second.expires_ms ||
      index >= static_cast<int64_t>(it->second.chunks.size())) {
    return std::optional<std::string>();
  }
  const std::string& chunk = it->second.chunks[index];
  CountBytesReturned(job.owner, static_cast<int64_t>(chunk.size()));
  return std::optional<std::string>(chunk);
}

// Adds to the owner's usage now, or (Redis down) when FlushBytesReturned next succeeds.
void BrokerCore::CountBytesReturned(const std::string& owner, int64_t bytes) {
  if (unsaved_bytes_returned_.empty() && store_->AddBytesReturned(owner, bytes).ok()) return;
  unsaved_bytes_returned_[owner] += bytes;
}

void BrokerCore::FlushBytesReturned() {
  while (!unsaved_bytes_returned_.empty()) {
    auto it = unsaved_bytes_returned_.begin();
    if (!store_->AddBytesReturned(it->first, it->second).ok()) return;
    unsaved_bytes_returned_.erase(it);
  }
}

void BrokerCore::Remember(const JobRecord& record) {
  if (recent_order_.size() >= kRecentJobs) {
    recent_.erase(recent_order_.front());
    recent_order_.pop_front();
  }
  recent_order_.push_back(record.id);
  recent_[record.id] = record;
}

}  // namespace glassbox::broker::internal
