// TransformerLens-named weights from a family's Hugging Face weights: the rearrangements
// TransformerLens' own weight conversions do (per head, [in, out] matrices), without its
// optional processing (folding norms, centring).
#include "engine/tl_weights.h"

#include <ATen/TensorOperators.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/stack.h>
#include <ATen/ops/zeros.h>

#include <cstdlib>

namespace glassbox {
namespace {

using Qkv = TlWeightLayout::Qkv;

// Per layer, in TransformerLens' order.
const char* const kLayerNames[] = {"ln1.w", "ln1.b", "attn.W_Q", "attn.W_K", "attn.W_V", "attn.W_O",
                                   "attn.b_Q", "attn.b_K", "attn.b_V", "attn.b_O", "ln2.w", "ln2.b",
                                   "mlp.W_in", "mlp.W_gate", "mlp.W_out", "mlp.b_in", "mlp.b_out"};
// Stacked over layers on the model, as HookedTransformer's properties.
const char* const kStacked[] = {"W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V", "b_O",
                                "W_in", "W_out", "b_in", "b_out"};

class Rearranger {
 public:
  Rearranger(const TlWeightLayout& l, const ModelConfig& c, const HfWeights& hf) : l_(l), c_(c), hf_(hf) {}

  // One of kLayerNames for layer `n`; undefined when the model has no such weight.
  at::Tensor Layer(int64_t n, const std::string& key) const {
    const std::string p = l_.layer + std::to_string(n) + ".";
    if (key == "ln1.w" || key == "ln2.w") return NormWeight(p + (key == "ln1.w" ? l_.ln1 : l_.ln2));
    if (key == "ln1.b" || key == "ln2.b") return Hf(p + (key == "ln1.b" ? l_.ln1 : l_.ln2) + ".bias");
    if (key.rfind("attn.", 0) == 0) return Attention(p, key.substr(5));
    return Mlp(p, key.substr(4));
  }

  at::Tensor Root(const std::string& key) const {
    if (key == "W_E") return Hf(l_.embed + ".weight");
    if (key == "W_pos") return l_.pos.empty() ? at::Tensor() : Hf(l_.pos + ".weight");
    if (key == "W_U") return InOut(l_.unembed, false);
    if (key == "b_U") return BiasOrZeros(l_.unembed, {c_.vocab_size});
    if (key == "ln_final.w") return NormWeight(l_.final_norm);
    if (key == "ln_final.b") return Hf(l_.final_norm + ".bias");
    return at::Tensor();
  }

 private:
  at::Tensor Hf(const std::string& name) const { return hf_(name); }
  at::Tensor Reference() const { return Hf(l_.embed + ".weight"); }  // dtype, device
  at::Tensor Zeros(std::vector<int64_t> shape) const {
    return at::zeros(shape, Reference().options());
  }
  at::Tensor NormWeight(const std::string& module) const {
    at::Tensor w = Hf(module + ".weight");
    return w.defined() && l_.norm_weight_offset != 0 ? w + l_.norm_weight_offset : w;
  }
  // A projection as an [in, out] matrix.
  at::Tensor InOut(const std::string& module, bool conv1d) const {
    at::Tensor w = Hf(module + ".weight");
    return !w.defined() || conv1d ? w : w.t();
  }
  at::Tensor BiasOrZeros(const std::string& module, std::vector<int64_t> shape) const {
    at::Tensor b = Hf(module + ".bias");
    return b.defined() ? b.reshape(shape) : Zeros(shape);
  }
  int64_t Heads(int which) const { return which == 0 ? c_.num_heads : c_.num_kv_heads; }
  at::Tensor RepeatKv(const at::Tensor& t, int which) const {
    const int64_t groups = c_.num_heads / c_.num_kv_heads;
    if (which == 0 || groups == 1) return t;
    std::vector<int64_t> grouped = t.sizes().vec(), merged = t.sizes().vec();
    grouped.insert(grouped.begin() + 1, groups);
    merged[0] *= groups;
    return t.unsqueeze(1).expand(grouped).reshape(merged);  // repeat_interleave(groups, 0)
  }

  // W_Q/K/V [heads, d, d_head] (which: 0 q, 1 k, 2 v), or their biases [heads, d_head].
  at::Tensor QkvPart(const std::string& p, int which, bool bias) const {
    const int64_t d = c_.hidden_size, dh = c_.head_dim, h = Heads(which);
    at::Tensor t;
    if (l_.qkv == Qkv::kSeparate) {
      const std::string& module = p + (which == 0 ? l_.q : which == 1 ? l_.k : l_.v);
      t = bias ? BiasOrZeros(module, {h, dh}) : InOut(module, l_.conv1d).reshape({d, h, dh}).permute({1, 0, 2});
    } else if (l_.qkv == Qkv::kConv1D) {
      at::Tensor fused = bias ? Hf(p + l_.q + ".bias") : InOut(p + l_.q, true);
      at::Tensor part = fused.narrow(-1, which * h * dh, h * dh);
      t = bias ? part.reshape({h, dh}) : part.reshape({d, h, dh}).permute({1, 0, 2});
    } else {
      at::Tensor fused = bias ? Hf(p + l_.q + ".bias") : InOut(p + l_.q, false);
      if (bias && !fused.defined()) return Zeros({c_.num_heads, dh});
      t = bias ? fused.reshape({h, 3, dh}).select(1, which)
               : fused.reshape({d, h, 3, dh}).select(2, which).permute({1, 0, 2});
    }
    return RepeatKv(t, which);
  }

  at::Tensor Attention(const std::string& p, const std::string& key) const {
    const int64_t d = c_.hidden_size;
    static const std::string kParts = "QKV";
    if (key.size() == 3 && key[1] == '_' && kParts.find(key[2]) != std::string::npos) {
      return QkvPart(p, static_cast<int>(kParts.find(key[2])), key[0] == 'b');
    }
    if (key == "W_O") return InOut(p + l_.o, l_.conv1d).reshape({c_.num_heads, c_.head_dim, d});
    if (key == "b_O") return BiasOrZeros(p + l_.o, {d});
    return at::Tensor();
  }

  at::Tensor Mlp(const std::string& p, const std::string& key) const {
    if (key == "W_in") return InOut(p + l_.mlp_in, l_.conv1d);
    if (key == "W_gate") return l_.mlp_gate.empty() ? at::Tensor() : InOut(p + l_.mlp_gate, l_.conv1d);
    if (key == "W_out") return InOut(p + l_.mlp_out, l_.conv1d);
    if (key == "b_in") return BiasOrZeros(p + l_.mlp_in, {c_.intermediate_size});
    if (key == "b_out") return BiasOrZeros(p + l_.mlp_out, {c_.hidden_size});
    return at::Tensor();
  }

  const TlWeightLayout& l_;
  const ModelConfig& c_;
  const HfWeights& hf_;
};

// "blocks.N.<key>" -> N and key; false for other names.
bool SplitLayer(const std::string& name, int64_t num_layers, int64_t& n, std::string& key) {
  const std::string prefix = "blocks.";
  if (name.rfind(prefix, 0) != 0) return false;
  const size_t dot = name.find('.', prefix.size());
  const std::string digits = name.substr(prefix.size(), dot - prefix.size());
  if (dot == std::string::npos || digits.empty() || digits.size() > 6 ||
      digits.find_first_not_of("0123456789") != std::string::npos) {
    return false;
  }
  n = std::atoll(digits.c_str());
  key = name.substr(dot + 1);
  return n < num_layers;
}

at::Tensor Compute(const std::string& name, const Rearranger& r, const ModelConfig& c) {
  int64_t n = 0;
  std::string key;
  if (SplitLayer(name, c.num_layers, n, key)) {
    for (const char* known : kLayerNames) {
      if (key == known) return r.Layer(n, key);
    }
    return at::Tensor();
  }
  for (const char* stacked : kStacked) {
    if (name != stacked) continue;
    const std::string layer_key = (name.size() > 3 ? "mlp." : "attn.") + name;  // W_in, b_out; W_Q
    std::vector<at::Tensor> layers;
    for (int64_t i = 0; i < c.num_layers; ++i) layers.push_back(r.Layer(i, layer_key));
    return at::stack(layers);
  }
  return r.Root(name);
}

}  // namespace

std::vector<std::string> TlWeightNames(const TlWeightLayout& layout, const ModelConfig& config,
                                       const HfWeights& hf) {
  std::vector<std::string> names;
  if (layout.embed.empty()) return names;
  const HfWeights shapes_only = [&hf](const std::string& name) {
    const at::Tensor w = hf(name);
    return w.defined() ? at::empty(w.sizes(), w.options().device(at::kMeta)) : w;
  };
  Rearranger r(layout, config, shapes_only);
  auto add = [&](const std::string& name) {
    if (Compute(name, r, config).defined()) names.push_back(name);
  };
  for (const char* root : {"W_E", "W_pos", "W_U", "b_U", "ln_final.w", "ln_final.b"}) add(root);
  for (const char* stacked : kStacked) add(stacked);
  for (int64_t n = 0; n < config.num_layers; ++n) {
    for (const char* key : kLayerNames) add("blocks." + std::to_string(n) + "." + key);
  }
  return names;
}

StatusOr<at::Tensor> TlWeight(const std::string& name, const TlWeightLayout& layout,
                              const ModelConfig& config, const HfWeights& hf) {
  if (layout.embed.empty()) return NotFound("no TransformerLens weight '" + name + "'");
  at::Tensor w = Compute(name, Rearranger(layout, config, hf), config);
  if (!w.defined()) return NotFound("no TransformerLens weight '" + name + "'");
  return w;
}

}  // namespace glassbox
