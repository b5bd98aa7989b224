// The Qwen family: Qwen2 / Qwen2.5 (biases on q, k and v) and Qwen3 (per-head q/k RMSNorm,
// optional attention biases), both the Llama-style decoder of families/llama.h with Qwen's
// config keys; from Hugging Face directories and from `qwen2` / `qwen3` GGUF files (whose
// Q/K rows llama.cpp's converter leaves in Hugging Face's order).
#include "engine/families/llama.h"
#include "engine/gguf.h"

namespace glassbox {
namespace {

// Qwen's sliding window: transformers 5 writes layer_types; older configs say
// use_sliding_window with the first max_window_layers layers on full attention.
void ReadQwenWindows(HfConfig& config, LlamaOptions& o) {
  const bool sliding = config.Bool("use_sliding_window", false);
  const int64_t full_layers = config.Int("max_window_layers", o.config.num_layers);
  if (config.Has("layer_types")) {
    ReadWindows(config, o, false);
    return;
  }
  ReadWindows(config, o, false);
  if (!sliding) return;
  const int64_t window = config.Int("sliding_window", 0);
  for (int64_t i = full_layers; i < o.config.num_layers; ++i) o.windows[i] = window;
}

StatusOr<LlamaOptions> QwenHf(const CheckpointInfo& info) {
  LlamaOptions o;
  o.family = info.hf_config->value("model_type", "");
  HfConfig config(*info.hf_config, info.path + "/config.json", o.family);
  ReadLlamaCommon(config, o);
  if (o.family == "qwen2") {
    o.qkv_bias = true;
  } else {
    o.qk_norm = true;
    o.qkv_bias = o.o_bias = config.Bool("attention_bias", false);
  }
  ReadQwenWindows(config, o);
  GLASSBOX_RETURN_IF_ERROR(config.Finish());
  return o;
}

StatusOr<LlamaOptions> QwenGguf(const CheckpointInfo& info) {
  LlamaOptions o;
  GLASSBOX_ASSIGN_OR_RETURN(std::string arch, info.gguf->GetString("general.architecture"));
  GLASSBOX_RETURN_IF_ERROR(ReadLlamaGguf(*info.gguf, arch, o));
  o.qk_norm = arch == "qwen3";
  o.qkv_bias = info.gguf->FindTensor("blk.0.attn_q.bias") != nullptr;
  o.o_bias = info.gguf->FindTensor("blk.0.attn_output.bias") != nullptr;
  return o;
}

}  // namespace

FamilyEntry QwenFamily() {
  FamilyEntry entry;
  entry.name = "qwen";
  entry.hf_model_types = {"qwen2", "qwen3"};
  entry.gguf_architectures = {"qwen2", "qwen3"};
  entry.load = [](const CheckpointInfo& info, TensorSource& tensors) -> StatusOr<std::unique_ptr<Transformer>> {
    StatusOr<LlamaOptions> o = info.gguf ? QwenGguf(info) : QwenHf(info);
    if (!o.ok()) return o.status();
    return LoadLlamaStyle(*o, info, tensors);
  };
  return entry;
}

}  // namespace glassbox
