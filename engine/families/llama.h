// The Llama-style decoder (RMSNorm, rotary attention with grouped-query heads, gated MLP),
// configurable the ways its descendants differ: biases (Llama's attention_bias / mlp_bias,
// Qwen2's q/k/v biases), per-head q/k RMSNorm (Qwen3), sliding-window layers (Mistral,
// Qwen), rope scaling (Llama 3). families/llama.cc holds it and the Llama and Mistral
// config readers; families/qwen.cc reads Qwen's configs into the same options.
#ifndef GLASSBOX_ENGINE_FAMILIES_LLAMA_H_
#define GLASSBOX_ENGINE_FAMILIES_LLAMA_H_

#include <memory>
#include <string>
#include <vector>

#include "engine/family.h"
#include "engine/layers.h"

namespace glassbox {

struct LlamaOptions {
  std::string family = "llama";
  ModelConfig config;
  RopeSpec rope;
  double eps = 1e-5;
  bool qkv_bias = false, o_bias = false, mlp_bias = false, qk_norm = false;
  std::string activation = "silu";
  std::vector<int64_t> windows;  // per layer: 0 for full attention, else the window
  bool gguf_permuted_qk = false;  // llama.cpp's converter interleaved Q/K rows (Llama only)
};

// Reads the keys every Llama-style config.json shares (sizes, norm epsilon, rope, tied
// embeddings, token ids) into `options`.
void ReadLlamaCommon(HfConfig& config, LlamaOptions& options);
// Fills options.windows from transformers' `layer_types` ("full_attention" /
// "sliding_attention") or, without it, `sliding_window` for every layer when `all_sliding`.
void ReadWindows(HfConfig& config, LlamaOptions& options, bool all_sliding);
// The same from GGUF metadata under `arch.` (llama.cpp's names).
Status ReadLlamaGguf(const GgufFile& file, const std::string& arch, LlamaOptions& options);

StatusOr<std::unique_ptr<Transformer>> LoadLlamaStyle(const LlamaOptions& options,
                                                      const CheckpointInfo& info,
                                                      TensorSource& tensors);

}  // namespace glassbox

#endif  // GLASSBOX_ENGINE_FAMILIES_LLAMA_H_
