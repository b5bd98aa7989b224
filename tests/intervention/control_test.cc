// RunControl: a caller (the worker) stops a run between hook points — a cancelled job or a
// time limit — and the model stays usable for the next run.
// LibTorch brings glog, whose CHECK would replace Catch's: it goes first, so Catch's wins.
#include <c10/util/Logging.h>
#include <catch2/catch.hpp>

#include "intervention/intervention.h"
#include "tests/engine/tensor_fixtures.h"

namespace glassbox::intervention {
namespace {

using protocol::Value;

// A generation of `steps` tokens that saves the logits of every step.
protocol::Request GenerationRequest(int64_t steps) {
  protocol::Request request;
  protocol::Trace trace;
  trace.invokes.push_back({std::nullopt, std::vector<int64_t>{1, 5, 9, 3}});
  trace.generate = protocol::GenerateOptions{};
  trace.generate->max_new_tokens = steps;
  trace.generate->stop_ids = {-1};
  protocol::Node read{0, "read", {}, {{"point", Value::String("lm_head.output")},
                                      {"invoke", Value::Int(0)}, {"step", Value::String("all")}}, ""};
  protocol::Node save{1, "save", {Value::Ref(0)}, {}, ""};
  trace.nodes = {read, save};
  request.traces.push_back(trace);
  return request;
}

TEST_CASE("an interrupt stops a run between layers and names its reason", "[intervention]") {
  auto loaded = Model::Load(testing::kTinyLlamaDir);
  REQUIRE(loaded.ok());
  const Model& model = **loaded;
  const int64_t layers = model.config().num_layers;

  int checks = 0;
  RunControl control;
  control.interrupt = [&]() -> Status {
    // Let the prompt's pass and one layer of the next step run, then stop.
    if (++checks > layers + 1) return Cancelled("time limit of 1 s exceeded");
    return Status::Ok();
  };
  auto stopped = Run(model, GenerationRequest(5), InterventionLimits(), control);
  REQUIRE_FALSE(stopped.ok());
  CHECK(stopped.status().code() == StatusCode::kCancelled);
  CHECK(stopped.status().message().find("time limit of 1 s exceeded") != std::string::npos);
  CHECK(checks == layers + 2);  // asked once per layer, and nothing ran after the refusal

  // The model is unharmed: the same request without the interrupt completes all 5 steps.
  int counted = 0;
  RunControl counting;
  counting.interrupt = [&] { ++counted; return Status::Ok(); };
  auto full = Run(model, GenerationRequest(5), InterventionLimits(), counting);
  REQUIRE(full.ok());
  REQUIRE(full->generated.size() == 1);
  CHECK(full->generated[0].size() == 5);
  CHECK(counted == 5 * layers);
}

}  // namespace
}  // namespace glassbox::intervention
