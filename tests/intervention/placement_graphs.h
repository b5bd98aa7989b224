// One request that touches every kind of value that must live on the model's device —
// tensor literals written into the pass, creation ops, reads, a module call, a gradient, and
// generation with a write at every step — and a comparison of two results of it. Used to
// check a model held in another dtype (bfloat16 here, on the CPU) or on another device
// (CUDA, tests/gpu) against the float32 CPU run.
#ifndef GLASSBOX_TESTS_INTERVENTION_PLACEMENT_GRAPHS_H_
#define GLASSBOX_TESTS_INTERVENTION_PLACEMENT_GRAPHS_H_

#include <ATen/ops/from_blob.h>
#include <ATen/ops/linspace.h>

#include "tests/intervention/graph_test_util.h"

namespace glassbox::intervention::testing_graphs {

inline Value FloatLiteral(const at::Tensor& t) {
  at::Tensor c = t.to(at::kFloat).contiguous();
  return Value::Tensor({protocol::DType::kFloat32, c.sizes().vec(),
                        std::string(static_cast<const char*>(c.data_ptr()), c.numel() * 4)});
}

inline protocol::Request PlacementGraph() {
  protocol::Request request;
  GraphBuilder g(request);
  // A forward: a literal added to a layer's output (written back), a creation op, a module
  // call (the logit lens), a gradient of one logit at the written point.
  g.Trace({kClean, kCorrupt});
  const std::string point = "model.layers.1.output";
  int64_t h = g.Read(point);
  int64_t shift = g.Add("mul", {Value::Ref(g.Add("ones", {Value::List({Value::Int(64)})})),
                                Value::Float(0.25)});
  int64_t steer = g.Add("add", {Value::Ref(h), FloatLiteral(at::linspace(-1.0, 1.0, 64))});
  int64_t shifted = g.Add("add", {Value::Ref(steer), Value::Ref(shift)});
  g.Add("write", {Value::Ref(shifted)},
        {{"point", Value::String(point)}, {"invoke", Value::Int(0)}, {"step", Value::Int(0)}});
  int64_t normed = g.Add("module", {Value::Ref(g.Read("model.layers.0.output"))},
                         {{"name", Value::String("model.norm")}});
  int64_t lens = g.Add("module", {Value::Ref(normed)}, {{"name", Value::String("lm_head")}});
  g.Save(lens, "logit_lens");
  int64_t logits = g.Read("lm_head.output");
  g.Save(logits, "logits");
  int64_t last = g.Add("getitem", {Value::Ref(logits), Value::List({Value::Int(0), Value::Int(-1), Value::Int(7)})});
  int64_t backward = g.Add("backward", {Value::Ref(last)});
  g.Save(g.Add("grad", {Value::Ref(backward)}, {{"point", Value::String("model.layers.0.output")},
                                                {"invoke", Value::Int(0)}}),
         "grad");
  g.Save(g.Read("model.layers.1.self_attn.attn_pattern", 1), "pattern");
  // Generation with a steering write at every step.
  g.Trace({kClean});
  request.traces.back().generate = protocol::GenerateOptions{};
  request.traces.back().generate->max_new_tokens = 5;
  request.traces.back().generate->stop_ids = {-1};
  int64_t each = g.Read("model.layers.0.output", 0, Value::String("all"));
  g.Add("write", {Value::Ref(g.Add("add", {Value::Ref(each), FloatLiteral(at::linspace(2.0, -2.0, 64))}))},
        {{"point", Value::String("model.layers.0.output")}, {"invoke", Value::Int(0)},
         {"step", Value::String("all")}});
  g.Save(g.Read("lm_head.output", 0, Value::String("all")), "logits_per_step");
  return request;
}

// A saved tensor as float32 on the CPU, whatever dtype it came back in.
inline at::Tensor AsFloat(const Value& v) {
  REQUIRE(v.kind == Value::Kind::kTensor);
  const protocol::TensorData& t = *v.tensor;
  if (t.dtype == protocol::DType::kFloat32) return TensorOf(v);
  REQUIRE(t.dtype == protocol::DType::kBFloat16);
  at::Tensor raw = at::empty(t.shape, at::kBFloat16);
  std::memcpy(raw.data_ptr(), t.bytes.data(), t.bytes.size());
  return raw.to(at::kFloat);
}

// Every saved value of `actual` within `tolerance` of `expected`'s, relative to the largest
// |value| of each; generated tokens equal when `same_tokens`.
inline void CheckSameResults(const protocol::Result& expected, const protocol::Result& actual,
                             double tolerance, bool same_tokens) {
  REQUIRE(actual.saved.size() == expected.saved.size());
  for (const protocol::SavedValue& want : expected.saved) {
    INFO("saved value " << want.name);
    const Value& got = Saved(actual, want.name).value;
    std::vector<const Value*> a, b;
    if (want.value.kind == Value::Kind::kList) {
      REQUIRE(got.kind == Value::Kind::kList);
      REQUIRE(got.list.size() == want.value.list.size());
      for (size_t i = 0; i < got.list.size(); ++i) a.push_back(&want.value.list[i]), b.push_back(&got.list[i]);
    } else {
      a.push_back(&want.value), b.push_back(&got);
    }
    for (size_t i = 0; i < a.size(); ++i) {
      at::Tensor reference = AsFloat(*a[i]);
      const double scale = std::max(reference.abs().max().item<double>(), 1e-6);
      CHECK(MaxAbsDiff(AsFloat(*b[i]), reference) <= tolerance * scale);
    }
  }
  if (same_tokens) CHECK(actual.generated == expected.generated);
}

}  // namespace glassbox::intervention::testing_graphs

#endif  // GLASSBOX_TESTS_INTERVENTION_PLACEMENT_GRAPHS_H_
