// Every family against Hugging Face transformers on tiny random checkpoints written by
// scripts/fixtures/make_tiny_families.py (and make_tiny_llama.py): every hook point, a
// left-padded batch and its rows run alone, 20 greedy tokens, and the gradient of one logit
// at a mid-layer point. Then the TransformerLens names, which must mean the same thing on
// every family.
#include <c10/util/Logging.h>  // before Catch: keeps Catch's CHECK
#include <ATen/TensorOperators.h>
#include <ATen/ops/abs.h>
#include <ATen/ops/ones_like.h>
#include <ATen/ops/tanh.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros_like.h>
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <map>
#include <string>

#include "engine/engine.h"
#include "tests/engine/tensor_fixtures.h"

namespace glassbox {
namespace {

using testing::MaxAbsDiff;
using testing::LoadOrFail;
using testing::Row;
using testing::RelativeDiff;
using testing::CaptureAll;
using testing::ReadGoldenTensors;

void CheckEveryHookPoint(const std::string& dir) {
  auto model = LoadOrFail(dir);
  auto golden = ReadGoldenTensors(dir + "/golden.safetensors");
  const std::string ids_point = model->catalogue().point(0).name;
  REQUIRE(golden.count(ids_point) == 1);
  auto captured = CaptureAll(*model, Row(golden.at(ids_point)[0]));
  CHECK(captured.size() == static_cast<size_t>(model->catalogue().size()));
  CHECK(golden.size() == captured.size());
  for (const auto& [name, value] : captured) {
    INFO("hook point " << name);
    REQUIRE(golden.count(name) == 1);
    CHECK(RelativeDiff(value, golden.at(name)) <= 1e-4);
  }
}

void CheckBatch(const std::string& dir, const std::string& layer1) {
  auto model = LoadOrFail(dir);
  auto golden = ReadGoldenTensors(dir + "/golden_batch.safetensors");
  const at::Tensor mask = golden.at("attention_mask");
  std::vector<std::vector<int64_t>> prompts;
  for (int64_t row = 0; row < mask.size(0); ++row) {
    const int64_t pad = mask.size(1) - mask[row].sum().item<int64_t>();
    prompts.push_back(Row(golden.at("input_ids")[row].narrow(0, pad, mask.size(1) - pad)));
  }
  HookSet hooks(model->catalogue());
  at::Tensor layer_out;
  REQUIRE(hooks.Add(layer1, [&](const HookContext&, at::Tensor& v) {
    layer_out = v.clone();
    return Status::Ok();
  }).ok());
  auto batched = model->Forward({prompts}, &hooks);
  REQUIRE(batched.ok());
  for (size_t row = 0; row < prompts.size(); ++row) {
    INFO("row " << row);
    const int64_t len = static_cast<int64_t>(prompts[row].size()), start = mask.size(1) - len;
    at::Tensor mine = batched->logits[row].narrow(0, start, len);
    CHECK(RelativeDiff(mine, golden.at("logits")[row].narrow(0, start, len)) <= 1e-4);
    CHECK(RelativeDiff(layer_out[row].narrow(0, start, len),
                       golden.at(layer1)[row].narrow(0, start, len)) <= 1e-4);
    auto alone = model->Forward({{prompts[row]}});
    REQUIRE(alone.ok());
    CHECK(RelativeDiff(mine, alone->logits[0]) <= 1e-5);
  }
}

void CheckGeneration(const std::string& dir) {
  auto model = LoadOrFail(dir);
  auto golden = nlohmann::json::parse(testing::ReadTextFile(dir + "/golden_generate.json"));
  SamplingParams sampling;
  sampling.max_new_tokens = golden.at("max_new_tokens");
  sampling.stop_ids = {-1};  // no stop token, as the golden was made
  auto result = model->Generate({golden.at("prompt_ids").get<std::vector<int64_t>>()}, sampling);
  REQUIRE(result.ok());
  CHECK(result->new_tokens[0] == golden.at("generated_ids").get<std::vector<int64_t>>());
  CHECK(result->new_tokens[0].size() == 20);
}

// loss = logits[0, -1, 3]; its gradient with respect to the residual stream leaving layer 1.
void CheckGradient(const std::string& dir) {
  auto model = LoadOrFail(dir);
  auto golden = ReadGoldenTensors(dir + "/golden_grad.safetensors");
  auto inputs = ReadGoldenTensors(dir + "/golden.safetensors");
  HookSet hooks(model->catalogue());
  at::Tensor leaf;
  REQUIRE(hooks.Add("blocks.1.hook_resid_post", [&](const HookContext&, at::Tensor& v) {
    leaf = v.detach().clone().requires_grad_(true);
    v = leaf;
    return Status::Ok();
  }).ok());
  auto result = model->Forward({{Row(inputs.at(model->catalogue().point(0).name)[0])}}, &hooks);
  REQUIRE(result.ok());
  at::Tensor loss = result->logits[0][-1][3];
  CHECK(RelativeDiff(loss.detach().reshape({1}), golden.at("loss").reshape({1})) <= 1e-4);
  loss.backward();
  REQUIRE(leaf.grad().defined());
  CHECK(RelativeDiff(leaf.grad(), golden.at("grad")) <= 1e-4);
}

// TransformerLens names exist on every family and relate as TransformerLens defines them.
// `final_cap` > 0: the model soft-caps its logits (Gemma 2), unembed.hook_logits is before.
void CheckTransformerLensNames(const std::string& dir, double final_cap = 0) {
  auto model = LoadOrFail(dir);
  const HookCatalogue& c = model->catalogue();
  at::Tensor logits;
  auto captured = CaptureAll(*model, {1, 17, 42, 99, 5}, &logits);
  auto tl = [&](const std::string& alias) -> at::Tensor {
    std::optional<int> id = c.Find(alias);
    INFO("TransformerLens name " << alias);
    REQUIRE(id.has_value());
    return captured.at(c.point(*id).name);
  };
  const int64_t layers = model->config().num_layers;
  CHECK(MaxAbsDiff(tl("blocks.0.hook_resid_pre"), tl("hook_embed") + (c.Find("hook_pos_embed") ? tl("hook_pos_embed") : at::zeros_like(tl("hook_embed")))) <= 1e-6);
  for (int64_t l = 0; l < layers; ++l) {
    const std::string b = "blocks." + std::to_string(l) + ".";
    INFO("layer " << l);
    CHECK(RelativeDiff(tl(b + "hook_resid_post"), tl(b + "hook_resid_pre") + tl(b + "hook_attn_out") + tl(b + "hook_mlp_out")) <= 1e-5);
    if (l + 1 < layers) CHECK(MaxAbsDiff(tl(b + "hook_resid_post"), tl("blocks." + std::to_string(l + 1) + ".hook_resid_pre")) == 0);
    at::Tensor pattern = tl(b + "attn.hook_pattern");  // [batch, head, q, k], rows sum to 1
    CHECK(MaxAbsDiff(pattern.sum(-1), at::ones_like(pattern.sum(-1))) <= 1e-5);
    CHECK(pattern.size(1) == model->config().num_heads);
    CHECK(tl(b + "attn.hook_z").sizes().vec() == std::vector<int64_t>{1, 5, model->config().num_heads, model->config().head_dim});
    CHECK(tl(b + "attn.hook_q").size(2) == model->config().num_heads);
    CHECK(tl(b + "attn.hook_k").size(2) == model->config().num_kv_heads);
    CHECK(tl(b + "attn.hook_v").sizes() == tl(b + "attn.hook_k").sizes());
    CHECK(tl(b + "attn.hook_attn_scores").sizes() == pattern.sizes());
    for (const char* name : {"ln1.hook_normalized", "ln2.hook_normalized", "mlp.hook_pre", "mlp.hook_post"}) {
      (void)tl(b + name);
    }
  }
  CHECK(MaxAbsDiff(tl("ln_final.hook_input"), tl("blocks." + std::to_string(layers - 1) + ".hook_resid_post")) == 0);
  at::Tensor unembedded = tl("unembed.hook_logits");
  if (final_cap > 0) unembedded = at::tanh(unembedded / final_cap) * final_cap;
  CHECK(MaxAbsDiff(unembedded, logits) <= 1e-6);
  CHECK(MaxAbsDiff(tl("ln_final.hook_normalized"), tl("unembed.hook_input")) == 0);
}

}  // namespace

#define FAMILY_TESTS(family, dir, layer1, final_cap)                                                 \
  TEST_CASE(family ": every hook point matches transformers", "[engine][families]") {       \
    CheckEveryHookPoint(dir);                                                               \
  }                                                                                         \
  TEST_CASE(family ": left-padded batch matches transformers and solo rows",                \
            "[engine][families]") {                                                         \
    CheckBatch(dir, layer1);                                                                \
  }                                                                                         \
  TEST_CASE(family ": 20 greedy tokens as transformers", "[engine][families]") {            \
    CheckGeneration(dir);                                                                   \
  }                                                                                         \
  TEST_CASE(family ": gradient at layer 1 as transformers", "[engine][families]") {         \
    CheckGradient(dir);                                                                     \
  }                                                                                         \
  TEST_CASE(family ": TransformerLens names mean what they mean everywhere",                \
            "[engine][families]") {                                                         \
    CheckTransformerLensNames(dir, final_cap);                                              \
  }

FAMILY_TESTS("gpt2", "tests/fixtures/tiny_gpt2", "transformer.h.1.output", 0)
FAMILY_TESTS("gpt_neox", "tests/fixtures/tiny_neox", "gpt_neox.layers.1.output", 0)
FAMILY_TESTS("qwen2", "tests/fixtures/tiny_qwen2", "model.layers.1.output", 0)
FAMILY_TESTS("qwen3", "tests/fixtures/tiny_qwen3", "model.layers.1.output", 0)
FAMILY_TESTS("mistral", "tests/fixtures/tiny_mistral", "model.layers.1.output", 0)
FAMILY_TESTS("llama3", "tests/fixtures/tiny_llama3", "model.layers.1.output", 0)
FAMILY_TESTS("gemma2", "tests/fixtures/tiny_gemma2", "model.layers.1.output", 3.0)
FAMILY_TESTS("gemma3", "tests/fixtures/tiny_gemma3", "model.layers.1.output", 0)

TEST_CASE("llama: TransformerLens names mean what they mean everywhere", "[engine][families]") {
  CheckTransformerLensNames("tests/fixtures/tiny_llama");
}

}  // namespace glassbox
