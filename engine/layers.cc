// Shared pieces of the families' forward passes (see layers.h).
#include "engine/layers.h"

#include <ATen/TensorOperators.h>
#include <ATen/ops/addcmul.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/baddbmm.h>
#include <ATen/ops/bmm.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/gelu.h>
#include <ATen/ops/layer_norm.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/linalg_vector_norm.h>
#include <ATen/ops/relu.h>
#include <ATen/ops/roll.h>
#include <ATen/ops/rsqrt.h>
#include <ATen/ops/silu.h>
#include <ATen/ops/softmax.h>
#include <ATen/ops/tanh.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>

#include <cmath>
#include <limits>
#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace glassbox {

void PassHooks::At(int id, at::Tensor& value) const {
  if (!Seen(id)) return;
  Status status = in_.hooks->Run(id, in_.step, value);
  if (!status.ok()) throw HookFailure{status};
}

at::Tensor PassHooks::Tap(int id, const at::Tensor& value) const {
  at::Tensor copy = value;
  At(id, copy);
  return copy;
}

at::Tensor PassHooks::SkippedOutput(int id, const at::Tensor& like) const {
  at::Tensor out = at::zeros_like(like);
  At(id, out);
  return out;
}

void PassHooks::CheckInterrupt() const {
  if (in_.hooks == nullptr) return;
  Status go_on = in_.hooks->CheckInterrupt();
  if (!go_on.ok()) throw HookFailure{go_on};
}

PassPlacement::PassPlacement(const DevicePlan& plan, const PassInputs& in)
    : plan_(plan), placed_(plan.size(), in) {}

at::Tensor PassPlacement::Move(int placement, const at::Tensor& x) {
  const at::Device to = plan_.device(placement);
  PassInputs& there = placed_[placement];  // (no copies where the devices are the same)
  there.ids = there.ids.to(to);
  there.positions = there.positions.to(to);
  there.attention_mask = there.attention_mask.to(to);
  current_ = placement;
  return MoveResidual(x, to);
}

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

at::Tensor GemmaRmsNorm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  at::Tensor h = x.to(at::kFloat);
  at::Tensor normed = h * at::rsqrt(h.pow(2).mean({-1}, /*keepdim=*/true) + eps);
  return (normed * (weight.to(at::kFloat) + 1.0)).to(x.scalar_type());
}

at::Tensor SoftCap(const at::Tensor& x, double cap) { return at::tanh(x / cap) * cap; }

at::Tensor LayerNorm(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                     double eps) {
  return at::layer_norm(x, {x.size(-1)}, weight, bias, eps);
}

bool KnownActivation(const std::string& name) {
  return name == "silu" || name == "gelu" || name == "gelu_new" || name == "gelu_pytorch_tanh" ||
         name == "relu";
}

at::Tensor Activate(const std::string& name, const at::Tensor& x) {
  if (name == "silu") return at::silu(x);
  if (name == "gelu") return at::gelu(x);
  if (name == "relu") return at::relu(x);
  return at::gelu(x, "tanh");  // gelu_new, gelu_pytorch_tanh
}

// ---- rotary position embeddings ----

RopeSpec ReadRope(HfConfig& config, int64_t head_dim, int64_t rotary_dims, double default_theta) {
  RopeSpec spec;
  spec.head_dim = head_dim;
  spec.rotary_dims = rotary_dims;
  spec.theta = config.Float("rope_theta", default_theta);
  // transformers 5 writes rope_parameters (theta and scaling together); earlier versions a
  // top-level rope_theta and rope_scaling.
  const char* key = config.Has("rope_parameters") ? "rope_parameters" : "rope_scaling";
  const nlohmann::json& rope = config.Json(key);
  if (rope.is_null()) return spec;
  if (!rope.is_object()) {
    config.Refuse(key, "expected an object");
    return spec;
  }
  spec.theta = rope.value("rope_theta", spec.theta);
  spec.scaling = rope.value("rope_type", rope.value("type", std::string("default")));
  for (const auto& [name, value] : rope.items()) {
    static const char* kKnown[] = {"rope_theta", "rope_type", "type", "factor", "low_freq_factor",
                                   "high_freq_factor", "original_max_position_embeddings",
                                   "partial_rotary_factor"};
    bool known = false;
    for (const char* k : kKnown) known |= name == k;
    if (!known) config.Refuse(std::string(key) + "." + name, "not implemented (value " + value.dump() + ")");
  }
  if (spec.scaling != "default" && spec.scaling != "linear" && spec.scaling != "llama3") {
    config.Refuse(std::string(key) + ".rope_type",
                  "'" + spec.scaling + "' is not implemented (default, linear, llama3 are)");
  }
  const nlohmann::json& fraction = rope.contains("partial_rotary_factor") ? rope["partial_rotary_factor"] : nlohmann::json(1.0);
  if (!fraction.is_number() || static_cast<int64_t>(head_dim * fraction.get<double>()) != rotary_dims) {
    config.Refuse(std::string(key) + ".partial_rotary_factor",
                  "this family rotates " + std::to_string(rotary_dims) + " of " +
                      std::to_string(head_dim) + " dimensions");
  }
  spec.factor = rope.value("factor", 1.0);
  spec.low_freq_factor = rope.value("low_freq_factor", 1.0);
  spec.high_freq_factor = rope.value("high_freq_factor", 4.0);
  spec.original_max_positions = rope.value("original_max_position_embeddings", int64_t{8192});
  if (spec.scaling == "default" && rope.contains("factor")) {
    config.Refuse(std::string(key) + ".factor", "a factor without a scaling type");
  }
  return spec;
}

namespace {

// Hugging Face's _compute_llama3_parameters: long wavelengths slowed by `factor`, short ones
// kept, a smooth blend between.
at::Tensor Llama3Frequencies(const at::Tensor& inv_freq, const RopeSpec& s) {
  const double low_wavelen = s.original_max_positions / s.low_freq_factor;
  const double high_wavelen = s.original_max_positions / s.high_freq_factor;
  at::Tensor wavelen = 2 * M_PI / inv_freq;
  at::Tensor scaled = at::where(wavelen > low_wavelen, inv_freq / s.factor, inv_freq);
  at::Tensor smooth = (s.original_max_positions / wavelen - s.low_freq_factor) /
                      (s.high_freq_factor - s.low_freq_factor);
  at::Tensor smoothed = (1 - smooth) * scaled / s.factor + smooth * scaled;
  at::Tensor medium = (wavelen >= high_wavelen).logical_and(wavelen <= low_wavelen);
  return at::where(medium, smoothed, scaled);
}

}  // namespace

Rotary::Rotary(const RopeSpec& spec, at::Device device)
    : rotary_dims_(spec.rotary_dims), head_dim_(spec.head_dim) {
  auto options = at::TensorOptions().device(device).dtype(at::kLong);
  at::Tensor exponents = at::arange(0, spec.rotary_dims, 2, options).to(at::kFloat) /
                         static_cast<double>(spec.rotary_dims);
  inv_freq_ = 1.0 / at::pow(spec.theta, exponents);
  if (spec.scaling == "linear") inv_freq_ = inv_freq_ / spec.factor;
  if (spec.scaling == "llama3") inv_freq_ = Llama3Frequencies(inv_freq_, spec);
}

Rotary::Tables Rotary::For(const at::Tensor& positions, at::ScalarType dtype) const {
  // inv_freq_ is on the embedding's device; a split model's later placements copy it.
  const at::Tensor inv_freq = inv_freq_.device() == positions.device() ? inv_freq_ : inv_freq_.to(positions.device());
  at::Tensor freqs = positions.to(at::kFloat).unsqueeze(-1) * inv_freq;
  Tables t;
  t.cos = at::cat({freqs, freqs}, -1).unsqueeze(2).cos().to(dtype);
  // rotate_half(x) * sin == roll(x, half) * sin with the first half of sin negated.
  at::Tensor sin_half = freqs.sin().unsqueeze(2);
  t.signed_sin = at::cat({-sin_half, sin_half}, -1).to(dtype);
  return t;
}

at::Tensor Rotary::Apply(const at::Tensor& x, const Tables& t) const {
  if (rotary_dims_ == head_dim_) {
    at::Tensor out = x * t.cos;
    return out.addcmul_(at::roll(x, x.size(-1) / 2, -1), t.signed_sin);
  }
  at::Tensor rot = x.narrow(-1, 0, rotary_dims_);
  at::Tensor out = rot * t.cos;
  out.addcmul_(at::roll(rot, rotary_dims_ / 2, -1), t.signed_sin);
  return at::cat({out, x.narrow(-1, rotary_dims_, head_dim_ - rotary_dims_)}, -1);
}

// ---- attention ----

namespace {

double LowestValue(at::ScalarType dtype) {
  switch (dtype) {
    case at::kHalf: return -65504.0;
    case at::kBFloat16: return -3.3895313892515355e38;
    case at::kDouble: return std::numeric_limits<double>::lowest();
    default: return std::numeric_limits<float>::lowest();
  }
}

}  // namespace

AttentionCore::AttentionCore(const PassPlacement& where, const PassHooks& hooks, int64_t heads,
                             int64_t kv_heads, int64_t head_dim, double scale, at::ScalarType dtype,
                             double softcap)
    : where_(where), hooks_(hooks), heads_(heads), kv_heads_(kv_heads), head_dim_(head_dim),
      batch_(where.in().ids.size(0)), seq_(where.in().ids.size(1)),
      past_(where.in().cache ? where.in().cache->length : 0), scale_(scale), softcap_(softcap),
      dtype_(dtype), masks_(where.size()) {
  has_padding_ = !where.in().attention_mask.all().item<bool>();
}

const at::Tensor& AttentionCore::Mask(int64_t window) {
  std::map<int64_t, at::Tensor>& masks = masks_[where_.current()];
  auto found = masks.find(window);
  if (found != masks.end()) return found->second;
  const PassInputs& in = where_.in();
  at::Tensor& grouped = masks[window];
  const int64_t k_seq = past_ + seq_;
  const bool window_bites = window > 0 && k_seq > window;
  if (seq_ == 1 && !has_padding_ && !window_bites) return grouped;  // nothing masked
  auto options = at::TensorOptions().device(in.ids.device()).dtype(at::kLong);
  at::Tensor key_pos = at::arange(k_seq, options).unsqueeze(0);
  at::Tensor query_pos = (at::arange(seq_, options) + past_).unsqueeze(1);
  at::Tensor allowed = key_pos <= query_pos;  // [seq, k_seq]
  // Hugging Face's sliding window: a query sees the `window` most recent keys, itself included.
  if (window > 0) allowed = allowed.logical_and(query_pos - key_pos < window);
  allowed = allowed.unsqueeze(0) & in.attention_mask.to(at::kBool).unsqueeze(1);  // [b, seq, k_seq]
  at::Tensor mask = at::zeros({batch_, 1, 1, seq_, k_seq}, options.dtype(dtype_))
                        .masked_fill(allowed.logical_not().view({batch_, 1, 1, seq_, k_seq}),
                                     LowestValue(dtype_));
  // Repeated for each query head, in the [batch * kv_heads, group * seq, k_seq] layout of
  // the grouped score products.
  const int64_t group = heads_ / kv_heads_;
  grouped = mask.expand({batch_, kv_heads_, group, seq_, k_seq}).reshape({batch_ * kv_heads_, group * seq_, k_seq});
  return grouped;
}

void AttentionCore::CacheKeysValues(int layer, const at::Tensor& k_rot, const at::Tensor& v,
                                    at::Tensor& keys, at::Tensor& values) const {
  KvCache* cache = where_.in().cache;
  if (cache == nullptr) {
    keys = k_rot.transpose(1, 2);
    values = v.transpose(1, 2);
    return;
  }
  at::Tensor& cached_k = cache->keys[layer];
  at::Tensor& cached_v = cache->values[layer];
  cached_k.narrow(2, past_, seq_).copy_(k_rot.transpose(1, 2));
  cached_v.narrow(2, past_, seq_).copy_(v.transpose(1, 2));
  keys = cached_k.narrow(2, 0, past_ + seq_);
  values = cached_v.narrow(2, 0, past_ + seq_);
}

// Grouped-query attention without copying keys: query heads are grouped under their
// key/value head.
at::Tensor AttentionCore::Attend(int layer, const AttentionPoints& points, const at::Tensor& q_rot,
                                 const at::Tensor& k_rot, const at::Tensor& v, int64_t window) {
  const int64_t group = heads_ / kv_heads_;
  at::Tensor keys, values;
  CacheKeysValues(layer, k_rot, v, keys, values);  // [batch, kv_heads, k_seq, head_dim]
  const int64_t k_seq = keys.size(2);
  const int64_t rows = group * seq_;
  at::Tensor q3 = q_rot.transpose(1, 2).reshape({batch_ * kv_heads_, rows, head_dim_});
  at::Tensor k3 = keys.reshape({batch_ * kv_heads_, k_seq, head_dim_}).transpose(1, 2);
  const at::Tensor& mask = Mask(window);
  // (q k^T) * scale + mask, the scale and the mask applied by the matrix product itself;
  // with soft-capping, Hugging Face's order: scale, cap, then the mask.
  at::Tensor scores;
  if (softcap_ > 0) {
    scores = SoftCap(at::bmm(q3, k3).mul_(scale_), softcap_);
    if (mask.defined()) scores.add_(mask);
  } else {
    scores = mask.defined() ? at::baddbmm(mask, q3, k3, 1.0, scale_) : at::bmm(q3, k3).mul_(scale_);
  }
  scores = scores.view({batch_, heads_, seq_, k_seq});
  hooks_.At(points.scores, scores);
  at::Tensor pattern = at::softmax(scores, -1, at::kFloat).to(q_rot.scalar_type());
  hooks_.At(points.pattern, pattern);
  at::Tensor z = at::bmm(pattern.reshape({batch_ * kv_heads_, rows, k_seq}),
                         values.reshape({batch_ * kv_heads_, k_seq, head_dim_}))
                     .view({batch_, heads_, seq_, head_dim_})
                     .transpose(1, 2);
  hooks_.At(points.z, z);
  return z;
}

void ReleaseFreedHeap(int64_t output_bytes) {
#if defined(__GLIBC__)
  constexpr int64_t kBigOutput = int64_t{16} << 20;
  if (output_bytes >= kBigOutput) malloc_trim(0);
#else
  (void)output_bytes;
#endif
}

at::Tensor Unembed(const PassHooks& hooks, const HookCatalogue& catalogue, const PassInputs& in,
                   at::Tensor x, const std::function<at::Tensor(const at::Tensor&)>& norm,
                   const at::Tensor& unembedding) {
  hooks.At(catalogue.AfterId(0), x);
  at::Tensor h = norm(x);
  hooks.At(catalogue.AfterId(1), h);
  if (!in.all_logits) h = h.narrow(1, h.size(1) - 1, 1);
  hooks.At(catalogue.AfterId(2), h);
  ReleaseFreedHeap(h.size(0) * h.size(1) * unembedding.size(0) * unembedding.element_size());
  at::Tensor logits = at::linear(h, unembedding);
  hooks.At(catalogue.AfterId(3), logits);
  return logits;
}

std::vector<std::string> LayerModuleNames(const std::vector<std::string>& first,
                                          const std::string& prefix, int64_t layers,
                                          const std::vector<std::string>& per_layer,
                                          const std::vector<std::string>& last) {
  std::vector<std::string> names = first;
  for (int64_t i = 0; i < layers; ++i) {
    for (const std::string& m : per_layer) names.push_back(prefix + std::to_string(i) + "." + m);
  }
  names.insert(names.end(), last.begin(), last.end());
  return names;
}

std::pair<int64_t, std::string> SplitLayerModule(const std::string& name, const std::string& prefix,
                                                 int64_t num_layers) {
  if (name.compare(0, prefix.size(), prefix) != 0) return {-1, ""};
  const size_t dot = name.find('.', prefix.size());
  if (dot == std::string::npos) return {-1, ""};
  const std::string index = name.substr(prefix.size(), dot - prefix.size());
  if (index.empty() || index.size() > 6 || index.find_first_not_of("0123456789") != std::string::npos) {
    return {-1, ""};
  }
  const int64_t layer = std::stoll(index);
  if (layer >= num_layers) return {-1, ""};
  return {layer, name.substr(dot + 1)};
}

std::vector<std::string> Filtered(const std::vector<std::string>& names,
                                  std::initializer_list<const char*> parts) {
  std::vector<std::string> out;
  for (const std::string& name : names) {
    for (const char* part : parts) {
      if (name.find(part) != std::string::npos) {
        out.push_back(name);
        break;
      }
    }
  }
  return out;
}

}  // namespace glassbox
