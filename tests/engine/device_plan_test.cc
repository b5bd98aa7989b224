// The layer-to-device planner on fake device budgets (no devices, no model), and the sizes
// it is given from a checkpoint's tensor names.
#include "engine/device_plan.h"  // LibTorch's headers before Catch's (they #undef CHECK)
#include "engine/stored_tensor.h"

#include <catch2/catch.hpp>

namespace glassbox {
namespace {

std::vector<DeviceBudget> Budgets(std::vector<int64_t> bytes) {
  std::vector<DeviceBudget> budgets;
  for (size_t i = 0; i < bytes.size(); ++i) budgets.push_back({"cuda:" + std::to_string(i), bytes[i]});
  return budgets;
}

SplitSizes Uniform(int64_t embedding, int layers, int64_t layer, int64_t head, bool tied = false) {
  SplitSizes s;
  s.embedding = embedding;
  s.layers.assign(layers, layer);
  s.head = head;
  s.tied_head = tied;
  return s;
}

TEST_CASE("Planner: ample budgets split evenly, embedding first, head after the last layer", "[engine][split]") {
  // 10 + 8 x 10 + 10 = 100 bytes: 50 on each of two devices.
  auto plan = PlanSplit(Uniform(10, 8, 10, 10), Budgets({1000, 1000}));
  REQUIRE(plan.ok());
  CHECK(plan->layers == std::vector<int>{0, 0, 0, 0, 1, 1, 1, 1});
  CHECK(plan->head == 1);
  CHECK(plan->bytes == std::vector<int64_t>{50, 50});
}

TEST_CASE("Planner: three devices take the smallest maximum that fits in order", "[engine][split]") {
  // 12 + 6 x 10 + 12 = 84 bytes. A maximum of 31 cannot hold the order (12+10 | 30 | 20+12);
  // 32 can: embedding and two layers, three layers, the last layer and the head.
  auto plan = PlanSplit(Uniform(12, 6, 10, 12), Budgets({1000, 1000, 1000}));
  REQUIRE(plan.ok());
  CHECK(plan->layers == std::vector<int>{0, 0, 1, 1, 1, 2});
  CHECK(plan->head == 2);
  CHECK(plan->bytes == std::vector<int64_t>{32, 30, 22});
}

TEST_CASE("Planner: a small device takes what fits, the rest goes on", "[engine][split]") {
  auto plan = PlanSplit(Uniform(10, 8, 10, 10), Budgets({25, 1000}));
  REQUIRE(plan.ok());
  CHECK(plan->layers == std::vector<int>{0, 1, 1, 1, 1, 1, 1, 1});
  CHECK(plan->head == 1);
  CHECK(plan->bytes == std::vector<int64_t>{20, 80});
}

TEST_CASE("Planner: a tied head stays with the embedding", "[engine][split]") {
  // The head (a final norm of 4 bytes) is on device 0 with the embedding: 10 + 4 + 4 x 10
  // there would be 54, so the most even split is 10 + 4 + 30 | 50.
  auto plan = PlanSplit(Uniform(10, 8, 10, 4, /*tied=*/true), Budgets({1000, 1000}));
  REQUIRE(plan.ok());
  CHECK(plan->head == 0);
  CHECK(plan->layers == std::vector<int>{0, 0, 0, 1, 1, 1, 1, 1});
  CHECK(plan->bytes == std::vector<int64_t>{44, 50});
}

TEST_CASE("Planner: a model larger than all budgets is refused with both byte counts", "[engine][split]") {
  auto plan = PlanSplit(Uniform(10, 8, 10, 10), Budgets({30, 30}));
  REQUIRE(!plan.ok());
  CHECK(plan.status().code() == StatusCode::kResourceExhausted);
  CHECK_THAT(plan.status().message(), Catch::Contains("needs 100 bytes") && Catch::Contains("have 60") &&
                                          Catch::Contains("cuda:0 30, cuda:1 30"));
}

TEST_CASE("Planner: enough bytes in total but not in layer order names the part that does not fit", "[engine][split]") {
  SplitSizes s;
  s.embedding = 10;
  s.layers = {10, 10, 50, 10};
  s.head = 5;
  // 95 bytes (10 + 80 + 5) of 110, but after 10+10+10 | 50 the last layer fits nowhere.
  auto plan = PlanSplit(s, Budgets({55, 55}));
  REQUIRE(!plan.ok());
  CHECK(plan.status().code() == StatusCode::kResourceExhausted);
  CHECK_THAT(plan.status().message(), Catch::Contains("needs 95 bytes") && Catch::Contains("have 110") &&
                                          Catch::Contains("layer 3 (10 bytes)"));
}

TEST_CASE("Planner: an embedding larger than the first device is refused", "[engine][split]") {
  auto plan = PlanSplit(Uniform(100, 2, 10, 10), Budgets({50, 1000}));
  REQUIRE(!plan.ok());
  CHECK_THAT(plan.status().message(), Catch::Contains("the embedding (100 bytes)"));
}

TEST_CASE("Planner: no devices or negative sizes are invalid", "[engine][split]") {
  CHECK(PlanSplit(Uniform(10, 2, 10, 10), {}).status().code() == StatusCode::kInvalidArgument);
  CHECK(PlanSplit(Uniform(10, 2, -1, 10), Budgets({100})).status().code() == StatusCode::kInvalidArgument);
  CHECK(PlanSplit(Uniform(10, 2, 10, 10), Budgets({-5, 100})).status().code() == StatusCode::kInvalidArgument);
}

TEST_CASE("Planner: sizes from tensor names (Hugging Face, GGUF and GPT-2 spellings)", "[engine][split]") {
  auto tensor = [](std::string name, std::vector<int64_t> shape) {
    StoredTensor t;
    t.name = std::move(name);
    t.shape = std::move(shape);
    return t;
  };
  const std::vector<StoredTensor> hf = {
      tensor("model.embed_tokens.weight", {128, 64}), tensor("model.layers.0.mlp.up_proj.weight", {32, 64}),
      tensor("model.layers.0.input_layernorm.weight", {64}), tensor("model.layers.1.mlp.up_proj.weight", {32, 64}),
      tensor("model.norm.weight", {64}), tensor("lm_head.weight", {128, 64})};
  SplitSizes s = SizesOfStored(hf, 2);
  CHECK(s.embedding == 128 * 64 * 2);
  CHECK(s.layers == std::vector<int64_t>{(32 * 64 + 64) * 2, 32 * 64 * 2});
  CHECK(s.head == (64 + 128 * 64) * 2);
  CHECK_FALSE(s.tied_head);

  const std::vector<StoredTensor> gguf = {tensor("token_embd.weight", {128, 64}), tensor("blk.0.attn_q.weight", {64, 64}),
                                          tensor("blk.2.ffn_up.weight", {64, 64}), tensor("output_norm.weight", {64})};
  s = SizesOfStored(gguf, 4);
  CHECK(s.embedding == 128 * 64 * 4);
  CHECK(s.layers == std::vector<int64_t>{64 * 64 * 4, 0, 64 * 64 * 4});
  CHECK(s.head == 64 * 4);
  CHECK(s.tied_head);

  s = SizesOfStored({tensor("wte.weight", {10, 4}), tensor("wpe.weight", {8, 4}), tensor("h.0.ln_1.weight", {4})}, 4);
  CHECK(s.embedding == (10 + 8) * 4 * 4);
  CHECK(s.layers == std::vector<int64_t>{16});
}

TEST_CASE("Device plan: describes which placement holds what", "[engine][split]") {
  SplitAssignment a;
  a.layers = {0, 0, 1, 1, 1};
  a.head = 1;
  DevicePlan plan({at::kCPU, at::kCPU}, {"cuda:0", "cuda:1"}, a);
  CHECK(plan.split());
  CHECK(plan.layer(3) == 1);
  CHECK(plan.DeviceNames() == "cuda:0,cuda:1");
  CHECK(plan.ToString() == "cuda:0: embedding, layers 0-1; cuda:1: layers 2-4, head");
  plan.TieHead();
  CHECK(plan.ToString() == "cuda:0: embedding, layers 0-1, head; cuda:1: layers 2-4");
  CHECK(DevicePlan(at::kCPU).ToString() == "cpu: everything");
}

}  // namespace
}  // namespace glassbox
