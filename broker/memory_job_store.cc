// The in-memory JobStore for unit tests: the same contract as the Redis one (broker/
// job_store_impl.h), with time-to-lives measured on the injected clock. Also RandomHex and
// Sha256Hex (libsodium), shared by both stores and the broker.
#include <sodium.h>

#include <algorithm>

#include "base/check.h"
#include "broker/job_store_impl.h"

namespace glassbox::broker::internal {
namespace {

class MemoryJobStore : public JobStore {
 public:
  MemoryJobStore(const Clock* clock, const StoreTtls& ttls) : clock_(clock), ttls_(ttls) {}

  Status PutApiKey(const std::string& key_hash, const ApiKeyRecord& record) override {
    keys_[key_hash] = record;
    return Status::Ok();
  }

  StatusOr<std::optional<ApiKeyRecord>> FindApiKey(const std::string& key_hash) override {
    auto it = keys_.find(key_hash);
    if (it == keys_.end()) return std::optional<ApiKeyRecord>();
    return std::optional<ApiKeyRecord>(it->second);
  }

  StatusOr<std::vector<ApiKeyRecord>> ListApiKeys() override {
    std::vector<ApiKeyRecord> out;
    for (const auto& [hash, record] : keys_) out.push_back(record);
    return out;
  }

  Status RevokeApiKey(const std::string& key_id) override {
    for (auto& [hash, record] : keys_) {
      if (record.id == key_id) {
        record.revoked = true;
        return Status::Ok();
      }
    }
    return NotFound("no API key with id " + key_id);
  }

  StatusOr<KeyUsage> GetUsage(const std::string& key_id) override { return usage_[key_id]; }

  StatusOr<std::string> CreateJob(const JobRecord& job, const std::string& request) override {
    const std::string ref_key = job.owner + ":" + job.ref;
    if (!job.ref.empty()) {
      auto it = refs_.find(ref_key);
      if (it != refs_.end() && it->second.expires_ms > clock_->NowMs()) return it->second.value;
    }
    JobRecord stored = job;
    stored.state = JobState::kQueued;
    jobs_[job.id] = {stored, request, {}, 0};
    if (!job.ref.empty()) refs_[ref_key] = {job.id, clock_->NowMs() + ttls_.ref_ms};
    ++usage_[job.owner].jobs;
    usage_[job.owner].bytes_stored += StoredBytes(job, request);
    return job.id;
  }

  StatusOr<std::optional<JobRecord>> GetJob(const std::string& id) override {
    Entry* entry = Find(id);
    if (entry == nullptr) return std::optional<JobRecord>();
    return std::optional<JobRecord>(entry->record);
  }

  StatusOr<std::string> MarkRunning(const JobRecord& job, int64_t now_ms) override {
    Entry* entry = Find(job.id);
    if (entry == nullptr) return NotFound("job " + job.id + " is not stored");
    entry->record = job;
    entry->record.state = JobState::kRunning;
    entry->record.times["RUNNING"] = now_ms;
    return entry->request;
  }

  Status Requeue(const JobRecord& job, int64_t now_ms) override {
    Entry* entry = Find(job.id);
    if (entry == nullptr) return NotFound("job " + job.id + " is not stored");
    entry->record = job;
    entry->record.state = JobState::kQueued;
    entry->record.times["QUEUED"] = now_ms;
    return Status::Ok();
  }

  Status Finish(const JobRecord& job, const std::vector<std::string>& chunks, int64_t now_ms,
                int64_t compute_ms) override {
    Entry* entry = Find(job.id);
    if (entry == nullptr) return NotFound("job " + job.id + " is not stored");
    entry->record = job;
    entry->record.times[protocol::JobStateName(job.state)] = now_ms;
    entry->request.clear();
    entry->chunks = chunks;
    entry->result_expires_ms = clock_->NowMs() + ttls_.result_ms;  // as Redis: from its own clock
    usage_[job.owner].compute_ms += compute_ms;
    return Status::Ok();
  }

  StatusOr<std::optional<std::string>> FetchResultChunk(const JobRecord& job,
                                                        int64_t index) override {
    Entry* entry = Find(job.id);
    if (entry == nullptr || clock_->NowMs() >= entry->result_expires_ms ||
        index >= static_cast<int64_t>(entry->chunks.size())) {
      return std::optional<std::string>();
    }
    usage_[job.owner].bytes_returned += entry->chunks[index].size();
    return std::optional<std::string>(entry->chunks[index]);
  }

  Status AddBytesReturned(const std::string& owner, int64_t bytes) override {
    usage_[owner].bytes_returned += bytes;
    return Status::Ok();
  }

  StatusOr<std::vector<JobRecord>> LoadUnfinished() override {
    std::vector<JobRecord> out;
    for (const auto& [id, entry] : jobs_) {
      if (!protocol::IsTerminal(entry.record.state)) out.push_back(entry.record);
    }
    std::sort(out.begin(), out.end(),
              [](const JobRecord& a, const JobRecord& b) { return a.seq < b.seq; });
    return out;
  }

 private:
  struct Entry {
    JobRecord record;
    std::string request;
    std::vector<std::string> chunks;
    int64_t result_expires_ms = 0;
  };
  struct Ref {
    std::string value;
    int64_t expires_ms = 0;
  };

  Entry* Find(const std::string& id) {
    auto it = jobs_.find(id);
    return it == jobs_.end() ? nullptr : &it->second;
  }

  const Clock* clock_;
  StoreTtls ttls_;
  std::map<std::string, ApiKeyRecord> keys_;
  std::map<std::string, KeyUsage> usage_;
  std::map<std::string, Entry> jobs_;
  std::map<std::string, Ref> refs_;
};

}  // namespace

std::unique_ptr<JobStore> NewMemoryJobStore(const Clock* clock, const StoreTtls& ttls) {
  return std::make_unique<MemoryJobStore>(clock, ttls);
}

namespace {
std::string ToHex(const unsigned char* data, size_t size) {
  static const char* kDigits = "0123456789abcdef";
  std::string out;
  out.reserve(2 * size);
  for (size_t i = 0; i < size; ++i) {
    out.push_back(kDigits[data[i] >> 4]);
    out.push_back(kDigits[data[i] & 15]);
  }
  return out;
}

void InitSodium() {
  static const int init = sodium_init();  // thread-safe, idempotent
  GLASSBOX_CHECK(init >= 0, "libsodium failed to initialise");
}
}  // namespace

std::string RandomHex(size_t bytes) {
  InitSodium();
  std::vector<unsigned char> buf(bytes);
  randombytes_buf(buf.data(), buf.size());
  return ToHex(buf.data(), buf.size());
}

std::string Sha256Hex(const std::string& data) {
  InitSodium();
  unsigned char digest[crypto_hash_sha256_BYTES];
  crypto_hash_sha256(digest, reinterpret_cast<const unsigned char*>(data.data()), data.size());
  return ToHex(digest, sizeof digest);
}

}  // namespace glassbox::broker::internal
