// Pieces every family composes: the hook calls of one pass, norms, rotary position
// embeddings (full or partial, with Llama-3 or linear scaling), the causal / padding /
// sliding-window mask, and grouped-query attention with its internals as hook points.
// Each follows Hugging Face's implementation operation for operation, so activations match
// transformers at every hook point. Internal to engine/.
#ifndef GLASSBOX_ENGINE_LAYERS_H_
#define GLASSBOX_ENGINE_LAYERS_H_

#include <ATen/core/Tensor.h>

#include <functional>
#include <map>
#include <vector>
#include <string>

#include "engine/device_plan.h"
#include "engine/family.h"

namespace glassbox {

// The hook calls of one pass. A point id of -1 (a point this variant of a family lacks) is
// never wanted.
class PassHooks {
 public:
  explicit PassHooks(const PassInputs& in) : in_(in) {}

  // Runs the callbacks registered at `id`, if any; `value` may be replaced.
  void At(int id, at::Tensor& value) const;
  // `value` at a point whose hooks may replace it for this use only.
  at::Tensor Tap(int id, const at::Tensor& value) const;
  // Whether a callback sees the value at `id` (and so may keep it): values nobody sees (and
  // autograd does not track) can be updated in place.
  bool Seen(int id) const { return id >= 0 && in_.hooks != nullptr && in_.hooks->Wants(id); }
  bool Skips(int id) const { return id >= 0 && in_.hooks != nullptr && in_.hooks->Skips(id); }
  // A skipped module's output: zeros shaped like `like`, unless a hook supplies the value.
  at::Tensor SkippedOutput(int id, const at::Tensor& like) const;
  // Throws HookFailure when the run was cancelled or ran out of time.
  void CheckInterrupt() const;
  // A module between two points: `module` of `x` as seen (and maybe replaced) at `in_id`,
  // its result passed through `out_id`.
  template <typename Module>
  at::Tensor Around(int in_id, int out_id, const at::Tensor& x, const Module& module) const {
    at::Tensor y = module(Tap(in_id, x));
    At(out_id, y);
    return y;
  }

 private:
  const PassInputs& in_;
};

// Where one pass is among the model's placements: the pass inputs as placed on each
// placement reached so far (ids, positions and the attention mask copied there once), and
// the residual stream's moves from one placement to the next. Unsplit, nothing is placed
// or moved. Every family's pass enters each layer and the head through here.
class PassPlacement {
 public:
  PassPlacement(const DevicePlan& plan, const PassInputs& in);

  // `x` on the placement of `layer` (moved by MoveResidual when it was elsewhere).
  at::Tensor EnterLayer(int64_t layer, const at::Tensor& x) { return Enter(plan_.layer(layer), x); }
  at::Tensor EnterHead(const at::Tensor& x) { return Enter(plan_.head(), x); }

  int current() const { return current_; }
  int size() const { return plan_.size(); }
  // The pass inputs on the current placement.
  const PassInputs& in() const { return placed_[current_]; }

 private:
  at::Tensor Enter(int placement, const at::Tensor& x) {
    if (placement == current_) return x;
    return Move(placement, x);
  }
  at::Tensor Move(int placement, const at::Tensor& x);

  const DevicePlan& plan_;
  std::vector<PassInputs> placed_;  // [0]: the caller's inputs; others filled on arrival
  int current_ = 0;
};

// Hugging Face's RMSNorm: computed in float32, scaled by the weight in the input dtype.
at::Tensor RmsNorm(const at::Tensor& x, const at::Tensor& weight, double eps);
// Gemma's RMSNorm: x * (1 + w), all in float32, then cast to the input dtype.
at::Tensor GemmaRmsNorm(const at::Tensor& x, const at::Tensor& weight, double eps);
// cap * tanh(x / cap) (Gemma 2's attention and final-logit soft-capping).
at::Tensor SoftCap(const at::Tensor& x, double cap);
at::Tensor LayerNorm(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                     double eps);
// The activations config.json names: "silu", "gelu" (exact), "gelu_new" /
// "gelu_pytorch_tanh" (tanh approximation), "relu".
bool KnownActivation(const std::string& name);
at::Tensor Activate(const std::string& name, const at::Tensor& x);

// Rotary position embedding parameters, as config.json gives them.
struct RopeSpec {
  int64_t head_dim = 0;
  int64_t rotary_dims = 0;  // the first rotary_dims of each head rotate (partial rotary)
  double theta = 10000.0;
  std::string scaling = "default";  // "default", "linear" or "llama3"
  double factor = 1.0, low_freq_factor = 1.0, high_freq_factor = 4.0;
  int64_t original_max_positions = 8192;
};
// Reads rope_theta and rope scaling from any spelling transformers has used
// (rope_theta + rope_scaling, or rope_parameters), refusing kinds this engine lacks.
RopeSpec ReadRope(HfConfig& config, int64_t head_dim, int64_t rotary_dims, double default_theta);

class Rotary {
 public:
  Rotary() = default;
  Rotary(const RopeSpec& spec, at::Device device);

  // cos and sign-folded sin tables for a pass's positions [batch, seq].
  struct Tables {
    at::Tensor cos, signed_sin;  // [batch, seq, 1, rotary_dims] in the model dtype
  };
  Tables For(const at::Tensor& positions, at::ScalarType dtype) const;
  // x [batch, seq, heads, head_dim] rotated as Hugging Face's apply_rotary_pos_emb (on the
  // first rotary_dims only; the rest pass through).
  at::Tensor Apply(const at::Tensor& x, const Tables& tables) const;

 private:
  int64_t rotary_dims_ = 0, head_dim_ = 0;
  at::Tensor inv_freq_;  // [rotary_dims / 2] float32
};

// A pass's rotary tables, made for each placement the pass reaches from the positions
// placed there.
class PassRope {
 public:
  PassRope(const Rotary& rotary, const PassPlacement& where, at::ScalarType dtype)
      : rotary_(rotary), where_(where), dtype_(dtype), tables_(where.size()) {}
  const Rotary::Tables& Get() {
    Rotary::Tables& t = tables_[where_.current()];
    if (!t.cos.defined()) t = rotary_.For(where_.in().positions, dtype_);
    return t;
  }

 private:
  const Rotary& rotary_;
  const PassPlacement& where_;
  at::ScalarType dtype_;
  std::vector<Rotary::Tables> tables_;  // per placement
};

// The ids of the attention internals of one layer.
struct AttentionPoints {
  int scores = -1, pattern = -1, z = -1;
};

// Scaled dot-product attention of one layer in one pass, with grouped-query heads, left
// padding, causal and optional sliding-window masks, and a KV cache. Masks are made on the
// placement of the layer that needs them (once per placement and window).
class AttentionCore {
 public:
  // `softcap` > 0: scores are soft-capped, cap * tanh(scores / cap), before the mask (Gemma 2).
  AttentionCore(const PassPlacement& where, const PassHooks& hooks, int64_t heads,
                int64_t kv_heads, int64_t head_dim, double scale, at::ScalarType dtype,
                double softcap = 0.0);

  // q_rot [batch, seq, heads, head_dim], k_rot and v [batch, seq, kv_heads, head_dim];
  // `window` 0 for full attention, else keys at distance >= window are masked.
  // Returns z [batch, seq, heads, head_dim].
  at::Tensor Attend(int layer, const AttentionPoints& points, const at::Tensor& q_rot,
                    const at::Tensor& k_rot, const at::Tensor& v, int64_t window = 0);

 private:
  void CacheKeysValues(int layer, const at::Tensor& k_rot, const at::Tensor& v, at::Tensor& keys,
                       at::Tensor& values) const;
  // The additive mask in the grouped score layout, undefined when nothing is masked.
  const at::Tensor& Mask(int64_t window);

  const PassPlacement& where_;
  const PassHooks& hooks_;
  int64_t heads_, kv_heads_, head_dim_, batch_, seq_, past_;
  double scale_, softcap_;
  at::ScalarType dtype_;
  bool has_padding_ = false;
  std::vector<std::map<int64_t, at::Tensor>> masks_;  // per placement, by window
};

// Hands the heap pages a pass's activations used and freed back to the OS before an output
// of `output_bytes` is made, when that output is big (full logits of a batch): they would
// otherwise stay resident beside it and raise the pass's peak. glibc only.
void ReleaseFreedHeap(int64_t output_bytes);

// The four points after the layers, as every family has them: the final norm's input and
// output, the unembedding's input and output (the logits; only the last position unless
// `in.all_logits`). Returns the logits.
at::Tensor Unembed(const PassHooks& hooks, const HookCatalogue& catalogue, const PassInputs& in,
                   at::Tensor x, const std::function<at::Tensor(const at::Tensor&)>& norm,
                   const at::Tensor& unembedding);

// Module names in forward order: `first`, then every layer's `per_layer` under
// prefix + N + ".", then `last`.
std::vector<std::string> LayerModuleNames(const std::vector<std::string>& first,
                                          const std::string& prefix, int64_t layers,
                                          const std::vector<std::string>& per_layer,
                                          const std::vector<std::string>& last);

// "model.layers.12.mlp" -> {12, "mlp"} for `prefix` "model.layers."; layer -1 when `name`
// does not name a module inside a layer below `num_layers`.
std::pair<int64_t, std::string> SplitLayerModule(const std::string& name, const std::string& prefix,
                                                 int64_t num_layers);

// The names that contain any of `parts`, in order.
std::vector<std::string> Filtered(const std::vector<std::string>& names,
                                  std::initializer_list<const char*> parts);

}  // namespace glassbox

#endif  // GLASSBOX_ENGINE_LAYERS_H_
