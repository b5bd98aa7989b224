// The Qwen2, Qwen3, GPT-2 and GPT-NeoX families from GGUF: the tiny fixtures converted by
// scripts/fixtures/make_tiny_gguf.py (as llama.cpp's convert_hf_to_gguf.py writes them, F32)
// must give what the Hugging Face directories give at every hook point, match the
// transformers goldens, and generate the same greedy tokens. GGUF metadata a family does not
// implement is refused by name.
#include <c10/util/Logging.h>  // before Catch: keeps Catch's CHECK
#include <ATen/TensorOperators.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros_like.h>
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <string>
#include <unistd.h>

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

void CheckSameConfig(const ModelConfig& gguf, const ModelConfig& hf) {
  CHECK(gguf.vocab_size == hf.vocab_size);
  CHECK(gguf.hidden_size == hf.hidden_size);
  CHECK(gguf.intermediate_size == hf.intermediate_size);
  CHECK(gguf.num_layers == hf.num_layers);
  CHECK(gguf.num_heads == hf.num_heads);
  CHECK(gguf.num_kv_heads == hf.num_kv_heads);
  CHECK(gguf.head_dim == hf.head_dim);
  CHECK(gguf.max_position_embeddings == hf.max_position_embeddings);
  CHECK(gguf.tie_word_embeddings == hf.tie_word_embeddings);
}

// The GGUF model against the Hugging Face directory it was converted from and against the
// directory's transformers goldens.
void CheckGgufMatchesHf(const std::string& gguf_path, const std::string& dir) {
  auto gguf = LoadOrFail(gguf_path);
  auto hf = LoadOrFail(dir);
  CHECK(gguf->tokenizer() == nullptr);  // no tokenizer.ggml.* metadata: no tokenizer
  CheckSameConfig(gguf->config(), hf->config());
  REQUIRE(gguf->catalogue().size() == hf->catalogue().size());
  for (int id = 0; id < gguf->catalogue().size(); ++id) {
    CHECK(gguf->catalogue().point(id).name == hf->catalogue().point(id).name);
  }

  auto golden = ReadGoldenTensors(dir + "/golden.safetensors");
  const std::string ids_point = hf->catalogue().point(0).name;
  REQUIRE(golden.count(ids_point) == 1);
  const std::vector<int64_t> ids = Row(golden.at(ids_point)[0]);
  at::Tensor gguf_logits, hf_logits;
  auto from_gguf = CaptureAll(*gguf, ids, &gguf_logits);
  auto from_hf = CaptureAll(*hf, ids, &hf_logits);
  CHECK(RelativeDiff(gguf_logits, hf_logits) <= 1e-5);
  CHECK(from_gguf.size() == static_cast<size_t>(gguf->catalogue().size()));
  CHECK(golden.size() == from_gguf.size());
  for (const auto& [name, value] : from_gguf) {
    INFO("hook point " << name);
    REQUIRE(from_hf.count(name) == 1);
    CHECK(RelativeDiff(value, from_hf.at(name)) <= 1e-5);
    REQUIRE(golden.count(name) == 1);
    CHECK(RelativeDiff(value, golden.at(name)) <= 1e-4);  // the families tests' tolerance
  }

  auto generate = nlohmann::json::parse(testing::ReadTextFile(dir + "/golden_generate.json"));
  SamplingParams sampling;
  sampling.max_new_tokens = generate.at("max_new_tokens");
  sampling.stop_ids = {-1};  // no stop token, as the golden was made
  auto result = gguf->Generate({generate.at("prompt_ids").get<std::vector<int64_t>>()}, sampling);
  REQUIRE(result.ok());
  CHECK(result->new_tokens[0] == generate.at("generated_ids").get<std::vector<int64_t>>());
}

// A copy of `path` with the metadata key `from` renamed to `to` (same length), in a
// temporary file.
std::string WithRenamedKey(const std::string& path, const std::string& from, const std::string& to) {
  REQUIRE(from.size() == to.size());
  std::ifstream in(path, std::ios::binary);
  REQUIRE(in);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const size_t at = bytes.find(from);
  REQUIRE(at != std::string::npos);
  bytes.replace(at, from.size(), to);
  const std::string out = (std::filesystem::temp_directory_path() /
                           ("glassbox_" + std::to_string(::getpid()) + "_" +
                            std::filesystem::path(path).filename().string())).string();
  std::ofstream(out, std::ios::binary) << bytes;
  return out;
}

}  // namespace

TEST_CASE("qwen2 from GGUF matches its Hugging Face directory", "[engine][gguf]") {
  CheckGgufMatchesHf("tests/fixtures/tiny_gguf/tiny_qwen2.gguf", "tests/fixtures/tiny_qwen2");
}

TEST_CASE("qwen3 from GGUF matches its Hugging Face directory", "[engine][gguf]") {
  CheckGgufMatchesHf("tests/fixtures/tiny_gguf/tiny_qwen3.gguf", "tests/fixtures/tiny_qwen3");
}

TEST_CASE("gpt2 from GGUF matches its Hugging Face directory", "[engine][gguf]") {
  CheckGgufMatchesHf("tests/fixtures/tiny_gguf/tiny_gpt2.gguf", "tests/fixtures/tiny_gpt2");
}

TEST_CASE("gptneox from GGUF matches its Hugging Face directory", "[engine][gguf]") {
  CheckGgufMatchesHf("tests/fixtures/tiny_gguf/tiny_neox.gguf", "tests/fixtures/tiny_neox");
}

// Each file with one key renamed (same length, so the file stays valid) into an <arch>. key
// llama.cpp defines and the family does not implement: attention.causal (false: bidirectional
// attention) or expert_count (a mixture of experts). The Qwen files rename general.size_label,
// as ReadLlamaGguf reads the required sizes before it looks for unknown keys.
TEST_CASE("GGUF metadata a family does not implement is refused by name", "[engine][gguf]") {
  struct Rename {
    const char *file, *from, *to;
  };
  for (const Rename& r : {Rename{"tiny_qwen2", "general.size_label", "qwen2.expert_count"},
                          Rename{"tiny_qwen3", "general.size_label", "qwen3.expert_count"},
                          Rename{"tiny_gpt2", "gpt2.embedding_length", "gpt2.attention.causal"},
                          Rename{"tiny_neox", "gptneox.embedding_length", "gptneox.attention.causal"}}) {
    INFO(r.file);
    const std::string path =
        WithRenamedKey(std::string("tests/fixtures/tiny_gguf/") + r.file + ".gguf", r.from, r.to);
    auto model = Model::Load(path);
    std::filesystem::remove(path);
    REQUIRE(!model.ok());
    CHECK(model.status().code() == StatusCode::kUnimplemented);
    CHECK_THAT(model.status().message(), Catch::Contains(r.to));
  }
}

}  // namespace glassbox
