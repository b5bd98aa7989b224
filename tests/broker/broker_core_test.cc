// The broker's logic without sockets or Redis: BrokerCore driven with the in-memory
// JobStore, a fake clock and an outbox that records what it would send. Lifecycle, auth and
// owner isolation, limits, fair queues, dead workers and retries, time limits.
#include <catch2/catch.hpp>

#include <map>
#include <utility>

#include "broker/broker_core_impl.h"
#include "protocol/codec.h"

namespace glassbox::broker::internal {
namespace {

using protocol::BrokerMessage;
using protocol::BrokerMessageType;

class FakeClock : public Clock {
 public:
  int64_t NowMs() const override { return now; }
  int64_t now = 1'700'000'000'000;
};

struct Sent {
  bool to_worker;
  std::string peer;
  BrokerMessage message;
};

class RecordingOutbox : public Outbox {
 public:
  void ToClient(const std::string& peer, const BrokerMessage& m) override {
    sent.push_back({false, peer, m});
  }
  bool ToWorker(const std::string& peer, const BrokerMessage& m) override {
    sent.push_back({true, peer, m});
    return true;
  }
  // Removes and returns what was sent to `peer`.
  std::vector<BrokerMessage> Take(const std::string& peer) {
    std::vector<BrokerMessage> out;
    std::vector<Sent> rest;
    for (Sent& s : sent) {
      if (s.peer == peer) {
        out.push_back(std::move(s.message));
      } else {
        rest.push_back(std::move(s));
      }
    }
    sent = std::move(rest);
    return out;
  }
  std::vector<Sent> sent;
};

std::string Request(const std::string& model, const std::string& prompt = "x") {
  protocol::Request r;
  r.model = model;
  r.traces.emplace_back();
  r.traces[0].invokes.push_back({prompt, std::nullopt});
  return protocol::EncodeRequest(r);
}

// Chunk `index` of a `count`-chunk result of `job`, as a worker sends it.
BrokerMessage ResultChunk(const std::string& job, int64_t index, int64_t count,
                          std::string payload) {
  BrokerMessage m;
  m.type = BrokerMessageType::kJobResult;
  m.job = job;
  m.index = index;
  m.count = count;
  m.payload = std::move(payload);
  return m;
}

std::string ResultBytes() {
  protocol::Result result;
  result.saved.push_back({"n", 1, protocol::Value::Int(7)});
  return protocol::EncodeResult(result);
}

struct Harness {
  explicit Harness(BrokerParams p = {}) : params(p) {
    StoreTtls ttls;  // as RunBroker gives its store
    ttls.result_ms = params.result_ttl_ms;
    ttls.record_ms = params.record_ttl_ms;
    store = NewMemoryJobStore(&clock, ttls);
    core = std::make_unique<BrokerCore>(params, store.get(), &clock, &outbox);
    REQUIRE(core->Recover().ok());
  }

  std::string AddKey(const std::string& name, KeyLimits limits = {}) {
    const std::string secret = "gbk_" + name;
    REQUIRE(store->PutApiKey(Sha256Hex(secret), {"id_" + name, name, limits, 0, false}).ok());
    return secret;
  }

  void Client(const std::string& peer, BrokerMessage m) {
    core->OnClientMessage(peer, protocol::EncodeBrokerMessage(m));
  }
  void Worker(const std::string& peer, BrokerMessage m) {
    core->OnWorkerMessage(peer, protocol::EncodeBrokerMessage(m));
  }

  void Ready(const std::string& peer, const std::string& model = "m", const std::string& group = "") {
    BrokerMessage m;
    m.type = BrokerMessageType::kReady;
    m.model = model;
    m.group = group;
    m.catalogue = "{\"points\":[]}";
    m.heartbeat_ms = 100;
    Worker(peer, m);
  }

  // Submits and returns the reply (ack or error); pushed statuses stay in the outbox.
  BrokerMessage Submit(const std::string& peer, const std::string& key,
                       const std::string& model = "m", const std::string& ref = "") {
    BrokerMessage m;
    m.type = BrokerMessageType::kSubmit;
    m.api_key = key;
    m.ref = ref;
    m.payload = Request(model);
    Client(peer, m);
    for (auto it = outbox.sent.begin(); it != outbox.sent.end(); ++it) {
      if (it->peer == peer && (it->message.type == BrokerMessageType::kAck ||
                               it->message.type == BrokerMessageType::kError)) {
        BrokerMessage reply = it->message;
        outbox.sent.erase(it);  // pushed statuses stay
        return reply;
      }
    }
    FAIL("no reply to submit");
    return {};
  }

  BrokerMessage Ask(const std::string& peer, BrokerMessageType type, const std::string& key,
                    const std::string& job, int64_t index = -1) {
    BrokerMessage m;
    m.type = type;
    m.api_key = key;
    m.job = job;
    m.index = index;
    m.ref = "q";
    Client(peer, m);
    auto replies = outbox.Take(peer);
    for (auto& r : replies) {
      if (r.ref == "q") return r;
    }
    FAIL("no reply");
    return {};
  }

  // The job a worker was given (and clears the worker's messages).
  std::string JobFor(const std::string& worker, int64_t* attempts = nullptr) {
    for (const BrokerMessage& m : outbox.Take(worker)) {
      if (m.type != BrokerMessageType::kJob) continue;
      if (attempts != nullptr) *attempts = m.attempts;
      return m.job;
    }
    return "";
  }

  void Finish(const std::string& worker, const std::string& job,
              const std::string& bytes = ResultBytes(), const std::string& code = "") {
    BrokerMessage m;
    m.type = BrokerMessageType::kJobResult;
    m.job = job;
    m.index = 0;
    m.count = 1;
    m.payload = bytes;
    m.code = code;
    Worker(worker, m);
  }

  BrokerParams params;
  FakeClock clock;
  RecordingOutbox outbox;
  std::unique_ptr<JobStore> store;
  std::unique_ptr<BrokerCore> core;
};

std::vector<protocol::JobState> States(const std::vector<BrokerMessage>& messages) {
  std::vector<protocol::JobState> out;
  for (const BrokerMessage& m : messages) {
    if (m.type == BrokerMessageType::kStatus) out.push_back(*m.state);
  }
  return out;
}

using protocol::JobState;

TEST_CASE("Core: a job goes QUEUED, RUNNING, COMPLETED and its result is fetchable", "[broker]") {
  Harness h;
  const std::string key = h.AddKey("alice");
  h.Ready("w1");
  BrokerMessage ack = h.Submit("c1", key, "m", "ref-1");
  REQUIRE(ack.type == BrokerMessageType::kAck);
  CHECK(ack.ref == "ref-1");
  CHECK(ack.job.size() == 32);
  CHECK(h.JobFor("w1") == ack.job);
  h.Finish("w1", ack.job);
  CHECK(States(h.outbox.Take("c1")) ==
        std::vector<JobState>{JobState::kQueued, JobState::kRunning, JobState::kCompleted});
  BrokerMessage chunk = h.Ask("c1", BrokerMessageType::kFetch, key, ack.job, 0);
  REQUIRE(chunk.type == BrokerMessageType::kResultChunk);
  CHECK(chunk.payload == ResultBytes());
  CHECK(chunk.count == 1);
  BrokerMessage status = h.Ask("c2", BrokerMessageType::kQuery, key, ack.job);
  CHECK(status.state == JobState::kCompleted);
  auto usage = h.store->GetUsage("id_alice");
  CHECK(usage->jobs == 1);
  CHECK(usage->bytes_returned == static_cast<int64_t>(ResultBytes().size()));
}

TEST_CASE("Core: results the memory cache does not hold are read back from the store",
          "[broker]") {
  // A cache of one result's size: each new result pushes the previous one out; with the
  // cache off, every fetch reads the store. Either way each fetch is counted.
  for (int64_t cache_bytes : {static_cast<int64_t>(ResultBytes().size()), int64_t{0}}) {
    INFO("cache bytes " << cache_bytes);
    BrokerParams params;
    params.result_cache_bytes = cache_bytes;
    Harness h(params);
    const std::string key = h.AddKey("alice");
    h.Ready("w1");
    std::vector<std::string> jobs;
    for (const std::string& bytes : {ResultBytes(), ResultBytes() + "-second"}) {
      jobs.push_back(h.Submit("c1", key).job);
      h.Finish("w1", h.JobFor("w1"), bytes);
    }
    CHECK(h.Ask("c1", BrokerMessageType::kFetch, key, jobs[0], 0).payload == ResultBytes());
    CHECK(h.Ask("c1", BrokerMessageType::kFetch, key, jobs[1], 0).payload == ResultBytes() + "-second");
    CHECK(h.Ask("c1", BrokerMessageType::kFetch, key, jobs[1], 0).payload == ResultBytes() + "-second");
    CHECK(h.store->GetUsage("id_alice")->bytes_returned ==
          static_cast<int64_t>(3 * ResultBytes().size() + 2 * 7));
  }
}

TEST_CASE("Core: a retried submission with the same ref is the same job", "[broker]") {
  Harness h;
  const std::string key = h.AddKey("alice");
  h.Ready("w1");
  BrokerMessage first = h.Submit("c1", key, "m", "same");
  BrokerMessage again = h.Submit("c1", key, "m", "same");
  CHECK(again.job == first.job);
  CHECK(h.core->LiveJobs() == 1);
}

TEST_CASE("Core: a retried submission of a job stored unbeknown to the broker runs it",
          "[broker]") {
  Harness h;
  const std::string key = h.AddKey("alice");
  h.Ready("w1");
  // What a store call that timed out after Redis ran it leaves: the job stored and queued,
  // the client told UNAVAILABLE, the broker unaware of it.
  JobRecord stored;
  stored.id = RandomHex(16);
  stored.owner = "id_alice";
  stored.model = "m";
  stored.ref = "retried";
  stored.state = JobState::kQueued;
  stored.times = {{"RECEIVED", h.clock.now}, {"QUEUED", h.clock.now}};
  stored.seq = 1;
  REQUIRE(h.store->CreateJob(stored, Request("m")).ok());
  BrokerMessage ack = h.Submit("c1", key, "m", "retried");
  CHECK(ack.job == stored.id);
  CHECK(h.JobFor("w1") == stored.id);
  h.Finish("w1", stored.id);
  CHECK(h.Ask("c1", BrokerMessageType::kQuery, key, stored.id).state == JobState::kCompleted);
}

TEST_CASE("Core: API keys are required and checked", "[broker]") {
  Harness h;
  h.AddKey("alice");
  h.Ready("w1");
  BrokerMessage none = h.Submit("c1", "");
  CHECK(none.code == "UNAUTHENTICATED");
  BrokerMessage wrong = h.Submit("c1", "gbk_mallory");
  CHECK(wrong.code == "UNAUTHENTICATED");
  CHECK(wrong.message == "API key not recognised (unknown or revoked)");
  REQUIRE(h.store->RevokeApiKey("id_alice").ok());
  h.clock.now += 2000;  // past the key cache
  CHECK(h.Submit("c1", "gbk_alice").code == "UNAUTHENTICATED");
}

TEST_CASE("Core: another user's job id is indistinguishable from a missing one", "[broker]") {
  Harness h;
  const std::string alice = h.AddKey("alice");
  const std::string bob = h.AddKey("bob");
  h.Ready("w1");
  const std::string job = h.Submit("c1", alice).job;
  const std::string missing(32, 'a');
  for (auto type : {BrokerMessageType::kQuery, BrokerMessageType::kCancel}) {
    BrokerMessage theirs = h.Ask("c2", type, bob, job);
    BrokerMessage nothing = h.Ask("c2", type, bob, missing);
    CHECK(theirs.code == "NOT_FOUND");
    CHECK(theirs.message == "no job " + job);
    CHECK(nothing.message == "no job " + missing);
  }
  h.Finish("w1", h.JobFor("w1"));
  CHECK(h.Ask("c2", BrokerMessageType::kFetch, bob, job, 0).code == "NOT_FOUND");
  CHECK(h.Ask("c1", BrokerMessageType::kFetch, alice, job, 0).type ==
        BrokerMessageType::kResultChunk);
}

TEST_CASE("Core: users take turns in a model's queue", "[broker]") {
  Harness h;
  const std::string alice = h.AddKey("alice");
  const std::string bob = h.AddKey("bob");
  h.Ready("w1");
  const std::string first = h.Submit("ca", alice).job;  // runs at once
  std::vector<std::string> alice_jobs;
  for (int i = 0; i < 5; ++i) alice_jobs.push_back(h.Submit("ca", alice).job);
  const std::string bob_job = h.Submit("cb", bob).job;
  BrokerMessage bob_status = h.Ask("cb", BrokerMessageType::kQuery, bob, bob_job);
  CHECK(bob_status.position == 1);  // behind one of alice's, not five
  CHECK(h.JobFor("w1") == first);
  h.Finish("w1", first);
  CHECK(h.JobFor("w1") == alice_jobs[0]);
  h.Finish("w1", alice_jobs[0]);
  CHECK(h.JobFor("w1") == bob_job);
  h.Finish("w1", bob_job);
  CHECK(h.JobFor("w1") == alice_jobs[1]);
}

TEST_CASE("Core: per-key limits on queued jobs, running jobs and request size", "[broker]") {
  Harness h;
  KeyLimits limits;
  limits.max_queued = 2;
  limits.max_running = 1;
  limits.max_request_bytes = 1000;
  const std::string key = h.AddKey("alice", limits);
  h.Ready("w1");
  h.Ready("w2");
  h.Submit("c", key);                       // runs on w1
  h.Submit("c", key);                       // queued: w2 idle but max_running is 1
  h.Submit("c", key);                       // queued
  BrokerMessage over = h.Submit("c", key);  // third queued: refused
  CHECK(over.code == "RESOURCE_EXHAUSTED");
  CHECK(over.message ==
        "this API key already has 2 jobs queued, its limit; wait for some to finish");
  CHECK(h.JobFor("w2").empty());
  BrokerMessage big;
  big.type = BrokerMessageType::kSubmit;
  big.api_key = key;
  big.ref = "big";
  big.payload = Request("m", std::string(2000, 'x'));
  h.Client("c", big);
  auto replies = h.outbox.Take("c");
  REQUIRE(!replies.empty());
  CHECK(replies.back().code == "RESOURCE_EXHAUSTED");
  CHECK(replies.back().message.find("over this API key's limit of 1000 bytes") !=
        std::string::npos);
}

TEST_CASE("Core: a model nobody serves is refused, naming the served ones", "[broker]") {
  Harness h;
  const std::string key = h.AddKey("alice");
  h.Ready("w1", "smollm2");
  BrokerMessage reply = h.Submit("c", key, "gpt-9");
  CHECK(reply.code == "NOT_FOUND");
  CHECK(reply.message == "no worker serves model \"gpt-9\" (served now: \"smollm2\")");
  BrokerMessage list;
  list.type = BrokerMessageType::kListModels;
  list.api_key = key;
  h.Client("c", list);
  auto models = h.outbox.Take("c");
  REQUIRE(models.size() == 1);
  REQUIRE(models[0].models.size() == 1);
  CHECK(models[0].models[0].name == "smollm2");
  CHECK(models[0].models[0].catalogue_json == "{\"points\":[]}");
}

// The reason of the DISCONNECT sent to `peer`, or "" if none was.
std::string DisconnectReason(Harness& h, const std::string& peer) {
  for (const BrokerMessage& m : h.outbox.Take(peer)) {
    if (m.type == BrokerMessageType::kDisconnect) return m.reason;
  }
  return "";
}

std::vector<std::string> ListedModels(Harness& h, const std::string& key) {
  BrokerMessage list;
  list.type = BrokerMessageType::kListModels;
  list.api_key = key;
  h.Client("c", list);
  std::vector<std::string> names;
  for (const BrokerMessage& m : h.outbox.Take("c")) {
    for (const auto& model : m.models) names.push_back(model.name);
  }
  return names;
}

TEST_CASE("Core: registrations cannot grow the broker: workers and models are bounded",
          "[broker]") {
  BrokerParams p;
  p.max_workers = 3;
  p.max_models = 2;
  Harness h(p);
  const std::string key = h.AddKey("alice");
  h.Ready("w1", "a");
  h.Ready("w2", "b");
  CHECK(DisconnectReason(h, "w1").empty());
  CHECK(DisconnectReason(h, "w3").empty());
  h.Ready("w3", "c");
  CHECK(DisconnectReason(h, "w3") == "the broker serves 2 models, its limit");
  // One peer registering again and again under new names: the catalogue of a model nobody
  // serves or waits for makes room; the broker never remembers more than two.
  for (int i = 0; i < 100; ++i) h.Ready("w2", "fake" + std::to_string(i));
  CHECK(DisconnectReason(h, "w2").empty());
  CHECK(ListedModels(h, key) == std::vector<std::string>{"a", "fake99"});
  h.Ready("w3", "a");
  CHECK(DisconnectReason(h, "w3").empty());
  h.Ready("w4", "a");
  CHECK(DisconnectReason(h, "w4") == "the broker has 3 workers, its limit");
  // A refused worker got no job: w1 and w3 serve "a".
  BrokerMessage ack = h.Submit("c", key, "a");
  REQUIRE(ack.type == BrokerMessageType::kAck);
  CHECK(h.JobFor("w4").empty());
}

BrokerMessage TokenizeMessage(const std::string& ref, const std::string& model) {
  BrokerMessage m;
  m.type = BrokerMessageType::kTokenize;
  m.ref = ref;
  m.model = model;
  m.text = "Hello";
  return m;
}

// The one message of `type` the core sent to `peer` (removed from the outbox).
BrokerMessage TakeOnly(Harness& h, const std::string& peer, BrokerMessageType type) {
  std::vector<BrokerMessage> out;
  for (BrokerMessage& m : h.outbox.Take(peer)) {
    if (m.type == type) out.push_back(std::move(m));
  }
  REQUIRE(out.size() == 1);
  return out[0];
}

TEST_CASE("Core: tokenize goes straight to a worker, busy or not, and its answer back",
          "[broker]") {
  BrokerParams params;
  params.dev_no_auth = true;
  Harness h(params);
  h.Ready("w1");
  const std::string job = h.Submit("c", "").job;
  REQUIRE(h.JobFor("w1") == job);  // w1 is busy with it, the only worker
  h.Submit("c", "");               // and another job waits in the queue
  h.Client("c", TokenizeMessage("mine", "m"));
  BrokerMessage asked = TakeOnly(h, "w1", BrokerMessageType::kTokenize);
  CHECK(asked.text == "Hello");
  CHECK(asked.model == "m");
  CHECK(!asked.ref.empty());
  BrokerMessage answer;
  answer.type = BrokerMessageType::kTokens;
  answer.ref = asked.ref;
  answer.payload = protocol::EncodeTokenIds({15496, 7});
  h.Worker("w1", answer);
  BrokerMessage got = TakeOnly(h, "c", BrokerMessageType::kTokens);
  CHECK(got.ref == "mine");
  CHECK(*protocol::DecodeTokenIds(got.payload) == std::vector<int64_t>{15496, 7});
  // A worker's error goes back the same way, under the client's ref.
  h.Client("c", TokenizeMessage("second", "m"));
  asked = TakeOnly(h, "w1", BrokerMessageType::kTokenize);
  h.Worker("w1", protocol::MakeErrorMessage(InvalidArgument("too long"), "", asked.ref));
  got = TakeOnly(h, "c", BrokerMessageType::kError);
  CHECK(got.ref == "second");
  CHECK(got.message == "too long");
}

TEST_CASE("Core: an idle worker of the model is asked first", "[broker]") {
  BrokerParams params;
  params.dev_no_auth = true;
  Harness h(params);
  h.Ready("w1");
  h.Submit("c", "");  // w1 busy
  h.Ready("w2");
  h.Client("c", TokenizeMessage("t", "m"));
  TakeOnly(h, "w2", BrokerMessageType::kTokenize);
}

TEST_CASE("Core: a tokenize without an answer fails UNAVAILABLE, an unknown model NOT_FOUND",
          "[broker]") {
  BrokerParams params;
  params.dev_no_auth = true;
  params.tokenize_timeout_ms = 3000;
  Harness h(params);
  h.Ready("w1");
  h.Client("c", TokenizeMessage("late", "m"));
  TakeOnly(h, "w1", BrokerMessageType::kTokenize);
  h.clock.now += 2999;
  h.Worker("w1", BrokerMessage{});  // a heartbeat keeps it alive
  h.core->Tick();
  CHECK(h.outbox.Take("c").empty());
  h.clock.now += 1;
  h.core->Tick();
  BrokerMessage timed_out = TakeOnly(h, "c", BrokerMessageType::kError);
  CHECK(timed_out.ref == "late");
  CHECK(timed_out.code == "UNAVAILABLE");
  CHECK(timed_out.message == "the worker did not tokenize the text within 3 s; try again");
  // Its worker gone before answering.
  h.Client("c", TokenizeMessage("orphan", "m"));
  TakeOnly(h, "w1", BrokerMessageType::kTokenize);
  BrokerMessage bye;
  bye.type = BrokerMessageType::kDisconnect;
  h.Worker("w1", bye);
  h.core->Tick();
  BrokerMessage orphaned = TakeOnly(h, "c", BrokerMessageType::kError);
  CHECK(orphaned.ref == "orphan");
  CHECK(orphaned.code == "UNAVAILABLE");
  // No worker now, but the model was served: UNAVAILABLE; never served: NOT_FOUND.
  h.Client("c", TokenizeMessage("none", "m"));
  CHECK(TakeOnly(h, "c", BrokerMessageType::kError).code == "UNAVAILABLE");
  h.Client("c", TokenizeMessage("typo", "gpt-9"));
  BrokerMessage typo = TakeOnly(h, "c", BrokerMessageType::kError);
  CHECK(typo.code == "NOT_FOUND");
  CHECK(typo.message == "no worker serves model \"gpt-9\" (served now: none)");
}

TEST_CASE("Core: a silent worker's job runs again, up to the retry limit", "[broker]") {
  BrokerParams params;
  params.max_attempts = 2;
  params.dev_no_auth = true;
  Harness h(params);
  h.Ready("w1");
  const std::string job = h.Submit("c", "").job;
  int64_t attempts = 0;
  CHECK(h.JobFor("w1", &attempts) == job);
  CHECK(attempts == -1);  // a first run: no attempts key
  h.clock.now += 100 * 5 + 1;  // heartbeat 100 ms, liveness 5
  h.core->Tick();
  CHECK(h.core->Workers() == 0);
  CHECK(h.Ask("c", BrokerMessageType::kQuery, "", job).state == JobState::kQueued);
  h.Ready("w2");
  CHECK(h.JobFor("w2", &attempts) == job);
  CHECK(attempts == 1);  // the worker is told, and a batching worker runs it alone
  h.clock.now += 501;
  h.core->Tick();
  BrokerMessage status = h.Ask("c", BrokerMessageType::kQuery, "", job);
  CHECK(status.state == JobState::kError);
  CHECK(status.message.find("job " + job + " killed the worker running it 2 times") == 0);
  BrokerMessage report = h.Ask("c", BrokerMessageType::kFetch, "", job, 0);
  CHECK(protocol::DecodeErrorReport(report.payload)->code == "INTERNAL");
}

TEST_CASE("Core: a worker's batch count reaches the job's owner only if its process could run it",
          "[broker]") {
  BrokerParams params;
  params.dev_no_auth = true;
  Harness h(params);
  // One worker process with three connections (batch slots), and a process of its own.
  for (const std::string peer : {"g1", "g2", "g3"}) h.Ready(peer, "m", "proc-a");
  h.Ready("solo");
  std::vector<std::string> jobs;
  for (int j = 0; j < 4; ++j) jobs.push_back(h.Submit("c", "").job);
  std::map<std::string, std::string> job_of;
  for (const std::string peer : {"g1", "g2", "g3", "solo"}) job_of[peer] = h.JobFor(peer);
  h.outbox.Take("c");
  auto report = [&h, &job_of](const std::string& peer, int64_t batch) {
    BrokerMessage m;
    m.type = BrokerMessageType::kRunning;
    m.job = job_of[peer];
    m.batch = batch;
    h.Worker(peer, m);
    std::vector<BrokerMessage> to_worker = h.outbox.Take(peer);
    std::vector<BrokerMessage> to_client = h.outbox.Take("c");
    return std::make_pair(to_worker, to_client);
  };
  // Three connections of proc-a: a pass of 3 is shown to the job's owner, also after one
  // of the pass's jobs finished on its own connection.
  h.Finish("g3", job_of["g3"]);
  h.outbox.Take("g3");
  h.outbox.Take("c");
  auto [worker_heard, owner_heard] = report("g1", 3);
  CHECK(worker_heard.empty());
  REQUIRE(owner_heard.size() == 1);
  CHECK(owner_heard[0].batch == 3);
  CHECK(h.Ask("c", BrokerMessageType::kQuery, "", job_of["g1"]).batch == 3);
  // More than its connections, fewer than two, or any pass on a process of its own:
  // refused to the worker, shown to no one, and the job's count stays as it was.
  for (const auto& [peer, batch] : std::vector<std::pair<std::string, int64_t>>{
           {"g2", 4}, {"g2", 1000000000000}, {"g2", 1}, {"g2", 0}, {"solo", 2}}) {
    INFO(peer << " says " << batch);
    auto [refused, shown] = report(peer, batch);
    REQUIRE(refused.size() == 1);
    CHECK(refused[0].type == BrokerMessageType::kError);
    CHECK(refused[0].message.find("a pass of " + std::to_string(batch) + " jobs") == 0);
    CHECK(shown.empty());
  }
  CHECK(h.Ask("c", BrokerMessageType::kQuery, "", job_of["g2"]).batch == -1);  // none reported
  CHECK(h.Ask("c", BrokerMessageType::kQuery, "", job_of["g1"]).batch == 3);
}

TEST_CASE("Core: heartbeats keep a worker alive, a job past its limit fails naming it",
          "[broker]") {
  BrokerParams params;
  params.dev_no_auth = true;
  params.time_limit_ms = 1000;
  params.time_limit_grace_ms = 500;
  Harness h(params);
  h.Ready("w1");
  const std::string job = h.Submit("c", "").job;
  CHECK(h.JobFor("w1") == job);
  BrokerMessage beat;
  beat.type = BrokerMessageType::kHeartbeat;
  for (int i = 0; i < 16; ++i) {
    h.clock.now += 100;
    h.Worker("w1", beat);
    h.core->Tick();
  }
  CHECK(h.core->Workers() == 1);
  auto to_worker = h.outbox.Take("w1");
  bool cancelled = false;
  for (const auto& m : to_worker) {
    cancelled |= m.type == BrokerMessageType::kCancel && m.reason == "time limit of 1 s exceeded";
  }
  CHECK(cancelled);
  BrokerMessage status = h.Ask("c", BrokerMessageType::kQuery, "", job);
  CHECK(status.state == JobState::kError);
  CHECK(status.message ==
        "time limit of 1 s exceeded (the worker did not stop within 0.5 s of it)");
  // The worker reports late: dropped, and the worker takes the next job.
  h.Finish("w1", job);
  const std::string next = h.Submit("c", "").job;
  CHECK(h.JobFor("w1") == next);
}

TEST_CASE("Core: a result that stops arriving fails its job and frees the worker", "[broker]") {
  BrokerParams params;
  params.dev_no_auth = true;
  params.time_limit_grace_ms = 500;
  Harness h(params);
  h.Ready("w1");
  const std::string job = h.Submit("c", "").job;
  CHECK(h.JobFor("w1") == job);
  h.Worker("w1", ResultChunk(job, 0, 3, "part"));  // chunks 1 and 2 never come; heartbeats do
  BrokerMessage beat;
  beat.type = BrokerMessageType::kHeartbeat;
  for (int i = 0; i < 6; ++i) {
    h.clock.now += 100;
    h.Worker("w1", beat);
    h.core->Tick();
  }
  BrokerMessage status = h.Ask("c", BrokerMessageType::kQuery, "", job);
  CHECK(status.state == JobState::kError);
  CHECK(status.code == "INTERNAL");
  CHECK(status.message == "the worker's result stopped arriving after 1 chunks; submit it again");
  bool told = false;
  for (const BrokerMessage& m : h.outbox.Take("w1")) told |= m.type == BrokerMessageType::kDisconnect;
  CHECK(told);
  CHECK(h.core->Workers() == 0);
  h.Ready("w1");  // registered afresh, as told
  const std::string next = h.Submit("c", "").job;
  CHECK(h.JobFor("w1") == next);
}

TEST_CASE("Core: cancel a queued job and a running one", "[broker]") {
  BrokerParams params;
  params.dev_no_auth = true;
  Harness h(params);
  h.Ready("w1");
  const std::string running = h.Submit("c", "").job;
  const std::string queued = h.Submit("c", "").job;
  CHECK(h.Ask("c", BrokerMessageType::kCancel, "", queued).state == JobState::kCancelled);
  CHECK(h.JobFor("w1") == running);
  BrokerMessage cancelled = h.Ask("c", BrokerMessageType::kCancel, "", running);
  CHECK(cancelled.state == JobState::kCancelled);
  auto to_worker = h.outbox.Take("w1");
  REQUIRE(!to_worker.empty());
  CHECK(to_worker.back().type == BrokerMessageType::kCancel);
  CHECK(to_worker.back().reason == "cancelled by the user");
}

TEST_CASE("Core: garbage and wrong message types are answered, not fatal", "[broker]") {
  BrokerParams params;
  params.dev_no_auth = true;
  Harness h(params);
  h.core->OnClientMessage("c", "\xc1garbage");
  auto replies = h.outbox.Take("c");
  REQUIRE(replies.size() == 1);
  CHECK(replies[0].type == BrokerMessageType::kError);
  CHECK(replies[0].code == "INVALID_ARGUMENT");
  BrokerMessage job;
  job.type = BrokerMessageType::kJob;
  job.job = "x";
  job.time_limit_ms = 1;
  h.Client("c", job);
  replies = h.outbox.Take("c");
  CHECK(replies[0].message.find("a client may not send a \"job\" message") == 0);
  BrokerMessage beat;
  beat.type = BrokerMessageType::kHeartbeat;
  h.Worker("stranger", beat);
  replies = h.outbox.Take("stranger");
  CHECK(replies[0].type == BrokerMessageType::kDisconnect);
  h.core->OnWorkerMessage("stranger", std::string("\x81\xa1x", 3));
  replies = h.outbox.Take("stranger");
  REQUIRE(replies.size() == 1);
  CHECK(replies[0].type == BrokerMessageType::kError);
  h.Ready("w1");
  BrokerMessage submit;
  submit.type = BrokerMessageType::kSubmit;
  submit.payload = "x";
  h.Worker("w1", submit);
  replies = h.outbox.Take("w1");
  REQUIRE(replies.size() == 1);
  CHECK(replies[0].message == "a worker may not send a \"submit\" message");
}

TEST_CASE("Core: a restarted core resumes stored jobs, running ones queued again", "[broker]") {
  BrokerParams params;
  params.dev_no_auth = true;
  Harness h(params);
  h.Ready("w1");
  const std::string running = h.Submit("c", "").job;
  const std::string queued = h.Submit("c", "").job;
  RecordingOutbox outbox2;
  BrokerCore restarted(params, h.store.get(), &h.clock, &outbox2);
  REQUIRE(restarted.Recover().ok());
  CHECK(restarted.LiveJobs() == 2);
  BrokerMessage ready;
  ready.type = BrokerMessageType::kReady;
  ready.model = "m";
  ready.catalogue = "{}";
  restarted.OnWorkerMessage("w9", protocol::EncodeBrokerMessage(ready));
  auto jobs = outbox2.Take("w9");
  REQUIRE(jobs.size() == 1);
  CHECK(jobs[0].job == running);  // first come, first served
  (void)queued;
}

}  // namespace
}  // namespace glassbox::broker::internal

namespace glassbox::broker::internal {
namespace {

TEST_CASE("Core: a worker re-registering mid-job keeps its job, before and after a restart",
          "[broker]") {
  BrokerParams params;
  params.dev_no_auth = true;
  Harness h(params);
  h.Ready("w1");
  const std::string job = h.Submit("c", "").job;
  CHECK(h.JobFor("w1") == job);
  BrokerMessage again;
  again.type = BrokerMessageType::kReady;
  again.model = "m";
  again.catalogue = "{}";
  again.job = job;
  h.Worker("w1", again);  // same broker: nothing changes
  CHECK(h.JobFor("w1").empty());
  RecordingOutbox outbox2;
  BrokerCore restarted(params, h.store.get(), &h.clock, &outbox2);
  REQUIRE(restarted.Recover().ok());
  restarted.OnWorkerMessage("w1", protocol::EncodeBrokerMessage(again));  // the new broker
  CHECK(outbox2.Take("w1").empty());                                      // adopted, not sent again
  BrokerMessage result;
  result.type = BrokerMessageType::kJobResult;
  result.job = job;
  result.index = 0;
  result.count = 1;
  result.payload = ResultBytes();
  restarted.OnWorkerMessage("w1", protocol::EncodeBrokerMessage(result));
  auto stored = h.store->GetJob(job);
  REQUIRE(stored.ok());
  CHECK((*stored)->state == JobState::kCompleted);
  CHECK((*stored)->attempts == 0);
}

TEST_CASE("Core: a result over the size limit fails the job, the worker goes on", "[broker]") {
  BrokerParams params;
  params.dev_no_auth = true;
  params.max_result_bytes = 1000;
  Harness h(params);
  h.Ready("w1");
  const std::string job = h.Submit("c", "").job;
  CHECK(h.JobFor("w1") == job);
  for (int64_t i = 0; i < 3; ++i) h.Worker("w1", ResultChunk(job, i, 3, std::string(600, 'x')));
  BrokerMessage status = h.Ask("c", BrokerMessageType::kQuery, "", job);
  CHECK(status.state == JobState::kError);
  CHECK(status.message == "the result is over the service's limit of 1000 bytes; save less");
  const std::string next = h.Submit("c", "").job;
  CHECK(h.JobFor("w1") == next);
}

TEST_CASE("Core: a result past its time-to-live is EXPIRED and no longer fetchable",
          "[broker]") {
  BrokerParams params;
  params.result_ttl_ms = 60'000;
  Harness h(params);
  const std::string key = h.AddKey("alice");
  h.Ready("w1");
  BrokerMessage ack = h.Submit("c1", key);
  h.Finish("w1", h.JobFor("w1"));
  h.clock.now += 59'000;
  CHECK(h.Ask("c1", BrokerMessageType::kQuery, key, ack.job).state == JobState::kCompleted);
  CHECK(h.Ask("c1", BrokerMessageType::kFetch, key, ack.job, 0).type ==
        BrokerMessageType::kResultChunk);
  h.clock.now += 2'000;
  BrokerMessage expired = h.Ask("c1", BrokerMessageType::kQuery, key, ack.job);
  CHECK(expired.state == JobState::kExpired);
  CHECK(expired.message == "the result was kept 60 s and has expired");
  BrokerMessage fetch = h.Ask("c1", BrokerMessageType::kFetch, key, ack.job, 0);
  CHECK(fetch.type == BrokerMessageType::kError);
}

}  // namespace
}  // namespace glassbox::broker::internal
