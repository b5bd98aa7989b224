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
  LlamaWeights weights;  // CPU; mapped views for safetensors, float32 for GGUF. Model
                         // moves them to the run's device and dtype.
  std::unique_ptr<Tokenizer> tokenizer;  // null when the files carry none
};

// `path` is a .gguf file or a directory with config.json and safetensors weights.
StatusOr<LoadedModel> LoadModelFiles(const std::string& path);

}  // namespace glassbox

#endif  // GLASSBOX_ENGINE_WEIGHTS_H_
