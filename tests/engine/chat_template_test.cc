// The chat-template reader: Hugging Face tokenizer configurations written by hand
// (tests/fixtures/chat_template/) and, tagged [model], the real GGUF files under models/
// (SmolLM2 carries a template, Gemma 3 270M none).
#include "engine/chat_template.h"

#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <string>

#include "engine/gguf.h"

namespace glassbox {
namespace {

namespace fs = std::filesystem;
using Catch::Matchers::Contains;

const std::string kFixtures = "tests/fixtures/chat_template/";

TEST_CASE("chat template from tokenizer_config.json as a string", "[engine][chat_template]") {
  StatusOr<ChatTemplate> chat = ReadHfChatTemplate(kFixtures + "config_string");
  REQUIRE(chat.ok());
  CHECK(chat->source == "{{ bos_token }}{% for m in messages %}[{{ m['role'] }}] "
                        "{{ m['content'] }}{{ eos_token }}\n{% endfor %}");
  CHECK(chat->bos_token == "<s>");
  CHECK(chat->eos_token == "</s>");  // an added token's object: its content
}

TEST_CASE("chat template from a list of named templates takes \"default\"",
          "[engine][chat_template]") {
  StatusOr<ChatTemplate> chat = ReadHfChatTemplate(kFixtures + "config_named");
  REQUIRE(chat.ok());
  CHECK(chat->source == "{% for m in messages %}{{ m['content'] }}{% endfor %}");
  CHECK(chat->eos_token == "</s>");

  // transformers loads such a file too, and renders nothing unless a name is given.
  StatusOr<ChatTemplate> without = ReadHfChatTemplate(kFixtures + "named_without_default");
  REQUIRE(without.ok());
  CHECK(without->source.empty());
}

TEST_CASE("chat_template.jinja wins over tokenizer_config.json", "[engine][chat_template]") {
  StatusOr<ChatTemplate> chat = ReadHfChatTemplate(kFixtures + "jinja_file");
  REQUIRE(chat.ok());
  CHECK(chat->source == "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{% endfor %}"
                        "{% if add_generation_prompt %}<|assistant|>{% endif %}");
  CHECK(chat->bos_token == "<|begin|>");
  CHECK(chat->eos_token == "<|end|>");
}

TEST_CASE("a directory without a template has none", "[engine][chat_template]") {
  for (const std::string dir : {"no_template", "no_such_directory"}) {
    StatusOr<ChatTemplate> chat = ReadHfChatTemplate(kFixtures + dir);
    REQUIRE(chat.ok());
    CHECK(chat->source.empty());
    CHECK(chat->bos_token.empty());
  }
}

TEST_CASE("a malformed tokenizer_config.json is refused by name", "[engine][chat_template]") {
  const fs::path dir = fs::temp_directory_path() / "glassbox_chat_template_test";
  fs::create_directories(dir);
  {
    std::ofstream(dir / "tokenizer_config.json") << "{\"chat_template\": 3}";
  }
  StatusOr<ChatTemplate> chat = ReadHfChatTemplate(dir.string());
  CHECK(chat.status().code() == StatusCode::kInvalidArgument);
  CHECK_THAT(chat.status().message(), Contains("tokenizer_config.json: chat_template is neither"));
  {
    std::ofstream(dir / "tokenizer_config.json") << "{not json";
  }
  CHECK_THAT(ReadHfChatTemplate(dir.string()).status().message(), Contains("not a JSON object"));
  fs::remove_all(dir);
}

TEST_CASE("chat template from SmolLM2's GGUF metadata", "[engine][chat_template][model]") {
  const std::string path = "models/SmolLM2-135M-Instruct.Q4_1.gguf";
  if (!fs::exists(path)) FAIL(path << " is missing: run scripts/fetch_model.sh");
  StatusOr<GgufFile> file = GgufFile::Open(path);
  REQUIRE(file.ok());
  StatusOr<ChatTemplate> chat = ReadGgufChatTemplate(*file);
  REQUIRE(chat.ok());
  CHECK(chat->source == *file->GetString("tokenizer.chat_template"));
  CHECK_THAT(chat->source, Contains("{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"));
  CHECK(chat->bos_token == "<|im_start|>");  // tokenizer.ggml.bos_token_id 1
  CHECK(chat->eos_token == "<|im_end|>");    // tokenizer.ggml.eos_token_id 2
}

TEST_CASE("Gemma 3 270M's GGUF carries no chat template", "[engine][chat_template][model]") {
  const std::string path = "models/gemma-3-270m-q4_k_m.gguf";
  if (!fs::exists(path)) FAIL(path << " is missing: run scripts/fetch_model.sh gemma3-270m");
  StatusOr<GgufFile> file = GgufFile::Open(path);
  REQUIRE(file.ok());
  StatusOr<ChatTemplate> chat = ReadGgufChatTemplate(*file);
  REQUIRE(chat.ok());
  CHECK(chat->source.empty());
  CHECK(chat->bos_token.empty());
}

}  // namespace
}  // namespace glassbox
