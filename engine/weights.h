// Reading a model's configuration and weights from GGUF files and Hugging Face
// directories into LibTorch tensors. Internal to engine/.
#ifndef GLASSBOX_ENGINE_WEIGHTS_H_
#define GLASSBOX_ENGINE_WEIGHTS_H_

#include <memory>
#include <string>

#include "base/status.h"
#include "engine/engine.h"
#include "engine/llama.h"

namespace glassbox {

struct LoadedModel {
  ModelConfig config;
  LlamaWeights weights;  // float32 on the CPU; Model moves them to the device and dtype
  std::unique_ptr<Tokenizer> tokenizer;  // null when the files carry none
};

// `path` is a .gguf file or a directory with config.json and safetensors weights.
StatusOr<LoadedModel> LoadModelFiles(const std::string& path);

}  // namespace glassbox

#endif  // GLASSBOX_ENGINE_WEIGHTS_H_
