// The real Gemma 3 270M (Q4_K_M GGUF, models/, fetched by scripts/fetch_model.sh
// gemma3-270m) against transformers loading the same GGUF in float32
// (scripts/fixtures/make_gemma3_270m.py): every layer's residual, logits, top-1 on ten
// prompts (one past the 512-token sliding window) and 20 greedy tokens for two prompts.
// Token ids come from the fixture, so this checks the model, not the tokenizer.
#include <c10/util/Logging.h>  // before Catch: keeps Catch's CHECK
#include <ATen/TensorOperators.h>
#include <ATen/ops/abs.h>
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include "engine/engine.h"
#include "tests/engine/tensor_fixtures.h"

namespace glassbox {
namespace {

constexpr const char* kGemmaPath = "models/gemma-3-270m-q4_k_m.gguf";
constexpr const char* kFixtures = "tests/fixtures/gemma3_270m";

const Model& Gemma() {
  static std::unique_ptr<Model> model = [] {
    auto loaded = Model::Load(kGemmaPath);
    INFO(loaded.status().ToString());
    REQUIRE(loaded.ok());
    return std::move(loaded).value();
  }();
  return *model;
}

nlohmann::json Reference() {
  return nlohmann::json::parse(testing::ReadTextFile(std::string(kFixtures) + "/reference.json"));
}

double MaxAbs(const at::Tensor& t) { return t.abs().max().item<double>(); }

}  // namespace

TEST_CASE("Gemma 3 270M: every layer's residual as transformers", "[engine][gemma][model]") {
  const Model& model = Gemma();
  auto golden = testing::ReadGoldenTensors(std::string(kFixtures) + "/residuals.safetensors");
  const auto ids = Reference().at("prompts")[0].at("input_ids").get<std::vector<int64_t>>();
  HookSet hooks(model.catalogue());
  std::map<std::string, at::Tensor> seen;
  for (int64_t layer = 0; layer < model.config().num_layers; ++layer) {
    const std::string name = "model.layers." + std::to_string(layer) + ".output";
    REQUIRE(hooks.Add(name, [&seen, name](const HookContext&, at::Tensor& v) {
      seen[name] = v.clone();
      return Status::Ok();
    }).ok());
  }
  REQUIRE(model.Forward({{ids}}, &hooks).ok());
  for (const auto& [name, value] : seen) {
    INFO(name);
    const at::Tensor& expected = golden.at(name);
    CHECK(testing::MaxAbsDiff(value, expected) <= 1e-3 * MaxAbs(expected));
  }
  CHECK(seen.size() == 18);
}

TEST_CASE("Gemma 3 270M: logits and top-1 on ten prompts as transformers", "[engine][gemma][model]") {
  const Model& model = Gemma();
  const nlohmann::json reference = Reference();
  auto first = testing::ReadGoldenTensors(std::string(kFixtures) + "/first_prompt_logits.safetensors");
  int index = 0;
  for (const auto& prompt : reference.at("prompts")) {
    INFO("prompt " << index << ": " << prompt.at("text").get<std::string>().substr(0, 60));
    auto result = model.Forward({{prompt.at("input_ids").get<std::vector<int64_t>>()}, /*all_logits=*/false});
    REQUIRE(result.ok());
    at::Tensor logits = result->logits[0][0];
    CHECK(logits.argmax().item<int64_t>() == prompt.at("top1_id").get<int64_t>());
    const double max_abs = prompt.at("max_abs_logit");
    CHECK(std::abs(MaxAbs(logits) - max_abs) <= 1e-3 * max_abs);
    if (index == 0) CHECK(testing::MaxAbsDiff(logits, first.at("logits")) <= 1e-3 * max_abs);
    ++index;
  }
  CHECK(index == 10);
}

TEST_CASE("Gemma 3 270M: 20 greedy tokens as transformers", "[engine][gemma][model]") {
  const Model& model = Gemma();
  const nlohmann::json reference = Reference();  // (a temporary would die before the loop)
  for (const auto& run : reference.at("generation").at("runs")) {
    SamplingParams sampling;
    sampling.max_new_tokens = 20;
    sampling.stop_ids = {-1};
    auto result = model.Generate({run.at("prompt_ids").get<std::vector<int64_t>>()}, sampling);
    REQUIRE(result.ok());
    CHECK(result->new_tokens[0] == run.at("generated_ids").get<std::vector<int64_t>>());
  }
}

}  // namespace glassbox
