// The Llama forward pass against Hugging Face transformers: golden activations at every
// hook point of a tiny random checkpoint, batching with left padding, and SmolLM2 logits.
#include <ATen/TensorOperators.h>
#include <ATen/ops/from_blob.h>
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <fstream>
#include <set>

#include "engine/engine.h"
#include "tests/engine/tensor_fixtures.h"

namespace glassbox {
namespace {

using testing::kSmolLm2Path;
using testing::kTinyLlamaDir;
using testing::MaxAbsDiff;
using testing::LoadOrFail;
using testing::Row;
using testing::ReadGoldenTensors;

}  // namespace

TEST_CASE("tiny Llama matches transformers at every hook point", "[engine][llama]") {
  auto model = LoadOrFail(kTinyLlamaDir);
  auto golden = ReadGoldenTensors(std::string(kTinyLlamaDir) + "/golden.safetensors");
  const std::vector<int64_t> ids = Row(golden.at("model.embed_tokens.input")[0]);

  HookSet hooks(model->catalogue());
  std::map<std::string, at::Tensor> captured;
  hooks.AddMatching("", [&captured](const HookContext& ctx, at::Tensor& value) {
    captured[ctx.point->name] = value.clone();
    return Status::Ok();
  });
  auto result = model->Forward({{ids}}, &hooks);
  REQUIRE(result.ok());

  // Every catalogue point has a golden value and matches it.
  REQUIRE(captured.size() == static_cast<size_t>(model->catalogue().size()));
  for (const auto& [name, value] : captured) {
    INFO("hook point " << name);
    REQUIRE(golden.count(name) == 1);
    CHECK(MaxAbsDiff(value, golden.at(name)) <= 1e-4);
  }
  CHECK(MaxAbsDiff(result->logits, golden.at("lm_head.output")) <= 1e-4);
}

TEST_CASE("sharded safetensors directory loads the same weights", "[engine][llama]") {
  auto single = LoadOrFail(kTinyLlamaDir);
  auto sharded = LoadOrFail("tests/fixtures/tiny_llama_sharded");
  const std::vector<int64_t> ids = {1, 5, 9, 33, 2};
  auto a = single->Forward({{ids}});
  auto b = sharded->Forward({{ids}});
  REQUIRE(a.ok());
  REQUIRE(b.ok());
  CHECK(MaxAbsDiff(a->logits, b->logits) == 0.0);
}

TEST_CASE("left-padded batch matches transformers and each row run alone", "[engine][llama]") {
  auto model = LoadOrFail(kTinyLlamaDir);
  auto golden = ReadGoldenTensors(std::string(kTinyLlamaDir) + "/golden_batch.safetensors");
  const at::Tensor mask = golden.at("attention_mask");
  std::vector<std::vector<int64_t>> prompts;
  for (int64_t row = 0; row < mask.size(0); ++row) {
    const int64_t pad = mask.size(1) - mask[row].sum().item<int64_t>();
    prompts.push_back(Row(golden.at("input_ids")[row].narrow(0, pad, mask.size(1) - pad)));
  }
  HookSet hooks(model->catalogue());
  at::Tensor layer1;
  REQUIRE(hooks.Add("model.layers.1.output", [&](const HookContext&, at::Tensor& v) {
    layer1 = v.clone();
    return Status::Ok();
  }).ok());
  auto batched = model->Forward({prompts}, &hooks);
  REQUIRE(batched.ok());
  CHECK(batched->attention_mask.equal(mask.to(at::kLong)));

  for (size_t row = 0; row < prompts.size(); ++row) {
    INFO("row " << row);
    const int64_t len = static_cast<int64_t>(prompts[row].size());
    const int64_t start = mask.size(1) - len;
    at::Tensor mine = batched->logits[row].narrow(0, start, len);
    CHECK(MaxAbsDiff(mine, golden.at("logits")[row].narrow(0, start, len)) <= 1e-4);
    CHECK(MaxAbsDiff(layer1[row].narrow(0, start, len),
                     golden.at("model.layers.1.output")[row].narrow(0, start, len)) <= 1e-4);
    auto alone = model->Forward({{prompts[row]}});
    REQUIRE(alone.ok());
    CHECK(MaxAbsDiff(mine, alone->logits[0]) <= 1e-5);
  }
}

TEST_CASE("SmolLM2 next-token logits match transformers on the same GGUF",
          "[engine][llama][model][smollm2]") {
  auto model = LoadOrFail(kSmolLm2Path);
  REQUIRE(model->config().num_layers == 30);
  REQUIRE(model->config().tie_word_embeddings);
  auto fixture = nlohmann::json::parse(testing::ReadTextFile("tests/fixtures/smollm2/logits.json"));
  for (const auto& prompt : fixture.at("prompts")) {
    const std::string text = prompt.at("prompt");
    INFO("prompt: " << text);
    const auto ids = prompt.at("input_ids").get<std::vector<int64_t>>();
    CHECK(model->tokenizer()->Encode(text, /*add_special_tokens=*/false) == ids);
    auto result = model->Forward({{ids}, /*all_logits=*/false});
    REQUIRE(result.ok());
    at::Tensor logits = result->logits[0][0];
    const double max_abs = prompt.at("max_abs_logit");
    CHECK(logits.argmax().item<int64_t>() == prompt.at("argmax").get<int64_t>());
    const auto top_ids = prompt.at("top_ids").get<std::vector<int64_t>>();
    const auto top_logits = prompt.at("top_logits").get<std::vector<double>>();
    for (size_t i = 0; i < top_ids.size(); ++i) {
      CHECK(std::abs(logits[top_ids[i]].item<double>() - top_logits[i]) <= 1e-3 * max_abs);
    }
  }
  // The whole distribution for the first prompt, and the fact everyone checks first.
  std::ifstream in("tests/fixtures/smollm2/first_prompt_logits.f32", std::ios::binary);
  std::vector<float> expected(model->config().vocab_size);
  REQUIRE(in.read(reinterpret_cast<char*>(expected.data()), expected.size() * sizeof(float)));
  const auto& first = fixture.at("prompts")[0];
  auto result = model->Forward({{first.at("input_ids").get<std::vector<int64_t>>()}, false});
  REQUIRE(result.ok());
  at::Tensor reference = at::from_blob(expected.data(), {model->config().vocab_size});
  CHECK(MaxAbsDiff(result->logits[0][0], reference) <= 1e-3 * first.at("max_abs_logit").get<double>());
  at::Tensor top5 = std::get<1>(result->logits[0][0].topk(5));
  std::set<std::string> words;
  for (int i = 0; i < 5; ++i) words.insert(*model->tokenizer()->Decode({top5[i].item<int64_t>()}));
  CHECK(words.count(" Paris") == 1);
}

TEST_CASE("bfloat16 weights run and stay close to float32", "[engine][llama]") {
  auto f32 = LoadOrFail(kTinyLlamaDir);
  EngineParams params;
  params.dtype = "bfloat16";
  auto bf16 = LoadOrFail(kTinyLlamaDir, params);
  CHECK(bf16->dtype() == "bfloat16");
  const std::vector<int64_t> ids = {1, 17, 42, 99, 3, 64};
  auto a = f32->Forward({{ids}});
  auto b = bf16->Forward({{ids}});
  REQUIRE(a.ok());
  REQUIRE(b.ok());
  const double scale = a->logits.abs().max().item<double>();
  CHECK(MaxAbsDiff(a->logits, b->logits) <= 0.1 * scale);
  CHECK(MaxAbsDiff(a->logits, b->logits) > 0.0);  // really ran in another dtype
}

TEST_CASE("float16 either runs or is refused at load with a reason", "[engine][llama]") {
  EngineParams params;
  params.dtype = "float16";
  auto model = Model::Load(kTinyLlamaDir, params);
  if (!model.ok()) {  // LibTorch 1.13 has no float16 matrix products on the CPU
    CHECK(model.status().code() == StatusCode::kInvalidArgument);
    CHECK_THAT(model.status().message(), Catch::Contains("float16"));
    CHECK_THAT(model.status().message(), Catch::Contains("cpu"));
    return;
  }
  auto result = (*model)->Forward({{{1, 2, 3}}});
  INFO(result.status().ToString());
  CHECK(result.ok());
}

TEST_CASE("bad model paths and inputs give errors naming the cause", "[engine][llama]") {
  auto missing = Model::Load("tests/fixtures/no_such_model.gguf");
  REQUIRE_FALSE(missing.ok());
  CHECK_THAT(missing.status().message(), Catch::Contains("no_such_model.gguf"));

  auto bad_device = Model::Load(kTinyLlamaDir, EngineParams{"tpu", "float32", 1});
  REQUIRE_FALSE(bad_device.ok());
  CHECK_THAT(bad_device.status().message(), Catch::Contains("tpu"));

  auto model = LoadOrFail(kTinyLlamaDir);
  auto out_of_vocab = model->Forward({{{1, 2, 500}}});
  REQUIRE_FALSE(out_of_vocab.ok());
  CHECK_THAT(out_of_vocab.status().message(), Catch::Contains("500"));
  CHECK_THAT(out_of_vocab.status().message(), Catch::Contains("position 2"));
  auto empty = model->Forward({{{}}});
  REQUIRE_FALSE(empty.ok());
  CHECK_THAT(empty.status().message(), Catch::Contains("no tokens"));
}

}  // namespace glassbox

namespace glassbox {

using testing::kTinyLlamaDir;

TEST_CASE("weights that do not fit the memory budget are refused before loading", "[engine][llama]") {
  // The checkpoint stores float32: its file is the float32 weights plus a small header, so a
  // budget of 3/4 of it holds them in bfloat16 (half) and not in float32.
  std::ifstream file(std::string(kTinyLlamaDir) + "/model.safetensors", std::ios::binary | std::ios::ate);
  REQUIRE(file);
  const int64_t file_bytes = static_cast<int64_t>(file.tellg());
  EngineParams params;
  params.memory_budget = file_bytes * 3 / 4;
  auto f32 = Model::Load(kTinyLlamaDir, params);
  REQUIRE_FALSE(f32.ok());
  CHECK(f32.status().code() == StatusCode::kResourceExhausted);
  CHECK_THAT(f32.status().message(), Catch::Contains(std::to_string(params.memory_budget) + " bytes"));
  CHECK_THAT(f32.status().message(), Catch::Contains("memory budget"));
  CHECK_THAT(f32.status().message(), Catch::Contains("--dtype bfloat16"));
  params.dtype = "bfloat16";
  auto bf16 = Model::Load(kTinyLlamaDir, params);
  INFO(bf16.status().ToString());
  REQUIRE(bf16.ok());
  CHECK((*bf16)->WeightBytes() <= params.memory_budget);
  CHECK((*bf16)->WeightBytes() * 2 >= file_bytes * 9 / 10);  // really all of the weights
  // The default budget is what the machine has free: this model fits.
  CHECK(Model::Load(kTinyLlamaDir).ok());
}

}  // namespace glassbox
