// A model's chat template, as its files carry it: the Jinja source and the special-token
// strings templates refer to. The engine only reads it; clients render it (the service never
// runs a template).
#ifndef GLASSBOX_ENGINE_CHAT_TEMPLATE_H_
#define GLASSBOX_ENGINE_CHAT_TEMPLATE_H_

#include <string>

#include "base/status.h"

namespace glassbox {

class GgufFile;

struct ChatTemplate {
  std::string source;     // Jinja, as in the files; empty when the files carry none
  std::string bos_token;  // the template's `bos_token`; empty when the model has none
  std::string eos_token;  // the template's `eos_token`; empty when the model has none
};

// GGUF: metadata tokenizer.chat_template, and the bos/eos strings from tokenizer.ggml.tokens
// at tokenizer.ggml.{bos,eos}_token_id. A file without the key has no template (not an
// error); a key of the wrong type or an id outside the vocabulary is kInvalidArgument.
StatusOr<ChatTemplate> ReadGgufChatTemplate(const GgufFile& file);

// A Hugging Face directory: chat_template.jinja if present, else tokenizer_config.json's
// chat_template (a string, or a list of {"name", "template"} of which "default" is taken);
// bos_token / eos_token (strings or {"content": ...}) from tokenizer_config.json. Neither
// file present, or a list without "default": no template. A malformed
// tokenizer_config.json is kInvalidArgument naming the file.
StatusOr<ChatTemplate> ReadHfChatTemplate(const std::string& dir);

}  // namespace glassbox

#endif  // GLASSBOX_ENGINE_CHAT_TEMPLATE_H_
