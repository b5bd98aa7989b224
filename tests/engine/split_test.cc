// Layers split across placements: the tiny fixtures of every family on 2 and 3 CPU
// placements (EngineParams::testing_cpu_placements, the code path of a multi-GPU split)
// against the same model unsplit, at every hook point, with writes, gradients and
// generation; and the residual crossing between placements exactly where the plan says.
#include <ATen/Context.h>
#include <ATen/TensorOperators.h>
#include <catch2/catch.hpp>

#include <algorithm>
#include <regex>
#include <sstream>

#include "engine/device_plan.h"
#include "engine/engine.h"
#include "tests/engine/tensor_fixtures.h"

namespace glassbox {
namespace {

using testing::LoadOrFail;
using testing::MaxAbsDiff;
using testing::ReadGoldenTensors;
using testing::RelativeDiff;

const std::vector<int64_t> kIds = {1, 17, 42, 99, 5, 64};

std::unique_ptr<Model> Split(const std::string& dir, int placements) {
  EngineParams params;
  params.testing_cpu_placements = placements;
  return LoadOrFail(dir, params);
}

// The placement of each layer and of the head, read from Model::placement()
// ("cpu[0]: embedding, layer 0; cpu[1]: layers 1-2, head").
struct Layout {
  std::vector<int> layers;
  int head = -1;
};

Layout ReadLayout(const Model& model) {
  Layout layout;
  layout.layers.assign(model.config().num_layers, -1);
  std::stringstream text(model.placement());
  std::string segment;
  const std::regex device(R"(^\s*cpu\[(\d+)\]: (.*)$)");
  const std::regex range(R"(layers? (\d+)(?:-(\d+))?)");
  while (std::getline(text, segment, ';')) {
    std::smatch m;
    REQUIRE(std::regex_match(segment, m, device));
    const int placement = std::stoi(m[1]);
    const std::string parts = m[2];
    if (parts.find("head") != std::string::npos) layout.head = placement;
    for (std::sregex_iterator it(parts.begin(), parts.end(), range), end; it != end; ++it) {
      const int first = std::stoi((*it)[1]);
      const int last = (*it)[2].matched ? std::stoi((*it)[2]) : first;
      for (int l = first; l <= last; ++l) layout.layers.at(l) = placement;
    }
  }
  return layout;
}

// Residual crossings a pass makes: embedding (placement 0) -> each layer -> the head.
int64_t Crossings(const Layout& layout) {
  int64_t crossings = 0;
  int at = 0;
  for (int p : layout.layers) {
    crossings += p != at;
    at = p;
  }
  return crossings + (layout.head != at);
}

void CheckEveryPointMatches(const std::string& dir, int placements) {
  auto whole = LoadOrFail(dir);
  auto split = Split(dir, placements);
  INFO(dir << " on " << placements << " placements: " << split->placement());
  CHECK(split->device() == (placements == 2 ? "cpu[0],cpu[1]" : "cpu[0],cpu[1],cpu[2]"));
  const Layout layout = ReadLayout(*split);
  for (int p = 0; p < placements; ++p) {  // every placement holds a layer
    CHECK(std::count(layout.layers.begin(), layout.layers.end(), p) > 0);
  }
  REQUIRE(std::count(layout.layers.begin(), layout.layers.end(), -1) == 0);
  REQUIRE(layout.head >= 0);

  at::Tensor whole_logits, split_logits;
  auto expected = testing::CaptureAll(*whole, kIds, &whole_logits);
  const int64_t moves_before = ResidualMoves();
  auto actual = testing::CaptureAll(*split, kIds, &split_logits);
  CHECK(ResidualMoves() - moves_before == Crossings(layout));
  REQUIRE(actual.size() == static_cast<size_t>(whole->catalogue().size()));
  for (const auto& [name, value] : expected) {
    INFO("point " << name);
    REQUIRE(actual.count(name) == 1);
    CHECK(MaxAbsDiff(actual.at(name), value) <= 1e-6);
  }
  CHECK(MaxAbsDiff(split_logits, whole_logits) <= 1e-6);
}

// Replaces every layer's input with 0.5 x itself plus 0.1: the logits of both models agree.
at::Tensor LogitsWithWrites(const Model& model) {
  HookSet hooks(model.catalogue());
  for (int64_t l = 0; l < model.config().num_layers; ++l) {
    REQUIRE(hooks.Add("blocks." + std::to_string(l) + ".hook_resid_pre", [](const HookContext&, at::Tensor& v) {
      v = v * 0.5 + 0.1;
      return Status::Ok();
    }).ok());
  }
  auto result = model.Forward({{kIds}}, &hooks);
  REQUIRE(result.ok());
  return result->logits;
}

// Gradients of logits[0, -1, 3] at the residual stream entering the first and the last
// layer (on different placements in a split).
std::vector<at::Tensor> Gradients(const Model& model) {
  HookSet hooks(model.catalogue());
  std::vector<at::Tensor> leaves(2);
  const int64_t last = model.config().num_layers - 1;
  for (int i = 0; i < 2; ++i) {
    const std::string point = "blocks." + std::to_string(i == 0 ? 0 : last) + ".hook_resid_pre";
    REQUIRE(hooks.Add(point, [&leaves, i](const HookContext&, at::Tensor& v) {
      if (i == 0) {  // a leaf at the first layer
        leaves[i] = v.detach().clone().requires_grad_(true);
        v = leaves[i];
      } else {  // the last layer's input stays in the graph (a new leaf would cut it)
        v.retain_grad();
        leaves[i] = v;
      }
      return Status::Ok();
    }).ok());
  }
  auto result = model.Forward({{kIds}}, &hooks);
  REQUIRE(result.ok());
  result->logits[0][-1][3].backward();
  for (const at::Tensor& leaf : leaves) REQUIRE(leaf.grad().defined());
  return {leaves[0].grad(), leaves[1].grad()};
}

const char* const kFixtures[] = {"tests/fixtures/tiny_llama", "tests/fixtures/tiny_llama3",
                                 "tests/fixtures/tiny_qwen3", "tests/fixtures/tiny_gpt2",
                                 "tests/fixtures/tiny_neox", "tests/fixtures/tiny_gemma2",
                                 "tests/fixtures/tiny_gemma3"};

TEST_CASE("Split: every hook point of every family matches the unsplit model on 2 placements", "[engine][split][model]") {
  for (const char* dir : kFixtures) CheckEveryPointMatches(dir, 2);
}

TEST_CASE("Split: every hook point of every family matches the unsplit model on 3 placements", "[engine][split][model]") {
  for (const char* dir : kFixtures) CheckEveryPointMatches(dir, 3);
}

TEST_CASE("Split: writes at every layer and gradients across placements match the unsplit model", "[engine][split][model]") {
  for (const char* dir : kFixtures) {
    auto whole = LoadOrFail(dir);
    for (int placements : {2, 3}) {
      auto split = Split(dir, placements);
      INFO(dir << ": " << split->placement());
      CHECK(MaxAbsDiff(LogitsWithWrites(*split), LogitsWithWrites(*whole)) <= 1e-6);
      std::vector<at::Tensor> expected = Gradients(*whole), actual = Gradients(*split);
      for (size_t i = 0; i < expected.size(); ++i) CHECK(MaxAbsDiff(actual[i], expected[i]) <= 1e-6);
    }
  }
}

TEST_CASE("Split: the gradient at a layer boundary matches transformers' (golden)", "[engine][split][model]") {
  // golden_grad: d logits[0, -1, 3] / d (residual leaving layer 1), from transformers.
  const std::string dir = "tests/fixtures/tiny_llama3";
  auto model = Split(dir, 3);
  auto golden = ReadGoldenTensors(dir + "/golden_grad.safetensors");
  auto inputs = ReadGoldenTensors(dir + "/golden.safetensors");
  HookSet hooks(model->catalogue());
  at::Tensor leaf;
  REQUIRE(hooks.Add("blocks.1.hook_resid_post", [&](const HookContext&, at::Tensor& v) {
    leaf = v.detach().clone().requires_grad_(true);
    v = leaf;
    return Status::Ok();
  }).ok());
  auto result = model->Forward({{testing::Row(inputs.at(model->catalogue().point(0).name)[0])}}, &hooks);
  REQUIRE(result.ok());
  at::Tensor loss = result->logits[0][-1][3];
  CHECK(RelativeDiff(loss.detach().reshape({1}), golden.at("loss").reshape({1})) <= 1e-4);
  loss.backward();
  REQUIRE(leaf.grad().defined());
  CHECK(RelativeDiff(leaf.grad(), golden.at("grad")) <= 1e-4);
}

TEST_CASE("Split: generation with a KV cache per placement matches the unsplit model", "[engine][split][model]") {
  for (const char* dir : kFixtures) {
    auto whole = LoadOrFail(dir);
    auto split = Split(dir, 3);
    INFO(dir << ": " << split->placement());
    SamplingParams sampling;
    sampling.max_new_tokens = 8;
    sampling.stop_ids = {-1};
    const std::vector<std::vector<int64_t>> prompts = {kIds, {7, 3}};  // left padding too
    auto expected = whole->Generate(prompts, sampling);
    const int64_t moves_before = ResidualMoves();
    auto actual = split->Generate(prompts, sampling);
    REQUIRE(expected.ok());
    REQUIRE(actual.ok());
    CHECK(actual->new_tokens == expected->new_tokens);
    CHECK(ResidualMoves() - moves_before == Crossings(ReadLayout(*split)) * sampling.max_new_tokens);
  }
}

TEST_CASE("Split: modules run on their layer's placement", "[engine][split][model]") {
  const std::string dir = "tests/fixtures/tiny_llama";
  auto whole = LoadOrFail(dir);
  auto split = Split(dir, 3);
  auto captured = testing::CaptureAll(*whole, kIds);
  for (const std::string module : {"model.layers.2.mlp", "model.norm", "lm_head", "model.layers.0.self_attn.q_proj"}) {
    INFO(module);
    const at::Tensor x = captured.at(module + ".input");
    auto expected = whole->ApplyModule(module, x);
    auto actual = split->ApplyModule(module, x);
    REQUIRE(expected.ok());
    REQUIRE(actual.ok());
    CHECK(MaxAbsDiff(*actual, *expected) <= 1e-6);
  }
}

TEST_CASE("Split: a device list is refused where CUDA is absent, the test option off the CPU", "[engine][split]") {
  EngineParams params;
  params.device = "cuda:0,cuda:0";
  auto model = Model::Load("tests/fixtures/tiny_llama", params);
  REQUIRE(!model.ok());
  CHECK(model.status().code() == StatusCode::kInvalidArgument);
  if (at::hasCUDA()) {
    CHECK_THAT(model.status().message(), Catch::Contains("names cuda:0 twice"));
  } else {
    CHECK_THAT(model.status().message(), Catch::Contains("'cuda:0,cuda:0'") && Catch::Contains("no CUDA"));
  }

  params.device = "cuda";
  params.testing_cpu_placements = 2;
  model = Model::Load("tests/fixtures/tiny_llama", params);
  REQUIRE(!model.ok());
  CHECK_THAT(model.status().message(), Catch::Contains(at::hasCUDA() ? "testing_cpu_placements needs the CPU" : "no CUDA"));
}

}  // namespace
}  // namespace glassbox
