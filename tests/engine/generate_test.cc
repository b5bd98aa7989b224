// Generation with the KV cache: greedy against transformers, cache against no cache,
// seeded sampling, stop tokens, and hooks at every step.
#include <ATen/TensorOperators.h>
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <map>
#include <tuple>

#include "engine/engine.h"
#include "engine/generation.h"
#include "tests/engine/tensor_fixtures.h"

namespace glassbox {
namespace {

using testing::kTinyLlamaDir;

std::unique_ptr<Model> TinyModel() {
  auto model = Model::Load(kTinyLlamaDir);
  INFO(model.status().ToString());
  REQUIRE(model.ok());
  return std::move(model).value();
}

SamplingParams Greedy(int n) {
  SamplingParams s;
  s.max_new_tokens = n;
  s.stop_ids = {-1};  // never produced: no stopping
  return s;
}

// Greedy decoding by re-running the whole sequence each step (no cache).
std::vector<int64_t> GreedyWithoutCache(const Model& model, std::vector<int64_t> ids, int n) {
  std::vector<int64_t> out;
  for (int i = 0; i < n; ++i) {
    auto result = model.Forward({{ids}, /*all_logits=*/false});
    REQUIRE(result.ok());
    out.push_back(result->logits[0][0].argmax().item<int64_t>());
    ids.push_back(out.back());
  }
  return out;
}

}  // namespace

TEST_CASE("greedy generation matches transformers", "[engine][generate]") {
  auto model = TinyModel();
  auto golden = nlohmann::json::parse(
      testing::ReadTextFile(std::string(kTinyLlamaDir) + "/golden_generate.json"));
  const auto prompt = golden.at("prompt_ids").get<std::vector<int64_t>>();
  const auto expected = golden.at("generated_ids").get<std::vector<int64_t>>();
  auto result = model->Generate({prompt}, Greedy(static_cast<int>(expected.size())));
  REQUIRE(result.ok());
  CHECK(result->new_tokens[0] == expected);
  CHECK(result->stop_reasons[0] == "max_new_tokens");
}

TEST_CASE("the KV cache gives what recomputing everything gives, batched too",
          "[engine][generate]") {
  auto model = TinyModel();
  const std::vector<std::vector<int64_t>> prompts = {{1, 9, 77, 3, 12, 40}, {1, 100, 7}};
  auto batched = model->Generate(prompts, Greedy(10));
  REQUIRE(batched.ok());
  for (size_t row = 0; row < prompts.size(); ++row) {
    INFO("row " << row);
    CHECK(batched->new_tokens[row] == GreedyWithoutCache(*model, prompts[row], 10));
  }
}

TEST_CASE("seeded sampling is reproducible and depends on the seed", "[engine][generate]") {
  auto model = TinyModel();
  SamplingParams s = Greedy(24);
  s.temperature = 1.5;
  s.top_k = 50;
  s.top_p = 0.95;
  s.seed = 7;
  auto a = model->Generate({{1, 2, 3}}, s);
  auto b = model->Generate({{1, 2, 3}}, s);
  s.seed = 8;
  auto c = model->Generate({{1, 2, 3}}, s);
  REQUIRE(a.ok());
  REQUIRE(b.ok());
  REQUIRE(c.ok());
  CHECK(a->new_tokens == b->new_tokens);
  CHECK(a->new_tokens != c->new_tokens);
  CHECK(a->new_tokens[0] != GreedyWithoutCache(*model, {1, 2, 3}, 24));

  // top_k = 1 is greedy whatever the temperature.
  s.top_k = 1;
  auto k1 = model->Generate({{1, 2, 3}}, s);
  REQUIRE(k1.ok());
  CHECK(k1->new_tokens[0] == GreedyWithoutCache(*model, {1, 2, 3}, 24));
}

TEST_CASE("generation stops at a stop token, per row", "[engine][generate]") {
  auto model = TinyModel();
  const std::vector<int64_t> prompt = {1, 9, 77, 3};
  auto free_run = model->Generate({prompt}, Greedy(8));
  REQUIRE(free_run.ok());
  SamplingParams s = Greedy(8);
  s.stop_ids = {free_run->new_tokens[0][2]};
  auto stopped = model->Generate({prompt}, s);
  REQUIRE(stopped.ok());
  // Stops at the first occurrence of the stop token, which is included.
  const auto& full = free_run->new_tokens[0];
  const size_t first = std::find(full.begin(), full.end(), s.stop_ids[0]) - full.begin();
  CHECK(stopped->new_tokens[0] == std::vector<int64_t>(full.begin(), full.begin() + first + 1));
  CHECK(stopped->stop_reasons[0] == "stop_token");
}

TEST_CASE("hooks run at every generation step and can steer it", "[engine][generate]") {
  auto model = TinyModel();
  const std::vector<int64_t> prompt = {1, 9, 77, 3};
  HookSet hooks(model->catalogue());
  std::vector<std::pair<int, int64_t>> seen;  // (step, seq length)
  REQUIRE(hooks.Add("model.layers.0.output", [&](const HookContext& ctx, at::Tensor& v) {
    seen.emplace_back(ctx.step, v.size(1));
    v = v + 3.0;  // a crude steering vector
    return Status::Ok();
  }).ok());
  auto steered = model->Generate({prompt}, Greedy(5), &hooks);
  REQUIRE(steered.ok());
  REQUIRE(seen.size() == 5);
  CHECK(seen[0] == std::make_pair(0, int64_t{4}));
  for (int i = 1; i < 5; ++i) CHECK(seen[i] == std::make_pair(i, int64_t{1}));
  auto plain = model->Generate({prompt}, Greedy(5));
  REQUIRE(plain.ok());
  CHECK(steered->new_tokens != plain->new_tokens);
}

TEST_CASE("groups join a running generation between steps, leave when done, and each generates what it would alone",
          "[engine][generate]") {
  auto model = TinyModel();
  SamplingParams sampled = Greedy(4);
  sampled.temperature = 1.5;
  sampled.seed = 3;
  // A runs 12 steps; B (sampled, 4 tokens) joins after A's 2nd step and leaves before A
  // ends; C (two prompts, one longer than the batch's keys so far) joins after A's 5th.
  const std::vector<std::vector<int64_t>> a = {{1, 9, 77, 3, 12, 40}}, b = {{1, 100, 7}};
  const std::vector<std::vector<int64_t>> c = {{5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18}, {1, 2}};
  HookSet hooks(model->catalogue());
  std::vector<int64_t> rows;  // the batch's rows at each pass
  REQUIRE(hooks.Add("model.layers.0.output", [&](const HookContext&, at::Tensor& v) {
    rows.push_back(v.size(0));
    return Status::Ok();
  }).ok());
  Generation generation(*model);
  std::map<int, GenerateResult> results;
  const int ga = generation.Join(a, Greedy(12)).value();
  int gb = -1, gc = -1, passes = 0;
  while (!generation.Idle()) {
    const std::vector<Generation::Slot> next = generation.NextPass();
    REQUIRE(!next.empty());
    if (gb >= 0 && next.front().group == gb) CHECK(next.front().step == 0);  // B's prefill, alone
    REQUIRE(generation.Step(&hooks).ok());
    ++passes;
    for (int g : generation.Finished()) results[g] = generation.Take(g);
    if (passes == 2) gb = generation.Join(b, sampled).value();
    if (passes == 6) gc = generation.Join(c, Greedy(5)).value();
  }
  REQUIRE(results.size() == 3);
  for (const auto& [group, prompts, sampling] :
       {std::make_tuple(ga, a, Greedy(12)), std::make_tuple(gb, b, sampled), std::make_tuple(gc, c, Greedy(5))}) {
    INFO("group " << group);
    auto alone = model->Generate(prompts, sampling);
    REQUIRE(alone.ok());
    CHECK(results[group].new_tokens == alone->new_tokens);
    CHECK(results[group].stop_reasons == alone->stop_reasons);
  }
  // A 12 passes + B's and C's prefills; B's rows left after its 4 tokens, so the last passes
  // hold A and C only (1 + 2 rows), and after C's 5 tokens A alone.
  CHECK(passes == 14);
  CHECK(std::count(rows.begin(), rows.end(), 2) >= 1);  // A and B decoding together
  CHECK(std::count(rows.begin(), rows.end(), 4) == 0);  // B left before C joined
  CHECK(std::count(rows.begin(), rows.end(), 3) == 4);  // A and C: C's 4 decode steps
  CHECK(rows.back() == 1);
}

TEST_CASE("a group taken before it finishes stops and leaves while the others go on", "[engine][generate]") {
  auto model = TinyModel();
  Generation generation(*model);
  const int ga = generation.Join({{1, 9, 77, 3}}, Greedy(6)).value();
  const int gb = generation.Join({{1, 100, 7, 8, 9, 10, 11}}, Greedy(6)).value();
  REQUIRE(generation.Step(nullptr).ok());
  REQUIRE(generation.Step(nullptr).ok());
  const GenerateResult partial = generation.Take(gb);  // B's prompt was the longer: trimmed
  CHECK(partial.new_tokens.at(0).size() == 2);
  while (!generation.Idle()) REQUIRE(generation.Step(nullptr).ok());
  REQUIRE(generation.Finished() == std::vector<int>{ga});
  auto alone = model->Generate({{1, 9, 77, 3}}, Greedy(6));
  REQUIRE(alone.ok());
  CHECK(generation.Take(ga).new_tokens == alone->new_tokens);
  CHECK(generation.Join({{}}, Greedy(1)).status().code() == StatusCode::kInvalidArgument);
}

TEST_CASE("SmolLM2 greedily continues a prompt sensibly", "[engine][generate][model][smollm2]") {
  auto model = Model::Load(testing::kSmolLm2Path);
  REQUIRE(model.ok());
  auto ids = (*model)->tokenizer()->Encode("The capital of France is", false);
  SamplingParams s;
  s.max_new_tokens = 4;
  auto result = (*model)->Generate({ids}, s);
  REQUIRE(result.ok());
  auto text = (*model)->tokenizer()->Decode(result->new_tokens[0]);
  REQUIRE(text.ok());
  CHECK_THAT(*text, Catch::Contains("Paris"));
}

}  // namespace glassbox
