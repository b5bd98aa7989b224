// Reading a model's chat template from its files, where transformers would find it: GGUF
// metadata, or a Hugging Face directory's chat_template.jinja / tokenizer_config.json (the
// .jinja file wins, as in transformers' from_pretrained).
#include "engine/chat_template.h"

#include <nlohmann/json.hpp>

#include <fstream>
#include <sstream>

#include "engine/gguf.h"

namespace glassbox {
namespace {

// The token string at metadata `id_key`, or "" when the file names no such token.
StatusOr<std::string> GgufTokenString(const GgufFile& file, const std::string& id_key) {
  if (file.metadata().count(id_key) == 0) return std::string();
  GLASSBOX_ASSIGN_OR_RETURN(int64_t id, file.GetInt(id_key));
  GLASSBOX_ASSIGN_OR_RETURN(std::vector<std::string> tokens,
                            file.GetStringArray("tokenizer.ggml.tokens"));
  if (id < 0 || id >= static_cast<int64_t>(tokens.size())) {
    return InvalidArgument(file.path() + ": " + id_key + " " + std::to_string(id) +
                           " is outside the vocabulary of " + std::to_string(tokens.size()));
  }
  return tokens[id];
}

// bos_token / eos_token in tokenizer_config.json: a string, or an added token's object.
std::string TokenString(const nlohmann::json& config, const char* key) {
  auto it = config.find(key);
  if (it == config.end()) return "";
  if (it->is_string()) return it->get<std::string>();
  if (it->is_object() && it->contains("content") && (*it)["content"].is_string()) {
    return (*it)["content"].get<std::string>();
  }
  return "";
}

// tokenizer_config.json's chat_template: a string, or [{"name": ..., "template": ...}] of
// which transformers uses "default" when no other name is asked for. A list without one
// loads in transformers too (only rendering without a name fails): no template here.
StatusOr<std::string> ConfigTemplate(const nlohmann::json& config, const std::string& path) {
  auto it = config.find("chat_template");
  if (it == config.end() || it->is_null()) return std::string();
  if (it->is_string()) return it->get<std::string>();
  if (it->is_array()) {
    for (const nlohmann::json& entry : *it) {
      if (entry.is_object() && entry.value("name", "") == "default" &&
          entry.contains("template") && entry["template"].is_string()) {
        return entry["template"].get<std::string>();
      }
    }
    return std::string();
  }
  return InvalidArgument(path + ": chat_template is neither a string nor a list of named "
                         "templates");
}

StatusOr<nlohmann::json> ReadTokenizerConfig(const std::string& path) {
  std::ifstream in(path);
  if (!in) return nlohmann::json::object();
  nlohmann::json config = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
  if (config.is_discarded() || !config.is_object()) {
    return InvalidArgument(path + ": not a JSON object");
  }
  return config;
}

}  // namespace

StatusOr<ChatTemplate> ReadGgufChatTemplate(const GgufFile& file) {
  ChatTemplate out;
  if (file.metadata().count("tokenizer.chat_template") == 0) return out;
  GLASSBOX_ASSIGN_OR_RETURN(out.source, file.GetString("tokenizer.chat_template"));
  GLASSBOX_ASSIGN_OR_RETURN(out.bos_token, GgufTokenString(file, "tokenizer.ggml.bos_token_id"));
  GLASSBOX_ASSIGN_OR_RETURN(out.eos_token, GgufTokenString(file, "tokenizer.ggml.eos_token_id"));
  return out;
}

StatusOr<ChatTemplate> ReadHfChatTemplate(const std::string& dir) {
  const std::string config_path = dir + "/tokenizer_config.json";
  GLASSBOX_ASSIGN_OR_RETURN(nlohmann::json config, ReadTokenizerConfig(config_path));
  ChatTemplate out;
  std::ifstream jinja(dir + "/chat_template.jinja", std::ios::binary);
  if (jinja) {
    std::ostringstream text;
    text << jinja.rdbuf();
    out.source = text.str();
  } else {
    GLASSBOX_ASSIGN_OR_RETURN(out.source, ConfigTemplate(config, config_path));
  }
  if (out.source.empty()) return ChatTemplate();
  out.bos_token = TokenString(config, "bos_token");
  out.eos_token = TokenString(config, "eos_token");
  return out;
}

}  // namespace glassbox
