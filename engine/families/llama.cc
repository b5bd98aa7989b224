// The Llama family: LlamaForCausalLM and MistralForCausalLM from Hugging Face directories,
// `llama` GGUF files from llama.cpp, and the Llama-style decoder the Qwen family reuses.
// The forward pass follows transformers' modeling_llama operation for operation, with a
// hook check before each point.
#include "engine/families/llama.h"

#include <ATen/TensorOperators.h>
#include <ATen/ops/embedding.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/silu.h>

#include <array>
#include <cmath>
#include <map>

#include "engine/gguf.h"

namespace glassbox {
namespace {

// Hook points inside one decoder layer, in forward order.
enum P : int {
  kInput, kLn1In, kLn1Out, kAttnIn, kQIn, kQOut, kKIn, kKOut, kVIn, kVOut,
  kQNormIn, kQNormOut, kKNormIn, kKNormOut, kQ, kK, kV, kQRot, kKRot, kScores, kPattern, kZ,
  kOIn, kOOut, kAttnOut, kLn2In, kLn2Out, kMlpIn, kGateIn, kGateOut, kUpIn, kUpOut, kDownIn,
  kDownOut, kMlpOut, kOutput, kPointCount
};

const PointRow kLayerPoints[] = {
    {kInput, "input", "hook_resid_pre", Dims::kResid, "residual stream entering the layer"},
    {kLn1In, "input_layernorm.input", "ln1.hook_input", Dims::kResid, "input of the pre-attention RMSNorm"},
    {kLn1Out, "input_layernorm.output", "ln1.hook_normalized", Dims::kResid, "pre-attention RMSNorm output (scaled by its weight)"},
    {kAttnIn, "self_attn.input", "attn.hook_input", Dims::kResid, "hidden states given to self-attention"},
    {kQIn, "self_attn.q_proj.input", "", Dims::kResid, "input of q_proj"},
    {kQOut, "self_attn.q_proj.output", "", Dims::kQProj, "queries, all heads concatenated, before RoPE"},
    {kKIn, "self_attn.k_proj.input", "", Dims::kResid, "input of k_proj"},
    {kKOut, "self_attn.k_proj.output", "", Dims::kKvProj, "keys, all key/value heads concatenated, before RoPE"},
    {kVIn, "self_attn.v_proj.input", "", Dims::kResid, "input of v_proj"},
    {kVOut, "self_attn.v_proj.output", "", Dims::kKvProj, "values, all key/value heads concatenated"},
    {kQNormIn, "self_attn.q_norm.input", "", Dims::kQHeads, "queries per head, input of the q RMSNorm"},
    {kQNormOut, "self_attn.q_norm.output", "", Dims::kQHeads, "queries per head after the q RMSNorm"},
    {kKNormIn, "self_attn.k_norm.input", "", Dims::kKvHeads, "keys per head, input of the k RMSNorm"},
    {kKNormOut, "self_attn.k_norm.output", "", Dims::kKvHeads, "keys per head after the k RMSNorm"},
    {kQ, "self_attn.q", "attn.hook_q", Dims::kQHeads, "queries per head, before RoPE"},
    {kK, "self_attn.k", "attn.hook_k", Dims::kKvHeads, "keys per key/value head, before RoPE"},
    {kV, "self_attn.v", "attn.hook_v", Dims::kKvHeads, "values per key/value head"},
    {kQRot, "self_attn.q_rot", "attn.hook_rot_q", Dims::kQHeads, "queries per head after RoPE"},
    {kKRot, "self_attn.k_rot", "attn.hook_rot_k", Dims::kKvHeads, "keys per key/value head after RoPE (what the KV cache holds)"},
    {kScores, "self_attn.attn_scores", "attn.hook_attn_scores", Dims::kScores, "scaled q.k scores plus the mask (dtype minimum where masked), before softmax"},
    {kPattern, "self_attn.attn_pattern", "attn.hook_pattern", Dims::kScores, "attention probabilities"},
    {kZ, "self_attn.z", "attn.hook_z", Dims::kQHeads, "each head's output (pattern times values) before o_proj"},
    {kOIn, "self_attn.o_proj.input", "", Dims::kQProj, "heads' outputs concatenated, input of o_proj"},
    {kOOut, "self_attn.o_proj.output", "", Dims::kResid, "output of o_proj"},
    {kAttnOut, "self_attn.output", "hook_attn_out", Dims::kResid, "self-attention's contribution to the residual stream", "self_attn.input"},
    {kLn2In, "post_attention_layernorm.input", "hook_resid_mid", Dims::kResid, "residual stream after attention, input of the pre-MLP RMSNorm"},
    {kLn2Out, "post_attention_layernorm.output", "ln2.hook_normalized", Dims::kResid, "pre-MLP RMSNorm output"},
    {kMlpIn, "mlp.input", "mlp.hook_input", Dims::kResid, "hidden states given to the MLP"},
    {kGateIn, "mlp.gate_proj.input", "", Dims::kResid, "input of gate_proj"},
    {kGateOut, "mlp.gate_proj.output", "mlp.hook_pre", Dims::kMlp, "gate pre-activation"},
    {kUpIn, "mlp.up_proj.input", "", Dims::kResid, "input of up_proj"},
    {kUpOut, "mlp.up_proj.output", "mlp.hook_pre_linear", Dims::kMlp, "linear (up) branch of the gated MLP"},
    {kDownIn, "mlp.down_proj.input", "mlp.hook_post", Dims::kMlp, "act(gate) * up: the MLP's hidden activations"},
    {kDownOut, "mlp.down_proj.output", "", Dims::kResid, "output of down_proj"},
    {kMlpOut, "mlp.output", "hook_mlp_out", Dims::kResid, "the MLP's contribution to the residual stream", "mlp.input"},
    {kOutput, "output", "hook_resid_post", Dims::kResid, "residual stream leaving the layer", "input"},
};
static_assert(sizeof(kLayerPoints) / sizeof(kLayerPoints[0]) == kPointCount,
              "kLayerPoints lists every point in enum order");

bool IsQkNormPoint(P p) { return p >= kQNormIn && p <= kKNormOut; }

// Qwen3's q/k norms are points only where the model has them.
std::function<bool(int)> KeepPoint(const LlamaOptions& o) {
  return [qk_norm = o.qk_norm](int point) { return qk_norm || !IsQkNormPoint(static_cast<P>(point)); };
}

CatalogueSpec LlamaCatalogue(const LlamaOptions& o) {
  CatalogueSpec spec;
  std::vector<int> index;
  spec.num_layers = o.config.num_layers;
  spec.before = EmbeddingPoints("model.embed_tokens", o.config);
  spec.layer = LayerPoints(kLayerPoints, kPointCount, o.config, KeepPoint(o), index);
  spec.after = HeadPoints("model.norm", "lm_head", o.config);
  return spec;
}

struct LayerWeights {
  at::Tensor input_layernorm, q_proj, k_proj, v_proj, o_proj;  // projections: [out, in]
  at::Tensor q_bias, k_bias, v_bias, o_bias;                   // undefined when absent
  at::Tensor q_norm, k_norm;                                   // [head_dim], Qwen3
  at::Tensor post_attention_layernorm, gate_proj, up_proj, down_proj;
  at::Tensor gate_bias, up_bias, down_bias;
};

struct Weights {
  at::Tensor embed_tokens, norm, lm_head;  // lm_head is embed_tokens when tied
  std::vector<LayerWeights> layers;
};

class LlamaTransformer : public Transformer {
 public:
  LlamaTransformer(const LlamaOptions& o, Weights w, at::Device device, at::ScalarType dtype)
      : Transformer(o.config, LlamaCatalogue(o), device, dtype), o_(o),
        w_(std::move(w)), rotary_(o.rope, device) {
    (void)LayerPoints(kLayerPoints, kPointCount, o.config, KeepPoint(o), index_);
    AddWeights();
  }

  at::Tensor Forward(const PassInputs& in) const override;
  StatusOr<at::Tensor> ApplyModule(const std::string& name, const at::Tensor& x) const override;
  std::vector<std::string> ModuleNames() const override;
  std::vector<std::string> MatmulModules() const override {
    return Filtered(ModuleNames(), {"_proj", "lm_head"});
  }

 private:
  class Pass;
  int Id(int layer, P point) const {
    return index_[point] < 0 ? -1 : catalogue_.LayerId(layer, index_[point]);
  }
  at::Tensor Mlp(const LayerWeights& l, const at::Tensor& x) const {
    at::Tensor act = Activate(o_.activation, at::linear(x, l.gate_proj, l.gate_bias));
    return at::linear(act * at::linear(x, l.up_proj, l.up_bias), l.down_proj, l.down_bias);
  }

  void AddWeights() {
    AddWeight("model.embed_tokens.weight", w_.embed_tokens);
    for (size_t i = 0; i < w_.layers.size(); ++i) {
      const LayerWeights& l = w_.layers[i];
      const std::string p = "model.layers." + std::to_string(i) + ".";
      AddWeight(p + "input_layernorm.weight", l.input_layernorm);
      AddWeight(p + "self_attn.q_proj.weight", l.q_proj, WeightRole::kLinearOutIn);
      AddWeight(p + "self_attn.q_proj.bias", l.q_bias, WeightRole::kLinearBias);
      AddWeight(p + "self_attn.k_proj.weight", l.k_proj, WeightRole::kLinearOutIn);
      AddWeight(p + "self_attn.k_proj.bias", l.k_bias, WeightRole::kLinearBias);
      AddWeight(p + "self_attn.v_proj.weight", l.v_proj, WeightRole::kLinearOutIn);
      AddWeight(p + "self_attn.v_proj.bias", l.v_bias, WeightRole::kLinearBias);
      AddWeight(p + "self_attn.o_proj.weight", l.o_proj, WeightRole::kLinearOutIn);
      AddWeight(p + "self_attn.o_proj.bias", l.o_bias, WeightRole::kLinearBias);
      AddWeight(p + "self_attn.q_norm.weight", l.q_norm);
      AddWeight(p + "self_attn.k_norm.weight", l.k_norm);
      AddWeight(p + "post_attention_layernorm.weight", l.post_attention_layernorm);
      AddWeight(p + "mlp.gate_proj.weight", l.gate_proj, WeightRole::kLinearOutIn);
      AddWeight(p + "mlp.gate_proj.bias", l.gate_bias, WeightRole::kLinearBias);
      AddWeight(p + "mlp.up_proj.weight", l.up_proj, WeightRole::kLinearOutIn);
      AddWeight(p + "mlp.up_proj.bias", l.up_bias, WeightRole::kLinearBias);
      AddWeight(p + "mlp.down_proj.weight", l.down_proj, WeightRole::kLinearOutIn);
      AddWeight(p + "mlp.down_proj.bias", l.down_bias, WeightRole::kLinearBias);
    }
    AddWeight("model.norm.weight", w_.norm);
    AddWeight("lm_head.weight", w_.lm_head, o_.config.tie_word_embeddings ? WeightRole::kOther : WeightRole::kLinearOutIn);
    TlWeightLayout tl;
    tl.embed = "model.embed_tokens", tl.unembed = "lm_head", tl.final_norm = "model.norm";
    tl.layer = "model.layers.", tl.ln1 = "input_layernorm", tl.ln2 = "post_attention_layernorm";
    tl.q = "self_attn.q_proj", tl.k = "self_attn.k_proj", tl.v = "self_attn.v_proj", tl.o = "self_attn.o_proj";
    tl.mlp_in = "mlp.up_proj", tl.mlp_gate = "mlp.gate_proj", tl.mlp_out = "mlp.down_proj";
    SetTlLayout(tl);
  }

  LlamaOptions o_;
  Weights w_;
  Rotary rotary_;
  std::vector<int> index_;  // a point's position in the layer list, -1 when absent
};

// The state of one pass: inputs, hooks and the per-pass tensors shared by every layer.
class LlamaTransformer::Pass {
 public:
  Pass(const LlamaTransformer& m, const PassInputs& in)
      : m_(m), in_(in), hooks_(in), c_(m.config_), where_(m.plan(), in),
        attention_(where_, hooks_, c_.num_heads, c_.num_kv_heads, c_.head_dim,
                   1.0 / std::sqrt(static_cast<double>(c_.head_dim)), m.dtype_),
        rope_(m.rotary_, where_, m.dtype_), batch_(in.ids.size(0)), seq_(in.ids.size(1)) {}

  at::Tensor Run() {
    at::Tensor ids = in_.ids;
    hooks_.At(m_.catalogue_.BeforeId(0), ids);
    at::Tensor x = at::embedding(m_.w_.embed_tokens, ids);
    hooks_.At(m_.catalogue_.BeforeId(1), x);
    for (int layer = 0; layer < c_.num_layers; ++layer) x = Layer(layer, where_.EnterLayer(layer, x));
    return Head(where_.EnterHead(x));
  }

 private:
  at::Tensor Layer(int layer, at::Tensor x) {
    const LayerWeights& w = m_.w_.layers[layer];
    hooks_.CheckInterrupt();
    hooks_.At(Id(layer, kInput), x);
    if (hooks_.Skips(Id(layer, kOutput))) return hooks_.SkippedOutput(Id(layer, kOutput), x);
    at::Tensor h = Norm(layer, kLn1In, x, w.input_layernorm);
    at::Tensor attn = Attention(layer, w, h);
    at::Tensor mid = Sum(layer, attn, kAttnOut, kOOut, x);
    h = Norm(layer, kLn2In, mid, w.post_attention_layernorm);
    at::Tensor mlp = Mlp(layer, w, h);
    at::Tensor out = Sum(layer, mlp, kMlpOut, kDownOut, mid);
    hooks_.At(Id(layer, kOutput), out);
    return out;
  }

  int Id(int layer, P point) const { return m_.Id(layer, point); }

  // RMSNorm with hooks at its input (`in_point`) and output (the next point).
  at::Tensor Norm(int layer, P in_point, const at::Tensor& x, const at::Tensor& weight) {
    return hooks_.Around(Id(layer, in_point), Id(layer, static_cast<P>(in_point + 1)), x,
                         [&](const at::Tensor& t) { return RmsNorm(t, weight, m_.o_.eps); });
  }

  // `fresh + other`, written into `fresh` (a module's output at `point`) when no callback saw
  // it there or at the projection that produced it, and autograd does not track it.
  at::Tensor Sum(int layer, at::Tensor& fresh, P point, P producer, const at::Tensor& other) const {
    if (hooks_.Seen(Id(layer, point)) || hooks_.Seen(Id(layer, producer)) ||
        hooks_.Skips(Id(layer, point)) || fresh.requires_grad()) {
      return other + fresh;
    }
    return fresh.add_(other);
  }

  at::Tensor Project(int layer, P in_point, const at::Tensor& x, const at::Tensor& weight,
                     const at::Tensor& bias) {
    return hooks_.Around(Id(layer, in_point), Id(layer, static_cast<P>(in_point + 1)), x,
                         [&](const at::Tensor& t) { return at::linear(t, weight, bias); });
  }

  at::Tensor Heads(const at::Tensor& x, int64_t heads) const {
    return x.view({batch_, seq_, heads, c_.head_dim});
  }

  at::Tensor Attention(int layer, const LayerWeights& w, at::Tensor h) {
    hooks_.At(Id(layer, kAttnIn), h);
    if (hooks_.Skips(Id(layer, kAttnOut))) return hooks_.SkippedOutput(Id(layer, kAttnOut), h);
    at::Tensor q = Heads(Project(layer, kQIn, h, w.q_proj, w.q_bias), c_.num_heads);
    at::Tensor k = Heads(Project(layer, kKIn, h, w.k_proj, w.k_bias), c_.num_kv_heads);
    at::Tensor v = Heads(Project(layer, kVIn, h, w.v_proj, w.v_bias), c_.num_kv_heads);
    if (m_.o_.qk_norm) {
      q = Norm(layer, kQNormIn, q, w.q_norm);
      k = Norm(layer, kKNormIn, k, w.k_norm);
    }
    hooks_.At(Id(layer, kQ), q);
    hooks_.At(Id(layer, kK), k);
    hooks_.At(Id(layer, kV), v);
    at::Tensor q_rot = m_.rotary_.Apply(q, rope_.Get());
    at::Tensor k_rot = m_.rotary_.Apply(k, rope_.Get());
    hooks_.At(Id(layer, kQRot), q_rot);
    hooks_.At(Id(layer, kKRot), k_rot);
    const AttentionPoints points{Id(layer, kScores), Id(layer, kPattern), Id(layer, kZ)};
    at::Tensor z = attention_.Attend(layer, points, q_rot, k_rot, v, m_.o_.windows[layer]);
    at::Tensor o_in = z.reshape({batch_, seq_, c_.num_heads * c_.head_dim});
    at::Tensor out = Project(layer, kOIn, o_in, w.o_proj, w.o_bias);
    hooks_.At(Id(layer, kAttnOut), out);
    return out;
  }

  at::Tensor Mlp(int layer, const LayerWeights& w, at::Tensor h) {
    hooks_.At(Id(layer, kMlpIn), h);
    if (hooks_.Skips(Id(layer, kMlpOut))) return hooks_.SkippedOutput(Id(layer, kMlpOut), h);
    at::Tensor gate = Project(layer, kGateIn, h, w.gate_proj, w.gate_bias);
    at::Tensor up = Project(layer, kUpIn, h, w.up_proj, w.up_bias);
    const bool in_place = m_.o_.activation == "silu" && !hooks_.Seen(Id(layer, kGateOut)) &&
                          !gate.requires_grad();
    at::Tensor act = in_place ? at::silu_(gate).mul_(up) : Activate(m_.o_.activation, gate) * up;
    at::Tensor out = Project(layer, kDownIn, act, w.down_proj, w.down_bias);
    hooks_.At(Id(layer, kMlpOut), out);
    return out;
  }

  at::Tensor Head(const at::Tensor& x) {
    auto norm = [this](const at::Tensor& t) { return RmsNorm(t, m_.w_.norm, m_.o_.eps); };
    return Unembed(hooks_, m_.catalogue_, in_, x, norm, m_.w_.lm_head);
  }

  const LlamaTransformer& m_;
  const PassInputs& in_;
  PassHooks hooks_;
  const ModelConfig& c_;
  PassPlacement where_;
  AttentionCore attention_;
  PassRope rope_;
  int64_t batch_, seq_;
};

at::Tensor LlamaTransformer::Forward(const PassInputs& in) const {
  Pass pass(*this, in);
  return pass.Run();
}

std::vector<std::string> LlamaTransformer::ModuleNames() const {
  std::vector<std::string> per_layer = {"input_layernorm", "self_attn.q_proj", "self_attn.k_proj",
                                        "self_attn.v_proj", "self_attn.o_proj",
                                        "post_attention_layernorm", "mlp", "mlp.gate_proj",
                                        "mlp.up_proj", "mlp.down_proj"};
  if (o_.qk_norm) per_layer.insert(per_layer.begin() + 4, {"self_attn.q_norm", "self_attn.k_norm"});
  return LayerModuleNames({"model.embed_tokens"}, "model.layers.", config_.num_layers, per_layer,
                          {"model.norm", "lm_head"});
}

StatusOr<at::Tensor> LlamaTransformer::ApplyModule(const std::string& name, const at::Tensor& x) const {
  if (name == "model.embed_tokens") return at::embedding(w_.embed_tokens, x.to(at::kLong));
  const at::Tensor in = x.to(dtype_);
  if (name == "model.norm") return RmsNorm(in, w_.norm, o_.eps);
  if (name == "lm_head") return at::linear(in, w_.lm_head);
  auto [layer, module] = SplitLayerModule(name, "model.layers.", config_.num_layers);
  if (layer >= 0) {
    const LayerWeights& w = w_.layers[layer];
    if (module == "input_layernorm") return RmsNorm(in, w.input_layernorm, o_.eps);
    if (module == "post_attention_layernorm") return RmsNorm(in, w.post_attention_layernorm, o_.eps);
    if (module == "mlp") return Mlp(w, in);
    if (o_.qk_norm && module == "self_attn.q_norm") return RmsNorm(in, w.q_norm, o_.eps);
    if (o_.qk_norm && module == "self_attn.k_norm") return RmsNorm(in, w.k_norm, o_.eps);
    const std::map<std::string, std::pair<const at::Tensor*, const at::Tensor*>> linear = {
        {"self_attn.q_proj", {&w.q_proj, &w.q_bias}}, {"self_attn.k_proj", {&w.k_proj, &w.k_bias}},
        {"self_attn.v_proj", {&w.v_proj, &w.v_bias}}, {"self_attn.o_proj", {&w.o_proj, &w.o_bias}},
        {"mlp.gate_proj", {&w.gate_proj, &w.gate_bias}}, {"mlp.up_proj", {&w.up_proj, &w.up_bias}},
        {"mlp.down_proj", {&w.down_proj, &w.down_bias}}};
    auto it = linear.find(module);
    if (it != linear.end()) return at::linear(in, *it->second.first, *it->second.second);
  }
  return NotFound("no callable module '" + name + "'; callable: model.embed_tokens, model.norm, "
                  "lm_head, and per layer model.layers.N.{input_layernorm, post_attention_layernorm, "
                  "mlp, self_attn.{q,k,v,o}_proj, mlp.{gate,up,down}_proj" +
                  std::string(o_.qk_norm ? ", self_attn.{q,k}_norm}" : "}"));
}

// ---- loading ----

// Hugging Face name -> GGUF name, e.g. model.layers.3.mlp.up_proj.weight -> blk.3.ffn_up.weight.
std::string GgufName(const std::string& hf) {
  static const std::map<std::string, std::string> kGlobal = {
      {"model.embed_tokens.weight", "token_embd.weight"},
      {"model.norm.weight", "output_norm.weight"},
      {"lm_head.weight", "output.weight"}};
  static const std::map<std::string, std::string> kLayer = {
      {"input_layernorm", "attn_norm"}, {"self_attn.q_proj", "attn_q"},
      {"self_attn.k_proj", "attn_k"},   {"self_attn.v_proj", "attn_v"},
      {"self_attn.o_proj", "attn_output"}, {"self_attn.q_norm", "attn_q_norm"},
      {"self_attn.k_norm", "attn_k_norm"}, {"post_attention_layernorm", "ffn_norm"},
      {"mlp.gate_proj", "ffn_gate"}, {"mlp.up_proj", "ffn_up"}, {"mlp.down_proj", "ffn_down"}};
  auto global = kGlobal.find(hf);
  if (global != kGlobal.end()) return global->second;
  auto [layer, rest] = SplitLayerModule(hf, "model.layers.", int64_t{1} << 40);
  const size_t dot = rest.rfind('.');  // module . weight|bias
  if (layer < 0 || dot == std::string::npos) return hf;
  auto local = kLayer.find(rest.substr(0, dot));
  if (local == kLayer.end()) return hf;
  return "blk." + std::to_string(layer) + "." + local->second + rest.substr(dot);
}

// Undoes llama.cpp's interleaving of Q/K rows (the inverse of convert_hf_to_gguf's permute).
TensorSource::Reorder Unpermute(int64_t heads) {
  return [heads](const at::Tensor& w) {
    const int64_t rows = w.size(0);
    return w.view({heads, rows / heads / 2, 2, w.size(1)}).transpose(1, 2).reshape(w.sizes());
  };
}

Status ReadLayer(const LlamaOptions& o, WeightReader& r, int64_t i, LayerWeights& l) {
  const ModelConfig& c = o.config;
  const int64_t d = c.hidden_size, q = c.num_heads * c.head_dim, kv = c.num_kv_heads * c.head_dim;
  const int64_t m = c.intermediate_size;
  const std::string p = "model.layers." + std::to_string(i) + ".";
  const bool permuted = o.gguf_permuted_qk;
  GLASSBOX_RETURN_IF_ERROR(r.Get(p + "input_layernorm.weight", {d}, l.input_layernorm));
  GLASSBOX_RETURN_IF_ERROR(r.Get(p + "self_attn.q_proj.weight", {q, d}, l.q_proj, permuted ? Unpermute(c.num_heads) : nullptr));
  GLASSBOX_RETURN_IF_ERROR(r.Get(p + "self_attn.k_proj.weight", {kv, d}, l.k_proj, permuted ? Unpermute(c.num_kv_heads) : nullptr));
  GLASSBOX_RETURN_IF_ERROR(r.Get(p + "self_attn.v_proj.weight", {kv, d}, l.v_proj));
  GLASSBOX_RETURN_IF_ERROR(r.Get(p + "self_attn.o_proj.weight", {d, q}, l.o_proj));
  GLASSBOX_RETURN_IF_ERROR(r.Optional(o.qkv_bias, p + "self_attn.q_proj.bias", {q}, l.q_bias));
  GLASSBOX_RETURN_IF_ERROR(r.Optional(o.qkv_bias, p + "self_attn.k_proj.bias", {kv}, l.k_bias));
  GLASSBOX_RETURN_IF_ERROR(r.Optional(o.qkv_bias, p + "self_attn.v_proj.bias", {kv}, l.v_bias));
  GLASSBOX_RETURN_IF_ERROR(r.Optional(o.o_bias, p + "self_attn.o_proj.bias", {d}, l.o_bias));
  if (o.qk_norm) {
    GLASSBOX_RETURN_IF_ERROR(r.Get(p + "self_attn.q_norm.weight", {c.head_dim}, l.q_norm));
    GLASSBOX_RETURN_IF_ERROR(r.Get(p + "self_attn.k_norm.weight", {c.head_dim}, l.k_norm));
  }
  GLASSBOX_RETURN_IF_ERROR(r.Get(p + "post_attention_layernorm.weight", {d}, l.post_attention_layernorm));
  GLASSBOX_RETURN_IF_ERROR(r.Get(p + "mlp.gate_proj.weight", {m, d}, l.gate_proj));
  GLASSBOX_RETURN_IF_ERROR(r.Get(p + "mlp.up_proj.weight", {m, d}, l.up_proj));
  GLASSBOX_RETURN_IF_ERROR(r.Get(p + "mlp.down_proj.weight", {d, m}, l.down_proj));
  GLASSBOX_RETURN_IF_ERROR(r.Optional(o.mlp_bias, p + "mlp.gate_proj.bias", {m}, l.gate_bias));
  GLASSBOX_RETURN_IF_ERROR(r.Optional(o.mlp_bias, p + "mlp.up_proj.bias", {m}, l.up_bias));
  return r.Optional(o.mlp_bias, p + "mlp.down_proj.bias", {d}, l.down_bias);
}

Status ReadWeights(const LlamaOptions& o, TensorSource& tensors, bool gguf, Weights& w) {
  const ModelConfig& c = o.config;
  WeightReader r(tensors, gguf ? WeightReader::Rename(GgufName) : nullptr);
  GLASSBOX_RETURN_IF_ERROR(r.Get("model.embed_tokens.weight", {c.vocab_size, c.hidden_size}, w.embed_tokens));
  w.layers.resize(c.num_layers);
  for (int64_t i = 0; i < c.num_layers; ++i) {
    tensors.PlaceLayer(i);
    GLASSBOX_RETURN_IF_ERROR(ReadLayer(o, r, i, w.layers[i]));
  }
  tensors.PlaceHead(c.tie_word_embeddings);
  GLASSBOX_RETURN_IF_ERROR(r.Get("model.norm.weight", {c.hidden_size}, w.norm));
  if (c.tie_word_embeddings) {
    w.lm_head = w.embed_tokens;
    return Status::Ok();
  }
  return r.Get("lm_head.weight", {c.vocab_size, c.hidden_size}, w.lm_head);
}

StatusOr<LlamaOptions> LlamaHf(const CheckpointInfo& info) {
  LlamaOptions o;
  const std::string model_type = info.hf_config->value("model_type", "");
  o.family = model_type;
  HfConfig config(*info.hf_config, info.path + "/config.json", model_type);
  ReadLlamaCommon(config, o);
  o.qkv_bias = o.o_bias = config.Bool("attention_bias", false);
  o.mlp_bias = config.Bool("mlp_bias", false);
  config.Ignore({"pretraining_tp"});  // splits matmuls in training; same values
  if (model_type == "mistral") {
    ReadWindows(config, o, /*all_sliding=*/true);
  } else {
    o.windows.assign(o.config.num_layers, 0);
  }
  GLASSBOX_RETURN_IF_ERROR(config.Finish());
  return o;
}

StatusOr<LlamaOptions> LlamaGguf(const CheckpointInfo& info) {
  LlamaOptions o;
  GLASSBOX_RETURN_IF_ERROR(ReadLlamaGguf(*info.gguf, "llama", o));
  o.gguf_permuted_qk = true;
  o.qkv_bias = info.gguf->FindTensor("blk.0.attn_q.bias") != nullptr;
  o.o_bias = info.gguf->FindTensor("blk.0.attn_output.bias") != nullptr;
  o.mlp_bias = info.gguf->FindTensor("blk.0.ffn_up.bias") != nullptr;
  return o;
}

}  // namespace

void ReadLlamaCommon(HfConfig& config, LlamaOptions& o) {
  ModelConfig& c = o.config;
  c.architecture = o.family;
  c.vocab_size = config.Int("vocab_size");
  c.hidden_size = config.Int("hidden_size");
  c.intermediate_size = config.Int("intermediate_size");
  c.num_layers = config.Int("num_hidden_layers");
  c.num_heads = config.Int("num_attention_heads");
  c.num_kv_heads = config.Int("num_key_value_heads", c.num_heads);
  c.head_dim = config.Int("head_dim", c.num_heads > 0 ? c.hidden_size / c.num_heads : 0);
  c.max_position_embeddings = config.Int("max_position_embeddings", 2048);
  c.tie_word_embeddings = config.Bool("tie_word_embeddings", false);
  const nlohmann::json& j = config.Json("bos_token_id");
  c.bos_id = j.is_number_integer() ? j.get<int64_t>() : -1;
  const nlohmann::json& e = config.Json("eos_token_id");
  c.eos_id = e.is_number_integer() ? e.get<int64_t>() : -1;
  o.eps = config.Float("rms_norm_eps", 1e-6);
  o.rope = ReadRope(config, c.head_dim, c.head_dim, 10000.0);
  o.activation = config.String("hidden_act", "silu");
  if (o.activation != "silu") config.Refuse("hidden_act", "the gated MLP is implemented with silu only");
}

void ReadWindows(HfConfig& config, LlamaOptions& o, bool all_sliding) {
  const int64_t layers = o.config.num_layers;
  const int64_t window = config.Int("sliding_window", 0);
  o.windows.assign(std::max<int64_t>(layers, 0), 0);
  const nlohmann::json& types = config.Json("layer_types");
  if (types.is_null()) {
    if (all_sliding) o.windows.assign(o.windows.size(), window);
    return;
  }
  if (!types.is_array() || static_cast<int64_t>(types.size()) != layers) {
    config.Refuse("layer_types", "expected one entry per layer");
    return;
  }
  for (int64_t i = 0; i < layers; ++i) {
    const std::string type = types[i].is_string() ? types[i].get<std::string>() : "";
    if (type == "sliding_attention") {
      o.windows[i] = window;
      if (window <= 0) config.Refuse("sliding_window", "sliding_attention layers need a positive window");
    } else if (type != "full_attention") {
      config.Refuse("layer_types", "layer " + std::to_string(i) + " is '" + type +
                                       "' (full_attention and sliding_attention are implemented)");
    }
  }
}

Status ReadLlamaGguf(const GgufFile& f, const std::string& arch, LlamaOptions& o) {
  GLASSBOX_RETURN_IF_ERROR(CheckGgufKeys(
      f, arch, {"block_count", "embedding_length", "feed_forward_length", "attention.head_count",
                "attention.head_count_kv", "attention.key_length", "attention.value_length",
                "rope.dimension_count", "rope.freq_base", "attention.layer_norm_rms_epsilon",
                "context_length", "vocab_size"}));
  ModelConfig& c = o.config;
  GLASSBOX_RETURN_IF_ERROR(ReadGgufSizes(f, arch, c));
  o.family = arch;
  const std::string a = arch + ".";
  if (!f.GetInt(a + "attention.key_length").ok()) c.head_dim = f.GetInt(a + "rope.dimension_count").value_or(c.head_dim);
  if (c.head_dim != f.GetInt(a + "rope.dimension_count").value_or(c.head_dim)) {
    return Unimplemented(f.path() + ": rotary and head sizes differ; not implemented");
  }
  o.rope.head_dim = o.rope.rotary_dims = c.head_dim;
  o.rope.theta = f.GetFloat(a + "rope.freq_base").value_or(10000.0);
  o.eps = f.GetFloat(a + "attention.layer_norm_rms_epsilon").value_or(1e-5);
  o.windows.assign(std::max<int64_t>(c.num_layers, 0), 0);
  return ValidateSizes(f.path(), c, /*rotary=*/true);
}

StatusOr<std::unique_ptr<Transformer>> LoadLlamaStyle(const LlamaOptions& o,
                                                      const CheckpointInfo& info,
                                                      TensorSource& tensors) {
  GLASSBOX_RETURN_IF_ERROR(ValidateSizes(info.path, o.config, /*rotary=*/true));
  Weights w;
  GLASSBOX_RETURN_IF_ERROR(ReadWeights(o, tensors, info.gguf != nullptr, w));
  return std::unique_ptr<Transformer>(new LlamaTransformer(o, std::move(w), info.device, info.dtype));
}

FamilyEntry LlamaFamily() {
  FamilyEntry entry;
  entry.name = "llama";
  entry.hf_model_types = {"llama", "mistral"};
  entry.gguf_architectures = {"llama"};
  entry.load = [](const CheckpointInfo& info, TensorSource& tensors) -> StatusOr<std::unique_ptr<Transformer>> {
    StatusOr<LlamaOptions> o = info.gguf ? LlamaGguf(info) : LlamaHf(info);
    if (!o.ok()) return o.status();
    return LoadLlamaStyle(*o, info, tensors);
  };
  return entry;
}

}  // namespace glassbox
