// Hook points: catalogue, aliases, reading, replacing, and errors.
#include <ATen/TensorOperators.h>
#include <ATen/ops/zeros_like.h>
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <cstdio>
#include <fstream>
#include <sys/stat.h>

#include "engine/engine.h"
#include "tests/engine/tensor_fixtures.h"

namespace glassbox {
namespace {

using testing::kTinyLlamaDir;
using testing::MaxAbsDiff;

std::unique_ptr<Model> TinyModel() {
  auto model = Model::Load(kTinyLlamaDir);
  INFO(model.status().ToString());
  REQUIRE(model.ok());
  return std::move(model).value();
}

const std::vector<int64_t> kIds = {1, 31, 4, 88, 120, 7};

HookCallback Capture(at::Tensor& out) {
  return [&out](const HookContext&, at::Tensor& v) {
    out = v.clone();
    return Status::Ok();
  };
}

}  // namespace

TEST_CASE("catalogue lists every point with shape, dtype and meaning", "[engine][hooks]") {
  auto model = TinyModel();
  const HookCatalogue& catalogue = model->catalogue();
  // 2 embedding points, 32 per layer (no q/k norms in Llama), 4 after the layers.
  CHECK(catalogue.size() == 2 + 3 * 32 + 4);
  // Ids run in forward order: embedding, layer 0, 1, 2, final norm and lm_head.
  std::vector<int> layers, expected = {-1, -1};
  for (int layer = 0; layer < 3; ++layer) expected.insert(expected.end(), 32, layer);
  expected.insert(expected.end(), 4, -1);
  for (const HookPointInfo& p : catalogue.points()) layers.push_back(p.layer);
  CHECK(layers == expected);
  CHECK(catalogue.point(0).name == "model.embed_tokens.input");
  CHECK(catalogue.point(catalogue.size() - 3).name == "model.norm.output");
  auto json = nlohmann::json::parse(catalogue.ToJson());
  REQUIRE(json["hook_points"].size() == static_cast<size_t>(catalogue.size()));
  for (const auto& point : json["hook_points"]) {
    INFO(point.dump());
    CHECK_FALSE(point["meaning"].get<std::string>().empty());
    CHECK_FALSE(point["shape"].empty());
  }
  const HookPointInfo& q = catalogue.point(*catalogue.Find("model.layers.2.self_attn.q_rot"));
  CHECK(q.shape == std::vector<std::string>{"batch", "seq", "4", "16"});
  const HookPointInfo& k = catalogue.point(*catalogue.Find("model.layers.2.self_attn.k"));
  CHECK(k.shape == std::vector<std::string>{"batch", "seq", "2", "16"});
}

TEST_CASE("TransformerLens names are aliases of the Hugging Face points", "[engine][hooks]") {
  auto model = TinyModel();
  const HookCatalogue& c = model->catalogue();
  const std::vector<std::pair<std::string, std::string>> pairs = {
      {"hook_embed", "model.embed_tokens.output"},
      {"blocks.1.hook_resid_pre", "model.layers.1.input"},
      {"blocks.1.hook_resid_mid", "model.layers.1.post_attention_layernorm.input"},
      {"blocks.1.hook_resid_post", "model.layers.1.output"},
      {"blocks.0.attn.hook_q", "model.layers.0.self_attn.q"},
      {"blocks.0.attn.hook_k", "model.layers.0.self_attn.k"},
      {"blocks.0.attn.hook_v", "model.layers.0.self_attn.v"},
      {"blocks.0.attn.hook_z", "model.layers.0.self_attn.z"},
      {"blocks.0.attn.hook_attn_scores", "model.layers.0.self_attn.attn_scores"},
      {"blocks.0.attn.hook_pattern", "model.layers.0.self_attn.attn_pattern"},
      {"blocks.2.hook_attn_out", "model.layers.2.self_attn.output"},
      {"blocks.2.mlp.hook_pre", "model.layers.2.mlp.gate_proj.output"},
      {"blocks.2.mlp.hook_post", "model.layers.2.mlp.down_proj.input"},
      {"blocks.2.hook_mlp_out", "model.layers.2.mlp.output"},
      {"ln_final.hook_normalized", "model.norm.output"}};
  for (const auto& [alias, name] : pairs) {
    INFO(alias);
    REQUIRE(c.Find(alias).has_value());
    CHECK(c.Find(alias) == c.Find(name));
  }
  // Reading through an alias sees the same tensor as through the name.
  HookSet hooks(c);
  at::Tensor via_alias, via_name;
  REQUIRE(hooks.Add("blocks.1.hook_resid_post", Capture(via_alias)).ok());
  REQUIRE(hooks.Add("model.layers.1.output", Capture(via_name)).ok());
  REQUIRE(model->Forward({{kIds}}, &hooks).ok());
  CHECK(via_alias.equal(via_name));
}

TEST_CASE("unknown hook points are rejected with suggestions", "[engine][hooks]") {
  auto model = TinyModel();
  HookSet hooks(model->catalogue());
  at::Tensor unused;
  Status status = hooks.Add("model.layers.1.mlp.outptu", Capture(unused));
  REQUIRE(status.code() == StatusCode::kNotFound);
  CHECK_THAT(status.message(), Catch::Contains("model.layers.1.mlp.outptu"));
  CHECK_THAT(status.message(), Catch::Contains("model.layers.1.mlp.output"));
}

TEST_CASE("replacing an activation changes what follows, and only that", "[engine][hooks]") {
  auto model = TinyModel();
  auto clean = model->Forward({{kIds}});
  REQUIRE(clean.ok());

  // Identity replacement (a copy) leaves the logits bit-identical.
  HookSet identity(model->catalogue());
  REQUIRE(identity.Add("model.layers.1.output", [](const HookContext&, at::Tensor& v) {
    v = v.clone();
    return Status::Ok();
  }).ok());
  auto same = model->Forward({{kIds}}, &identity);
  REQUIRE(same.ok());
  CHECK(MaxAbsDiff(same->logits, clean->logits) == 0.0);

  // Zero-ablating head 1's output in layer 0 changes layer 0's attention output and the
  // logits, but not layer 0's queries.
  HookSet ablate(model->catalogue());
  at::Tensor z_seen;
  REQUIRE(ablate.Add("blocks.0.attn.hook_z", [](const HookContext&, at::Tensor& z) {
    at::Tensor patched = z.clone();
    patched.select(2, 1).zero_();
    z = patched;
    return Status::Ok();
  }).ok());
  REQUIRE(ablate.Add("model.layers.0.self_attn.o_proj.input", Capture(z_seen)).ok());
  auto ablated = model->Forward({{kIds}}, &ablate);
  REQUIRE(ablated.ok());
  CHECK(z_seen.view({1, 6, 4, 16}).select(2, 1).abs().max().item<double>() == 0.0);
  CHECK(z_seen.view({1, 6, 4, 16}).select(2, 0).abs().max().item<double>() > 0.0);
  CHECK(MaxAbsDiff(ablated->logits, clean->logits) > 1e-3);

  // Writing a module's input affects only that module: zeroing q_proj's input zeroes the
  // queries but keys still see the real hidden states.
  HookSet q_only(model->catalogue());
  at::Tensor q, k;
  REQUIRE(q_only.Add("model.layers.0.self_attn.q_proj.input", [](const HookContext&, at::Tensor& v) {
    v = at::zeros_like(v);
    return Status::Ok();
  }).ok());
  REQUIRE(q_only.Add("model.layers.0.self_attn.q", Capture(q)).ok());
  REQUIRE(q_only.Add("model.layers.0.self_attn.k", Capture(k)).ok());
  REQUIRE(model->Forward({{kIds}}, &q_only).ok());
  CHECK(q.abs().max().item<double>() == 0.0);
  CHECK(k.abs().max().item<double>() > 0.0);
}

TEST_CASE("a value a hook keeps is not changed by the rest of the pass", "[engine][hooks]") {
  // The pass updates some tensors in place when no hook sees them (the MLP's activation, the
  // residual sums); a hook that keeps a reference instead of a copy must still hold the value
  // it saw. Compared with copies taken at the same points.
  auto model = TinyModel();
  const std::vector<std::string> points = {
      "model.layers.0.mlp.gate_proj.output", "model.layers.0.self_attn.o_proj.output",
      "model.layers.1.self_attn.output", "model.layers.1.mlp.down_proj.output",
      "model.layers.1.mlp.output", "model.layers.1.input_layernorm.output"};
  std::vector<at::Tensor> kept(points.size()), copied(points.size());
  HookSet keep(model->catalogue()), copy(model->catalogue());
  for (size_t i = 0; i < points.size(); ++i) {
    REQUIRE(keep.Add(points[i], [&kept, i](const HookContext&, at::Tensor& v) {
      kept[i] = v;  // a reference, no copy
      return Status::Ok();
    }).ok());
    REQUIRE(copy.Add(points[i], Capture(copied[i])).ok());
  }
  REQUIRE(model->Forward({{kIds}}, &keep).ok());
  REQUIRE(model->Forward({{kIds}}, &copy).ok());
  for (size_t i = 0; i < points.size(); ++i) {
    INFO(points[i]);
    CHECK(MaxAbsDiff(kept[i], copied[i]) == 0.0);
  }
}

TEST_CASE("hook failures and bad replacements name the point", "[engine][hooks]") {
  auto model = TinyModel();
  HookSet wrong_shape(model->catalogue());
  REQUIRE(wrong_shape.Add("model.layers.2.mlp.output", [](const HookContext&, at::Tensor& v) {
    v = v.narrow(1, 0, 2).clone();
    return Status::Ok();
  }).ok());
  auto result = model->Forward({{kIds}}, &wrong_shape);
  REQUIRE_FALSE(result.ok());
  CHECK(result.status().code() == StatusCode::kInvalidArgument);
  CHECK_THAT(result.status().message(), Catch::Contains("model.layers.2.mlp.output"));
  CHECK_THAT(result.status().message(), Catch::Contains("[1, 2, 64]"));

  HookSet failing(model->catalogue());
  REQUIRE(failing.Add("hook_embed", [](const HookContext&, at::Tensor&) {
    return InvalidArgument("user callback refused");
  }).ok());
  result = model->Forward({{kIds}}, &failing);
  REQUIRE_FALSE(result.ok());
  CHECK_THAT(result.status().message(), Catch::Contains("model.embed_tokens.output"));
  CHECK_THAT(result.status().message(), Catch::Contains("user callback refused"));

  // The model is still usable afterwards.
  CHECK(model->Forward({{kIds}}).ok());
}

TEST_CASE("unsupported and corrupt model files give errors naming the file", "[engine][hooks]") {
  const std::string dir = "build/test_tmp_unsupported_model";
  mkdir("build", 0755);
  mkdir(dir.c_str(), 0755);
  std::ofstream(dir + "/config.json") << R"({"model_type": "mamba", "vocab_size": 10})";
  auto unsupported = Model::Load(dir);
  REQUIRE_FALSE(unsupported.ok());
  CHECK(unsupported.status().code() == StatusCode::kUnimplemented);
  CHECK_THAT(unsupported.status().message(), Catch::Contains("'mamba'"));
  CHECK_THAT(unsupported.status().message(), Catch::Contains("supported: llama"));
  CHECK_THAT(unsupported.status().message(), Catch::Contains("gpt2"));

  // A GGUF file cut short inside its tensor data.
  const std::string truncated = "build/test_tmp_truncated.gguf";
  {
    std::ifstream in(testing::kSmolLm2Path, std::ios::binary);
    REQUIRE(in.good());
    std::vector<char> head(4 << 20);
    in.read(head.data(), head.size());
    std::ofstream(truncated, std::ios::binary).write(head.data(), head.size());
  }
  auto corrupt = Model::Load(truncated);
  REQUIRE_FALSE(corrupt.ok());
  CHECK_THAT(corrupt.status().message(), Catch::Contains("test_tmp_truncated.gguf"));
  std::remove(truncated.c_str());
}

}  // namespace glassbox
