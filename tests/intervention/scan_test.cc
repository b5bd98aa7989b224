// The shape-only pass on the tiny checkpoint: a scan reports what a real run would produce,
// validation catches impossible shapes before anything runs, and write_grad replaces a
// gradient as hand-written autograd does.
#include <ATen/TensorOperators.h>
#include <catch2/catch.hpp>

#include "tests/intervention/graph_test_util.h"

namespace glassbox::intervention {
namespace {

using namespace testing_graphs;  // NOLINT: the helpers every test here uses
using protocol::Value;
using testing::MaxAbsDiff;

// Shapes as text, for readable comparisons: "[1, 6, 64]", "[1, ?]", "none".
std::string ShapeText(const std::optional<std::vector<std::optional<int64_t>>>& shape) {
  if (!shape) return "none";
  std::string out;
  for (const std::optional<int64_t>& d : *shape) out += (out.empty() ? "" : ", ") + (d ? std::to_string(*d) : "?");
  return "[" + out + "]";
}

std::string Sizes(const std::vector<int64_t>& sizes) {
  return ShapeText(std::vector<std::optional<int64_t>>(sizes.begin(), sizes.end()));
}

// The scan's entries for one node, in step order.
std::vector<protocol::NodeShape> ShapesOf(const protocol::Result& scan, int64_t node) {
  std::vector<protocol::NodeShape> out;
  for (const protocol::NodeShape& s : scan.shapes) {
    if (s.node == node) out.push_back(s);
  }
  return out;
}

// Checks that a saved tensor (or each step's, for per-step saves) has the scan's shape.
void CheckSavedMatchesScan(const protocol::Result& run, const protocol::Result& scan) {
  for (const protocol::SavedValue& saved : run.saved) {
    INFO("saved " << saved.name << " (node " << saved.node << ")");
    std::vector<protocol::NodeShape> found;
    for (const protocol::NodeShape& s : scan.shapes) {
      if (s.node == saved.node && (s.name.empty() || s.name == saved.name)) found.push_back(s);
    }
    const bool per_step = saved.value.kind == Value::Kind::kList && found.size() > 1;
    std::vector<Value> values = per_step ? saved.value.list : std::vector<Value>{saved.value};
    REQUIRE(found.size() == values.size());
    for (size_t i = 0; i < values.size(); ++i) {
      if (values[i].kind != Value::Kind::kTensor) {
        CHECK(found[i].dtype == "int");
        continue;
      }
      CHECK(found[i].dtype == protocol::DTypeName(values[i].tensor->dtype));
      CHECK(ShapeText(found[i].shape) == Sizes(values[i].tensor->shape));
    }
  }
}

protocol::Result Scan(const Model& model, protocol::Request request) {
  request.scan = true;
  protocol::Result scan = RunOk(model, request);
  CHECK(scan.saved.empty());
  CHECK(scan.generated.empty());
  return scan;
}

}  // namespace

TEST_CASE("a scan's shapes equal those of a real run", "[intervention]") {
  auto model = TinyModel();
  const std::vector<int64_t> shorter = {1, 5, 9};
  protocol::Request request;
  GraphBuilder g(request);
  g.Trace({kClean, shorter});
  int64_t h = g.Read("model.layers.0.output");
  g.Save(h, "h");
  g.Save(g.Read("model.layers.1.output", std::nullopt), "whole_batch");
  g.Save(g.Read("model.layers.1.self_attn.q_proj.output", 1), "q_short");
  g.Save(g.Read("blocks.2.attn.hook_pattern", 1), "pattern_short");
  int64_t last = g.Add("getitem", {Value::Ref(h), Value::List({Slice(), Value::Int(-1)})});
  g.Save(last, "last");
  int64_t gram = g.Add("matmul", {Value::Ref(h), Value::Ref(g.Add("transpose", {Value::Ref(h), Value::Int(1), Value::Int(2)}))});
  g.Save(gram, "gram");
  int64_t normed = g.Add("module", {Value::Ref(h)}, {{"name", Value::String("model.norm")}});
  int64_t lens = g.Add("module", {Value::Ref(normed)}, {{"name", Value::String("lm_head")}});
  g.Save(g.Add("argmax", {Value::Ref(lens)}, {{"dim", Value::Int(-1)}}), "lens_top");
  g.Save(g.Add("size", {Value::Ref(h)}, {{"dim", Value::Int(1)}}), "length");
  g.Add("write", {Value::Ref(last)}, {{"point", Value::String("model.layers.1.output")},
                                      {"invoke", Value::Int(0)}, {"index", Value::List({Slice(), Value::Int(3)})}});
  g.Add("cache", {}, {{"filter", Value::String("hook_resid_post")}, {"invoke", Value::Int(1)}});
  g.Save(g.Read("lm_head.output", 0), "logits");
  // A generation in the same session: shapes change with the step (KV cache).
  g.Trace({kCorrupt});
  request.traces.back().generate = protocol::GenerateOptions{};
  request.traces.back().generate->max_new_tokens = 3;
  request.traces.back().generate->stop_ids = {-1};
  g.Save(g.Read("blocks.0.attn.hook_pattern", 0, Value::String("all")), "pattern_per_step");
  int64_t step_logits = g.Read("lm_head.output", 0, Value::List({Value::Int(1), Value::Int(3)}));
  int64_t lens_last = g.Add("getitem", {Value::Ref(lens), Value::List({Slice(), Slice(-1)})});
  g.Save(g.Add("add", {Value::Ref(step_logits), Value::Ref(lens_last)}), "logits_plus_lens");

  protocol::Result run = RunOk(*model, request);
  protocol::Result scan = Scan(*model, request);
  CheckSavedMatchesScan(run, scan);
  // Cache entries are named after their points.
  int cached = 0;
  for (const protocol::NodeShape& s : scan.shapes) {
    if (s.name.empty()) continue;
    ++cached;
    CHECK(ShapeText(s.shape) == Sizes({1, 3, 64}));
  }
  CHECK(cached == 3);
  CHECK(ShapeText(ShapesOf(scan, h).at(0).shape) == Sizes({1, 6, 64}));
}

TEST_CASE("a scan computes nothing: values that need data are unknown", "[intervention]") {
  auto model = TinyModel();
  protocol::Request request;
  GraphBuilder g(request);
  g.Trace({kClean});
  request.traces.back().generate = protocol::GenerateOptions{};
  request.traces.back().generate->max_new_tokens = 4;
  int64_t h = g.Read("model.layers.2.output", 0, Value::Int(3));
  int64_t total = g.Add("item", {Value::Ref(g.Add("sum", {Value::Ref(h)}))});
  int64_t scaled = g.Add("mul", {Value::Ref(h), Value::Ref(total)});
  int64_t ids = g.Read("model.embed_tokens.input", 0, Value::Int(3));
  g.Save(scaled, "scaled");
  protocol::Result scan = Scan(*model, request);
  // A real run knows the sum; a scan never had the numbers, only their shapes.
  CHECK(ShapesOf(scan, total).at(0).dtype == "unknown");
  CHECK_FALSE(ShapesOf(scan, total).at(0).shape.has_value());
  CHECK(ShapesOf(scan, scaled).at(0).dtype == "unknown");
  CHECK(ShapesOf(scan, h).at(0).step == 3);
  CHECK(ShapeText(ShapesOf(scan, h).at(0).shape) == Sizes({1, 1, 64}));
  CHECK(ShapesOf(scan, ids).at(0).dtype == "int64");  // the token sampled at step 2: not known
  CHECK(ShapeText(ShapesOf(scan, ids).at(0).shape) == Sizes({1, 1}));
}

TEST_CASE("validation finds impossible shapes, all at once, before anything runs", "[intervention]") {
  auto model = TinyModel();
  protocol::Request request;
  GraphBuilder g(request);
  g.Trace({kClean});
  int64_t h = g.Read("model.layers.0.output");                           // [1, 6, 64]
  int64_t q = g.Read("model.layers.0.self_attn.k_proj.output");          // [1, 6, 32]
  int64_t sum = g.Add("add", {Value::Ref(h), Value::Ref(q)});             // cannot broadcast
  int64_t product = g.Add("matmul", {Value::Ref(h), Value::Ref(q)});      // 64 against 6
  int64_t far = g.Add("getitem", {Value::Ref(h), Value::List({Slice(), Value::Int(9)})});  // seq is 6
  int64_t small = g.Add("zeros", {Value::List({Value::Int(2)})});
  int64_t write = g.Add("write", {Value::Ref(small)}, {{"point", Value::String("model.layers.1.output")}});
  int64_t lens = g.Add("module", {Value::Ref(q)}, {{"name", Value::String("lm_head")}});
  g.Save(g.Add("mul", {Value::Ref(sum), Value::Int(2)}), "downstream");  // unknown, not an error
  auto errors = Validate(*model, request);
  std::string all;
  for (const auto& e : errors) all += e.ToString() + "\n";
  INFO(all);
  CHECK(errors.size() == 5);
  CHECK_THAT(all, Catch::Contains("node " + std::to_string(sum) + " (interpreter_test.cc): op add: The size of tensor a (64) must match"));
  CHECK_THAT(all, Catch::Contains("[1, 6, 64]") && Catch::Contains("[1, 6, 32]"));
  CHECK_THAT(all, Catch::Contains("node " + std::to_string(product) + " (interpreter_test.cc): op matmul"));
  CHECK_THAT(all, Catch::Contains("node " + std::to_string(far) + " (interpreter_test.cc): op getitem: index 9 is out of bounds"));
  CHECK_THAT(all, Catch::Contains("node " + std::to_string(write) + " (interpreter_test.cc): op write: cannot write"));
  CHECK_THAT(all, Catch::Contains("node " + std::to_string(lens) + " (interpreter_test.cc): op module: module lm_head cannot take"));
  auto run = Run(*model, request);
  REQUIRE_FALSE(run.ok());
  CHECK_THAT(run.status().message(), Catch::StartsWith("5 problem(s) in the request"));
}

TEST_CASE("weights: scanned shapes, unknown names refused, values never changed by ops", "[intervention]") {
  auto model = TinyModel();
  const std::string o_proj = "model.layers.0.self_attn.o_proj.weight";
  const at::Tensor before = model->Weight(o_proj).value().clone();
  protocol::Request request;
  GraphBuilder g(request);
  g.Trace({kClean});
  int64_t w = g.Add("weight", {}, {{"name", Value::String(o_proj)}});
  int64_t zeroed = g.Add("setitem", {Value::Ref(w), Value::List({Slice(), Slice(0, 16)}), Value::Float(0.0)});
  int64_t w_k = g.Add("weight", {}, {{"name", Value::String("blocks.2.attn.W_K")}});
  g.Save(w, "w");
  g.Save(zeroed, "zeroed");
  g.Save(w_k, "w_k");
  protocol::Result scan = Scan(*model, request);
  protocol::Result run = RunOk(*model, request);
  CheckSavedMatchesScan(run, scan);
  CHECK(Sizes(Saved(run, "w_k").value.tensor->shape) == "[4, 64, 16]");  // 2 key/value heads repeated to 4
  CHECK(MaxAbsDiff(TensorOf(Saved(run, "w").value), before) == 0);
  CHECK(TensorOf(Saved(run, "zeroed").value).narrow(1, 0, 16).abs().max().item<float>() == 0);
  CHECK(MaxAbsDiff(model->Weight(o_proj).value(), before) == 0);  // the model's own tensor

  protocol::Request wrong;
  GraphBuilder bad(wrong);
  bad.Trace({kClean});
  int64_t typo = bad.Add("weight", {}, {{"name", Value::String("model.layers.0.self_attn.o_prj.weight")}});
  int64_t unnamed = bad.Add("weight", {});
  auto errors = Validate(*model, wrong);
  std::string all;
  for (const auto& e : errors) all += e.ToString() + "\n";
  INFO(all);
  CHECK(errors.size() == 2);
  CHECK_THAT(all, Catch::Contains("node " + std::to_string(typo) + " (interpreter_test.cc): the model has no weight "
                                  "'model.layers.0.self_attn.o_prj.weight'; did you mean: model.layers.0.self_attn.o_proj.weight"));
  CHECK_THAT(all, Catch::Contains("node " + std::to_string(unnamed) + " (interpreter_test.cc): weight needs name="));
}

TEST_CASE("write_grad replaces the gradient flowing back, as autograd by hand", "[intervention]") {
  auto model = TinyModel();
  const std::string z_point = "model.layers.1.self_attn.z";
  const int64_t target = 7;
  protocol::Request request;
  GraphBuilder g(request);
  g.Trace({kClean});
  int64_t logits = g.Read("lm_head.output");
  int64_t last = g.Add("getitem", {Value::Ref(logits), Value::List({Value::Int(0), Value::Int(-1), Value::Int(target)})});
  int64_t backward = g.Add("backward", {Value::Ref(last)});
  g.Add("write_grad", {Value::Ref(backward), Value::Float(0.0)},
        {{"point", Value::String(z_point)}, {"invoke", Value::Int(0)},
         {"index", Value::List({Slice(), Slice(), Value::Int(2)})}});
  g.Save(g.Add("grad", {Value::Ref(backward)}, {{"point", Value::String("model.layers.0.output")}}), "grad0");
  g.Save(g.Add("grad", {Value::Ref(backward)}, {{"point", Value::String(z_point)}}), "grad_z");
  protocol::Result result = RunOk(*model, request);

  // By hand: a leaf at layer 0's output, a tensor hook at z zeroing head 2's gradient.
  at::Tensor leaf, z_grad;
  for (bool rewrite : {true, false}) {
    HookSet hooks(model->catalogue());
    REQUIRE(hooks.Add("model.layers.0.output", [&](const HookContext&, at::Tensor& v) {
      leaf = v.detach().requires_grad_(true);
      v = leaf;
      return Status::Ok();
    }).ok());
    REQUIRE(hooks.Add(z_point, [&](const HookContext&, at::Tensor& z) {
      if (!rewrite) return Status::Ok();
      z.register_hook([&](const at::Tensor& grad) {
        at::Tensor out = grad.clone();
        out.select(2, 2).zero_();
        z_grad = out;
        return out;
      });
      return Status::Ok();
    }).ok());
    auto forward = model->Forward({{kClean}}, &hooks);
    REQUIRE(forward.ok());
    forward->logits[0][-1][target].backward();
    if (rewrite) {
      CHECK(MaxAbsDiff(TensorOf(Saved(result, "grad0").value), leaf.grad()) <= 1e-6);
      CHECK(MaxAbsDiff(TensorOf(Saved(result, "grad_z").value), z_grad) <= 1e-6);
    } else {
      CHECK(MaxAbsDiff(TensorOf(Saved(result, "grad0").value), leaf.grad()) > 1e-4);  // it mattered
    }
  }
  CHECK(TensorOf(Saved(result, "grad_z").value).select(2, 2).abs().max().item<double>() == 0.0);

  // The replacement must exist when the backward runs.
  protocol::Request late;
  GraphBuilder g2(late);
  g2.Trace({kClean});
  int64_t l2 = g2.Read("lm_head.output");
  int64_t b2 = g2.Add("backward", {Value::Ref(g2.Add("sum", {Value::Ref(l2)}))});
  int64_t after = g2.Add("zeros_like", {Value::Ref(g2.Read("model.layers.1.output"))});
  int64_t bad = g2.Add("write_grad", {Value::Ref(b2), Value::Ref(after)}, {{"point", Value::String("model.layers.1.output")}});
  auto errors = Validate(*model, late);
  REQUIRE(errors.size() == 1);
  CHECK(errors[0].node == bad);
  CHECK_THAT(errors[0].message, Catch::Contains("comes after its backward node"));
}

}  // namespace glassbox::intervention
