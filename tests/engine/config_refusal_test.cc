// Never silently wrong: a checkpoint whose config.json asks for something its family does
// not implement, or that holds tensors the family does not consume, is refused at load with
// an error naming the key and its value (or the tensor), instead of running and computing
// something else. Each case edits a copy of a tiny fixture.
#include <c10/util/Logging.h>  // before Catch: keeps Catch's CHECK
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <functional>
#include <fstream>
#include <string>

#include "engine/engine.h"
#include "tests/engine/tensor_fixtures.h"

namespace glassbox {
namespace {

namespace fs = std::filesystem;

// A copy of fixture `dir` (weights linked, config rewritten by `edit`) under build/.
std::string EditedCopy(const std::string& dir, const std::string& name,
                       const std::function<void(nlohmann::json&)>& edit) {
  const fs::path copy = fs::path("build") / ("test_tmp_refusal_" + name);
  fs::remove_all(copy);
  fs::create_directories(copy);
  for (const auto& entry : fs::directory_iterator(dir)) {
    const std::string file = entry.path().filename().string();
    if (file.find(".safetensors") != std::string::npos) fs::copy(fs::absolute(entry.path()), copy / file);
  }
  nlohmann::json config = nlohmann::json::parse(testing::ReadTextFile(dir + "/config.json"));
  edit(config);
  std::ofstream(copy / "config.json") << config.dump(2);
  return copy.string();
}

void ExpectRefusal(const std::string& dir, const std::vector<std::string>& named) {
  auto model = Model::Load(dir);
  REQUIRE_FALSE(model.ok());
  INFO(model.status().ToString());
  CHECK(model.status().code() == StatusCode::kUnimplemented);
  for (const std::string& text : named) CHECK_THAT(model.status().message(), Catch::Contains(text));
}

// Writes a safetensors file holding one float32 tensor of two elements.
void WriteOneTensor(const fs::path& path, const std::string& name) {
  std::string header = R"({")" + name + R"(":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  while (header.size() % 8 != 0) header += ' ';
  const uint64_t size = header.size();
  const float data[2] = {1.0f, 2.0f};
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(&size), 8);
  out.write(header.data(), header.size());
  out.write(reinterpret_cast<const char*>(data), sizeof(data));
}

const char kLlama[] = "tests/fixtures/tiny_llama";

}  // namespace

TEST_CASE("the unedited fixtures load (the refusals below come from the edits)", "[engine][refusal]") {
  for (const char* dir : {kLlama, "tests/fixtures/tiny_gpt2", "tests/fixtures/tiny_neox",
                          "tests/fixtures/tiny_qwen2", "tests/fixtures/tiny_mistral"}) {
    INFO(dir);
    auto model = Model::Load(EditedCopy(dir, "plain", [](nlohmann::json&) {}));
    CHECK(model.ok());
  }
}

TEST_CASE("llama: an MLP activation other than silu is refused", "[engine][refusal]") {
  ExpectRefusal(EditedCopy(kLlama, "act", [](nlohmann::json& c) { c["hidden_act"] = "gelu"; }),
                {"hidden_act", "\"gelu\""});
}

TEST_CASE("llama: a rope scaling this engine lacks is refused", "[engine][refusal]") {
  ExpectRefusal(EditedCopy(kLlama, "yarn", [](nlohmann::json& c) {
                  c["rope_parameters"] = {{"rope_type", "yarn"}, {"factor", 4.0}, {"rope_theta", 50000.0}};
                }),
                {"rope_parameters.rope_type", "yarn"});
}

TEST_CASE("llama: partial rotary is refused (Llama rotates every dimension)", "[engine][refusal]") {
  ExpectRefusal(EditedCopy(kLlama, "partial", [](nlohmann::json& c) {
                  c["rope_parameters"]["partial_rotary_factor"] = 0.5;
                }),
                {"partial_rotary_factor"});
}

TEST_CASE("llama: an unknown config key is refused with its value", "[engine][refusal]") {
  ExpectRefusal(EditedCopy(kLlama, "softcap", [](nlohmann::json& c) { c["attn_logit_softcapping"] = 50.0; }),
                {"attn_logit_softcapping", "50.0", "llama"});
}

TEST_CASE("llama: attention_bias without bias tensors is an error naming the tensor", "[engine][refusal]") {
  auto model = Model::Load(EditedCopy(kLlama, "bias", [](nlohmann::json& c) { c["attention_bias"] = true; }));
  REQUIRE_FALSE(model.ok());
  CHECK_THAT(model.status().message(), Catch::Contains("model.layers.0.self_attn.q_proj.bias"));
}

TEST_CASE("mistral: a layer type this engine lacks is refused", "[engine][refusal]") {
  ExpectRefusal(EditedCopy("tests/fixtures/tiny_mistral", "chunked", [](nlohmann::json& c) {
                  c["layer_types"] = {"full_attention", "chunked_attention", "full_attention"};
                }),
                {"layer_types", "chunked_attention"});
}

TEST_CASE("gpt2: attention scaled by layer index or upcast-reordered is refused", "[engine][refusal]") {
  ExpectRefusal(EditedCopy("tests/fixtures/tiny_gpt2", "inverse", [](nlohmann::json& c) {
                  c["scale_attn_by_inverse_layer_idx"] = true;
                }),
                {"scale_attn_by_inverse_layer_idx", "true"});
  ExpectRefusal(EditedCopy("tests/fixtures/tiny_gpt2", "upcast", [](nlohmann::json& c) {
                  c["reorder_and_upcast_attn"] = true;
                }),
                {"reorder_and_upcast_attn"});
}

TEST_CASE("gpt_neox: an unknown activation is refused", "[engine][refusal]") {
  ExpectRefusal(EditedCopy("tests/fixtures/tiny_neox", "act", [](nlohmann::json& c) { c["hidden_act"] = "quick_gelu"; }),
                {"hidden_act", "quick_gelu"});
}

TEST_CASE("qwen2: a sliding window on some layers is implemented, an unknown kind is not", "[engine][refusal]") {
  ExpectRefusal(EditedCopy("tests/fixtures/tiny_qwen2", "window", [](nlohmann::json& c) {
                  c["layer_types"] = {"full_attention", "sliding_attention", "linear_attention"};
                  c["sliding_window"] = 4;
                }),
                {"layer_types", "linear_attention"});
}

TEST_CASE("a tensor the family does not consume is an error naming it", "[engine][refusal]") {
  const std::string dir = EditedCopy("tests/fixtures/tiny_llama_sharded", "extra", [](nlohmann::json&) {});
  const std::string extra = "model.layers.0.mlp.extra_proj.weight";
  WriteOneTensor(fs::path(dir) / "extra.safetensors", extra);
  nlohmann::json index = nlohmann::json::parse(testing::ReadTextFile(dir + "/model.safetensors.index.json"));
  index["weight_map"][extra] = "extra.safetensors";
  std::ofstream(dir + "/model.safetensors.index.json") << index.dump();
  ExpectRefusal(dir, {extra, "does not use"});
}

}  // namespace glassbox
