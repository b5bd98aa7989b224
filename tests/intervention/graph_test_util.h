// Helpers for intervention tests on the tiny checkpoint: building graphs node by node,
// running them, reading saved tensors, and capturing activations by hand through engine hooks.
#ifndef GLASSBOX_TESTS_INTERVENTION_GRAPH_TEST_UTIL_H_
#define GLASSBOX_TESTS_INTERVENTION_GRAPH_TEST_UTIL_H_

#include <ATen/ops/empty.h>
#include <catch2/catch.hpp>

#include <cstring>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "intervention/intervention.h"
#include "tests/engine/tensor_fixtures.h"

namespace glassbox::intervention::testing_graphs {

using protocol::Value;
using ::glassbox::testing::MaxAbsDiff;

inline std::unique_ptr<Model> TinyModel() {
  auto model = Model::Load(testing::kTinyLlamaDir);
  INFO(model.status().ToString());
  REQUIRE(model.ok());
  return std::move(model).value();
}

// Builds a trace node by node; ids count up across every trace of the request.
class GraphBuilder {
 public:
  explicit GraphBuilder(protocol::Request& request) : request_(request) {}
  protocol::Trace& Trace(std::vector<std::vector<int64_t>> prompts) {
    protocol::Trace t;
    for (auto& p : prompts) t.invokes.push_back({std::nullopt, p});
    request_.traces.push_back(t);
    return request_.traces.back();
  }
  int64_t Add(const std::string& op, std::vector<Value> args, std::map<std::string, Value> kwargs = {}) {
    protocol::Node n;
    n.id = next_++;
    n.op = op;
    n.args = std::move(args);
    n.kwargs = std::move(kwargs);
    n.source = "interpreter_test.cc";
    request_.traces.back().nodes.push_back(n);
    return n.id;
  }
  int64_t Read(const std::string& point, std::optional<int64_t> invoke = 0, Value step = Value::Int(0)) {
    return Add("read", {}, {{"point", Value::String(point)},
                            {"invoke", invoke ? Value::Int(*invoke) : Value::None()}, {"step", step}});
  }
  int64_t Save(int64_t ref, const std::string& name) {
    return Add("save", {Value::Ref(ref)}, {{"name", Value::String(name)}});
  }

 private:
  protocol::Request& request_;
  int64_t next_ = 0;
};

inline Value Slice(std::optional<int64_t> a = std::nullopt, std::optional<int64_t> b = std::nullopt) {
  return Value::MakeSlice({a, b, std::nullopt});
}

inline at::Tensor TensorOf(const Value& v) {
  REQUIRE(v.kind == Value::Kind::kTensor);
  REQUIRE(v.tensor->dtype == protocol::DType::kFloat32);
  at::Tensor out = at::empty(v.tensor->shape, at::kFloat);
  std::memcpy(out.data_ptr(), v.tensor->bytes.data(), v.tensor->bytes.size());
  return out;
}

inline const protocol::SavedValue& Saved(const protocol::Result& r, const std::string& name) {
  for (const auto& s : r.saved) {
    if (s.name == name) return s;
  }
  FAIL("no saved value " << name);
  return r.saved.front();
}

inline protocol::Result RunOk(const Model& model, const protocol::Request& request) {
  auto result = Run(model, request);
  INFO(result.status().ToString());
  REQUIRE(result.ok());
  return std::move(result).value();
}

// Captures the value at a point during a plain engine forward pass.
inline at::Tensor CaptureByHand(const Model& model, const std::vector<int64_t>& ids, const std::string& point) {
  HookSet hooks(model.catalogue());
  at::Tensor out;
  REQUIRE(hooks.Add(point, [&out](const HookContext&, at::Tensor& v) { out = v.clone(); return Status::Ok(); }).ok());
  REQUIRE(model.Forward({{ids}}, &hooks).ok());
  return out;
}

inline const std::vector<int64_t> kClean = {1, 17, 42, 99, 5, 63};
inline const std::vector<int64_t> kCorrupt = {1, 17, 42, 12, 5, 63};

}  // namespace glassbox::intervention::testing_graphs

#endif  // GLASSBOX_TESTS_INTERVENTION_GRAPH_TEST_UTIL_H_
