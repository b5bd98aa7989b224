// The JobStore contract, checked on both implementations: the Redis one against a real
// redis-server, and the in-memory one the core's unit tests use, so the fake cannot drift
// from the real thing.
#include <catch2/catch.hpp>
#include <chrono>
#include <thread>

#include "broker/job_store_impl.h"
#include "tests/broker/processes.h"

namespace glassbox::broker::internal {
namespace {

class FixedClock : public Clock {
 public:
  int64_t NowMs() const override { return now; }
  int64_t now = 1'700'000'000'000;
};

JobRecord NewJob(const std::string& owner, const std::string& ref, int64_t seq) {
  JobRecord job;
  job.id = RandomHex(16);
  job.owner = owner;
  job.model = "m";
  job.ref = ref;
  job.state = JobState::kQueued;
  job.times = {{"RECEIVED", 5}, {"QUEUED", 5}};
  job.request_bytes = 3;
  job.seq = seq;
  return job;
}

void CheckContract(JobStore& store) {
  ApiKeyRecord key{"k1", "alice", {5, 2, 100}, 42, false};
  REQUIRE(store.PutApiKey(Sha256Hex("secret"), key).ok());
  auto found = store.FindApiKey(Sha256Hex("secret"));
  REQUIRE(found.ok());
  REQUIRE(found->has_value());
  CHECK((*found)->name == "alice");
  CHECK((*found)->limits.max_running == 2);
  CHECK(!store.FindApiKey(Sha256Hex("other"))->has_value());
  REQUIRE(store.RevokeApiKey("k1").ok());
  CHECK((*store.FindApiKey(Sha256Hex("secret")))->revoked);
  CHECK(store.RevokeApiKey("nope").code() == StatusCode::kNotFound);
  CHECK(store.ListApiKeys()->size() == 1);

  JobRecord first = NewJob("k1", "r1", 10);
  JobRecord second = NewJob("k1", "", 20);
  CHECK(*store.CreateJob(first, "abc") == first.id);
  CHECK(*store.CreateJob(NewJob("k1", "r1", 11), "xyz") == first.id);  // same ref: same job
  CHECK(*store.CreateJob(second, "def") == second.id);
  auto stored = store.GetJob(first.id);
  REQUIRE(stored->has_value());
  CHECK((*stored)->state == JobState::kQueued);
  CHECK((*stored)->times.at("RECEIVED") == 5);
  CHECK(!store.GetJob(RandomHex(16))->has_value());

  first.state = JobState::kRunning;
  CHECK(*store.MarkRunning(first, 7) == "abc");
  auto unfinished = store.LoadUnfinished();
  REQUIRE(unfinished->size() == 2);
  CHECK((*unfinished)[0].id == first.id);  // by arrival
  CHECK((*unfinished)[0].state == JobState::kRunning);
  first.attempts = 1;
  first.state = JobState::kQueued;
  REQUIRE(store.Requeue(first, 8).ok());
  CHECK((*store.GetJob(first.id))->attempts == 1);

  first.state = JobState::kCompleted;
  first.result_chunks = 2;
  first.result_bytes = 5;
  REQUIRE(store.Finish(first, {"hel", "lo"}, 9, 1500).ok());
  CHECK((*store.GetJob(first.id))->times.at("COMPLETED") == 9);
  CHECK(**store.FetchResultChunk(first, 1) == "lo");
  CHECK(!store.FetchResultChunk(first, 2)->has_value());
  CHECK(store.LoadUnfinished()->size() == 1);
  auto usage = store.GetUsage("k1");
  CHECK(usage->jobs == 2);
  CHECK(usage->compute_ms == 1500);
  CHECK(usage->bytes_returned == 2);
  // "abc" with ref "r1" (record and ref index) and model "m"; "def" with model "m"; the
  // retry with the same ref stored nothing.
  CHECK(usage->bytes_stored == (3 + 2 * 2 + 1) + (3 + 1));
}

TEST_CASE("JobStore contract: in memory", "[broker]") {
  FixedClock clock;
  auto store = NewMemoryJobStore(&clock, {});
  CheckContract(*store);
}

TEST_CASE("JobStore contract: Redis, and UNAVAILABLE while it is down", "[broker]") {
  testing::TempDir dir;
  testing::RedisServer redis(dir.path());
  // No pause before reconnecting (retry_ms 0): the call after Redis is back reconnects.
  auto store = NewRedisJobStore(redis.address(), {}, RedisTimeouts{2000, 0});
  CheckContract(*store);
  redis.Stop(SIGKILL);
  auto down = store->GetJob(RandomHex(16));
  CHECK(down.status().code() == StatusCode::kUnavailable);
  CHECK(down.status().message().rfind("job store unavailable: redis at " + redis.address(), 0) ==
        0);
  redis.Start();
  // Redis answers LOADING while it reads its append-only file: UNAVAILABLE until it is done,
  // then the store carries on by itself (polled; nothing outwaits a constant).
  auto keys = store->ListApiKeys();
  for (int i = 0; i < 2000 && !keys.ok() && keys.status().code() == StatusCode::kUnavailable; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
    keys = store->ListApiKeys();
  }
  INFO(keys.status().ToString());
  REQUIRE(keys.ok());
  CHECK(keys->size() == 1);  // appendonly: the key survived
}

}  // namespace
}  // namespace glassbox::broker::internal
