// The Redis JobStore (hiredis, synchronous): one round trip per operation, each a MULTI/EXEC
// transaction or a Lua script so a broker killed mid-way leaves no half-written job (a
// result fetch, which writes only a usage count, is a plain read and then HINCRBY). Key
// layout (all under "gb:"):
//   job:<id>       hash   the JobRecord (times as t_<STATE>); expires after the record TTL
//   req:<id>       string the request bytes, while the job is unfinished
//   queue:<model>  zset   queued job ids by arrival (seq); models: set of queue names
//   running        set    job ids on workers
//   result:<id>    list   result chunks, expiring after the result TTL
//   ref:<owner>:<ref>     a submit's client request id -> job id (idempotent retries)
//   key:<sha256>   hash   an API key (id, name, limits, created, revoked); keyid:<id> -> sha256;
//   keys           set    key ids
//   usage:<key id> hash   jobs, compute_ms, bytes_returned, bytes_stored
#include <hiredis/hiredis.h>

#include <algorithm>
#include <cstdlib>

#include "broker/job_store_impl.h"

namespace glassbox::broker::internal {
namespace {

using Command = std::vector<std::string>;

struct Reply {
  enum class Kind { kNil, kString, kInt, kArray, kStatus, kError };
  Kind kind = Kind::kNil;
  std::string str;
  long long integer = 0;
  std::vector<Reply> elements;
};

Reply Convert(const redisReply* r) {
  Reply out;
  switch (r->type) {
    case REDIS_REPLY_STRING:
      out.kind = Reply::Kind::kString;
      break;
    case REDIS_REPLY_STATUS:
      out.kind = Reply::Kind::kStatus;
      break;
    case REDIS_REPLY_ERROR:
      out.kind = Reply::Kind::kError;
      break;
    case REDIS_REPLY_INTEGER:
      out.kind = Reply::Kind::kInt;
      break;
    case REDIS_REPLY_ARRAY:
      out.kind = Reply::Kind::kArray;
      break;
    default:
      out.kind = Reply::Kind::kNil;
      break;
  }
  if (r->str != nullptr) out.str.assign(r->str, r->len);
  out.integer = r->integer;
  for (size_t i = 0; i < r->elements; ++i) out.elements.push_back(Convert(r->element[i]));
  return out;
}

// Error replies that say Redis cannot serve right now but will (loading its data, a script
// or module busy, a failover, persistence failing): UNAVAILABLE, so the broker retries.
bool IsTransientError(const std::string& error) {
  for (const char* prefix : {"LOADING", "BUSY", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN",
                             "MISCONF", "NOREPLICAS", "READONLY", "NOMASTERLINK"}) {
    const size_t n = std::char_traits<char>::length(prefix);
    if (error.compare(0, n, prefix) == 0 && (error.size() == n || error[n] == ' ')) return true;
  }
  return false;
}

// One connection, re-opened on demand after a failure.
class RedisConnection {
 public:
  RedisConnection(std::string address, const RedisTimeouts& timeouts)
      : address_(std::move(address)), timeouts_(timeouts) {
    const size_t colon = address_.rfind(':');
    host_ = colon == std::string::npos ? address_ : address_.substr(0, colon);
    port_ = colon == std::string::npos ? 6379 : std::atoi(address_.c_str() + colon + 1);
  }
  ~RedisConnection() { Drop(); }

  // Sends the commands pipelined; returns their replies in order. An unreachable Redis, or
  // an error reply saying it cannot serve for now (IsTransientError), is UNAVAILABLE; any
  // other error reply is INTERNAL.
  StatusOr<std::vector<Reply>> Run(const std::vector<Command>& commands) {
    GLASSBOX_RETURN_IF_ERROR(Connect());
    for (const Command& c : commands) Append(c);
    std::vector<Reply> replies;
    for (size_t i = 0; i < commands.size(); ++i) {
      void* raw = nullptr;
      if (redisGetReply(ctx_, &raw) != REDIS_OK || raw == nullptr) return Lost();
      auto* reply = static_cast<redisReply*>(raw);
      replies.push_back(Convert(reply));
      freeReplyObject(reply);
    }
    return CheckReplies(std::move(replies));
  }

  // MULTI, the commands, EXEC: the commands' replies.
  StatusOr<std::vector<Reply>> Transaction(std::vector<Command> commands) {
    commands.insert(commands.begin(), Command{"MULTI"});
    commands.push_back({"EXEC"});
    GLASSBOX_ASSIGN_OR_RETURN(std::vector<Reply> replies, Run(commands));
    Reply& exec = replies.back();
    if (exec.kind != Reply::Kind::kArray) return Internal("redis transaction was aborted");
    return CheckReplies(std::move(exec.elements));
  }

 private:
  StatusOr<std::vector<Reply>> CheckReplies(std::vector<Reply> replies) const {
    for (const Reply& r : replies) {
      if (r.kind == Reply::Kind::kError && IsTransientError(r.str)) return Unavailable(Describe(r.str));
    }
    for (const Reply& r : replies) {
      if (r.kind == Reply::Kind::kError) return Internal("redis refused a command: " + r.str);
    }
    return replies;
  }

  Status Connect() {
    if (ctx_ != nullptr) return Status::Ok();
    if (std::chrono::steady_clock::now() < next_attempt_) {
      return Unavailable(Describe(last_error_));
    }
    ctx_ = redisConnectWithTimeout(host_.c_str(), port_,
                                   Timeval(std::min<int64_t>(timeouts_.timeout_ms, 500)));
    if (ctx_ == nullptr || ctx_->err) {
      last_error_ = ctx_ ? ctx_->errstr : "cannot allocate a connection";
      Drop();
      return Unavailable(Describe(last_error_));
    }
    redisSetTimeout(ctx_, Timeval(timeouts_.timeout_ms));
    ctx_->reader->maxbuf = 0;  // keep the read buffer between replies (result chunks: 1 MiB)
    return Status::Ok();
  }

  void Append(const Command& c) {
    std::vector<const char*> argv;
    std::vector<size_t> lens;
    for (const std::string& s : c) {
      argv.push_back(s.data());
      lens.push_back(s.size());
    }
    redisAppendCommandArgv(ctx_, static_cast<int>(c.size()), argv.data(), lens.data());
  }

  Status Lost() {
    last_error_ = ctx_->errstr[0] ? ctx_->errstr : "connection lost";
    Drop();
    return Unavailable(Describe(last_error_));
  }

  std::string Describe(const std::string& error) const {
    return "job store unavailable: redis at " + address_ + ": " + error;
  }

  // Closes the connection; the next attempt waits retry_ms from now (not from the last
  // attempt, which a blocked call may have left long behind).
  void Drop() {
    if (ctx_ != nullptr) redisFree(ctx_);
    ctx_ = nullptr;
    next_attempt_ = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeouts_.retry_ms);
  }

  static timeval Timeval(int64_t ms) {
    return timeval{static_cast<time_t>(ms / 1000), static_cast<suseconds_t>(ms % 1000 * 1000)};
  }

  std::string address_;
  RedisTimeouts timeouts_;
  std::string host_;
  int port_ = 6379;
  redisContext* ctx_ = nullptr;
  std::string last_error_ = "not connected";
  std::chrono::steady_clock::time_point next_attempt_{};
};

const char* kCreateJobScript = R"lua(
if ARGV[1] == '1' then
  local existing = redis.call('GET', KEYS[1])
  if existing then return existing end
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
end
redis.call('HSET', KEYS[2], unpack(ARGV, 8))
redis.call('SET', KEYS[3], ARGV[4])
redis.call('ZADD', KEYS[4], ARGV[5], ARGV[2])
redis.call('SADD', KEYS[6], ARGV[6])
redis.call('HINCRBY', KEYS[5], 'jobs', 1)
redis.call('HINCRBY', KEYS[5], 'bytes_stored', ARGV[7])
return ARGV[2]
)lua";


std::string JobKey(const std::string& id) { return "gb:job:" + id; }
std::string RequestKey(const std::string& id) { return "gb:req:" + id; }
std::string QueueKey(const std::string& model) { return "gb:queue:" + model; }
std::string ResultKey(const std::string& id) { return "gb:result:" + id; }
std::string UsageKey(const std::string& owner) { return "gb:usage:" + owner; }
const char* kModelsKey = "gb:models";
const char* kRunningKey = "gb:running";

int64_t ToInt(const std::string& s) { return std::strtoll(s.c_str(), nullptr, 10); }

std::map<std::string, std::string> HashOf(const Reply& r) {
  std::map<std::string, std::string> out;
  for (size_t i = 0; i + 1 < r.elements.size(); i += 2) {
    out[r.elements[i].str] = r.elements[i + 1].str;
  }
  return out;
}

// The record's fields as HSET arguments (times as t_<STATE>).
std::vector<std::string> RecordFields(const JobRecord& job) {
  std::vector<std::string> f = {"owner",         job.owner,
                                "model",         job.model,
                                "ref",           job.ref,
                                "state",         protocol::JobStateName(job.state),
                                "attempts",      std::to_string(job.attempts),
                                "request_bytes", std::to_string(job.request_bytes),
                                "result_bytes",  std::to_string(job.result_bytes),
                                "result_chunks", std::to_string(job.result_chunks),
                                "code",          job.code,
                                "message",       job.message,
                                "seq",           std::to_string(job.seq)};
  for (const auto& [state, ms] : job.times) {
    f.push_back("t_" + state);
    f.push_back(std::to_string(ms));
  }
  return f;
}

JobRecord RecordFromHash(const std::string& id, const std::map<std::string, std::string>& h) {
  auto get = [&](const char* k) {
    auto it = h.find(k);
    return it == h.end() ? std::string() : it->second;
  };
  JobRecord job;
  job.id = id;
  job.owner = get("owner");
  job.model = get("model");
  job.ref = get("ref");
  job.state = protocol::JobStateFromName(get("state")).value_or(JobState::kError);
  job.attempts = ToInt(get("attempts"));
  job.request_bytes = ToInt(get("request_bytes"));
  job.result_bytes = ToInt(get("result_bytes"));
  job.result_chunks = ToInt(get("result_chunks"));
  job.code = get("code");
  job.message = get("message");
  job.seq = ToInt(get("seq"));
  for (const auto& [k, v] : h) {
    if (k.rfind("t_", 0) == 0) job.times[k.substr(2)] = ToInt(v);
  }
  return job;
}

Command Cat(Command head, const std::vector<std::string>& tail) {
  head.insert(head.end(), tail.begin(), tail.end());
  return head;
}

class RedisJobStore : public JobStore {
 public:
  RedisJobStore(const std::string& address, const StoreTtls& ttls, const RedisTimeouts& timeouts)
      : redis_(address, timeouts), ttls_(ttls) {}

  Status PutApiKey(const std::string& key_hash, const ApiKeyRecord& k) override {
    return redis_
        .Transaction({{"HSET", "gb:key:" + key_hash, "id", k.id, "name", k.name, "max_queued",
                       std::to_string(k.limits.max_queued), "max_running",
                       std::to_string(k.limits.max_running), "max_request_bytes",
                       std::to_string(k.limits.max_request_bytes), "created_ms",
                       std::to_string(k.created_ms), "revoked", k.revoked ? "1" : "0"},
                      {"SET", "gb:keyid:" + k.id, key_hash},
                      {"SADD", "gb:keys", k.id}})
        .status();
  }

  StatusOr<std::optional<ApiKeyRecord>> FindApiKey(const std::string& key_hash) override {
    GLASSBOX_ASSIGN_OR_RETURN(auto replies, redis_.Run({{"HGETALL", "gb:key:" + key_hash}}));
    if (replies[0].elements.empty()) return std::optional<ApiKeyRecord>();
    return std::optional<ApiKeyRecord>(KeyFromHash(HashOf(replies[0])));
  }

  StatusOr<std::vector<ApiKeyRecord>> ListApiKeys() override {
    GLASSBOX_ASSIGN_OR_RETURN(auto ids, redis_.Run({{"SMEMBERS", "gb:keys"}}));
    std::vector<Command> gets;
    for (const Reply& id : ids[0].elements) gets.push_back({"GET", "gb:keyid:" + id.str});
    if (gets.empty()) return std::vector<ApiKeyRecord>();
    GLASSBOX_ASSIGN_OR_RETURN(auto hashes, redis_.Run(gets));
    std::vector<Command> hgets;
    for (const Reply& h : hashes) hgets.push_back({"HGETALL", "gb:key:" + h.str});
    GLASSBOX_ASSIGN_OR_RETURN(auto records, redis_.Run(hgets));
    std::vector<ApiKeyRecord> out;
    for (const Reply& r : records) {
      if (!r.elements.empty()) out.push_back(KeyFromHash(HashOf(r)));
    }
    std::sort(out.begin(), out.end(), [](const ApiKeyRecord& a, const ApiKeyRecord& b) {
      return a.created_ms < b.created_ms;
    });
    return out;
  }

  Status RevokeApiKey(const std::string& key_id) override {
    GLASSBOX_ASSIGN_OR_RETURN(auto hash, redis_.Run({{"GET", "gb:keyid:" + key_id}}));
    if (hash[0].kind != Reply::Kind::kString) return NotFound("no API key with id " + key_id);
    return redis_.Run({{"HSET", "gb:key:" + hash[0].str, "revoked", "1"}}).status();
  }

  StatusOr<KeyUsage> GetUsage(const std::string& key_id) override {
    GLASSBOX_ASSIGN_OR_RETURN(auto replies, redis_.Run({{"HGETALL", UsageKey(key_id)}}));
    auto h = HashOf(replies[0]);
    return KeyUsage{ToInt(h["jobs"]), ToInt(h["compute_ms"]), ToInt(h["bytes_returned"]),
                    ToInt(h["bytes_stored"])};
  }

  StatusOr<std::string> CreateJob(const JobRecord& job, const std::string& request) override {
    JobRecord stored = job;
    stored.state = JobState::kQueued;
    Command eval = {"EVAL",
                    kCreateJobScript,
                    "6",
                    "gb:ref:" + job.owner + ":" + job.ref,
                    JobKey(job.id),
                    RequestKey(job.id),
                    QueueKey(job.model),
                    UsageKey(job.owner),
                    kModelsKey,
                    job.ref.empty() ? "0" : "1",
                    job.id,
                    std::to_string(ttls_.ref_ms),
                    request,
                    std::to_string(job.seq),
                    job.model,
                    std::to_string(StoredBytes(job, request))};
    GLASSBOX_ASSIGN_OR_RETURN(auto replies, redis_.Run({Cat(eval, RecordFields(stored))}));
    return replies[0].str;
  }

  StatusOr<std::optional<JobRecord>> GetJob(const std::string& id) override {
    GLASSBOX_ASSIGN_OR_RETURN(auto replies, redis_.Run({{"HGETALL", JobKey(id)}}));
    if (replies[0].elements.empty()) return std::optional<JobRecord>();
    return std::optional<JobRecord>(RecordFromHash(id, HashOf(replies[0])));
  }

  StatusOr<std::string> MarkRunning(const JobRecord& job, int64_t now_ms) override {
    GLASSBOX_ASSIGN_OR_RETURN(
        auto replies,
        redis_.Transaction({{"HSET", JobKey(job.id), "state", "RUNNING", "t_RUNNING",
                             std::to_string(now_ms), "attempts", std::to_string(job.attempts)},
                            {"ZREM", QueueKey(job.model), job.id},
                            {"SADD", kRunningKey, job.id},
                            {"GET", RequestKey(job.id)}}));
    if (replies[3].kind != Reply::Kind::kString) {
      return DataLoss("the request of job " + job.id + " is missing from the job store");
    }
    return std::move(replies[3].str);
  }

  Status Requeue(const JobRecord& job, int64_t now_ms) override {
    return redis_
        .Transaction({{"HSET", JobKey(job.id), "state", "QUEUED", "t_QUEUED",
                       std::to_string(now_ms), "attempts", std::to_string(job.attempts)},
                      {"SREM", kRunningKey, job.id},
                      {"ZADD", QueueKey(job.model), std::to_string(job.seq), job.id},
                      {"SADD", kModelsKey, job.model}})
        .status();
  }

  Status Finish(const JobRecord& job, const std::vector<std::string>& chunks, int64_t now_ms,
                int64_t compute_ms) override {
    JobRecord done = job;
    done.times[protocol::JobStateName(job.state)] = now_ms;
    std::vector<Command> commands = {
        Cat({"HSET", JobKey(job.id)}, RecordFields(done)),
        {"PEXPIRE", JobKey(job.id), std::to_string(ttls_.record_ms)},
        {"DEL", RequestKey(job.id), ResultKey(job.id)},
        {"ZREM", QueueKey(job.model), job.id},
        {"SREM", kRunningKey, job.id},
        {"HINCRBY", UsageKey(job.owner), "compute_ms", std::to_string(compute_ms)}};
    if (!chunks.empty()) {
      commands.push_back(Cat({"RPUSH", ResultKey(job.id)}, chunks));
      commands.push_back({"PEXPIRE", ResultKey(job.id), std::to_string(ttls_.result_ms)});
    }
    return redis_.Transaction(std::move(commands)).status();
  }

  StatusOr<std::optional<std::string>> FetchResultChunk(const JobRecord& job,
                                                        int64_t index) override {
    // A plain LINDEX: through a Lua script (read and count in one step) the chunk was copied
    // into and out of Lua, and fetching ran at a fifth of the speed.
    GLASSBOX_ASSIGN_OR_RETURN(auto replies,
                              redis_.Run({{"LINDEX", ResultKey(job.id), std::to_string(index)}}));
    if (replies[0].kind != Reply::Kind::kString) return std::optional<std::string>();
    GLASSBOX_RETURN_IF_ERROR(AddBytesReturned(job.owner, static_cast<int64_t>(replies[0].str.size())));
    return std::optional<std::string>(std::move(replies[0].str));
  }

  Status AddBytesReturned(const std::string& owner, int64_t bytes) override {
    return redis_.Run({{"HINCRBY", UsageKey(owner), "bytes_returned", std::to_string(bytes)}}).status();
  }

  StatusOr<std::vector<JobRecord>> LoadUnfinished() override {
    GLASSBOX_ASSIGN_OR_RETURN(auto sets,
                              redis_.Run({{"SMEMBERS", kModelsKey}, {"SMEMBERS", kRunningKey}}));
    std::vector<Command> ranges;
    for (const Reply& model : sets[0].elements) {
      ranges.push_back({"ZRANGE", QueueKey(model.str), "0", "-1"});
    }
    std::vector<std::string> ids;
    if (!ranges.empty()) {
      GLASSBOX_ASSIGN_OR_RETURN(auto queues, redis_.Run(ranges));
      for (const Reply& q : queues) {
        for (const Reply& id : q.elements) ids.push_back(id.str);
      }
    }
    for (const Reply& id : sets[1].elements) ids.push_back(id.str);
    return LoadRecords(ids);
  }

 private:
  static ApiKeyRecord KeyFromHash(std::map<std::string, std::string> h) {
    ApiKeyRecord k;
    k.id = h["id"];
    k.name = h["name"];
    k.limits.max_queued = ToInt(h["max_queued"]);
    k.limits.max_running = ToInt(h["max_running"]);
    k.limits.max_request_bytes = ToInt(h["max_request_bytes"]);
    k.created_ms = ToInt(h["created_ms"]);
    k.revoked = h["revoked"] == "1";
    return k;
  }

  StatusOr<std::vector<JobRecord>> LoadRecords(const std::vector<std::string>& ids) {
    std::vector<JobRecord> out;
    if (ids.empty()) return out;
    std::vector<Command> gets;
    for (const std::string& id : ids) gets.push_back({"HGETALL", JobKey(id)});
    GLASSBOX_ASSIGN_OR_RETURN(auto records, redis_.Run(gets));
    for (size_t i = 0; i < ids.size(); ++i) {
      if (records[i].elements.empty()) continue;  // expired or half-deleted: nothing to resume
      JobRecord job = RecordFromHash(ids[i], HashOf(records[i]));
      if (!protocol::IsTerminal(job.state)) out.push_back(std::move(job));
    }
    std::sort(out.begin(), out.end(),
              [](const JobRecord& a, const JobRecord& b) { return a.seq < b.seq; });
    return out;
  }

  RedisConnection redis_;
  StoreTtls ttls_;
};

}  // namespace

std::unique_ptr<JobStore> NewRedisJobStore(const std::string& address, const StoreTtls& ttls,
                                           const RedisTimeouts& timeouts) {
  return std::make_unique<RedisJobStore>(address, ttls, timeouts);
}

}  // namespace glassbox::broker::internal
