// Opening a model's files (a GGUF file or a Hugging Face directory), choosing its family
// from the config, and loading it onto a device. Internal to engine/.
#ifndef GLASSBOX_ENGINE_WEIGHTS_H_
#define GLASSBOX_ENGINE_WEIGHTS_H_

#include <memory>
#include <string>
#include <vector>

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

// Where and how a model is held, and how much memory it may take there.
struct Placement {
  at::Device device = at::kCPU;
  at::ScalarType dtype = at::kFloat;
  // Bytes the weights may take on the device: > 0 a fixed budget, 0 what the device has
  // free when loading starts (MemAvailable on the CPU, cudaMemGetInfo on CUDA), < 0 no check.
  int64_t memory_budget = 0;
  // Two or more: the layers are split across these devices (`device` is the first), each
  // with the budget above (per device) and named for messages by `names`.
  std::vector<at::Device> split;
  std::vector<std::string> names;
};

// `path` is a .gguf file or a directory with config.json and safetensors weights. Errors
// name the file and the problem: an unknown architecture lists the known ones, a config key
// or tensor the family does not implement is named; weights that do not fit the budget are
// refused before any is read, with the bytes needed and available (for a split: PlanSplit
// over the devices' budgets).
StatusOr<LoadedModel> LoadModelFiles(const std::string& path, const Placement& placement);

// "float32", "bfloat16" or "float16": the names users give --dtype.
std::string DtypeName(at::ScalarType dtype);

// Bytes free for new allocations on `device` now, or -1 when it cannot be told.
int64_t DeviceFreeBytes(at::Device device);

}  // namespace glassbox

#endif  // GLASSBOX_ENGINE_WEIGHTS_H_
