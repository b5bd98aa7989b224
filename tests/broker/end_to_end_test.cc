// The broker end to end, with real processes: a redis-server on a free port, the
// glassbox-broker binary and glassbox-test-worker children (SIGKILL is real), driven through
// broker/client.h. Lifecycle, API keys, owner isolation, dead workers, a killed broker, a
// stopped Redis, garbage on the wire, fairness, chunked results, time limits, cancellation.
#include <hiredis/hiredis.h>
#include <sys/wait.h>

#include <catch2/catch.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <thread>
#include <zmq.hpp>

#include "broker/broker.h"
#include "broker/client.h"
#include "protocol/broker_messages.h"
#include "protocol/codec.h"
#include "tests/broker/processes.h"

namespace glassbox::broker {
namespace {

using protocol::JobState;
using testing::ChildProcess;

std::string Request(const std::string& prompt, const std::string& model = "test-model") {
  protocol::Request r;
  r.model = model;
  r.traces.emplace_back();
  r.traces[0].invokes.push_back({prompt, std::nullopt});
  return protocol::EncodeRequest(r);
}

// The saved value `name` of an encoded result (a string or a tensor's bytes).
std::string Saved(const std::string& result_bytes, const std::string& name) {
  auto result = protocol::DecodeResult(result_bytes);
  REQUIRE(result.ok());
  for (const auto& s : result->saved) {
    if (s.name != name) continue;
    return s.value.tensor ? s.value.tensor->bytes : s.value.string_value;
  }
  return "<absent>";
}

// Runs a command, returns its stdout.
std::string Run(const std::string& command) {
  std::string out;
  FILE* pipe = popen(command.c_str(), "r");
  REQUIRE(pipe != nullptr);
  char buf[512];
  while (fgets(buf, sizeof buf, pipe)) out += buf;
  pclose(pipe);
  return out;
}

std::string Field(const std::string& text, const std::string& label) {
  const size_t at = text.find(label);
  if (at == std::string::npos) return "";
  const size_t start = text.find_first_not_of(' ', at + label.size());
  return text.substr(start, text.find('\n', start) - start);
}

// One Redis command from the test itself; the reply as text (errors too), or "" for nil.
std::string RedisCall(const std::string& address, const std::vector<std::string>& args) {
  const size_t colon = address.rfind(':');
  redisContext* ctx = redisConnect(address.substr(0, colon).c_str(),
                                   std::stoi(address.substr(colon + 1)));
  REQUIRE(ctx != nullptr);
  REQUIRE(ctx->err == 0);
  std::vector<const char*> argv;
  std::vector<size_t> lens;
  for (const std::string& a : args) {
    argv.push_back(a.data());
    lens.push_back(a.size());
  }
  auto* reply = static_cast<redisReply*>(
      redisCommandArgv(ctx, static_cast<int>(args.size()), argv.data(), lens.data()));
  REQUIRE(reply != nullptr);
  std::string out = reply->type == REDIS_REPLY_INTEGER ? std::to_string(reply->integer)
                    : reply->str != nullptr            ? std::string(reply->str, reply->len)
                                                       : "";
  freeReplyObject(reply);
  redisFree(ctx);
  return out;
}

// Whether `text` holds the line `line` (INFO fields, log lines).
bool HasLine(const std::string& text, const std::string& line) {
  return ("\n" + text).find("\n" + line) != std::string::npos;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

struct ApiKey {
  std::string id;
  std::string secret;
};

// Redis, a broker and workers, each a real process, in one temporary directory.
class Cluster {
 public:
  explicit Cluster(std::vector<std::string> broker_flags = {}, bool curve = false)
      : redis_(dir_.path()), broker_flags_(std::move(broker_flags)) {
    if (curve) {
      Run(testing::BinDir() + "/glassbox-broker curve-keygen --out " + dir_.path() + "/curve");
      broker_flags_.insert(broker_flags_.end(),
                           {"--curve-secret-key-file", dir_.path() + "/curve.key"});
      curve_public_key_ = ReadCurveKeyFile(dir_.path() + "/curve.pub").value();
    }
    StartBroker();
  }

  const std::string& curve_public_key() const { return curve_public_key_; }

  void StartBroker() {
    std::vector<std::string> args = {testing::BinDir() + "/glassbox-broker",
                                     "serve",
                                     "--clients",
                                     ClientEndpoint(),
                                     "--workers",
                                     WorkerEndpoint(),
                                     "--redis",
                                     redis_.address(),
                                     "--heartbeat-liveness",
                                     "5"};
    args.insert(args.end(), broker_flags_.begin(), broker_flags_.end());
    broker_ = std::make_unique<ChildProcess>(args, dir_.path() + "/broker.log");
    REQUIRE(testing::WaitForPort(client_port_, 10000));
  }

  ChildProcess& broker() { return *broker_; }
  testing::RedisServer& redis() { return redis_; }

  // A test worker with 100 ms heartbeats unless `flags` names --heartbeat-ms.
  ChildProcess& StartWorker(const std::string& tag, std::vector<std::string> flags = {}) {
    std::vector<std::string> args = {testing::BinDir() + "/glassbox-test-worker", "--broker",
                                     WorkerEndpoint(), "--tag", tag};
    if (std::find(flags.begin(), flags.end(), "--heartbeat-ms") == flags.end()) {
      args.insert(args.end(), {"--heartbeat-ms", "100"});
    }
    args.insert(args.end(), flags.begin(), flags.end());
    workers_.push_back(
        std::make_unique<ChildProcess>(args, dir_.path() + "/worker-" + tag + ".log"));
    return *workers_.back();
  }

  ApiKey CreateKey(const std::string& name, const std::string& flags = "") {
    const std::string out = Run(testing::BinDir() + "/glassbox-broker keys --redis " +
                                redis_.address() + " create --name " + name + " " + flags);
    ApiKey key{Field(out, "id:"), Field(out, "secret:")};
    REQUIRE(key.secret.rfind("gbk_", 0) == 0);
    return key;
  }

  std::string Keys(const std::string& args) {
    return Run(testing::BinDir() + "/glassbox-broker keys --redis " + redis_.address() + " " +
               args + " 2>&1");
  }

  std::unique_ptr<Client> NewClient(const std::string& api_key, int timeout_ms = 10000,
                                    const std::string& curve_server_key = "") {
    ClientParams params;
    params.curve_server_key = curve_server_key;
    params.endpoint = ClientEndpoint();
    params.api_key = api_key;
    params.timeout_ms = timeout_ms;
    auto client = Client::Connect(params);
    REQUIRE(client.ok());
    return std::move(client).value();
  }

  // Waits until `n` workers serve test-model.
  void WaitForWorkers(Client& client, int64_t n) {
    for (int i = 0; i < 500; ++i) {
      auto models = client.ListModels();
      if (models.ok()) {
        for (const auto& m : *models) {
          if (m.name == "test-model" && m.workers == n) return;
        }
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    FAIL("workers did not register");
  }

  // A path in the cluster's temporary directory (files that release or mark test jobs).
  std::string Path(const std::string& name) const { return dir_.path() + "/" + name; }
  int worker_port() const { return worker_port_; }

  std::string ClientEndpoint() const { return "tcp://127.0.0.1:" + std::to_string(client_port_); }
  std::string WorkerEndpoint() const { return "tcp://127.0.0.1:" + std::to_string(worker_port_); }

 private:
  testing::TempDir dir_;
  testing::RedisServer redis_;
  std::vector<std::string> broker_flags_;
  std::string curve_public_key_;
  int client_port_ = testing::FreePort();
  int worker_port_ = testing::FreePort();
  std::unique_ptr<ChildProcess> broker_;
  std::vector<std::unique_ptr<ChildProcess>> workers_;
};

JobStatus WaitDone(Client& client, const std::string& job, int timeout_ms = 10000) {
  auto status = client.WaitForStatus(job, {}, timeout_ms);
  REQUIRE(status.ok());
  return *status;
}

JobStatus WaitState(Client& client, const std::string& job, JobState state) {
  auto status = client.WaitForStatus(
      job, [&](const JobStatus& s) { return s.state == state; }, 10000);
  REQUIRE(status.ok());
  return *status;
}

std::string SubmitOk(Client& client, const std::string& prompt) {
  auto job = client.Submit(Request(prompt));
  REQUIRE(job.ok());
  return *job;
}

TEST_CASE("E2E: a job's lifecycle, pushed statuses, result, models and usage", "[broker]") {
  Cluster cluster;
  ApiKey key = cluster.CreateKey("alice");
  cluster.StartWorker("a");
  auto client = cluster.NewClient(key.secret);
  cluster.WaitForWorkers(*client, 1);
  std::vector<JobState> seen;
  client->OnStatus([&](const JobStatus& s) { seen.push_back(s.state); });
  const std::string job = SubmitOk(*client, "hello");
  CHECK(job.size() == 32);
  JobStatus done = WaitDone(*client, job);
  CHECK(done.state == JobState::kCompleted);
  CHECK(seen == std::vector<JobState>{JobState::kQueued, JobState::kRunning, JobState::kCompleted});
  auto result = client->FetchResult(job);
  REQUIRE(result.ok());
  CHECK(Saved(*result, "prompt") == "hello");
  CHECK(done.result_bytes == static_cast<int64_t>(result->size()));
  auto models = client->ListModels();
  REQUIRE(models.ok());
  REQUIRE(models->size() == 1);
  CHECK((*models)[0].catalogue_json == R"({"points":[{"name":"model.norm.output"}]})");
  // A second connection asks by id (a client that reconnected).
  auto other = cluster.NewClient(key.secret);
  CHECK(other->QueryStatus(job)->state == JobState::kCompleted);
  const std::string listing = cluster.Keys("list");
  CHECK(listing.find(key.id) != std::string::npos);
  CHECK(listing.find("alice") != std::string::npos);
  auto keys = ListApiKeys(cluster.redis().address());
  REQUIRE(keys.ok());
  REQUIRE(keys->size() == 1);
  CHECK((*keys)[0].usage.jobs == 1);
  CHECK((*keys)[0].usage.bytes_returned == static_cast<int64_t>(result->size()));
}

TEST_CASE("E2E: requests without a valid API key are refused", "[broker]") {
  Cluster cluster({"--key-cache-ms", "0"});  // a revocation bites at once
  ApiKey key = cluster.CreateKey("alice");
  cluster.StartWorker("a");
  auto good = cluster.NewClient(key.secret);
  cluster.WaitForWorkers(*good, 1);
  auto none = cluster.NewClient("");
  auto submitted = none->Submit(Request("x"));
  CHECK(submitted.status().code() == StatusCode::kUnauthenticated);
  auto wrong = cluster.NewClient("gbk_" + std::string(64, '0'));
  CHECK(wrong->Submit(Request("x")).status().ToString() ==
        "UNAUTHENTICATED: API key not recognised (unknown or revoked)");
  CHECK(wrong->ListModels().status().code() == StatusCode::kUnauthenticated);
  CHECK(cluster.Keys("revoke " + key.id).find("revoked " + key.id) != std::string::npos);
  CHECK(good->Submit(Request("x")).status().code() == StatusCode::kUnauthenticated);
  CHECK(cluster.Keys("revoke nosuchkey").find("NOT_FOUND") != std::string::npos);
}

TEST_CASE("E2E: one user cannot see, fetch or cancel another's job", "[broker]") {
  Cluster cluster;
  ApiKey alice = cluster.CreateKey("alice");
  ApiKey bob = cluster.CreateKey("bob");
  cluster.StartWorker("a");
  auto a = cluster.NewClient(alice.secret);
  auto b = cluster.NewClient(bob.secret);
  cluster.WaitForWorkers(*a, 1);
  const std::string job = SubmitOk(*a, "secret");
  WaitDone(*a, job);
  const std::string missing(32, 'f');
  CHECK(b->QueryStatus(job).status().ToString() == "NOT_FOUND: no job " + job);
  CHECK(b->QueryStatus(missing).status().ToString() == "NOT_FOUND: no job " + missing);
  CHECK(b->FetchResult(job).status().code() == StatusCode::kNotFound);
  CHECK(b->Cancel(job).status().code() == StatusCode::kNotFound);
  CHECK(a->FetchResult(job).ok());
}

TEST_CASE("E2E: a worker killed mid-job: the job runs again on another worker", "[broker][slow]") {
  Cluster cluster;
  ApiKey key = cluster.CreateKey("alice");
  ChildProcess& first = cluster.StartWorker("first");
  auto client = cluster.NewClient(key.secret);
  cluster.WaitForWorkers(*client, 1);
  std::vector<JobStatus> seen;
  client->OnStatus([&](const JobStatus& s) { seen.push_back(s); });
  // The job holds until released; it is released only once its first worker is dead.
  const std::string release = cluster.Path("release");
  const std::string job =
      SubmitOk(*client, "touch=" + cluster.Path("started") + ";wait_file=" + release);
  REQUIRE(testing::WaitForFile(cluster.Path("started")));
  cluster.StartWorker("second");
  cluster.WaitForWorkers(*client, 2);
  first.Stop(SIGKILL);
  std::ofstream(release).put('\n');
  JobStatus done = WaitDone(*client, job);
  CHECK(done.state == JobState::kCompleted);
  CHECK(Saved(*client->FetchResult(job), "worker") == "second");
  bool requeued = false;
  for (const JobStatus& s : seen) requeued |= s.message == "its worker died; queued again";
  CHECK(requeued);
}

TEST_CASE("E2E: SIGTERM to a worker mid-job: it says goodbye, exits 0, the job runs elsewhere",
          "[broker]") {
  Cluster cluster;
  ApiKey key = cluster.CreateKey("alice");
  // Heartbeats every minute: only the worker's own DISCONNECT can tell the broker in time.
  ChildProcess& leaving = cluster.StartWorker("leaving", {"--heartbeat-ms", "60000"});
  auto client = cluster.NewClient(key.secret);
  cluster.WaitForWorkers(*client, 1);
  std::vector<JobStatus> seen;
  client->OnStatus([&](const JobStatus& s) { seen.push_back(s); });
  const std::string release = cluster.Path("release");
  const std::string job =
      SubmitOk(*client, "touch=" + cluster.Path("started") + ";wait_file=" + release);
  REQUIRE(testing::WaitForFile(cluster.Path("started")));
  cluster.StartWorker("staying");
  cluster.WaitForWorkers(*client, 2);
  const int status = leaving.Stop(SIGTERM);
  CHECK(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
  cluster.WaitForWorkers(*client, 1);  // forgotten now, not after 5 missed minutes
  WaitState(*client, job, JobState::kRunning);
  std::ofstream(release).put('\n');  // the job may finish now
  const JobStatus done = WaitDone(*client, job);
  CHECK(done.state == JobState::kCompleted);
  CHECK(Saved(*client->FetchResult(job), "worker") == "staying");
  bool left = false;
  for (const JobStatus& s : seen) left |= s.message == "its worker left; queued again";
  CHECK(left);
  CHECK(RedisCall(cluster.redis().address(), {"HGET", "gb:job:" + job, "attempts"}) == "0");
}

TEST_CASE("E2E: a job sent to workers that had just died is not an attempt: it waits, then runs",
          "[broker]") {
  Cluster cluster;
  ApiKey key = cluster.CreateKey("alice");
  // Heartbeats every minute: the broker cannot notice these deaths by itself during the test.
  std::vector<ChildProcess*> doomed;
  for (const char* tag : {"d1", "d2", "d3"}) {
    doomed.push_back(&cluster.StartWorker(tag, {"--heartbeat-ms", "60000"}));
  }
  auto client = cluster.NewClient(key.secret);
  cluster.WaitForWorkers(*client, 3);
  for (ChildProcess* worker : doomed) worker->Stop(SIGKILL);
  // The broker's side of every worker connection is closed: a send to them now fails.
  for (int i = 0; i < 5000 && testing::OpenConnectionsOnPort(cluster.worker_port()) > 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  REQUIRE(testing::OpenConnectionsOnPort(cluster.worker_port()) == 0);
  std::vector<JobStatus> seen;
  client->OnStatus([&](const JobStatus& s) { seen.push_back(s); });
  const std::string job = SubmitOk(*client, "after the deaths");
  cluster.StartWorker("alive");
  const JobStatus done = WaitDone(*client, job);
  CHECK(done.state == JobState::kCompleted);
  CHECK(done.message == "");
  CHECK(Saved(*client->FetchResult(job), "worker") == "alive");
  for (const JobStatus& s : seen) CHECK(s.message.find("died") == std::string::npos);
}

TEST_CASE("E2E: a frozen worker (SIGSTOP) is noticed by heartbeat, its job runs elsewhere",
          "[broker][slow]") {
  Cluster cluster;
  ApiKey key = cluster.CreateKey("alice");
  ChildProcess& frozen = cluster.StartWorker("frozen");
  auto client = cluster.NewClient(key.secret);
  cluster.WaitForWorkers(*client, 1);
  const std::string release = cluster.Path("release");
  const std::string job =
      SubmitOk(*client, "touch=" + cluster.Path("started") + ";wait_file=" + release);
  REQUIRE(testing::WaitForFile(cluster.Path("started")));
  cluster.StartWorker("alive");
  cluster.WaitForWorkers(*client, 2);
  frozen.Signal(SIGSTOP);  // the connection stays open: only missing heartbeats tell
  std::ofstream(release).put('\n');  // a frozen worker cannot finish it; "alive" can
  JobStatus done = WaitDone(*client, job);
  CHECK(done.state == JobState::kCompleted);
  CHECK(Saved(*client->FetchResult(job), "worker") == "alive");
  frozen.Signal(SIGCONT);  // it comes back, is told it is unknown, and registers again
  cluster.WaitForWorkers(*client, 2);
}

TEST_CASE("E2E: a job whose workers keep dying fails, saying why", "[broker][slow]") {
  Cluster cluster({"--max-attempts", "2"});
  ApiKey key = cluster.CreateKey("alice");
  auto client = cluster.NewClient(key.secret);
  ChildProcess* worker = &cluster.StartWorker("w1");
  cluster.WaitForWorkers(*client, 1);
  int runs = 0;
  client->OnStatus([&](const JobStatus& s) { runs += s.state == JobState::kRunning; });
  const std::string job = SubmitOk(*client, "wait_file=" + cluster.Path("never-created"));
  for (int death = 1; death <= 2; ++death) {
    REQUIRE(client->WaitForStatus(job, [&](const JobStatus&) { return runs >= death; }).ok());
    worker->Stop(SIGKILL);
    if (death == 1) worker = &cluster.StartWorker("w2");
  }
  JobStatus failed = WaitDone(*client, job);
  CHECK(failed.state == JobState::kError);
  CHECK(failed.code == "INTERNAL");
  CHECK(failed.message.rfind("job " + job + " killed the worker running it 2 times", 0) == 0);
  auto report = protocol::DecodeErrorReport(*client->FetchResult(job));
  CHECK(report->message == failed.message);
}

TEST_CASE("E2E: a job that kills two workers is poison: failed at once, a third never runs it",
          "[broker]") {
  Cluster cluster;  // default --max-attempts
  ApiKey key = cluster.CreateKey("alice");
  std::vector<ChildProcess*> workers;
  for (const char* tag : {"w1", "w2", "w3"}) workers.push_back(&cluster.StartWorker(tag));
  auto client = cluster.NewClient(key.secret);
  cluster.WaitForWorkers(*client, 3);
  const std::string job = SubmitOk(*client, "crash=1");
  const JobStatus failed = WaitDone(*client, job);
  CHECK(failed.state == JobState::kError);
  CHECK(failed.code == "INTERNAL");
  CHECK(failed.message == "job " + job +
                              " killed the worker running it 2 times; it is marked as poison and "
                              "not run again (report it: it may crash every worker)");
  CHECK(protocol::DecodeErrorReport(*client->FetchResult(job))->message == failed.message);
  int alive = 0;
  for (ChildProcess* worker : workers) alive += worker->Running();
  CHECK(alive == 1);
  const std::string next = SubmitOk(*client, "fine");
  CHECK(WaitDone(*client, next).state == JobState::kCompleted);
}

TEST_CASE("E2E: the broker killed and restarted: acknowledged jobs complete, results stay",
          "[broker][slow]") {
  Cluster cluster;
  ApiKey key = cluster.CreateKey("alice");
  cluster.StartWorker("a");
  auto client = cluster.NewClient(key.secret);
  cluster.WaitForWorkers(*client, 1);
  const std::string finished = SubmitOk(*client, "result_bytes=1000");
  WaitDone(*client, finished);
  // Held until released, so all four are unfinished when the broker dies.
  const std::string release = cluster.Path("release");
  std::vector<std::string> pending;
  for (int i = 0; i < 4; ++i) pending.push_back(SubmitOk(*client, "wait_file=" + release));
  WaitState(*client, pending[0], JobState::kRunning);
  cluster.broker().Stop(SIGKILL);
  cluster.StartBroker();
  std::ofstream(release).put('\n');
  auto after = cluster.NewClient(key.secret, 15000);
  for (const std::string& job : pending) {
    CHECK(WaitDone(*after, job, 15000).state == JobState::kCompleted);
    CHECK(after->FetchResult(job).ok());
  }
  auto stored = after->FetchResult(finished);
  REQUIRE(stored.ok());
  CHECK(Saved(*stored, "echo").size() == 1000);
}

TEST_CASE("E2E: Redis stopped: submissions refused as unavailable, nothing acknowledged lost",
          "[broker][slow]") {
  Cluster cluster({"--key-cache-ms", "0"});
  ApiKey key = cluster.CreateKey("alice");
  cluster.StartWorker("a");
  auto client = cluster.NewClient(key.secret);
  cluster.WaitForWorkers(*client, 1);
  // The running job ends while Redis is down (released, and its result returned to the
  // broker, during the outage).
  const std::string release = cluster.Path("release");
  const std::string running =
      SubmitOk(*client, "wait_file=" + release + ";done_file=" + cluster.Path("done"));
  const std::string queued = SubmitOk(*client, "queued");
  WaitState(*client, running, JobState::kRunning);
  cluster.redis().Stop(SIGKILL);
  auto refused = client->Submit(Request("x"));
  CHECK(refused.status().code() == StatusCode::kUnavailable);
  CHECK(refused.status().message().find("job store unavailable") != std::string::npos);
  std::ofstream(release).put('\n');
  REQUIRE(testing::WaitForFile(cluster.Path("done")));
  cluster.redis().Start();
  CHECK(WaitDone(*client, running, 15000).state == JobState::kCompleted);
  CHECK(WaitDone(*client, queued, 15000).state == JobState::kCompleted);
  CHECK(client->FetchResult(running).ok());
  const std::string later = SubmitOk(*client, "after");
  CHECK(WaitDone(*client, later).state == JobState::kCompleted);
}

TEST_CASE("E2E: during a Redis outage, results the broker holds in memory are still fetchable",
          "[broker]") {
  Cluster cluster({"--key-cache-ms", "0"});  // every request would read its key from Redis
  ApiKey key = cluster.CreateKey("alice");
  cluster.StartWorker("a");
  auto client = cluster.NewClient(key.secret);
  cluster.WaitForWorkers(*client, 1);
  const std::string job = SubmitOk(*client, "result_bytes=3000000");
  const JobStatus done = WaitDone(*client, job);
  REQUIRE(done.state == JobState::kCompleted);
  cluster.redis().Stop(SIGKILL);
  CHECK(client->QueryStatus(job)->state == JobState::kCompleted);
  auto result = client->FetchResult(job);
  REQUIRE(result.ok());
  CHECK(Saved(*result, "echo").size() == 3000000);
  CHECK(client->Submit(Request("x")).status().code() == StatusCode::kUnavailable);
  // Once Redis is back, the bytes served meanwhile are counted against the key.
  cluster.redis().Start();
  int64_t counted = -1;
  for (int i = 0; i < 2000 && counted != done.result_bytes; ++i) {
    auto keys = ListApiKeys(cluster.redis().address());
    if (keys.ok() && keys->size() == 1) counted = (*keys)[0].usage.bytes_returned;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  CHECK(counted == done.result_bytes);
}

TEST_CASE("E2E: Redis loading its data (LOADING) delays queued jobs, never fails them",
          "[broker][slow]") {
  Cluster cluster;
  ApiKey key = cluster.CreateKey("alice");
  const std::string redis = cluster.redis().address();
  {  // 20,000 keys of 1 kB in Redis's base file, so that loading it can be slowed down
    const size_t colon = redis.rfind(':');
    redisContext* ctx =
        redisConnect(redis.substr(0, colon).c_str(), std::stoi(redis.substr(colon + 1)));
    REQUIRE((ctx != nullptr && ctx->err == 0));
    const std::string value(1000, 'v');
    for (int i = 0; i < 20000; ++i) {
      const std::string k = "pad:" + std::to_string(i);
      redisAppendCommand(ctx, "SET %b %b", k.data(), k.size(), value.data(), value.size());
    }
    for (int i = 0; i < 20000; ++i) {
      void* reply = nullptr;
      REQUIRE(redisGetReply(ctx, &reply) == REDIS_OK);
      freeReplyObject(reply);
    }
    redisFree(ctx);
  }
  RedisCall(redis, {"BGREWRITEAOF"});
  for (int i = 0; i < 5000; ++i) {
    const std::string info = RedisCall(redis, {"INFO", "persistence"});
    if (HasLine(info, "aof_rewrite_in_progress:0") && HasLine(info, "aof_rewrite_scheduled:0")) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  cluster.StartWorker("a");
  auto client = cluster.NewClient(key.secret, 30000);
  cluster.WaitForWorkers(*client, 1);
  const std::string first = SubmitOk(*client, "wait_file=" + cluster.Path("release"));
  WaitState(*client, first, JobState::kRunning);
  const std::string second = SubmitOk(*client, "queued behind");
  // Restarted with a loading delay of 5 ms per key (100 s for all): it answers LOADING
  // until the test lifts the delay.
  cluster.redis().Stop(SIGTERM);
  cluster.redis().Start(
      {"--key-load-delay", "5000", "--loading-process-events-interval-bytes", "1024"});
  REQUIRE(HasLine(RedisCall(redis, {"INFO", "persistence"}), "loading:1"));
  testing::ChildProcess touch({"/usr/bin/touch", cluster.Path("release")}, "/dev/null");
  // The first job's end meets LOADING; the broker then tried to start the second one.
  const std::string log = cluster.Path("broker.log");
  for (int i = 0; i < 5000 && ReadFile(log).find("LOADING") == std::string::npos; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  REQUIRE(ReadFile(log).find("LOADING") != std::string::npos);
  REQUIRE(client->ListModels().ok());  // answered after the loop that handled the result
  REQUIRE(HasLine(RedisCall(redis, {"INFO", "persistence"}), "loading:1"));
  RedisCall(redis, {"CONFIG", "SET", "key-load-delay", "0"});
  CHECK(WaitDone(*client, first, 30000).state == JobState::kCompleted);
  const JobStatus done = WaitDone(*client, second, 30000);
  CHECK(done.state == JobState::kCompleted);
  CHECK(done.message == "");
  CHECK(Saved(*client->FetchResult(second), "prompt") == "queued behind");
}

TEST_CASE("E2E: Redis frozen (SIGSTOP) stalls the broker: its workers are not presumed dead",
          "[broker][slow]") {
  // One store call may block the broker 1 s, four times a worker's heartbeat window here;
  // a single presumed death would fail the job (--max-attempts 1).
  Cluster cluster({"--redis-timeout-ms", "1000", "--key-cache-ms", "0", "--max-attempts", "1"});
  ApiKey key = cluster.CreateKey("alice");
  // Heartbeats every 50 ms (the broker gives up after 5 silent ones); the worker itself waits
  // 100 silent broker heartbeats before it reconnects.
  cluster.StartWorker("a", {"--heartbeat-ms", "50", "--heartbeat-liveness", "100"});
  auto client = cluster.NewClient(key.secret);
  cluster.WaitForWorkers(*client, 1);
  std::vector<JobStatus> seen;
  client->OnStatus([&](const JobStatus& s) { seen.push_back(s); });
  const std::string job = SubmitOk(*client, "wait_file=" + cluster.Path("release"));
  WaitState(*client, job, JobState::kRunning);
  cluster.redis().Signal(SIGSTOP);
  // Each submission now blocks the broker on Redis (the API key lookup) until the timeout.
  for (int i = 0; i < 2; ++i) {
    CHECK(client->Submit(Request("refused")).status().code() == StatusCode::kUnavailable);
  }
  cluster.redis().Signal(SIGCONT);
  testing::ChildProcess touch({"/usr/bin/touch", cluster.Path("release")}, "/dev/null");
  const JobStatus done = WaitDone(*client, job, 20000);
  CHECK(done.state == JobState::kCompleted);
  CHECK(done.message == "");
  for (const JobStatus& s : seen) CHECK(s.message.find("died") == std::string::npos);
}

TEST_CASE("E2E: malformed, unknown and oversized messages get errors, others still served",
          "[broker]") {
  Cluster cluster({"--max-message-bytes", "1000000"});
  ApiKey key = cluster.CreateKey("alice", "--max-request-bytes 100000");
  cluster.StartWorker("a");
  auto client = cluster.NewClient(key.secret);
  cluster.WaitForWorkers(*client, 1);
  auto garbage = client->SendRawForTest("\xc1\x00garbage");
  REQUIRE(garbage.ok());
  CHECK(garbage->type == protocol::BrokerMessageType::kError);
  CHECK(garbage->code == "INVALID_ARGUMENT");
  std::string unknown = protocol::EncodeBrokerMessage(protocol::BrokerMessage{});
  unknown.replace(unknown.find("heartbeat"), 9, "heartbeaz");
  auto reply = client->SendRawForTest(unknown);
  CHECK(reply->message == "type: unknown message type \"heartbeaz\"");
  auto too_big = client->Submit(Request(std::string(200000, 'x')));
  CHECK(too_big.status().code() == StatusCode::kResourceExhausted);
  auto not_request =
      client->Submit(protocol::EncodeErrorReport(protocol::ErrorReport::FromStatus(Internal("x"))));
  CHECK(not_request.status().message() ==
        "submitted message is a \"error\" message, not a request");
  {  // several frames in one message, then a frame over ZMQ_MAXMSGSIZE (the broker drops that peer)
    zmq::context_t ctx;
    zmq::socket_t raw(ctx, zmq::socket_type::dealer);
    raw.set(zmq::sockopt::linger, 0);
    raw.connect(cluster.ClientEndpoint());
    raw.send(zmq::str_buffer("a"), zmq::send_flags::sndmore);
    raw.send(zmq::str_buffer("b"), zmq::send_flags::none);
    zmq::message_t answer;
    raw.set(zmq::sockopt::rcvtimeo, 5000);
    REQUIRE(raw.recv(answer));
    auto decoded = protocol::DecodeBrokerMessage(answer.to_string_view());
    CHECK(decoded->message.find("expected exactly one frame per message") == 0);
    raw.send(zmq::buffer(std::string(2000000, 'x')), zmq::send_flags::none);
  }
  const std::string job = SubmitOk(*client, "still here");
  CHECK(WaitDone(*client, job).state == JobState::kCompleted);
  CHECK(cluster.broker().Running());
}

TEST_CASE("E2E: a client that never reads costs the broker a bounded number of bytes",
          "[broker]") {
  const int64_t limit = int64_t{4} << 20;
  Cluster cluster({"--dev-no-auth", "--client-unread-bytes", std::to_string(limit)});
  cluster.StartWorker("a", {"--chunk-bytes", "262144"});
  auto client = cluster.NewClient("");
  cluster.WaitForWorkers(*client, 1);
  const std::string job = SubmitOk(*client, "result_bytes=200000");
  const JobStatus done = WaitDone(*client, job);
  REQUIRE(done.result_chunks == 1);
  zmq::context_t ctx;
  zmq::socket_t greedy(ctx, zmq::socket_type::dealer);  // asks for much, reads nothing yet
  greedy.set(zmq::sockopt::linger, 0);
  greedy.set(zmq::sockopt::rcvhwm, 1);
  greedy.set(zmq::sockopt::rcvbuf, 65536);
  greedy.connect(cluster.ClientEndpoint());
  const int fetches = 400;
  for (int i = 0; i < fetches; ++i) {
    protocol::BrokerMessage fetch;
    fetch.type = protocol::BrokerMessageType::kFetch;
    fetch.ref = "f" + std::to_string(i);
    fetch.job = job;
    fetch.index = 0;
    greedy.send(zmq::buffer(protocol::EncodeBrokerMessage(fetch)), zmq::send_flags::none);
  }
  protocol::BrokerMessage marker;  // handled after every fetch above: its job touches a file
  marker.type = protocol::BrokerMessageType::kSubmit;
  marker.payload = Request("touch=" + cluster.Path("marker"));
  greedy.send(zmq::buffer(protocol::EncodeBrokerMessage(marker)), zmq::send_flags::none);
  REQUIRE(testing::WaitForFile(cluster.Path("marker")));
  int chunks = 0;
  int refused = 0;
  greedy.set(zmq::sockopt::rcvtimeo, 10000);
  while (chunks + refused < fetches) {
    zmq::message_t frame;
    REQUIRE(greedy.recv(frame));
    auto reply = protocol::DecodeBrokerMessage(frame.to_string_view());
    REQUIRE(reply.ok());
    if (reply->ref.rfind("f", 0) != 0) continue;  // the marker's ack and statuses
    if (reply->type == protocol::BrokerMessageType::kResultChunk) {
      ++chunks;
    } else {
      CHECK(reply->code == "RESOURCE_EXHAUSTED");
      CHECK(reply->message.find("unread by this connection") != std::string::npos);
      ++refused;
    }
  }
  // At most the limit held by the broker, plus what the kernel's socket buffers took
  // (4 MiB here, net.ipv4.tcp_wmem) and the client's own buffer.
  CHECK(chunks <= (limit + (int64_t{5} << 20)) / 200000 + 1);
  CHECK(refused >= fetches - 60);
  CHECK(client->FetchResult(job).ok());  // other connections are served as usual
}

TEST_CASE("E2E: a client's ref is capped in size and never stored beyond it", "[broker]") {
  Cluster cluster;
  ApiKey key = cluster.CreateKey("alice");
  cluster.StartWorker("a");
  auto client = cluster.NewClient(key.secret);
  cluster.WaitForWorkers(*client, 1);
  const std::string huge(1 << 20, 'r');
  auto refused = client->Submit(Request("x"), huge);
  CHECK(refused.status().ToString() ==
        "INVALID_ARGUMENT: ref of 1048576 bytes is over the limit of 256 bytes");
  CHECK(RedisCall(cluster.redis().address(), {"EXISTS", "gb:ref:" + key.id + ":" + huge}) == "0");
  const std::string fine(256, 'r');
  auto job = client->Submit(Request("x"), fine);
  REQUIRE(job.ok());
  CHECK(WaitDone(*client, *job).state == JobState::kCompleted);
}

TEST_CASE("E2E: a ref and the model name count against the key's request limit and usage",
          "[broker]") {
  Cluster cluster;
  const std::string request = Request("x");
  const int64_t model_bytes = std::string("test-model").size();
  // Room for the request, its model name and a 100-byte ref (stored twice), not one more.
  const int64_t limit = static_cast<int64_t>(request.size()) + model_bytes + 200;
  ApiKey key = cluster.CreateKey("alice", "--max-request-bytes " + std::to_string(limit));
  cluster.StartWorker("a");
  auto client = cluster.NewClient(key.secret);
  cluster.WaitForWorkers(*client, 1);
  auto refused = client->Submit(request, std::string(101, 'r'));
  CHECK(refused.status().code() == StatusCode::kResourceExhausted);
  CHECK(refused.status().message().find("(" + std::to_string(limit + 2) + " bytes stored)") !=
        std::string::npos);
  auto job = client->Submit(request, std::string(100, 'r'));
  REQUIRE(job.ok());
  CHECK(WaitDone(*client, *job).state == JobState::kCompleted);
  // The C++ client gives every submission a ref (its own when none is given): an explicit
  // short one here, so the count is known.
  auto small = client->Submit(request, std::string(8, 's'));
  REQUIRE(small.ok());
  CHECK(WaitDone(*client, *small).state == JobState::kCompleted);
  const int64_t stored = limit + static_cast<int64_t>(request.size()) + model_bytes + 2 * 8;
  auto keys = ListApiKeys(cluster.redis().address());
  REQUIRE(keys.ok());
  REQUIRE(keys->size() == 1);
  CHECK((*keys)[0].usage.bytes_stored == stored);
  const std::string row = Field(cluster.Keys("list"), "alice");  // BYTES_STORED comes last
  CHECK(row.substr(row.find_last_of(' ') + 1) == std::to_string(stored));
}

TEST_CASE("E2E: users take turns: one user's many jobs do not starve another's one",
          "[broker][slow]") {
  Cluster cluster;
  ApiKey alice = cluster.CreateKey("alice");
  ApiKey bob = cluster.CreateKey("bob");
  cluster.StartWorker("a");
  auto a = cluster.NewClient(alice.secret);
  auto b = cluster.NewClient(bob.secret);
  cluster.WaitForWorkers(*a, 1);
  std::vector<std::string> alice_jobs;
  // No job finishes before bob's is queued: they all wait for the release file.
  const std::string jobs = "sleep_ms=30;wait_file=" + cluster.Path("release");
  for (int i = 0; i < 20; ++i) alice_jobs.push_back(SubmitOk(*a, jobs));
  const std::string bob_job = SubmitOk(*b, jobs);
  auto queued = b->QueryStatus(bob_job);
  CHECK(queued->position <= 2);
  testing::ChildProcess touch({"/usr/bin/touch", cluster.Path("release")}, "/dev/null");
  const JobStatus bob_done = WaitDone(*b, bob_job);
  int alice_before = 0;
  for (const std::string& job : alice_jobs) {
    const JobStatus s = WaitDone(*a, job);
    alice_before += s.time_ms < bob_done.time_ms;
  }
  CHECK(alice_before <= 3);
}

TEST_CASE("E2E: a large result travels and is stored in chunks", "[broker]") {
  Cluster cluster;
  ApiKey key = cluster.CreateKey("alice");
  cluster.StartWorker("a", {"--chunk-bytes", "1048576"});
  auto client = cluster.NewClient(key.secret);
  cluster.WaitForWorkers(*client, 1);
  const std::string job = SubmitOk(*client, "result_bytes=5000000");
  const JobStatus done = WaitDone(*client, job);
  CHECK(done.result_chunks == 5);
  auto result = client->FetchResult(job);
  REQUIRE(result.ok());
  const std::string bytes = Saved(*result, "echo");
  REQUIRE(bytes.size() == 5000000);
  bool pattern = true;
  for (size_t i = 0; i < bytes.size(); i += 9973) {
    pattern &= bytes[i] == static_cast<char>(i * 7 % 251);
  }
  CHECK(pattern);
}

TEST_CASE("E2E: a result of 2,048 chunks sent while the broker does not read arrives whole",
          "[broker]") {
  Cluster cluster;
  ApiKey key = cluster.CreateKey("alice");
  // A send queue of 4 chunks: the worker must wait for the broker, never drop a chunk. (It
  // waits 100 silent heartbeats before it reconnects to a broker it thinks dead.)
  cluster.StartWorker("a", {"--chunk-bytes", "16384", "--send-queue", "4",
                            "--heartbeat-liveness", "100"});
  auto client = cluster.NewClient(key.secret);
  cluster.WaitForWorkers(*client, 1);
  const int64_t bytes = int64_t{32} << 20;
  const std::string job =
      SubmitOk(*client, "result_bytes=" + std::to_string(bytes) + ";wait_file=" +
                            cluster.Path("release") + ";done_file=" + cluster.Path("done"));
  WaitState(*client, job, JobState::kRunning);
  cluster.broker().Signal(SIGSTOP);  // the broker reads nothing while the result is sent
  testing::ChildProcess touch({"/usr/bin/touch", cluster.Path("release")}, "/dev/null");
  REQUIRE(testing::WaitForFile(cluster.Path("done")));
  cluster.broker().Signal(SIGCONT);
  const JobStatus done = WaitDone(*client, job, 30000);
  REQUIRE(done.state == JobState::kCompleted);
  CHECK(done.result_chunks > 2048);
  auto result = client->FetchResult(job);
  REQUIRE(result.ok());
  const std::string echo = Saved(*result, "echo");
  REQUIRE(echo.size() == static_cast<size_t>(bytes));
  bool pattern = true;
  for (size_t i = 0; i < echo.size(); i += 4099) {
    pattern &= echo[i] == static_cast<char>(i * 7 % 251);
  }
  CHECK(pattern);
  const std::string next = SubmitOk(*client, "next");  // the worker was freed
  CHECK(WaitDone(*client, next).state == JobState::kCompleted);
}

TEST_CASE("E2E: a job past its time limit is stopped and reported, the worker goes on",
          "[broker][slow]") {
  Cluster cluster({"--time-limit-ms", "500"});
  ApiKey key = cluster.CreateKey("alice");
  cluster.StartWorker("a");
  auto client = cluster.NewClient(key.secret);
  cluster.WaitForWorkers(*client, 1);
  // Held until stopped: only the time limit can end it.
  const std::string slow = SubmitOk(*client, "wait_file=" + cluster.Path("never-created"));
  const JobStatus failed = WaitDone(*client, slow);
  CHECK(failed.state == JobState::kError);
  CHECK(failed.message == "time limit of 0.5 s exceeded");
  const std::string next = SubmitOk(*client, "quick");
  CHECK(WaitDone(*client, next).state == JobState::kCompleted);
}

TEST_CASE("E2E: a worker that does not stop at the time limit: the broker fails the job, CANCELLED",
          "[broker]") {
  Cluster cluster({"--time-limit-ms", "300", "--time-limit-grace-ms", "200"});
  ApiKey key = cluster.CreateKey("alice");
  cluster.StartWorker("a");
  auto client = cluster.NewClient(key.secret);
  cluster.WaitForWorkers(*client, 1);
  const std::string job =
      SubmitOk(*client, "ignore_stop=1;wait_file=" + cluster.Path("never-created"));
  const JobStatus failed = WaitDone(*client, job);
  CHECK(failed.state == JobState::kError);
  CHECK(failed.code == "CANCELLED");  // protocol/SPEC.md section 7: past its time limit
  CHECK(failed.message == "time limit of 0.3 s exceeded (the worker did not stop within 0.2 s of it)");
  CHECK(protocol::DecodeErrorReport(*client->FetchResult(job))->code == "CANCELLED");
}

TEST_CASE("E2E: cancelling a running job stops it, the worker takes the next", "[broker]") {
  Cluster cluster;
  ApiKey key = cluster.CreateKey("alice");
  cluster.StartWorker("a");
  auto client = cluster.NewClient(key.secret);
  cluster.WaitForWorkers(*client, 1);
  // Held until stopped: only the cancellation can end it.
  const std::string slow = SubmitOk(*client, "wait_file=" + cluster.Path("never-created"));
  WaitState(*client, slow, JobState::kRunning);
  auto cancelled = client->Cancel(slow);
  REQUIRE(cancelled.ok());
  CHECK(cancelled->state == JobState::kCancelled);
  CHECK(cancelled->message == "cancelled by the user");
  const std::string next = SubmitOk(*client, "quick");
  CHECK(WaitDone(*client, next).state == JobState::kCompleted);
  CHECK(client->FetchResult(slow).status().code() == StatusCode::kNotFound);
}

TEST_CASE("E2E: tokenize and the catalogue are answered while the only worker runs a job",
          "[broker]") {
  Cluster cluster;
  ApiKey key = cluster.CreateKey("alice");
  cluster.StartWorker("a");
  auto client = cluster.NewClient(key.secret);
  cluster.WaitForWorkers(*client, 1);
  const std::string release = cluster.Path("release");
  const std::string held = SubmitOk(*client, "wait_file=" + release);
  const std::string queued = SubmitOk(*client, "quick");
  WaitState(*client, held, JobState::kRunning);
  // Held until the file appears: the answers below cannot have waited for it.
  auto ids = client->Tokenize("test-model", "Hi!");
  REQUIRE(ids.ok());
  CHECK(*ids == std::vector<int64_t>{'H', 'i', '!'});
  auto models = client->ListModels();
  REQUIRE(models.ok());
  REQUIRE(models->size() == 1);
  CHECK((*models)[0].catalogue_json == R"({"points":[{"name":"model.norm.output"}]})");
  CHECK((*models)[0].queued == 1);
  CHECK(client->QueryStatus(held)->state == JobState::kRunning);
  CHECK(client->Tokenize("no-such-model", "x").status().code() == StatusCode::kNotFound);
  std::ofstream(release).put('x');
  CHECK(WaitDone(*client, held).state == JobState::kCompleted);
  CHECK(WaitDone(*client, queued).state == JobState::kCompleted);
}

TEST_CASE("E2E: development mode needs no key, and an error report is an ERROR state", "[broker]") {
  Cluster cluster({"--dev-no-auth"});
  cluster.StartWorker("a");
  auto client = cluster.NewClient("");
  cluster.WaitForWorkers(*client, 1);
  const std::string job = SubmitOk(*client, "error=node 3 is wrong");
  const JobStatus failed = WaitDone(*client, job);
  CHECK(failed.state == JobState::kError);
  CHECK(failed.code == "INVALID_ARGUMENT");
  CHECK(failed.message == "node 3 is wrong");
  CHECK(protocol::DecodeErrorReport(*client->FetchResult(job))->message == "node 3 is wrong");
  auto unserved = client->Submit(Request("x", "no-such-model"));
  CHECK(unserved.status().ToString() ==
        "NOT_FOUND: no worker serves model \"no-such-model\" (served now: \"test-model\")");
}

TEST_CASE("E2E: CURVE-encrypted client connections, plain clients get no answer", "[broker]") {
  Cluster cluster({}, /*curve=*/true);
  ApiKey key = cluster.CreateKey("alice");
  cluster.StartWorker("a");
  auto client = cluster.NewClient(key.secret, 10000, cluster.curve_public_key());
  cluster.WaitForWorkers(*client, 1);
  const std::string job = SubmitOk(*client, "encrypted");
  CHECK(WaitDone(*client, job).state == JobState::kCompleted);
  CHECK(Saved(*client->FetchResult(job), "prompt") == "encrypted");
  auto plain = cluster.NewClient(key.secret, 300);
  CHECK(plain->Submit(Request("x")).status().code() == StatusCode::kUnavailable);
}

// Waits until the file at `path` holds `text`; whether it does.
bool WaitForText(const std::string& path, const std::string& text) {
  for (int i = 0; i < 5000 && ReadFile(path).find(text) == std::string::npos; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  return ReadFile(path).find(text) != std::string::npos;
}

TEST_CASE("E2E: only workers with an authorised CURVE key register, get prompts, send results",
          "[broker]") {
  testing::TempDir keys;
  const std::string k = keys.path() + "/";
  for (const char* name : {"broker", "good", "rogue"}) {
    Run(testing::BinDir() + "/glassbox-broker curve-keygen --out " + k + name);
  }
  {
    std::ofstream authorised(k + "authorised");
    authorised << "# the workers this broker admits\n\n" << ReadFile(k + "good.pub");
  }
  Cluster cluster(
      {"--worker-curve-secret-key-file", k + "broker.key", "--worker-keys", k + "authorised"});
  ApiKey key = cluster.CreateKey("alice");
  auto client = cluster.NewClient(key.secret);
  // A worker without keys and one whose key is not listed: each is refused at the handshake
  // (the broker logs each kind), so neither registers, sees a job or can send a result.
  cluster.StartWorker("plain");
  cluster.StartWorker("rogue",
                      {"--broker-key", k + "broker.pub", "--worker-key", k + "rogue.key"});
  const std::string log = cluster.Path("broker.log");
  REQUIRE(WaitForText(log, "its CURVE key is not among the authorised worker keys"));
  REQUIRE(WaitForText(log, "its handshake was not CURVE with the broker's worker key"));
  auto models = client->ListModels();
  REQUIRE(models.ok());
  CHECK(models->empty());
  CHECK(client->Submit(Request("x")).status().code() == StatusCode::kNotFound);
  cluster.StartWorker("good", {"--broker-key", k + "broker.pub", "--worker-key", k + "good.key"});
  cluster.WaitForWorkers(*client, 1);
  for (int i = 0; i < 3; ++i) {
    const std::string job = SubmitOk(*client, "private prompt " + std::to_string(i));
    CHECK(WaitDone(*client, job).state == JobState::kCompleted);
    CHECK(Saved(*client->FetchResult(job), "worker") == "good");
  }
  cluster.WaitForWorkers(*client, 1);  // still the one
}

TEST_CASE("E2E: the broker refuses worker authentication files that do not hold keys",
          "[broker]") {
  testing::TempDir keys;
  const std::string k = keys.path() + "/";
  Run(testing::BinDir() + "/glassbox-broker curve-keygen --out " + k + "broker");
  {
    std::ofstream authorised(k + "authorised");
    authorised << "not a key\n";
  }
  const std::string out =
      Run(testing::BinDir() + "/glassbox-broker serve --clients tcp://127.0.0.1:" +
          std::to_string(testing::FreePort()) + " --worker-curve-secret-key-file " + k +
          "broker.key --worker-keys " + k + "authorised 2>&1");
  CHECK(out.find("INVALID_ARGUMENT: line 1 of " + k +
                 "authorised is not a 40-character Z85 CURVE public key") != std::string::npos);
}

}  // namespace
}  // namespace glassbox::broker
