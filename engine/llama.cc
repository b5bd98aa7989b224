// One forward pass of a Llama-family model, following Hugging Face's LlamaForCausalLM
// operation for operation (so activations match it at every hook point), with a hook check
// before each point.
#include "engine/llama.h"

#include <ATen/TensorOperators.h>
#include <ATen/ops/addcmul.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/baddbmm.h>
#include <ATen/ops/bmm.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/embedding.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/linalg_vector_norm.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/roll.h>
#include <ATen/ops/rsqrt.h>
#include <ATen/ops/silu.h>
#include <ATen/ops/softmax.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>

#include <limits>
#include <map>
#if defined(__GLIBC__)
#include <malloc.h>
#endif
#include <string>

namespace glassbox {

using LP = LayerPoint;
using GP = GlobalPoint;

namespace {

// Hugging Face's LlamaRMSNorm: computed in float32, scaled by the weight in the input dtype.
// Without autograd, temporaries are updated in place and mean(h^2) comes from the 2-norm (one
// pass, no squared copy); with it, Hugging Face's ops exactly (the norm's gradient is
// singular at zero, and autograd needs the intermediates).
at::Tensor RmsNorm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  at::Tensor h = x.to(at::kFloat);
  if (h.requires_grad() || weight.requires_grad()) {
    at::Tensor variance = h.pow(2).mean({-1}, /*keepdim=*/true);
    return weight * (h * at::rsqrt(variance + eps)).to(x.scalar_type());
  }
  at::Tensor inverse_rms = at::linalg_vector_norm(h, 2, {-1}, /*keepdim=*/true)
                               .square_()
                               .div_(static_cast<double>(h.size(-1)))
                               .add_(eps)
                               .rsqrt_();
  return (h * inverse_rms).to(x.scalar_type()).mul_(weight);
}

// Hands the heap pages that a pass's activations used and freed back to the OS before an
// output of `output_bytes` is made, when that output is big (full logits of a batch): they
// would otherwise stay resident beside it and raise the pass's peak (8x64 tokens: ~25 MB, for
// ~3 ms). glibc only.
void ReleaseFreedHeap(int64_t output_bytes) {
#if defined(__GLIBC__)
  constexpr int64_t kBigOutput = int64_t{16} << 20;
  if (output_bytes >= kBigOutput) malloc_trim(0);
#else
  (void)output_bytes;
#endif
}

at::Tensor GatedMlp(const LayerWeights& w, const at::Tensor& x) {
  return at::linear(at::silu(at::linear(x, w.gate_proj)) * at::linear(x, w.up_proj), w.down_proj);
}

}  // namespace

// The state of one pass: inputs, hooks and the per-pass tensors shared by every layer.
class LlamaModel::Pass {
 public:
  Pass(const LlamaModel& model, const PassInputs& in) : m_(model), in_(in) {
    batch_ = in.ids.size(0);
    seq_ = in.ids.size(1);
    past_ = in.cache ? in.cache->length : 0;
    BuildRope();
    BuildMask();
  }

  at::Tensor Run() {
    at::Tensor ids = in_.ids;
    At(HookCatalogue::GlobalId(GP::kEmbedInput), ids);
    at::Tensor x = at::embedding(m_.weights_.embed_tokens, ids);
    At(HookCatalogue::GlobalId(GP::kEmbedOutput), x);
    for (size_t layer = 0; layer < m_.weights_.layers.size(); ++layer) {
      x = Layer(static_cast<int>(layer), x);
    }
    return Head(x);
  }

 private:
  // Runs the callbacks registered at `id`, if any; `value` may be replaced.
  void At(int id, at::Tensor& value) const {
    if (in_.hooks == nullptr || !in_.hooks->Wants(id)) return;
    Status status = in_.hooks->Run(id, in_.step, value);
    if (!status.ok()) throw HookFailure{status};
  }
  void At(int layer, LP point, at::Tensor& value) const {
    At(HookCatalogue::LayerId(layer, point), value);
  }
  // `value` at a point whose hooks may replace it for this use only.
  at::Tensor Tap(int layer, LP point, const at::Tensor& value) const {
    at::Tensor copy = value;
    At(layer, point, copy);
    return copy;
  }

  at::Tensor RmsNorm(const at::Tensor& x, const at::Tensor& weight) const {
    return glassbox::RmsNorm(x, weight, m_.config_.rms_norm_eps);
  }

  // Whether a callback sees the value at a point (and so may keep it): values nobody sees
  // (and autograd does not track) can be updated in place.
  bool Seen(int layer, LP point) const {
    return in_.hooks != nullptr && in_.hooks->Wants(HookCatalogue::LayerId(layer, point));
  }

  bool Skips(int layer, LP point) const {
    return in_.hooks != nullptr && in_.hooks->Skips(HookCatalogue::LayerId(layer, point));
  }
  // A skipped module's output: zeros shaped like `like`, unless a hook supplies the value.
  at::Tensor SkippedOutput(int layer, LP point, const at::Tensor& like) const {
    at::Tensor out = at::zeros_like(like);
    At(layer, point, out);
    return out;
  }

  at::Tensor Layer(int layer, at::Tensor x) {
    const LayerWeights& w = m_.weights_.layers[layer];
    if (in_.hooks != nullptr) {
      Status go_on = in_.hooks->CheckInterrupt();
      if (!go_on.ok()) throw HookFailure{go_on};
    }
    At(layer, LP::kInput, x);
    if (Skips(layer, LP::kOutput)) return SkippedOutput(layer, LP::kOutput, x);
    at::Tensor h = Tap(layer, LP::kLn1Input, x);
    h = RmsNorm(h, w.input_layernorm);
    At(layer, LP::kLn1Output, h);
    at::Tensor attn = Attention(layer, w, h);
    at::Tensor mid = Sum(layer, attn, LP::kAttnOutput, x);
    h = Tap(layer, LP::kLn2Input, mid);
    h = RmsNorm(h, w.post_attention_layernorm);
    At(layer, LP::kLn2Output, h);
    at::Tensor mlp = Mlp(layer, w, h);
    at::Tensor out = Sum(layer, mlp, LP::kMlpOutput, mid);
    At(layer, LP::kOutput, out);
    return out;
  }

  // `fresh + other`, written into `fresh` (a module's output at `point`) when no callback saw
  // it there or at the projection that produced it, and autograd does not track it.
  at::Tensor Sum(int layer, at::Tensor& fresh, LP point, const at::Tensor& other) const {
    const LP producer = point == LP::kAttnOutput ? LP::kOProjOutput : LP::kDownProjOutput;
    if (Seen(layer, point) || Seen(layer, producer) || Skips(layer, point) || fresh.requires_grad()) {
      return other + fresh;
    }
    return fresh.add_(other);
  }

  at::Tensor Project(int layer, LP in_point, const at::Tensor& x, const at::Tensor& weight) {
    at::Tensor y = at::linear(Tap(layer, in_point, x), weight);
    At(layer, static_cast<LP>(static_cast<int>(in_point) + 1), y);  // the matching .output
    return y;
  }

  at::Tensor Attention(int layer, const LayerWeights& w, at::Tensor h) {
    const ModelConfig& c = m_.config_;
    At(layer, LP::kAttnInput, h);
    if (Skips(layer, LP::kAttnOutput)) return SkippedOutput(layer, LP::kAttnOutput, h);
    at::Tensor q = Project(layer, LP::kQProjInput, h, w.q_proj).view({batch_, seq_, c.num_heads, c.head_dim});
    at::Tensor k = Project(layer, LP::kKProjInput, h, w.k_proj).view({batch_, seq_, c.num_kv_heads, c.head_dim});
    at::Tensor v = Project(layer, LP::kVProjInput, h, w.v_proj).view({batch_, seq_, c.num_kv_heads, c.head_dim});
    At(layer, LP::kQ, q);
    At(layer, LP::kK, k);
    At(layer, LP::kV, v);
    at::Tensor q_rot = ApplyRope(q);
    at::Tensor k_rot = ApplyRope(k);
    At(layer, LP::kQRot, q_rot);
    At(layer, LP::kKRot, k_rot);
    at::Tensor z = AttendHeads(layer, q_rot, k_rot, v);
    at::Tensor o_in = z.reshape({batch_, seq_, c.num_heads * c.head_dim});
    at::Tensor out = Project(layer, LP::kOProjInput, o_in, w.o_proj);
    At(layer, LP::kAttnOutput, out);
    return out;
  }

  // Scores, pattern and per-head outputs [batch, seq, heads, head_dim]. Grouped-query
  // attention without copying keys: query heads are grouped under their key/value head.
  at::Tensor AttendHeads(int layer, const at::Tensor& q_rot, const at::Tensor& k_rot,
                         const at::Tensor& v) {
    const ModelConfig& c = m_.config_;
    const int64_t group = c.num_heads / c.num_kv_heads;
    at::Tensor keys, values;
    CacheKeysValues(layer, k_rot, v, keys, values);  // [batch, kv_heads, k_seq, head_dim]
    const int64_t k_seq = keys.size(2);
    const int64_t kv = c.num_kv_heads, rows = group * seq_;
    at::Tensor q3 = q_rot.transpose(1, 2).reshape({batch_ * kv, rows, c.head_dim});
    at::Tensor k3 = keys.reshape({batch_ * kv, k_seq, c.head_dim}).transpose(1, 2);
    // (q k^T) * scale + mask, the scale and the mask applied by the matrix product itself.
    at::Tensor scores = (grouped_mask_.defined() ? at::baddbmm(grouped_mask_, q3, k3, 1.0, scale_)
                                                 : at::bmm(q3, k3).mul_(scale_))
                            .view({batch_, c.num_heads, seq_, k_seq});
    At(layer, LP::kAttnScores, scores);
    at::Tensor pattern = at::softmax(scores, -1, at::kFloat).to(q_rot.scalar_type());
    At(layer, LP::kAttnPattern, pattern);
    at::Tensor z = at::bmm(pattern.reshape({batch_ * kv, rows, k_seq}),
                           values.reshape({batch_ * kv, k_seq, c.head_dim}))
                       .view({batch_, c.num_heads, seq_, c.head_dim})
                       .transpose(1, 2);
    At(layer, LP::kZ, z);
    return z;
  }

  void CacheKeysValues(int layer, const at::Tensor& k_rot, const at::Tensor& v, at::Tensor& keys,
                       at::Tensor& values) const {
    if (in_.cache == nullptr) {
      keys = k_rot.transpose(1, 2);
      values = v.transpose(1, 2);
      return;
    }
    at::Tensor& cached_k = in_.cache->keys[layer];
    at::Tensor& cached_v = in_.cache->values[layer];
    cached_k.narrow(2, past_, seq_).copy_(k_rot.transpose(1, 2));
    cached_v.narrow(2, past_, seq_).copy_(v.transpose(1, 2));
    keys = cached_k.narrow(2, 0, past_ + seq_);
    values = cached_v.narrow(2, 0, past_ + seq_);
  }

  at::Tensor Mlp(int layer, const LayerWeights& w, at::Tensor h) {
    At(layer, LP::kMlpInput, h);
    if (Skips(layer, LP::kMlpOutput)) return SkippedOutput(layer, LP::kMlpOutput, h);
    at::Tensor gate = Project(layer, LP::kGateProjInput, h, w.gate_proj);
    at::Tensor up = Project(layer, LP::kUpProjInput, h, w.up_proj);
    at::Tensor act = Seen(layer, LP::kGateProjOutput) || gate.requires_grad() ? at::silu(gate) * up
                                                                               : at::silu_(gate).mul_(up);
    at::Tensor out = Project(layer, LP::kDownProjInput, act, w.down_proj);
    At(layer, LP::kMlpOutput, out);
    return out;
  }

  at::Tensor Head(at::Tensor x) {
    At(HookCatalogue::GlobalId(GP::kNormInput), x);
    at::Tensor h = RmsNorm(x, m_.weights_.norm);
    At(HookCatalogue::GlobalId(GP::kNormOutput), h);
    if (!in_.all_logits) h = h.narrow(1, seq_ - 1, 1);
    At(HookCatalogue::GlobalId(GP::kLmHeadInput), h);
    ReleaseFreedHeap(h.size(0) * h.size(1) * m_.config_.vocab_size * at::elementSize(m_.dtype_));
    at::Tensor logits = at::linear(h, m_.weights_.lm_head);
    At(HookCatalogue::GlobalId(GP::kLmHeadOutput), logits);
    return logits;
  }

  // cos/sin [batch, seq, 1, head_dim] for the pass's positions, as Hugging Face computes them.
  void BuildRope() {
    at::Tensor freqs = in_.positions.to(at::kFloat).unsqueeze(-1) * m_.inv_freq_;
    at::Tensor emb = at::cat({freqs, freqs}, -1).unsqueeze(2);
    cos_ = emb.cos().to(m_.dtype_);
    // rotate_half(x) * sin == roll(x, half) * sin with the first half of sin negated.
    at::Tensor sin_half = freqs.sin().unsqueeze(2);
    signed_sin_ = at::cat({-sin_half, sin_half}, -1).to(m_.dtype_);
    scale_ = 1.0 / std::sqrt(static_cast<double>(m_.config_.head_dim));
  }

  // x * cos + rotate_half(x) * sin, as Hugging Face's apply_rotary_pos_emb, in three ops.
  at::Tensor ApplyRope(const at::Tensor& x) const {
    at::Tensor out = x * cos_;
    return out.addcmul_(at::roll(x, x.size(-1) / 2, -1), signed_sin_);
  }

  // Additive mask for the scores: causal and padding, the dtype's minimum where a
  // query may not look. Left undefined when nothing is masked (one new token, no padding).
  void BuildMask() {
    const int64_t k_seq = past_ + seq_;
    const at::Tensor& valid = in_.attention_mask;  // [batch, k_seq]
    const bool has_padding = !valid.all().item<bool>();
    if (seq_ == 1 && !has_padding) return;
    auto options = at::TensorOptions().device(m_.device_).dtype(at::kLong);
    at::Tensor key_pos = at::arange(k_seq, options);
    at::Tensor query_pos = at::arange(seq_, options) + past_;
    at::Tensor allowed = key_pos.unsqueeze(0) <= query_pos.unsqueeze(1);  // [seq, k_seq]
    allowed = allowed.unsqueeze(0) & valid.to(at::kBool).unsqueeze(1);     // [batch, seq, k_seq]
    const double lowest = LowestValue(m_.dtype_);
    at::Tensor mask = at::zeros({batch_, 1, 1, seq_, k_seq}, options.dtype(m_.dtype_))
                          .masked_fill(allowed.logical_not().view({batch_, 1, 1, seq_, k_seq}), lowest);
    // Repeated for each query head, in the [batch * kv_heads, group * seq, k_seq] layout of
    // the grouped score products.
    const int64_t kv = m_.config_.num_kv_heads, group = m_.config_.num_heads / kv;
    grouped_mask_ = mask.expand({batch_, kv, group, seq_, k_seq}).reshape({batch_ * kv, group * seq_, k_seq});
  }

  static double LowestValue(at::ScalarType dtype) {
    switch (dtype) {
      case at::kHalf: return -65504.0;
      case at::kBFloat16: return -3.3895313892515355e38;
      case at::kDouble: return std::numeric_limits<double>::lowest();
      default: return std::numeric_limits<float>::lowest();
    }
  }

  const LlamaModel& m_;
  const PassInputs& in_;
  int64_t batch_ = 0, seq_ = 0, past_ = 0;
  double scale_ = 1.0;
  at::Tensor cos_, signed_sin_, grouped_mask_;
};

LlamaModel::LlamaModel(const ModelConfig& config, LlamaWeights weights, at::Device device,
                       at::ScalarType dtype)
    : config_(config), weights_(std::move(weights)), device_(device), dtype_(dtype) {
  auto options = at::TensorOptions().device(device).dtype(at::kLong);
  at::Tensor exponents = at::arange(0, config.head_dim, 2, options).to(at::kFloat) /
                         static_cast<double>(config.head_dim);
  inv_freq_ = 1.0 / at::pow(config.rope_theta, exponents);
}

at::Tensor LlamaModel::Forward(const PassInputs& in) const {
  Pass pass(*this, in);
  return pass.Run();
}

std::vector<std::string> LlamaModel::ModuleNames() const {
  std::vector<std::string> names = {"model.embed_tokens", "model.norm", "lm_head"};
  for (size_t i = 0; i < weights_.layers.size(); ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    for (const char* m : {"input_layernorm", "post_attention_layernorm", "self_attn.q_proj",
                          "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp",
                          "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"}) {
      names.push_back(p + m);
    }
  }
  return names;
}

StatusOr<at::Tensor> LlamaModel::ApplyModule(const std::string& name, const at::Tensor& x) const {
  const double eps = config_.rms_norm_eps;
  if (name == "model.embed_tokens") return at::embedding(weights_.embed_tokens, x.to(at::kLong));
  if (name == "model.norm") return RmsNorm(x.to(dtype_), weights_.norm, eps);
  if (name == "lm_head") return at::linear(x.to(dtype_), weights_.lm_head);
  const std::string prefix = "model.layers.";
  if (name.compare(0, prefix.size(), prefix) == 0) {
    const size_t dot = name.find('.', prefix.size());
    const std::string index = name.substr(prefix.size(), dot - prefix.size());
    const bool numeric = !index.empty() && index.find_first_not_of("0123456789") == std::string::npos;
    if (numeric && dot != std::string::npos && std::stoul(index) < weights_.layers.size()) {
      const LayerWeights& w = weights_.layers[std::stoul(index)];
      const std::string module = name.substr(dot + 1);
      const at::Tensor in = x.to(dtype_);
      if (module == "input_layernorm") return RmsNorm(in, w.input_layernorm, eps);
      if (module == "post_attention_layernorm") return RmsNorm(in, w.post_attention_layernorm, eps);
      if (module == "mlp") return GatedMlp(w, in);
      const std::map<std::string, const at::Tensor*> linear = {
          {"self_attn.q_proj", &w.q_proj}, {"self_attn.k_proj", &w.k_proj},
          {"self_attn.v_proj", &w.v_proj}, {"self_attn.o_proj", &w.o_proj},
          {"mlp.gate_proj", &w.gate_proj}, {"mlp.up_proj", &w.up_proj},
          {"mlp.down_proj", &w.down_proj}};
      auto it = linear.find(module);
      if (it != linear.end()) return at::linear(in, *it->second);
    }
  }
  return NotFound("no callable module '" + name + "'; callable: model.embed_tokens, model.norm, "
                  "lm_head, and per layer input_layernorm, post_attention_layernorm, mlp, "
                  "self_attn.{q,k,v,o}_proj, mlp.{gate,up,down}_proj");
}

KvCache LlamaModel::NewCache(int64_t batch, int64_t capacity) const {
  KvCache cache;
  auto options = at::TensorOptions().device(device_).dtype(dtype_);
  for (size_t i = 0; i < weights_.layers.size(); ++i) {
    cache.keys.push_back(at::empty({batch, config_.num_kv_heads, capacity, config_.head_dim}, options));
    cache.values.push_back(at::empty({batch, config_.num_kv_heads, capacity, config_.head_dim}, options));
  }
  return cache;
}

}  // namespace glassbox
