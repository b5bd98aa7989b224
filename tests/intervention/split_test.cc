// Intervention graphs on a model whose layers are split across placements (the CPU test
// option of a multi-GPU split): reads, writes of client values, gradients and a steered
// generation give what the unsplit model gives.
#include <ATen/ops/linspace.h>
#include <catch2/catch.hpp>

#include "intervention/intervention.h"
#include "tests/engine/tensor_fixtures.h"
#include "tests/intervention/graph_test_util.h"

namespace glassbox::intervention {
namespace {

using namespace testing_graphs;  // NOLINT: the helpers every graph test uses
using protocol::Value;
using testing::MaxAbsDiff;

// Attribution patching with a client-given steering vector written at the last layer's
// input, and a generation steered at every step at layer 1.
protocol::Request Experiment() {
  at::Tensor direction = at::linspace(-1.0, 1.0, 64, at::kFloat);
  protocol::TensorData data{protocol::DType::kFloat32, {64},
                            std::string(reinterpret_cast<const char*>(direction.data_ptr()), 64 * 4)};
  protocol::Request request;
  GraphBuilder g(request);
  const std::string point = "model.layers.0.output";
  g.Trace({kClean});
  int64_t clean = g.Read(point);
  g.Trace({kCorrupt});
  int64_t corrupt = g.Read(point);
  int64_t late = g.Read("model.layers.2.input");
  int64_t steered = g.Add("add", {Value::Ref(late), Value::Tensor(data)});
  g.Add("write", {Value::Ref(steered)}, {{"point", Value::String("model.layers.2.input")}, {"invoke", Value::Int(0)}});
  int64_t logits = g.Read("lm_head.output");
  int64_t last = g.Add("getitem", {Value::Ref(logits), Value::List({Value::Int(0), Value::Int(-1), Value::Int(7)})});
  int64_t backward = g.Add("backward", {Value::Ref(last)});
  int64_t grad = g.Add("grad", {Value::Ref(backward)}, {{"point", Value::String(point)}, {"invoke", Value::Int(0)}});
  int64_t late_grad = g.Add("grad", {Value::Ref(backward)}, {{"point", Value::String("model.layers.2.output")}, {"invoke", Value::Int(0)}});
  int64_t diff = g.Add("sub", {Value::Ref(clean), Value::Ref(corrupt)});
  g.Save(g.Add("mul", {Value::Ref(grad), Value::Ref(diff)}), "attribution");
  g.Save(grad, "grad");
  g.Save(late_grad, "late_grad");
  g.Save(logits, "logits");
  g.Trace({kClean});
  request.traces.back().generate = protocol::GenerateOptions{};
  request.traces.back().generate->max_new_tokens = 5;
  request.traces.back().generate->stop_ids = {-1};
  int64_t h = g.Read("model.layers.1.output", 0, Value::String("all"));
  int64_t pushed = g.Add("add", {Value::Ref(h), Value::Tensor(data)});
  g.Add("write", {Value::Ref(pushed)}, {{"point", Value::String("model.layers.1.output")},
                                        {"invoke", Value::Int(0)}, {"step", Value::String("all")}});
  return request;
}

TEST_CASE("a graph with writes, gradients and generation on 2 and 3 placements", "[intervention][split]") {
  auto whole = TinyModel();
  const protocol::Result expected = RunOk(*whole, Experiment());
  for (int placements : {2, 3}) {
    EngineParams params;
    params.testing_cpu_placements = placements;
    auto split = testing::LoadOrFail(testing::kTinyLlamaDir, params);
    INFO(split->placement());
    const protocol::Result actual = RunOk(*split, Experiment());
    REQUIRE(actual.saved.size() == expected.saved.size());
    for (const char* name : {"attribution", "grad", "late_grad", "logits"}) {
      INFO(name);
      CHECK(MaxAbsDiff(TensorOf(Saved(actual, name).value), TensorOf(Saved(expected, name).value)) <= 1e-6);
    }
    CHECK(actual.generated == expected.generated);
  }
  CHECK(TensorOf(Saved(expected, "late_grad").value).abs().max().item<double>() > 0.0);
}

}  // namespace
}  // namespace glassbox::intervention
