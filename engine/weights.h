// Opening a model's files (a GGUF file or a Hugging Face directory), choosing its family
// from the config, and loading it onto a device. Internal to engine/.
#ifndef GLASSBOX_ENGINE_WEIGHTS_H_
#define GLASSBOX_ENGINE_WEIGHTS_H_

#include <memory>
#include <string>

#include "base/status.h"
#include "engine/chat_template.h"
#include "engine/family.h"
#include "engine/tokenizer.h"

namespace glassbox {

struct LoadedModel {
  std::unique_ptr<Transformer> transformer;
  std::unique_ptr<Tokenizer> tokenizer;  // null when the files carry none
  ChatTemplate chat_template;            // source empty when the files carry none
};

// `path` is a .gguf file or a directory with config.json and safetensors weights. Errors
// name the file and the problem: an unknown architecture lists the known ones, a config key
// or tensor the family does not implement is named.
StatusOr<LoadedModel> LoadModelFiles(const std::string& path, at::Device device,
                                     at::ScalarType dtype);

}  // namespace glassbox

#endif  // GLASSBOX_ENGINE_WEIGHTS_H_
