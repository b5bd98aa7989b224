// RunJob: the worker's bytes-in, bytes-out step, on the tiny checkpoint.
// LibTorch brings glog, whose CHECK would replace Catch's: it goes first, so Catch's wins.
#include <c10/util/Logging.h>
#include <catch2/catch.hpp>

#include "protocol/codec.h"
#include "tests/engine/tensor_fixtures.h"
#include "worker/job.h"
#include "worker/serve.h"

namespace glassbox::worker {
namespace {

using protocol::Value;

protocol::Request ReadLogits(const std::string& model, const std::string& point) {
  protocol::Request request;
  request.model = model;
  protocol::Trace trace;
  trace.invokes.push_back({std::nullopt, std::vector<int64_t>{1, 5, 9}});
  trace.nodes.push_back({0, "read", {}, {{"point", Value::String(point)}}, "job_test.py:7"});
  trace.nodes.push_back({1, "save", {Value::Ref(0)}, {{"name", Value::String("logits")}}, ""});
  request.traces.push_back(trace);
  return request;
}

protocol::ErrorReport ExpectError(const std::string& bytes) {
  auto envelope = protocol::PeekEnvelope(bytes);
  REQUIRE(envelope.ok());
  REQUIRE(envelope->type == protocol::MessageType::kError);
  auto report = protocol::DecodeErrorReport(bytes);
  REQUIRE(report.ok());
  return *report;
}

TEST_CASE("RunJob turns request bytes into result or error bytes", "[worker]") {
  auto loaded = Model::Load(testing::kTinyLlamaDir);
  REQUIRE(loaded.ok());
  const Model& model = **loaded;
  const intervention::InterventionLimits limits;

  SECTION("a good request gives its saved values") {
    std::string bytes = RunJob(model, "tiny", protocol::EncodeRequest(ReadLogits("tiny", "lm_head.output")),
                               limits, {});
    auto result = protocol::DecodeResult(bytes);
    REQUIRE(result.ok());
    REQUIRE(result->saved.size() == 1);
    CHECK(result->saved[0].name == "logits");
    const protocol::TensorData& t = *result->saved[0].value.tensor;
    const std::vector<int64_t> expected_shape = {1, 3, model.config().vocab_size};
    CHECK(t.shape == expected_shape);
  }
  SECTION("garbage bytes are refused with the decoder's reason") {
    auto report = ExpectError(RunJob(model, "tiny", std::string("\x93\x01\x02", 3), limits, {}));
    CHECK(report.code == "INVALID_ARGUMENT");
    CHECK(report.message.find("the request could not be decoded") == 0);
  }
  SECTION("a request for another model names both") {
    auto report = ExpectError(
        RunJob(model, "tiny", protocol::EncodeRequest(ReadLogits("llama-70b", "lm_head.output")), limits, {}));
    CHECK(report.code == "INVALID_ARGUMENT");
    CHECK(report.message.find("'tiny'") != std::string::npos);
    CHECK(report.message.find("'llama-70b'") != std::string::npos);
  }
  SECTION("a graph problem names the node, its source and the point") {
    auto report = ExpectError(
        RunJob(model, "tiny", protocol::EncodeRequest(ReadLogits("tiny", "lm_head.outptu")), limits, {}));
    CHECK(report.code == "INVALID_ARGUMENT");
    CHECK(report.message.find("node 0 (job_test.py:7)") != std::string::npos);
    CHECK(report.message.find("lm_head.output") != std::string::npos);  // the suggestion
  }
  SECTION("an interrupted job reports why it stopped") {
    intervention::RunControl control;
    control.interrupt = [] { return Cancelled("cancelled by the user"); };
    auto report = ExpectError(
        RunJob(model, "tiny", protocol::EncodeRequest(ReadLogits("tiny", "lm_head.output")), limits, control));
    CHECK(report.code == "CANCELLED");
    CHECK(report.message.find("cancelled by the user") != std::string::npos);
  }
}

TEST_CASE("a worker's default memory budget is half of MemAvailable", "[worker]") {
  const std::string meminfo =
      "MemTotal:        8000000 kB\nMemFree:          100000 kB\nMemAvailable:    6000000 kB\n"
      "Buffers:           20000 kB\n";
  CHECK(DefaultMaxJobBytes(meminfo) == int64_t{6000000} * 1024 / 2);
  CHECK(DefaultMaxJobBytes("MemTotal: 8000000 kB\n") == 0);  // no line: no budget
  CHECK(DefaultMaxJobBytes("") == 0);
}

}  // namespace
}  // namespace glassbox::worker

namespace glassbox::worker {
namespace {

TEST_CASE("a worker refuses a batch slot count it cannot serve, before loading anything", "[worker]") {
  for (int slots : {0, -3, 65}) {
    INFO("slots " << slots);
    ServeParams params;
    params.model_path = "/no/such/model";  // never opened: the check comes first
    params.name = "tiny";
    params.batch_slots = slots;
    const std::atomic<bool> stop{true};
    Status status = Serve(params, stop);
    CHECK(status.code() == StatusCode::kInvalidArgument);
    CHECK(status.message() == "--batch-slots must be between 1 and 64, got " + std::to_string(slots));
  }
}

}  // namespace
}  // namespace glassbox::worker
