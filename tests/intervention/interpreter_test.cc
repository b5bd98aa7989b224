// The interpreter on the tiny checkpoint: each classic experiment as a graph, compared with
// the same computation written by hand in LibTorch through engine hooks.
#include <ATen/TensorOperators.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/linspace.h>
#include <ATen/ops/rsqrt.h>
#include <ATen/ops/zeros_like.h>
#include <ATen/ops/empty.h>
#include <catch2/catch.hpp>

#include <cstring>

#include "intervention/intervention.h"
#include "tests/engine/tensor_fixtures.h"

#include "tests/intervention/graph_test_util.h"

namespace glassbox::intervention {

using namespace testing_graphs;  // NOLINT: the helpers every test here uses
using protocol::Value;
using testing::MaxAbsDiff;


TEST_CASE("logit lens at every layer equals norm and unembedding by hand", "[intervention]") {
  auto model = TinyModel();
  auto weights = testing::ReadGoldenTensors(std::string(testing::kTinyLlamaDir) + "/model.safetensors");
  protocol::Request request;
  GraphBuilder g(request);
  g.Trace({kClean});
  for (int layer = 0; layer < 3; ++layer) {
    int64_t h = g.Read("model.layers." + std::to_string(layer) + ".output");
    int64_t normed = g.Add("module", {Value::Ref(h)}, {{"name", Value::String("model.norm")}});
    int64_t logits = g.Add("module", {Value::Ref(normed)}, {{"name", Value::String("lm_head")}});
    g.Save(logits, "lens" + std::to_string(layer));
  }
  protocol::Result result = RunOk(*model, request);
  for (int layer = 0; layer < 3; ++layer) {
    INFO("layer " << layer);
    at::Tensor h = CaptureByHand(*model, kClean, "model.layers." + std::to_string(layer) + ".output");
    at::Tensor normed = h * at::rsqrt(h.pow(2).mean({-1}, true) + 1e-5) * weights.at("model.norm.weight");
    at::Tensor expected = at::linear(normed, weights.at("lm_head.weight"));
    CHECK(MaxAbsDiff(TensorOf(Saved(result, "lens" + std::to_string(layer)).value), expected) <= 1e-4);
  }
}

TEST_CASE("activation patching clean to corrupt in one session", "[intervention]") {
  auto model = TinyModel();
  protocol::Request request;
  GraphBuilder g(request);
  g.Trace({kClean});
  int64_t clean = g.Read("model.layers.1.output");
  int64_t clean_pos = g.Add("getitem", {Value::Ref(clean), Value::List({Slice(), Value::Int(3)})});
  g.Trace({kCorrupt});
  g.Add("write", {Value::Ref(clean_pos)}, {{"point", Value::String("model.layers.1.output")},
                                           {"invoke", Value::Int(0)},
                                           {"index", Value::List({Slice(), Value::Int(3)})}});
  int64_t logits = g.Read("lm_head.output");
  g.Save(logits, "patched");
  protocol::Result result = RunOk(*model, request);

  // By hand: take the clean residual at position 3, put it into the corrupt run.
  at::Tensor clean_h = CaptureByHand(*model, kClean, "model.layers.1.output");
  HookSet hooks(model->catalogue());
  REQUIRE(hooks.Add("model.layers.1.output", [&](const HookContext&, at::Tensor& v) {
    at::Tensor p = v.clone();
    p.select(1, 3).copy_(clean_h.select(1, 3));
    v = p;
    return Status::Ok();
  }).ok());
  auto expected = model->Forward({{kCorrupt}}, &hooks);
  REQUIRE(expected.ok());
  at::Tensor patched = TensorOf(Saved(result, "patched").value);
  CHECK(MaxAbsDiff(patched, expected->logits) <= 1e-5);
  auto corrupt = model->Forward({{kCorrupt}});
  CHECK(MaxAbsDiff(patched, corrupt->logits) > 1e-3);  // the patch did something
}

TEST_CASE("zero and mean ablation of one head", "[intervention]") {
  auto model = TinyModel();
  for (bool mean : {false, true}) {
    INFO((mean ? "mean" : "zero") << " ablation");
    protocol::Request request;
    GraphBuilder g(request);
    g.Trace({kClean});
    const Value head_index = Value::List({Slice(), Slice(), Value::Int(2)});
    Value replacement = Value::Int(0);
    if (mean) {
      int64_t z = g.Read("blocks.1.attn.hook_z");
      int64_t head = g.Add("getitem", {Value::Ref(z), head_index});
      replacement = Value::Ref(g.Add("mean", {Value::Ref(head)}, {{"dim", Value::Int(1)}, {"keepdim", Value::Bool(true)}}));
    }
    g.Add("write", {replacement}, {{"point", Value::String("blocks.1.attn.hook_z")},
                                   {"invoke", Value::Int(0)}, {"index", head_index}});
    g.Save(g.Read("lm_head.output"), "logits");
    protocol::Result result = RunOk(*model, request);

    HookSet hooks(model->catalogue());
    REQUIRE(hooks.Add("model.layers.1.self_attn.z", [&](const HookContext&, at::Tensor& z) {
      at::Tensor p = z.clone();
      at::Tensor h = p.select(2, 2);
      h.copy_(mean ? h.mean(1, true).expand_as(h) : at::zeros_like(h));
      z = p;
      return Status::Ok();
    }).ok());
    auto expected = model->Forward({{kClean}}, &hooks);
    REQUIRE(expected.ok());
    CHECK(MaxAbsDiff(TensorOf(Saved(result, "logits").value), expected->logits) <= 1e-5);
  }
}

TEST_CASE("a steering vector at every generation step", "[intervention]") {
  auto model = TinyModel();
  at::Tensor direction = at::linspace(-1.0, 1.0, 64, at::kFloat);
  protocol::TensorData data{protocol::DType::kFloat32, {64}, std::string(reinterpret_cast<const char*>(direction.data_ptr()), 64 * 4)};
  protocol::Request request;
  GraphBuilder g(request);
  g.Trace({kClean});
  request.traces.back().generate = protocol::GenerateOptions{};
  request.traces.back().generate->max_new_tokens = 6;
  request.traces.back().generate->stop_ids = {-1};
  int64_t h = g.Read("model.layers.0.output", 0, Value::String("all"));
  int64_t steered = g.Add("add", {Value::Ref(h), Value::Tensor(data)});
  g.Add("write", {Value::Ref(steered)}, {{"point", Value::String("model.layers.0.output")},
                                         {"invoke", Value::Int(0)}, {"step", Value::String("all")}});
  int64_t logits = g.Read("lm_head.output", 0, Value::String("all"));
  g.Save(logits, "logits_per_step");
  protocol::Result result = RunOk(*model, request);

  HookSet hooks(model->catalogue());
  REQUIRE(hooks.Add("model.layers.0.output", [&](const HookContext&, at::Tensor& v) {
    v = v + direction;
    return Status::Ok();
  }).ok());
  SamplingParams s;
  s.max_new_tokens = 6;
  s.stop_ids = {-1};
  auto expected = model->Generate({kClean}, s, &hooks);
  REQUIRE(expected.ok());
  REQUIRE(result.generated.size() == 1);
  CHECK(result.generated[0] == expected->new_tokens[0]);
  auto plain = model->Generate({kClean}, s);
  CHECK(result.generated[0] != plain->new_tokens[0]);
  const auto& per_step = Saved(result, "logits_per_step").value;
  REQUIRE(per_step.kind == Value::Kind::kList);
  CHECK(per_step.list.size() == 6);
}

TEST_CASE("attention patterns and per-invoke reads without padding", "[intervention]") {
  auto model = TinyModel();
  auto golden = testing::ReadGoldenTensors(std::string(testing::kTinyLlamaDir) + "/golden.safetensors");
  at::Tensor ids_tensor = golden.at("model.embed_tokens.input")[0];
  std::vector<int64_t> ids(ids_tensor.data_ptr<int64_t>(), ids_tensor.data_ptr<int64_t>() + ids_tensor.numel());
  const std::vector<int64_t> shorter = {1, 5, 9};
  protocol::Request request;
  GraphBuilder g(request);
  g.Trace({shorter, ids});  // the golden prompt is the second, longer row
  g.Save(g.Read("blocks.2.attn.hook_pattern", 1), "pattern");
  g.Save(g.Read("blocks.2.attn.hook_pattern", 0), "short_pattern");
  g.Save(g.Read("model.layers.2.output", std::nullopt), "whole_batch");
  protocol::Result result = RunOk(*model, request);
  CHECK(MaxAbsDiff(TensorOf(Saved(result, "pattern").value), golden.at("model.layers.2.self_attn.attn_pattern")) <= 1e-4);
  // The short prompt's pattern has no padding in it and equals running it alone.
  at::Tensor alone = CaptureByHand(*model, shorter, "model.layers.2.self_attn.attn_pattern");
  CHECK(MaxAbsDiff(TensorOf(Saved(result, "short_pattern").value), alone) <= 1e-5);
  CHECK(TensorOf(Saved(result, "whole_batch").value).sizes() == at::IntArrayRef({2, 7, 64}));
}

TEST_CASE("validation reports every problem at once, naming nodes", "[intervention]") {
  auto model = TinyModel();
  protocol::Request request;
  GraphBuilder g(request);
  g.Trace({kClean});
  int64_t late = g.Read("model.layers.2.output");                          // node 0
  g.Add("write", {Value::Ref(late)}, {{"point", Value::String("model.layers.0.output")}});  // 1: backwards
  g.Add("frobnicate", {Value::Ref(late)});                                  // 2: not whitelisted
  g.Read("model.layers.1.mlp.outptu");                                      // 3: unknown point
  g.Add("add", {Value::Ref(42), Value::Int(1)});                             // 4: unknown ref
  g.Read("model.layers.1.output", 0, Value::Int(3));                        // 5: no generation
  g.Add("softmax", {Value::Ref(late)});                                      // 6: wrong arity
  auto errors = Validate(*model, request);
  std::string all;
  for (const auto& e : errors) all += e.ToString() + "\n";
  INFO(all);
  CHECK(errors.size() == 6);
  CHECK_THAT(all, Catch::Contains("node 1") && Catch::Contains("cannot go back"));
  CHECK_THAT(all, Catch::Contains("node 2") && Catch::Contains("unknown op 'frobnicate'"));
  CHECK_THAT(all, Catch::Contains("node 3") && Catch::Contains("model.layers.1.mlp.output"));
  CHECK_THAT(all, Catch::Contains("node 4") && Catch::Contains("node 42"));
  CHECK_THAT(all, Catch::Contains("node 5") && Catch::Contains("need generation"));
  CHECK_THAT(all, Catch::Contains("node 6") && Catch::Contains("softmax(x, dim)"));
  auto run = Run(*model, request);
  REQUIRE_FALSE(run.ok());
  CHECK_THAT(run.status().message(), Catch::Contains("6 problem(s)"));
}

TEST_CASE("a failure mid-run names the node and its inputs' shapes", "[intervention]") {
  auto model = TinyModel();
  protocol::Request request;
  GraphBuilder g(request);
  g.Trace({kClean});
  int64_t h = g.Read("model.layers.0.output");
  int64_t q = g.Read("model.layers.0.self_attn.q_proj.output");
  int64_t bad = g.Add("matmul", {Value::Ref(h), Value::Ref(q)});
  g.Save(bad, "bad");
  auto run = Run(*model, request);
  REQUIRE_FALSE(run.ok());
  CHECK_THAT(run.status().message(), Catch::Contains("node " + std::to_string(bad)));
  CHECK_THAT(run.status().message(), Catch::Contains("[1, 6, 64]"));
  CHECK_THAT(run.status().message(), Catch::Contains("interpreter_test.cc"));
  CHECK(model->Forward({{kClean}}).ok());  // the model is fine afterwards
}

}  // namespace glassbox::intervention

namespace glassbox::intervention {

TEST_CASE("attribution patching: gradient times activation difference", "[intervention]") {
  auto model = TinyModel();
  const std::string point = "model.layers.1.output";
  const int64_t target = 7;
  protocol::Request request;
  GraphBuilder g(request);
  g.Trace({kClean});
  int64_t clean = g.Read(point);
  g.Trace({kCorrupt});
  int64_t corrupt = g.Read(point);
  int64_t logits = g.Read("lm_head.output");
  int64_t last = g.Add("getitem", {Value::Ref(logits), Value::List({Value::Int(0), Value::Int(-1), Value::Int(target)})});
  int64_t backward = g.Add("backward", {Value::Ref(last)});
  int64_t grad = g.Add("grad", {Value::Ref(backward)}, {{"point", Value::String(point)}, {"invoke", Value::Int(0)}});
  int64_t diff = g.Add("sub", {Value::Ref(clean), Value::Ref(corrupt)});
  int64_t product = g.Add("mul", {Value::Ref(grad), Value::Ref(diff)});
  int64_t attribution = g.Add("sum", {Value::Ref(product)}, {{"dim", Value::Int(-1)}});
  g.Save(attribution, "attribution");
  g.Save(grad, "grad");
  protocol::Result result = RunOk(*model, request);

  // By hand: a leaf at the point, the target logit at the last position, autograd.
  at::Tensor clean_h = CaptureByHand(*model, kClean, point);
  at::Tensor leaf;
  at::Tensor corrupt_h;
  HookSet hooks(model->catalogue());
  REQUIRE(hooks.Add(point, [&](const HookContext&, at::Tensor& v) {
    corrupt_h = v.detach().clone();
    leaf = v.detach().requires_grad_(true);
    v = leaf;
    return Status::Ok();
  }).ok());
  auto forward = model->Forward({{kCorrupt}}, &hooks);
  REQUIRE(forward.ok());
  // Forward's logits are copied to float32 CPU, which keeps the graph on the CPU.
  forward->logits[0][-1][target].backward();
  REQUIRE(leaf.grad().defined());
  at::Tensor expected = (leaf.grad() * (clean_h - corrupt_h)).sum(-1);
  CHECK(MaxAbsDiff(TensorOf(Saved(result, "grad").value), leaf.grad()) <= 1e-5);
  CHECK(MaxAbsDiff(TensorOf(Saved(result, "attribution").value), expected) <= 1e-5);
  CHECK(leaf.grad().abs().max().item<double>() > 0.0);
}

}  // namespace glassbox::intervention

#include "protocol/json.h"

namespace glassbox::intervention {

namespace {
protocol::Request ExampleGraph(const std::string& name) {
  auto json = nlohmann::json::parse(testing::ReadTextFile("examples/graphs/" + name));
  auto request = protocol::RequestFromJson(json);
  INFO(request.status().ToString());
  REQUIRE(request.ok());
  return std::move(request).value();
}

int64_t IntOf(const Value& v) {
  REQUIRE(v.kind == Value::Kind::kTensor);
  REQUIRE(v.tensor->dtype == protocol::DType::kInt64);
  int64_t out;
  std::memcpy(&out, v.tensor->bytes.data(), sizeof(out));
  return out;
}
}  // namespace

TEST_CASE("SmolLM2 examples show the expected effects", "[intervention][model][smollm2]") {
  auto loaded = Model::Load(testing::kSmolLm2Path);
  REQUIRE(loaded.ok());
  const Model& model = **loaded;
  const int64_t paris = 7042, rome = 7268;
  auto italy = model.Forward({{model.tokenizer()->Encode("The capital of Italy is", false)}, false});
  REQUIRE(italy.ok());
  REQUIRE(italy->logits[0][0].argmax().item<int64_t>() == rome);

  // Patching the subject's residual stream from the clean run restores " Paris".
  protocol::Result patched = RunOk(model, ExampleGraph("activation_patching.json"));
  CHECK(IntOf(Saved(patched, "patched_top_token").value) == paris);

  // The logit lens reads " Paris" off the last layer.
  protocol::Result lens = RunOk(model, ExampleGraph("logit_lens.json"));
  CHECK(IntOf(Saved(lens, "layer29_top_token").value) == paris);

  // Attribution patching puts the effect on the subject token.
  protocol::Result attribution = RunOk(model, ExampleGraph("attribution_patching.json"));
  at::Tensor per_position = TensorOf(Saved(attribution, "attribution_per_position").value);
  CHECK(per_position.argmax().item<int64_t>() == 3);

  // Every example graph validates against the model.
  for (const char* name : {"head_ablation.json", "mean_head_ablation.json", "steering.json",
                           "attention_pattern.json"}) {
    INFO(name);
    auto errors = Validate(model, ExampleGraph(name));
    CHECK(errors.empty());
  }
}

}  // namespace glassbox::intervention

namespace glassbox::intervention {

TEST_CASE("cache saves every matching point in one node", "[intervention]") {
  auto model = TinyModel();
  protocol::Request request;
  GraphBuilder g(request);
  g.Trace({kClean});
  g.Add("cache", {}, {{"filter", Value::String("hook_resid_post")}, {"invoke", Value::Int(0)}});
  g.Add("write", {Value::Int(0)}, {{"point", Value::String("model.layers.1.output")}});
  protocol::Result result = RunOk(*model, request);
  REQUIRE(result.saved.size() == 3);
  // The cached value is what the point held before the later write replaced it.
  at::Tensor layer1 = CaptureByHand(*model, kClean, "model.layers.1.output");
  CHECK(MaxAbsDiff(TensorOf(Saved(result, "model.layers.1.output").value), layer1) == 0.0);
  // Layer 2 saw the zeroed residual stream.
  CHECK(MaxAbsDiff(TensorOf(Saved(result, "model.layers.2.output").value),
                   CaptureByHand(*model, kClean, "model.layers.2.output")) > 1e-3);
}

}  // namespace glassbox::intervention

namespace glassbox::intervention {

TEST_CASE("a write of the wrong shape names the node and both shapes", "[intervention]") {
  auto model = TinyModel();
  protocol::Request request;
  GraphBuilder g(request);
  g.Trace({kClean});
  g.Add("cache", {}, {{"filter", Value::String("hook_resid_post")}});
  int64_t small = g.Add("zeros", {Value::List({Value::Int(2)})});
  int64_t write = g.Add("write", {Value::Ref(small)}, {{"point", Value::String("model.layers.1.output")}});
  auto run = Run(*model, request);
  REQUIRE_FALSE(run.ok());
  CHECK_THAT(run.status().message(), Catch::Contains("node " + std::to_string(write)));
  CHECK_THAT(run.status().message(), Catch::Contains("[1, 6, 64]"));
  CHECK(model->Forward({{kClean}}).ok());
}

}  // namespace glassbox::intervention

namespace glassbox::intervention {

TEST_CASE("skip: the module does not run and its output is the given value", "[intervention]") {
  auto model = TinyModel();
  protocol::Request request;
  GraphBuilder g(request);
  g.Trace({kClean});
  int64_t mid = g.Read("model.layers.1.post_attention_layernorm.input", std::nullopt);
  int64_t half = g.Add("mul", {Value::Ref(mid), Value::Float(0.5)});
  g.Add("skip", {Value::Ref(half)}, {{"module", Value::String("model.layers.1.mlp")}});
  g.Save(g.Read("lm_head.output"), "logits");
  protocol::Result result = RunOk(*model, request);

  int inner_calls = 0;
  HookSet hooks(model->catalogue());
  at::Tensor resid_mid;
  REQUIRE(hooks.Add("model.layers.1.post_attention_layernorm.input", [&](const HookContext&, at::Tensor& v) {
    resid_mid = v.clone();
    return Status::Ok();
  }).ok());
  REQUIRE(hooks.Add("model.layers.1.mlp.gate_proj.output", [&](const HookContext&, at::Tensor&) {
    ++inner_calls;
    return Status::Ok();
  }).ok());
  REQUIRE(hooks.AddSkip("model.layers.1.mlp.output").ok());
  REQUIRE(hooks.Add("model.layers.1.mlp.output", [&](const HookContext&, at::Tensor& v) {
    v = resid_mid * 0.5;
    return Status::Ok();
  }).ok());
  auto expected = model->Forward({{kClean}}, &hooks);
  REQUIRE(expected.ok());
  CHECK(inner_calls == 0);
  CHECK(MaxAbsDiff(TensorOf(Saved(result, "logits").value), expected->logits) <= 1e-5);

  // Reading inside the skipped module is an error, not a silent empty result.
  protocol::Request inside;
  GraphBuilder g2(inside);
  g2.Trace({kClean});
  g2.Add("skip", {Value::Int(0)}, {{"module", Value::String("model.layers.1.mlp")}});
  g2.Save(g2.Read("model.layers.1.mlp.gate_proj.output"), "inner");
  auto run = Run(*model, inside);
  REQUIRE_FALSE(run.ok());
  CHECK_THAT(run.status().message(), Catch::Contains("never ran"));

  // Only layers, attention and MLPs can be skipped.
  protocol::Request bad;
  GraphBuilder g3(bad);
  g3.Trace({kClean});
  g3.Add("skip", {Value::Int(0)}, {{"module", Value::String("model.norm")}});
  auto errors = Validate(*model, bad);
  REQUIRE(errors.size() == 1);
  CHECK_THAT(errors[0].message, Catch::Contains("cannot skip 'model.norm'"));
}

}  // namespace glassbox::intervention

#include "tests/intervention/placement_graphs.h"

namespace glassbox::intervention {

TEST_CASE("a bfloat16 model runs every kind of graph value as float32 does", "[intervention]") {
  auto reference = TinyModel();
  EngineParams params;
  params.dtype = "bfloat16";
  auto bf16 = testing::LoadOrFail(testing::kTinyLlamaDir, params);
  const protocol::Request request = PlacementGraph();
  protocol::Result expected = RunOk(*reference, request);
  protocol::Result actual = RunOk(*bf16, request);
  // Values come back in the run's dtype, converted only for the wire.
  CHECK(Saved(actual, "logits").value.tensor->dtype == protocol::DType::kBFloat16);
  CHECK(Saved(expected, "logits").value.tensor->dtype == protocol::DType::kFloat32);
  // bfloat16 keeps 8 bits of mantissa: a few percent of the largest value after 2 layers.
  CheckSameResults(expected, actual, 0.05, /*same_tokens=*/false);
}

}  // namespace glassbox::intervention
