// The whole service with the real engine: redis-server, glassbox-broker and
// `glassbox-engine serve` as real processes, driven through broker/client.h. What a user gets
// back must be exactly what running the same graph in-process gives.
// LibTorch brings glog, whose CHECK would replace Catch's: it goes first, so Catch's wins.
#include <c10/util/Logging.h>
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <chrono>
#include <limits>
#include <memory>
#include <thread>

#include "broker/client.h"
#include "intervention/intervention.h"
#include "protocol/codec.h"
#include "tests/broker/processes.h"
#include "tests/engine/tensor_fixtures.h"

namespace glassbox::worker {
namespace {

using broker::testing::ChildProcess;
using protocol::JobState;
using protocol::Value;

// Redis, a development-mode broker and engine workers, each a real process.
class Service {
 public:
  explicit Service(std::vector<std::string> broker_flags = {}) : redis_(dir_.path()) {
    std::vector<std::string> args = {broker::testing::BinDir() + "/glassbox-broker", "serve",
                                     "--clients", ClientEndpoint(), "--workers", WorkerEndpoint(),
                                     "--redis", redis_.address(), "--dev-no-auth"};
    args.insert(args.end(), broker_flags.begin(), broker_flags.end());
    broker_ = std::make_unique<ChildProcess>(args, dir_.path() + "/broker.log");
    REQUIRE(broker::testing::WaitForPort(client_port_, 10000));
  }

  void StartEngine(const std::string& model_path, const std::string& name,
                   std::vector<std::string> flags = {}) {
    std::vector<std::string> args = {broker::testing::BinDir() + "/glassbox-engine", "serve",
                                     "--model", model_path, "--name", name, "--broker",
                                     WorkerEndpoint(), "--heartbeat-ms", "200"};
    args.insert(args.end(), flags.begin(), flags.end());
    workers_.push_back(std::make_unique<ChildProcess>(args, dir_.path() + "/engine-" + name + ".log"));
  }

  std::unique_ptr<broker::Client> NewClient() {
    broker::ClientParams params;
    params.endpoint = ClientEndpoint();
    params.timeout_ms = 10000;
    auto client = broker::Client::Connect(params);
    REQUIRE(client.ok());
    return std::move(client).value();
  }

  // Waits until a worker serves `name` (model loading takes a moment); returns its entry.
  protocol::ModelInfo WaitForModel(broker::Client& client, const std::string& name) {
    for (int i = 0; i < 600; ++i) {
      auto models = client.ListModels();
      if (models.ok()) {
        for (const auto& m : *models) {
          if (m.name == name && m.workers > 0) return m;
        }
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    FAIL("no engine worker registered model " << name);
    return {};
  }

  // What the engine worker serving `name` has logged so far.
  std::string EngineLog(const std::string& name) const {
    return testing::ReadTextFile(dir_.path() + "/engine-" + name + ".log");
  }

 private:
  std::string ClientEndpoint() const { return "tcp://127.0.0.1:" + std::to_string(client_port_); }
  std::string WorkerEndpoint() const { return "tcp://127.0.0.1:" + std::to_string(worker_port_); }

  broker::testing::TempDir dir_;
  broker::testing::RedisServer redis_;
  int client_port_ = broker::testing::FreePort();
  int worker_port_ = broker::testing::FreePort();
  std::unique_ptr<ChildProcess> broker_;
  std::vector<std::unique_ptr<ChildProcess>> workers_;
};

protocol::Request ReadAndSave(const std::string& model, const std::string& point,
                              std::optional<protocol::GenerateOptions> generate = std::nullopt) {
  protocol::Request request;
  request.model = model;
  protocol::Trace trace;
  trace.invokes.push_back({std::nullopt, std::vector<int64_t>{1, 17, 42, 99}});
  trace.invokes.push_back({std::nullopt, std::vector<int64_t>{5, 63}});
  trace.generate = std::move(generate);
  trace.nodes.push_back({0, "read", {}, {{"point", Value::String(point)},
                                         {"invoke", Value::Int(1)}}, "service_test.py:3"});
  trace.nodes.push_back({1, "save", {Value::Ref(0)}, {{"name", Value::String("x")}}, ""});
  request.traces.push_back(trace);
  return request;
}

// The step a stopped generation's message names ("... (at generation step 12 of 400)").
int64_t StoppedAtStep(const std::string& message) {
  const std::string marker = "at generation step ";
  const size_t at = message.find(marker);
  INFO(message);
  REQUIRE(at != std::string::npos);
  return std::stoll(message.substr(at + marker.size()));
}

broker::JobStatus WaitDone(broker::Client& client, const std::string& job, int timeout_ms) {
  auto status = client.WaitForStatus(job, {}, timeout_ms);
  REQUIRE(status.ok());
  return *status;
}

TEST_CASE("the engine worker serves graphs through broker and Redis as in-process",
          "[worker][service]") {
  Service service;
  service.StartEngine(testing::kTinyLlamaDir, "tiny");
  auto client = service.NewClient();
  const protocol::ModelInfo info = service.WaitForModel(*client, "tiny");
  nlohmann::json catalogue = nlohmann::json::parse(info.catalogue_json);
  CHECK(catalogue["model"]["num_layers"] == 3);
  CHECK(info.catalogue_json.find("model.layers.2.self_attn.attn_pattern") != std::string::npos);

  auto loaded = Model::Load(testing::kTinyLlamaDir);
  REQUIRE(loaded.ok());
  for (const char* point : {"lm_head.output", "blocks.1.attn.hook_z", "model.layers.0.mlp.up_proj.input"}) {
    const protocol::Request request = ReadAndSave("tiny", point);
    auto job = client->Submit(protocol::EncodeRequest(request));
    REQUIRE(job.ok());
    CHECK(WaitDone(*client, *job, 10000).state == JobState::kCompleted);
    auto remote = client->FetchResult(*job);
    REQUIRE(remote.ok());
    auto local = intervention::Run(**loaded, request);
    REQUIRE(local.ok());
    INFO(point);
    CHECK(*remote == protocol::EncodeResult(*local));  // bit for bit
  }

  // A graph error comes back naming the node and its source line; the worker goes on.
  auto bad = client->Submit(protocol::EncodeRequest(ReadAndSave("tiny", "model.layers.7.output")));
  REQUIRE(bad.ok());
  const broker::JobStatus failed = WaitDone(*client, *bad, 10000);
  CHECK(failed.state == JobState::kError);
  CHECK(failed.code == "INVALID_ARGUMENT");
  CHECK(failed.message.find("node 0 (service_test.py:3)") != std::string::npos);
  auto report = protocol::DecodeErrorReport(*client->FetchResult(*bad));
  REQUIRE(report.ok());
  CHECK(report->message == failed.message);
  auto after = client->Submit(protocol::EncodeRequest(ReadAndSave("tiny", "lm_head.output")));
  REQUIRE(after.ok());
  CHECK(WaitDone(*client, *after, 10000).state == JobState::kCompleted);
}

TEST_CASE("one broker serves several models, each job reaching its own model's worker",
          "[worker][service]") {
  Service service;
  service.StartEngine(testing::kTinyLlamaDir, "tiny");
  service.StartEngine("tests/fixtures/tiny_llama_sharded", "tiny-sharded");
  auto client = service.NewClient();
  service.WaitForModel(*client, "tiny");
  service.WaitForModel(*client, "tiny-sharded");
  auto models = client->ListModels();
  REQUIRE(models.ok());
  CHECK(models->size() == 2);

  // The same weights in two layouts: the same answer, each from its own worker (a worker
  // refuses a request naming another model, so a misrouted job would fail).
  std::vector<std::string> results;
  for (const char* name : {"tiny", "tiny-sharded"}) {
    auto job = client->Submit(protocol::EncodeRequest(ReadAndSave(name, "lm_head.output")));
    REQUIRE(job.ok());
    REQUIRE(WaitDone(*client, *job, 10000).state == JobState::kCompleted);
    results.push_back(*client->FetchResult(*job));
  }
  CHECK(results[0] == results[1]);
}

// Node 0 is `op`; its value is saved, or (with `sum`) the sum of it.
protocol::Request OneNode(const std::string& model, const std::string& op, std::vector<Value> args,
                          bool sum = false) {
  protocol::Request request;
  request.model = model;
  protocol::Trace trace;
  trace.invokes.push_back({std::nullopt, std::vector<int64_t>{1, 17, 42}});
  trace.nodes.push_back({0, op, std::move(args), {}, "hostile.py:1"});
  if (sum) trace.nodes.push_back({1, "sum", {Value::Ref(0)}, {}, ""});
  trace.nodes.push_back({sum ? 2 : 1, "save", {Value::Ref(sum ? 1 : 0)}, {}, ""});
  request.traces.push_back(trace);
  return request;
}

TEST_CASE("hostile requests get a clear error from a real worker, which goes on serving",
          "[worker][service]") {
  Service service;
  service.StartEngine(testing::kTinyLlamaDir, "tiny", {"--max-job-bytes", "67108864"});
  auto client = service.NewClient();
  service.WaitForModel(*client, "tiny");
  auto expect = [&](const protocol::Request& request, const std::string& code,
                    std::vector<std::string> texts) {
    auto job = client->Submit(protocol::EncodeRequest(request));
    REQUIRE(job.ok());
    const broker::JobStatus status = WaitDone(*client, *job, 30000);
    INFO(status.code << ": " << status.message.substr(0, 2000));
    CHECK(status.state == JobState::kError);
    CHECK(status.code == code);
    CHECK(status.message.size() < 1000);
    for (const std::string& text : texts) CHECK(status.message.find(text) != std::string::npos);
  };
  // Killed every worker it reached with SIGFPE.
  expect(OneNode("tiny", "arange", {Value::Int(0), Value::Int(std::numeric_limits<int64_t>::min()), Value::Int(-1)}),
         "INVALID_ARGUMENT", {"node 0 (hostile.py:1)", "arange(0, -9223372036854775808, -1)"});
  protocol::GenerateOptions nan_sampling;
  nan_sampling.max_new_tokens = 4;
  nan_sampling.temperature = std::numeric_limits<double>::quiet_NaN();
  expect(ReadAndSave("tiny", "lm_head.output", nan_sampling), "INVALID_ARGUMENT",
         {"temperature is nan"});
  expect(OneNode("tiny", std::string(size_t{1} << 20, 'x'), {}), "INVALID_ARGUMENT",
         {"op name 'xxxx", "(1048576 bytes) is longer than 256 bytes"});
  std::vector<Value> huge = {Value::Int(30000), Value::Int(30000)};
  expect(OneNode("tiny", "ones", {Value::List(huge)}, /*sum=*/true), "RESOURCE_EXHAUSTED",
         {"this job needs an estimated ", "graph values 3600000004",
          "this worker's limit is 67108864 bytes per job"});

  // The same worker is alive and serves the next job.
  auto models = client->ListModels();
  REQUIRE(models.ok());
  REQUIRE(models->size() == 1);
  CHECK((*models)[0].workers == 1);
  auto after = client->Submit(protocol::EncodeRequest(ReadAndSave("tiny", "lm_head.output")));
  REQUIRE(after.ok());
  CHECK(WaitDone(*client, *after, 10000).state == JobState::kCompleted);
}

TEST_CASE("a worker refuses graph ops that cannot finish within the job's time limit",
          "[worker][service]") {
  Service service({"--time-limit-ms", "60000"});
  service.StartEngine(testing::kTinyLlamaDir, "tiny", {"--flops-per-second", "1000"});
  auto client = service.NewClient();
  service.WaitForModel(*client, "tiny");
  // A 256 x 256 matrix product: 2 * 256^3 FLOP, far past 60 s at 1,000 FLOP/s.
  protocol::Request request = OneNode("tiny", "ones", {Value::List({Value::Int(256), Value::Int(256)})});
  protocol::Trace& trace = request.traces[0];
  trace.nodes.back() = {1, "matmul", {Value::Ref(0), Value::Ref(0)}, {}, "slow.py:2"};
  trace.nodes.push_back({2, "sum", {Value::Ref(1)}, {}, ""});
  trace.nodes.push_back({3, "save", {Value::Ref(2)}, {}, ""});
  auto job = client->Submit(protocol::EncodeRequest(request));
  REQUIRE(job.ok());
  const broker::JobStatus status = WaitDone(*client, *job, 30000);
  INFO(status.code << ": " << status.message);
  CHECK(status.state == JobState::kError);
  CHECK(status.code == "RESOURCE_EXHAUSTED");
  CHECK(status.message.find("at this worker's rate of 1000 FLOP/s (--flops-per-second)") != std::string::npos);
  // A job within the budget still runs on the same worker.
  auto small = client->Submit(protocol::EncodeRequest(ReadAndSave("tiny", "lm_head.output")));
  REQUIRE(small.ok());
  CHECK(WaitDone(*client, *small, 10000).state == JobState::kCompleted);
}

TEST_CASE("a long generation is stopped between hook points by its time limit or a cancel",
          "[worker][service][model][smollm2][slow]") {
  // The broker itself would give up only after 60 s of grace, saying that the worker did not
  // stop: the worker's own message proves it stopped the forward pass itself.
  Service service({"--time-limit-ms", "4000", "--time-limit-grace-ms", "60000"});
  service.StartEngine(testing::kSmolLm2Path, "smollm2");
  auto client = service.NewClient();
  const nlohmann::json catalogue =
      nlohmann::json::parse(service.WaitForModel(*client, "smollm2").catalogue_json);
  // The vocabulary travels with the catalogue, so clients decode ids as the server does.
  CHECK(catalogue["tokenizer"]["tokens"].size() == 49152);
  CHECK(catalogue["tokenizer"]["tokens"][7042] == "\u0120Paris");  // "ĠParis"
  CHECK(catalogue["tokenizer"]["special_ids"].size() > 0);
  protocol::GenerateOptions long_generation;
  long_generation.max_new_tokens = 400;
  long_generation.stop_ids = {-1};
  const std::string request =
      protocol::EncodeRequest(ReadAndSave("smollm2", "model.norm.output", long_generation));

  auto timed = client->Submit(request);
  REQUIRE(timed.ok());
  const broker::JobStatus out_of_time = WaitDone(*client, *timed, 120000);
  CHECK(out_of_time.state == JobState::kError);
  CHECK(out_of_time.message.find("time limit of 4 s exceeded") != std::string::npos);
  CHECK(out_of_time.message.find("did not stop") == std::string::npos);  // not the broker's
  CHECK(StoppedAtStep(out_of_time.message) < 400);  // the worker stopped mid-generation

  auto cancelled = client->Submit(request);
  REQUIRE(cancelled.ok());
  REQUIRE(client->WaitForStatus(*cancelled, [](const broker::JobStatus& s) {
    return s.state == JobState::kRunning;
  }, 10000).ok());
  auto cancel = client->Cancel(*cancelled);
  REQUIRE(cancel.ok());
  CHECK(cancel->state == JobState::kCancelled);

  // The worker lets go of the cancelled generation mid-way (its log says at which step) and
  // takes the next job (one batch slot: only once the cancelled job has left it).
  auto next = client->Submit(protocol::EncodeRequest(ReadAndSave("smollm2", "lm_head.output")));
  REQUIRE(next.ok());
  const broker::JobStatus after = WaitDone(*client, *next, 120000);
  INFO(after.code << ": " << after.message);
  CHECK(after.state == JobState::kCompleted);
  const std::string log = service.EngineLog("smollm2");
  const size_t line = log.find("job " + *cancelled + " stopped: ");
  INFO(log);
  REQUIRE(line != std::string::npos);
  const std::string stopped = log.substr(line, log.find('\n', line) - line);
  CHECK(stopped.find("cancelled by the user") != std::string::npos);
  CHECK(StoppedAtStep(stopped) < 400);
}

}  // namespace
}  // namespace glassbox::worker
