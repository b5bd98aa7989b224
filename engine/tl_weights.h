// TransformerLens' names for a model's weights (W_E, W_pos, W_U, b_U, blocks.N.attn.W_Q,
// W_K, W_V, W_O, b_Q..., blocks.N.mlp.W_in, W_gate, W_out, b_in, b_out, blocks.N.ln1.w,
// ln_final.w, and the layer-stacked W_Q... on the model), in TransformerLens' shapes, as
// HookedTransformer.from_pretrained_no_processing gives them: rearranged from the Hugging
// Face weights a family lists, never folded or centred. Per-head key/value weights of
// grouped-query attention are repeated to every query head (repeat_interleave), as
// TransformerLens' W_K / W_V are; absent biases are zeros. Internal to engine/.
#ifndef GLASSBOX_ENGINE_TL_WEIGHTS_H_
#define GLASSBOX_ENGINE_TL_WEIGHTS_H_

#include <ATen/core/Tensor.h>

#include <functional>
#include <string>
#include <vector>

#include "base/status.h"
#include "engine/engine.h"

namespace glassbox {

// Where a family keeps what TransformerLens names: Hugging Face module paths (without
// ".weight"), per layer after `layer` + N + ".". Empty: the family has none.
struct TlWeightLayout {
  enum class Qkv {
    kSeparate,     // q, k, v: three Linear modules
    kConv1D,       // q: one Conv1D [d, 3·d], columns [q | k | v] (GPT-2's c_attn)
    kFusedPerHead  // q: one Linear whose rows are [q | k | v] per head (GPT-NeoX)
  };
  std::string embed, pos, unembed, final_norm;
  std::string layer;     // "model.layers."
  std::string ln1, ln2;  // within a layer
  Qkv qkv = Qkv::kSeparate;
  std::string q, k, v, o;
  std::string mlp_in, mlp_gate, mlp_out;  // mlp_gate empty for a plain MLP
  bool conv1d = false;           // every projection is a Conv1D, listed [in, out]
  double norm_weight_offset = 0;  // TransformerLens' norm w minus transformers' (Gemma: 1)
};

// Looks up a Hugging Face weight by name; an undefined tensor when the model has none.
using HfWeights = std::function<at::Tensor(const std::string& hf_name)>;

// The TransformerLens names the model has (a bias listed only where a weight is), in order.
std::vector<std::string> TlWeightNames(const TlWeightLayout& layout, const ModelConfig& config,
                                       const HfWeights& hf);

// The weight called `name`, computed from `hf` (meta tensors in, meta tensors out: shapes
// only). kNotFound when `name` is not a TransformerLens name this model has.
StatusOr<at::Tensor> TlWeight(const std::string& name, const TlWeightLayout& layout,
                              const ModelConfig& config, const HfWeights& hf);

}  // namespace glassbox

#endif  // GLASSBOX_ENGINE_TL_WEIGHTS_H_
