// The Llama-family transformer (RMSNorm, RoPE, grouped-query attention, SwiGLU MLP) with
// hook points woven into its forward pass. Internal to engine/: other rooms use engine.h.
#ifndef GLASSBOX_ENGINE_LLAMA_H_
#define GLASSBOX_ENGINE_LLAMA_H_

#include <ATen/core/Tensor.h>

#include <string>
#include <vector>

#include "base/status.h"
#include "engine/engine.h"
#include "engine/hooks.h"

namespace glassbox {

struct LayerWeights {
  at::Tensor input_layernorm, q_proj, k_proj, v_proj, o_proj;  // projections: [out, in]
  at::Tensor post_attention_layernorm, gate_proj, up_proj, down_proj;
};

struct LlamaWeights {
  at::Tensor embed_tokens;  // [vocab, hidden]
  at::Tensor norm;          // [hidden]
  at::Tensor lm_head;       // [vocab, hidden]; the same tensor as embed_tokens when tied
  std::vector<LayerWeights> layers;
};

// Keys and values after RoPE for every layer, preallocated to a capacity.
struct KvCache {
  std::vector<at::Tensor> keys, values;  // per layer [batch, kv_heads, capacity, head_dim]
  int64_t length = 0;                    // positions filled
};

// What one forward pass works on.
struct PassInputs {
  at::Tensor ids;             // [batch, seq] int64 on the model's device
  at::Tensor positions;       // [batch, seq] int64
  at::Tensor attention_mask;  // [batch, cache length + seq] int64, 0 at padding
  KvCache* cache = nullptr;   // null: no cache (keys/values of this pass only)
  const HookSet* hooks = nullptr;
  int step = 0;
  bool all_logits = true;
};

// Thrown inside a pass when a hook callback fails; Model turns it back into the Status.
struct HookFailure {
  Status status;
};

class LlamaModel {
 public:
  LlamaModel(const ModelConfig& config, LlamaWeights weights, at::Device device,
             at::ScalarType dtype);

  // Returns logits [batch, seq or 1, vocab] in the model dtype. Throws HookFailure or
  // c10::Error; Model catches both at the engine boundary.
  at::Tensor Forward(const PassInputs& in) const;
  KvCache NewCache(int64_t batch, int64_t capacity) const;
  // Runs one module (by its Hugging Face path) on any tensor, e.g. lm_head for a logit lens.
  // Throws c10::Error on shape mismatches; kNotFound for names that are not modules.
  StatusOr<at::Tensor> ApplyModule(const std::string& name, const at::Tensor& x) const;
  std::vector<std::string> ModuleNames() const;

  at::Device device() const { return device_; }
  at::ScalarType dtype() const { return dtype_; }

 private:
  class Pass;
  ModelConfig config_;
  LlamaWeights weights_;
  at::Device device_;
  at::ScalarType dtype_;
  at::Tensor inv_freq_;  // [head_dim / 2] float32
};

}  // namespace glassbox

#endif  // GLASSBOX_ENGINE_LLAMA_H_
