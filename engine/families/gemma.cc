// The Gemma family: Gemma 3 (Gemma3ForCausalLM, model_type gemma3_text) and Gemma 2
// (Gemma2ForCausalLM), from Hugging Face directories and llama.cpp's `gemma3` / `gemma2`
// GGUF files. Embeddings scaled by sqrt(d); RMSNorm computing x * (1 + w) in float32 (GGUF
// files store w + 1, taken back to w at load as transformers does, so module calls and the
// catalogue behave as transformers' modules); norms before and after attention and MLP;
// per-head q/k norms (Gemma 3); GELU-tanh gated MLP; local sliding-window layers and global
// layers, each with its own RoPE base; attention and final-logit soft-capping (Gemma 2);
// tied unembedding. Follows transformers' modeling_gemma3 / modeling_gemma2 operation for
// operation, with hook points under their module paths.
#include <ATen/TensorOperators.h>
#include <ATen/ops/embedding.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/scalar_tensor.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <iterator>
#include <map>

#include "engine/family.h"
#include "engine/gguf.h"
#include "engine/layers.h"

namespace glassbox {
namespace {

// Hook points inside one decoder layer, in forward order.
enum P : int {
  kInput, kLn1In, kLn1Out, kAttnIn, kQIn, kQOut, kKIn, kKOut, kVIn, kVOut, kQNormIn, kQNormOut,
  kKNormIn, kKNormOut, kQ, kK, kV, kQRot, kKRot, kScores, kPattern, kZ, kOIn, kOOut, kAttnOut,
  kPostAttnIn, kPostAttnOut, kPreFfIn, kPreFfOut, kMlpIn, kGateIn, kGateOut, kUpIn, kUpOut,
  kDownIn, kDownOut, kMlpOut, kPostFfIn, kPostFfOut, kOutput, kPointCount
};

const PointRow kLayerPoints[] = {
    {kInput, "input", "hook_resid_pre", Dims::kResid, "residual stream entering the layer"},
    {kLn1In, "input_layernorm.input", "ln1.hook_input", Dims::kResid, "input of the pre-attention RMSNorm"},
    {kLn1Out, "input_layernorm.output", "ln1.hook_normalized", Dims::kResid, "pre-attention RMSNorm output, x * (1 + w)"},
    {kAttnIn, "self_attn.input", "attn.hook_input", Dims::kResid, "hidden states given to self-attention"},
    {kQIn, "self_attn.q_proj.input", "", Dims::kResid, "input of q_proj"},
    {kQOut, "self_attn.q_proj.output", "", Dims::kQProj, "queries, all heads concatenated"},
    {kKIn, "self_attn.k_proj.input", "", Dims::kResid, "input of k_proj"},
    {kKOut, "self_attn.k_proj.output", "", Dims::kKvProj, "keys, all key/value heads concatenated"},
    {kVIn, "self_attn.v_proj.input", "", Dims::kResid, "input of v_proj"},
    {kVOut, "self_attn.v_proj.output", "", Dims::kKvProj, "values, all key/value heads concatenated"},
    {kQNormIn, "self_attn.q_norm.input", "", Dims::kQHeads, "queries per head, input of the q RMSNorm"},
    {kQNormOut, "self_attn.q_norm.output", "", Dims::kQHeads, "queries per head after the q RMSNorm"},
    {kKNormIn, "self_attn.k_norm.input", "", Dims::kKvHeads, "keys per head, input of the k RMSNorm"},
    {kKNormOut, "self_attn.k_norm.output", "", Dims::kKvHeads, "keys per head after the k RMSNorm"},
    {kQ, "self_attn.q", "attn.hook_q", Dims::kQHeads, "queries per head, before RoPE"},
    {kK, "self_attn.k", "attn.hook_k", Dims::kKvHeads, "keys per key/value head, before RoPE"},
    {kV, "self_attn.v", "attn.hook_v", Dims::kKvHeads, "values per key/value head"},
    {kQRot, "self_attn.q_rot", "attn.hook_rot_q", Dims::kQHeads, "queries per head after RoPE (this layer's base)"},
    {kKRot, "self_attn.k_rot", "attn.hook_rot_k", Dims::kKvHeads, "keys per key/value head after RoPE (what the KV cache holds)"},
    {kScores, "self_attn.attn_scores", "attn.hook_attn_scores", Dims::kScores, "q.k scaled by query_pre_attn_scalar^-0.5, soft-capped where configured, plus the mask (dtype minimum where masked, sliding window on local layers)"},
    {kPattern, "self_attn.attn_pattern", "attn.hook_pattern", Dims::kScores, "attention probabilities"},
    {kZ, "self_attn.z", "attn.hook_z", Dims::kQHeads, "each head's output (pattern times values) before o_proj"},
    {kOIn, "self_attn.o_proj.input", "", Dims::kQProj, "heads' outputs concatenated, input of o_proj"},
    {kOOut, "self_attn.o_proj.output", "", Dims::kResid, "output of o_proj"},
    {kAttnOut, "self_attn.output", "", Dims::kResid, "self-attention's output, before its post-norm", "self_attn.input"},
    {kPostAttnIn, "post_attention_layernorm.input", "ln1_post.hook_input", Dims::kResid, "input of the post-attention RMSNorm"},
    {kPostAttnOut, "post_attention_layernorm.output", "hook_attn_out|ln1_post.hook_normalized", Dims::kResid, "attention's contribution to the residual stream (post-normed)"},
    {kPreFfIn, "pre_feedforward_layernorm.input", "hook_resid_mid|ln2.hook_input", Dims::kResid, "residual stream after attention, input of the pre-MLP RMSNorm"},
    {kPreFfOut, "pre_feedforward_layernorm.output", "ln2.hook_normalized", Dims::kResid, "pre-MLP RMSNorm output"},
    {kMlpIn, "mlp.input", "mlp.hook_input", Dims::kResid, "hidden states given to the MLP"},
    {kGateIn, "mlp.gate_proj.input", "", Dims::kResid, "input of gate_proj"},
    {kGateOut, "mlp.gate_proj.output", "mlp.hook_pre", Dims::kMlp, "gate pre-activation"},
    {kUpIn, "mlp.up_proj.input", "", Dims::kResid, "input of up_proj"},
    {kUpOut, "mlp.up_proj.output", "mlp.hook_pre_linear", Dims::kMlp, "linear (up) branch of the gated MLP"},
    {kDownIn, "mlp.down_proj.input", "mlp.hook_post", Dims::kMlp, "gelu_tanh(gate) * up: the MLP's hidden activations"},
    {kDownOut, "mlp.down_proj.output", "", Dims::kResid, "output of down_proj"},
    {kMlpOut, "mlp.output", "", Dims::kResid, "the MLP's output, before its post-norm", "mlp.input"},
    {kPostFfIn, "post_feedforward_layernorm.input", "ln2_post.hook_input", Dims::kResid, "input of the post-MLP RMSNorm"},
    {kPostFfOut, "post_feedforward_layernorm.output", "hook_mlp_out|ln2_post.hook_normalized", Dims::kResid, "the MLP's contribution to the residual stream (post-normed)"},
    {kOutput, "output", "hook_resid_post", Dims::kResid, "residual stream leaving the layer", "input"},
};
static_assert(sizeof(kLayerPoints) / sizeof(kLayerPoints[0]) == kPointCount, "every point in enum order");

bool IsQkNormPoint(P p) { return p >= kQNormIn && p <= kKNormOut; }

struct Options {
  std::string family;  // "gemma3_text" or "gemma2"
  ModelConfig config;
  double eps = 1e-6;
  bool qk_norm = true;
  double query_pre_attn_scalar = 256;
  double attn_softcap = 0, final_softcap = 0;  // 0: off
  RopeSpec local_rope, global_rope;
  int64_t sliding_window = 0;
  std::vector<bool> sliding;  // per layer
  std::string activation = "gelu_pytorch_tanh";
};

// Gemma 3's q/k norms are points only where the model has them.
std::function<bool(int)> KeepPoint(const Options& o) {
  return [qk_norm = o.qk_norm](int point) { return qk_norm || !IsQkNormPoint(static_cast<P>(point)); };
}

CatalogueSpec GemmaCatalogue(const Options& o) {
  CatalogueSpec spec;
  std::vector<int> index;
  spec.num_layers = o.config.num_layers;
  spec.before = EmbeddingPoints("model.embed_tokens", o.config);
  spec.before[1].meaning = "token embeddings, scaled by sqrt(hidden_size)";
  spec.layer = LayerPoints(kLayerPoints, kPointCount, o.config, KeepPoint(o), index);
  spec.after = HeadPoints("model.norm", "lm_head", o.config,
                          o.final_softcap > 0 ? " (before the final soft-capping)" : "");
  return spec;
}

struct LayerWeights {
  at::Tensor input_layernorm, q_proj, k_proj, v_proj, o_proj, q_norm, k_norm;
  at::Tensor post_attention_layernorm, pre_feedforward_layernorm, post_feedforward_layernorm;
  at::Tensor gate_proj, up_proj, down_proj;
};

struct Weights {
  at::Tensor embed_tokens, norm;
  std::vector<LayerWeights> layers;
};

class GemmaTransformer : public Transformer {
 public:
  GemmaTransformer(const Options& o, Weights w, at::Device device, at::ScalarType dtype)
      : Transformer(o.config, GemmaCatalogue(o), device, dtype), o_(o), w_(std::move(w)),
        local_rope_(o.local_rope, device), global_rope_(o.global_rope, device),
        embed_scale_(at::scalar_tensor(std::sqrt(static_cast<double>(o.config.hidden_size)),
                                       at::TensorOptions().dtype(at::kFloat).device(device)).to(dtype)) {
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
  int Id(int layer, P point) const { return index_[point] < 0 ? -1 : catalogue_.LayerId(layer, index_[point]); }
  at::Tensor Norm(const at::Tensor& x, const at::Tensor& w) const { return GemmaRmsNorm(x, w, o_.eps); }
  at::Tensor Mlp(const LayerWeights& l, const at::Tensor& x) const {
    at::Tensor act = Activate(o_.activation, at::linear(x, l.gate_proj)) * at::linear(x, l.up_proj);
    return at::linear(act, l.down_proj);
  }

  void AddWeights() {
    AddWeight("model.embed_tokens.weight", w_.embed_tokens);
    for (size_t i = 0; i < w_.layers.size(); ++i) {
      const LayerWeights& l = w_.layers[i];
      const std::string p = "model.layers." + std::to_string(i) + ".";
      AddWeight(p + "input_layernorm.weight", l.input_layernorm);
      AddWeight(p + "self_attn.q_proj.weight", l.q_proj, WeightRole::kLinearOutIn);
      AddWeight(p + "self_attn.k_proj.weight", l.k_proj, WeightRole::kLinearOutIn);
      AddWeight(p + "self_attn.v_proj.weight", l.v_proj, WeightRole::kLinearOutIn);
      AddWeight(p + "self_attn.o_proj.weight", l.o_proj, WeightRole::kLinearOutIn);
      AddWeight(p + "self_attn.q_norm.weight", l.q_norm);
      AddWeight(p + "self_attn.k_norm.weight", l.k_norm);
      AddWeight(p + "post_attention_layernorm.weight", l.post_attention_layernorm);
      AddWeight(p + "pre_feedforward_layernorm.weight", l.pre_feedforward_layernorm);
      AddWeight(p + "mlp.gate_proj.weight", l.gate_proj, WeightRole::kLinearOutIn);
      AddWeight(p + "mlp.up_proj.weight", l.up_proj, WeightRole::kLinearOutIn);
      AddWeight(p + "mlp.down_proj.weight", l.down_proj, WeightRole::kLinearOutIn);
      AddWeight(p + "post_feedforward_layernorm.weight", l.post_feedforward_layernorm);
    }
    AddWeight("model.norm.weight", w_.norm);
    AddWeight("lm_head.weight", w_.embed_tokens);  // tied
    TlWeightLayout tl;
    tl.embed = "model.embed_tokens", tl.unembed = "lm_head", tl.final_norm = "model.norm";
    tl.layer = "model.layers.", tl.ln1 = "input_layernorm", tl.ln2 = "pre_feedforward_layernorm";
    tl.q = "self_attn.q_proj", tl.k = "self_attn.k_proj", tl.v = "self_attn.v_proj", tl.o = "self_attn.o_proj";
    tl.mlp_in = "mlp.up_proj", tl.mlp_gate = "mlp.gate_proj", tl.mlp_out = "mlp.down_proj";
    tl.norm_weight_offset = 1;  // TransformerLens holds Gemma's norm weights as 1 + w
    SetTlLayout(tl);
  }

  Options o_;
  Weights w_;
  Rotary local_rope_, global_rope_;
  at::Tensor embed_scale_;  // sqrt(hidden_size) in the model dtype, as transformers rounds it
  std::vector<int> index_;  // a point's position in the layer list, -1 when absent
};

// The state of one pass: inputs, hooks and the per-pass tensors shared by every layer.
class GemmaTransformer::Pass {
 public:
  Pass(const GemmaTransformer& m, const PassInputs& in)
      : m_(m), in_(in), hooks_(in), c_(m.config_), where_(m.plan(), in),
        attention_(where_, hooks_, c_.num_heads, c_.num_kv_heads, c_.head_dim,
                   1.0 / std::sqrt(m.o_.query_pre_attn_scalar), m.dtype_, m.o_.attn_softcap),
        local_(m.local_rope_, where_, m.dtype_), global_(m.global_rope_, where_, m.dtype_),
        batch_(in.ids.size(0)), seq_(in.ids.size(1)) {}

  at::Tensor Run() {
    const HookCatalogue& cat = m_.catalogue_;
    at::Tensor ids = in_.ids;
    hooks_.At(cat.BeforeId(0), ids);
    at::Tensor x = at::embedding(m_.w_.embed_tokens, ids) * m_.embed_scale_;
    hooks_.At(cat.BeforeId(1), x);
    for (int layer = 0; layer < c_.num_layers; ++layer) x = Layer(layer, where_.EnterLayer(layer, x));
    return Head(where_.EnterHead(x));
  }

 private:
  int Id(int layer, P point) const { return m_.Id(layer, point); }

  // RMSNorm with hooks at its input (`in_point`) and output (the next point).
  at::Tensor Norm(int layer, P in_point, const at::Tensor& x, const at::Tensor& weight) {
    return hooks_.Around(Id(layer, in_point), Id(layer, static_cast<P>(in_point + 1)), x,
                         [&](const at::Tensor& t) { return m_.Norm(t, weight); });
  }

  at::Tensor Layer(int layer, at::Tensor x) {
    const LayerWeights& w = m_.w_.layers[layer];
    hooks_.CheckInterrupt();
    hooks_.At(Id(layer, kInput), x);
    if (hooks_.Skips(Id(layer, kOutput))) return hooks_.SkippedOutput(Id(layer, kOutput), x);
    at::Tensor h = Norm(layer, kLn1In, x, w.input_layernorm);
    at::Tensor attn = Norm(layer, kPostAttnIn, Attention(layer, w, h), w.post_attention_layernorm);
    at::Tensor mid = x + attn;
    h = Norm(layer, kPreFfIn, mid, w.pre_feedforward_layernorm);
    at::Tensor mlp = Norm(layer, kPostFfIn, Mlp(layer, w, h), w.post_feedforward_layernorm);
    at::Tensor out = mid + mlp;
    hooks_.At(Id(layer, kOutput), out);
    return out;
  }

  at::Tensor Project(int layer, P in_point, const at::Tensor& x, const at::Tensor& weight) {
    return hooks_.Around(Id(layer, in_point), Id(layer, static_cast<P>(in_point + 1)), x,
                         [&](const at::Tensor& t) { return at::linear(t, weight); });
  }

  at::Tensor Attention(int layer, const LayerWeights& w, at::Tensor h) {
    hooks_.At(Id(layer, kAttnIn), h);
    if (hooks_.Skips(Id(layer, kAttnOut))) return hooks_.SkippedOutput(Id(layer, kAttnOut), h);
    at::Tensor q = Project(layer, kQIn, h, w.q_proj).view({batch_, seq_, c_.num_heads, c_.head_dim});
    at::Tensor k = Project(layer, kKIn, h, w.k_proj).view({batch_, seq_, c_.num_kv_heads, c_.head_dim});
    at::Tensor v = Project(layer, kVIn, h, w.v_proj).view({batch_, seq_, c_.num_kv_heads, c_.head_dim});
    if (m_.o_.qk_norm) {
      q = Norm(layer, kQNormIn, q, w.q_norm);
      k = Norm(layer, kKNormIn, k, w.k_norm);
    }
    hooks_.At(Id(layer, kQ), q);
    hooks_.At(Id(layer, kK), k);
    hooks_.At(Id(layer, kV), v);
    const bool sliding = m_.o_.sliding[layer];
    const Rotary& rotary = sliding ? m_.local_rope_ : m_.global_rope_;
    const Rotary::Tables& tables = sliding ? local_.Get() : global_.Get();
    at::Tensor q_rot = rotary.Apply(q, tables);
    at::Tensor k_rot = rotary.Apply(k, tables);
    hooks_.At(Id(layer, kQRot), q_rot);
    hooks_.At(Id(layer, kKRot), k_rot);
    const AttentionPoints points{Id(layer, kScores), Id(layer, kPattern), Id(layer, kZ)};
    at::Tensor z = attention_.Attend(layer, points, q_rot, k_rot, v, sliding ? m_.o_.sliding_window : 0);
    at::Tensor out = Project(layer, kOIn, z.reshape({batch_, seq_, c_.num_heads * c_.head_dim}), w.o_proj);
    hooks_.At(Id(layer, kAttnOut), out);
    return out;
  }

  at::Tensor Mlp(int layer, const LayerWeights& w, at::Tensor h) {
    hooks_.At(Id(layer, kMlpIn), h);
    if (hooks_.Skips(Id(layer, kMlpOut))) return hooks_.SkippedOutput(Id(layer, kMlpOut), h);
    at::Tensor gate = Project(layer, kGateIn, h, w.gate_proj);
    at::Tensor up = Project(layer, kUpIn, h, w.up_proj);
    at::Tensor out = Project(layer, kDownIn, Activate(m_.o_.activation, gate) * up, w.down_proj);
    hooks_.At(Id(layer, kMlpOut), out);
    return out;
  }

  at::Tensor Head(const at::Tensor& x) {
    auto norm = [this](const at::Tensor& t) { return m_.Norm(t, m_.w_.norm); };
    at::Tensor logits = Unembed(hooks_, m_.catalogue_, in_, x, norm, m_.w_.embed_tokens);
    return m_.o_.final_softcap > 0 ? SoftCap(logits, m_.o_.final_softcap) : logits;
  }

  const GemmaTransformer& m_;
  const PassInputs& in_;
  PassHooks hooks_;
  const ModelConfig& c_;
  PassPlacement where_;
  AttentionCore attention_;
  PassRope local_, global_;
  int64_t batch_, seq_;
};

at::Tensor GemmaTransformer::Forward(const PassInputs& in) const {
  Pass pass(*this, in);
  return pass.Run();
}

std::vector<std::string> GemmaTransformer::ModuleNames() const {
  std::vector<std::string> per_layer = {
      "input_layernorm", "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
      "self_attn.o_proj", "post_attention_layernorm", "pre_feedforward_layernorm", "mlp",
      "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj", "post_feedforward_layernorm"};
  if (o_.qk_norm) per_layer.insert(per_layer.begin() + 4, {"self_attn.q_norm", "self_attn.k_norm"});
  return LayerModuleNames({"model.embed_tokens"}, "model.layers.", config_.num_layers, per_layer,
                          {"model.norm", "lm_head"});
}

StatusOr<at::Tensor> GemmaTransformer::ApplyModule(const std::string& name, const at::Tensor& x) const {
  if (name == "model.embed_tokens") return at::embedding(w_.embed_tokens, x.to(at::kLong)) * embed_scale_;
  const at::Tensor in = x.to(dtype_);
  if (name == "model.norm") return Norm(in, w_.norm);
  if (name == "lm_head") return at::linear(in, w_.embed_tokens);
  auto [layer, module] = SplitLayerModule(name, "model.layers.", config_.num_layers);
  if (layer >= 0) {
    const LayerWeights& w = w_.layers[layer];
    if (module == "mlp") return Mlp(w, in);
    const std::map<std::string, const at::Tensor*> norms = {
        {"input_layernorm", &w.input_layernorm}, {"post_attention_layernorm", &w.post_attention_layernorm},
        {"pre_feedforward_layernorm", &w.pre_feedforward_layernorm},
        {"post_feedforward_layernorm", &w.post_feedforward_layernorm},
        {"self_attn.q_norm", &w.q_norm}, {"self_attn.k_norm", &w.k_norm}};
    auto norm = norms.find(module);
    if (norm != norms.end() && norm->second->defined()) return Norm(in, *norm->second);
    const std::map<std::string, const at::Tensor*> linear = {
        {"self_attn.q_proj", &w.q_proj}, {"self_attn.k_proj", &w.k_proj}, {"self_attn.v_proj", &w.v_proj},
        {"self_attn.o_proj", &w.o_proj}, {"mlp.gate_proj", &w.gate_proj}, {"mlp.up_proj", &w.up_proj},
        {"mlp.down_proj", &w.down_proj}};
    auto it = linear.find(module);
    if (it != linear.end()) return at::linear(in, *it->second);
  }
  return NotFound("no callable module '" + name + "'; callable: model.embed_tokens, model.norm, "
                  "lm_head, and per layer model.layers.N.{input_layernorm, post_attention_layernorm, "
                  "pre_feedforward_layernorm, post_feedforward_layernorm, mlp, self_attn.{q,k,v,o}_proj, "
                  "mlp.{gate,up,down}_proj" + std::string(o_.qk_norm ? ", self_attn.{q,k}_norm}" : "}"));
}

// ---- loading ----

// Reads one layer type's RoPE: transformers 5 nests rope_parameters per layer type
// ({"full_attention": {...}, "sliding_attention": {...}}); older configs give rope_theta
// (global), rope_local_base_freq (local) and rope_scaling (global only).
RopeSpec GemmaRope(HfConfig& config, const ModelConfig& c, const std::string& layer_type,
                   double default_theta) {
  RopeSpec spec;
  spec.head_dim = spec.rotary_dims = c.head_dim;
  spec.theta = default_theta;
  const nlohmann::json& nested = config.Json("rope_parameters");
  if (nested.is_object() && nested.contains(layer_type)) {
    nlohmann::json one = {{"rope_parameters", nested[layer_type]}};
    HfConfig inner(one, config.path(), "gemma (rope_parameters." + layer_type + ")");
    spec = ReadRope(inner, c.head_dim, c.head_dim, default_theta);
    Status status = inner.Finish();
    if (!status.ok()) config.Refuse("rope_parameters." + layer_type, status.message());
  }
  return spec;
}

StatusOr<Options> ReadConfig(const CheckpointInfo& info) {
  Options o;
  o.family = info.hf_config->value("model_type", "");
  ModelConfig& c = o.config;
  HfConfig config(*info.hf_config, info.path + "/config.json", o.family);
  c.architecture = o.family;
  c.vocab_size = config.Int("vocab_size");
  c.hidden_size = config.Int("hidden_size");
  c.intermediate_size = config.Int("intermediate_size");
  c.num_layers = config.Int("num_hidden_layers");
  c.num_heads = config.Int("num_attention_heads");
  c.num_kv_heads = config.Int("num_key_value_heads", c.num_heads);
  c.head_dim = config.Int("head_dim", c.num_heads > 0 ? c.hidden_size / c.num_heads : 0);
  c.max_position_embeddings = config.Int("max_position_embeddings", 8192);
  c.tie_word_embeddings = config.Bool("tie_word_embeddings", true);
  if (!c.tie_word_embeddings) config.Refuse("tie_word_embeddings", "Gemma's unembedding is the token embedding");
  c.bos_id = config.Int("bos_token_id", -1);
  const nlohmann::json& eos = config.Json("eos_token_id");  // an int or a list (the first stops)
  c.eos_id = eos.is_number_integer() ? eos.get<int64_t>() : eos.is_array() && !eos.empty() && eos[0].is_number_integer() ? eos[0].get<int64_t>() : -1;
  o.eps = config.Float("rms_norm_eps", 1e-6);
  o.qk_norm = o.family == "gemma3_text";
  o.activation = config.String("hidden_activation", config.String("hidden_act", "gelu_pytorch_tanh"));
  if (o.activation != "gelu_pytorch_tanh" && o.activation != "gelu_new") {
    config.Refuse("hidden_activation", "Gemma's MLP is implemented with the tanh GELU only");
  }
  o.query_pre_attn_scalar = config.Float("query_pre_attn_scalar", c.head_dim);
  // transformers applies attention soft-capping in Gemma 2 only (Gemma 3's attention never
  // passes it on), so a Gemma 3 config's value is read without effect, as there.
  const double attn_softcap = config.Float("attn_logit_softcapping", 0.0);
  o.attn_softcap = o.family == "gemma2" ? attn_softcap : 0.0;
  o.final_softcap = config.Float("final_logit_softcapping", 0.0);
  o.sliding_window = config.Int("sliding_window", 4096);
  const double global_theta = config.Float("rope_theta", o.family == "gemma2" ? 10000.0 : 1e6);
  const double local_theta = config.Float("rope_local_base_freq", o.family == "gemma2" ? global_theta : 10000.0);
  o.global_rope = GemmaRope(config, c, "full_attention", global_theta);
  o.local_rope = GemmaRope(config, c, "sliding_attention", local_theta);
  if (!config.Json("rope_parameters").is_object() || !config.Json("rope_parameters").contains("full_attention")) {
    // Older spellings: one rope_scaling (global layers) or a flat rope_parameters.
    o.global_rope = ReadRope(config, c.head_dim, c.head_dim, global_theta);
  }
  const nlohmann::json& types = config.Json("layer_types");
  const int64_t pattern = config.Int("sliding_window_pattern", o.family == "gemma2" ? 2 : 6);
  o.sliding.assign(std::max<int64_t>(c.num_layers, 0), false);
  for (int64_t i = 0; i < c.num_layers; ++i) {
    if (types.is_array() && static_cast<int64_t>(types.size()) == c.num_layers) {
      const std::string type = types[i].is_string() ? types[i].get<std::string>() : "";
      if (type != "sliding_attention" && type != "full_attention") {
        config.Refuse("layer_types", "layer " + std::to_string(i) + " is '" + type + "'");
      }
      o.sliding[i] = type == "sliding_attention";
    } else if (!types.is_null()) {
      config.Refuse("layer_types", "expected one entry per layer");
    } else {
      o.sliding[i] = o.family == "gemma2" ? i % 2 == 0 : (i + 1) % pattern != 0;
    }
  }
  config.Expect("attention_bias", false);
  config.Expect("use_bidirectional_attention", false);
  // How transformers caches, and the pattern layer_types was made from (read above when
  // layer_types is absent).
  config.Ignore({"cache_implementation", "_sliding_window_pattern"});
  GLASSBOX_RETURN_IF_ERROR(config.Finish());
  return o;
}

// Hugging Face name -> GGUF name (llama.cpp's gemma2 / gemma3 tensors).
std::string GgufName(const std::string& hf) {
  static const std::map<std::string, std::string> kLayer = {
      {"input_layernorm", "attn_norm"}, {"self_attn.q_proj", "attn_q"}, {"self_attn.k_proj", "attn_k"},
      {"self_attn.v_proj", "attn_v"}, {"self_attn.o_proj", "attn_output"},
      {"self_attn.q_norm", "attn_q_norm"}, {"self_attn.k_norm", "attn_k_norm"},
      {"post_attention_layernorm", "post_attention_norm"}, {"pre_feedforward_layernorm", "ffn_norm"},
      {"post_feedforward_layernorm", "post_ffw_norm"}, {"mlp.gate_proj", "ffn_gate"},
      {"mlp.up_proj", "ffn_up"}, {"mlp.down_proj", "ffn_down"}};
  if (hf == "model.embed_tokens.weight") return "token_embd.weight";
  if (hf == "model.norm.weight") return "output_norm.weight";
  auto [layer, rest] = SplitLayerModule(hf, "model.layers.", int64_t{1} << 40);
  const size_t dot = rest.rfind('.');
  if (layer < 0 || dot == std::string::npos) return hf;
  auto local = kLayer.find(rest.substr(0, dot));
  return local == kLayer.end() ? hf : "blk." + std::to_string(layer) + "." + local->second + rest.substr(dot);
}

StatusOr<Options> ReadGgufConfig(const GgufFile& f, const std::string& arch) {
  GLASSBOX_RETURN_IF_ERROR(CheckGgufKeys(
      f, arch, {"block_count", "context_length", "embedding_length", "feed_forward_length",
                "attention.head_count", "attention.head_count_kv", "attention.key_length",
                "attention.value_length", "attention.layer_norm_rms_epsilon", "rope.freq_base",
                "attention.sliding_window", "attn_logit_softcapping", "final_logit_softcapping"}));
  const std::string a = arch + ".";
  Options o;
  o.family = arch == "gemma3" ? "gemma3_text" : "gemma2";
  ModelConfig& c = o.config;
  GLASSBOX_RETURN_IF_ERROR(ReadGgufSizes(f, arch, c));
  if (!c.tie_word_embeddings) return Unimplemented(f.path() + ": output.weight: Gemma ties its unembedding");
  o.eps = f.GetFloat(a + "attention.layer_norm_rms_epsilon").value_or(1e-6);
  o.qk_norm = arch == "gemma3";
  // llama.cpp scales queries by 1/sqrt(head_dim) for these models (query_pre_attn_scalar =
  // head_dim), uses a local RoPE base of 10000 and, for Gemma 3, one global layer in six.
  o.query_pre_attn_scalar = static_cast<double>(c.head_dim);
  o.attn_softcap = arch == "gemma2" ? f.GetFloat(a + "attn_logit_softcapping").value_or(0.0) : 0.0;
  o.final_softcap = f.GetFloat(a + "final_logit_softcapping").value_or(0.0);
  o.sliding_window = f.GetInt(a + "attention.sliding_window").value_or(4096);
  o.global_rope.head_dim = o.global_rope.rotary_dims = c.head_dim;
  o.global_rope.theta = f.GetFloat(a + "rope.freq_base").value_or(arch == "gemma3" ? 1e6 : 10000.0);
  o.local_rope = o.global_rope;
  o.local_rope.theta = arch == "gemma3" ? 10000.0 : o.global_rope.theta;
  o.sliding.assign(std::max<int64_t>(c.num_layers, 0), false);
  for (int64_t i = 0; i < c.num_layers; ++i) o.sliding[i] = arch == "gemma3" ? (i + 1) % 6 != 0 : i % 2 == 0;
  return o;
}

Status ReadWeights(const Options& o, TensorSource& tensors, bool gguf, Weights& w) {
  const ModelConfig& c = o.config;
  const int64_t d = c.hidden_size, q = c.num_heads * c.head_dim, kv = c.num_kv_heads * c.head_dim;
  const int64_t m = c.intermediate_size;
  // GGUF files store Gemma's norm weights as w + 1; transformers' loader takes 1 back off.
  const TensorSource::Reorder minus_one = [](const at::Tensor& t) { return t - 1.0; };
  auto get = [&](const std::string& hf, std::vector<int64_t> shape, at::Tensor& out, bool norm = false) -> Status {
    GLASSBOX_ASSIGN_OR_RETURN(out, tensors.Take(gguf ? GgufName(hf) : hf, shape, gguf && norm ? minus_one : nullptr));
    return Status::Ok();
  };
  GLASSBOX_RETURN_IF_ERROR(get("model.embed_tokens.weight", {c.vocab_size, d}, w.embed_tokens));
  w.layers.resize(c.num_layers);
  for (int64_t i = 0; i < c.num_layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    LayerWeights& l = w.layers[i];
    tensors.PlaceLayer(i);
    GLASSBOX_RETURN_IF_ERROR(get(p + "input_layernorm.weight", {d}, l.input_layernorm, true));
    GLASSBOX_RETURN_IF_ERROR(get(p + "self_attn.q_proj.weight", {q, d}, l.q_proj));
    GLASSBOX_RETURN_IF_ERROR(get(p + "self_attn.k_proj.weight", {kv, d}, l.k_proj));
    GLASSBOX_RETURN_IF_ERROR(get(p + "self_attn.v_proj.weight", {kv, d}, l.v_proj));
    GLASSBOX_RETURN_IF_ERROR(get(p + "self_attn.o_proj.weight", {d, q}, l.o_proj));
    if (o.qk_norm) {
      GLASSBOX_RETURN_IF_ERROR(get(p + "self_attn.q_norm.weight", {c.head_dim}, l.q_norm, true));
      GLASSBOX_RETURN_IF_ERROR(get(p + "self_attn.k_norm.weight", {c.head_dim}, l.k_norm, true));
    }
    GLASSBOX_RETURN_IF_ERROR(get(p + "post_attention_layernorm.weight", {d}, l.post_attention_layernorm, true));
    GLASSBOX_RETURN_IF_ERROR(get(p + "pre_feedforward_layernorm.weight", {d}, l.pre_feedforward_layernorm, true));
    GLASSBOX_RETURN_IF_ERROR(get(p + "post_feedforward_layernorm.weight", {d}, l.post_feedforward_layernorm, true));
    GLASSBOX_RETURN_IF_ERROR(get(p + "mlp.gate_proj.weight", {m, d}, l.gate_proj));
    GLASSBOX_RETURN_IF_ERROR(get(p + "mlp.up_proj.weight", {m, d}, l.up_proj));
    GLASSBOX_RETURN_IF_ERROR(get(p + "mlp.down_proj.weight", {d, m}, l.down_proj));
  }
  tensors.PlaceHead(/*tied=*/true);
  return get("model.norm.weight", {d}, w.norm, true);
}

}  // namespace

FamilyEntry GemmaFamily() {
  FamilyEntry entry;
  entry.name = "gemma";
  entry.hf_model_types = {"gemma3_text", "gemma2"};
  entry.gguf_architectures = {"gemma3", "gemma2"};
  entry.load = [](const CheckpointInfo& info, TensorSource& tensors) -> StatusOr<std::unique_ptr<Transformer>> {
    StatusOr<Options> o = info.gguf ? ReadGgufConfig(*info.gguf, *info.gguf->GetString("general.architecture"))
                                    : ReadConfig(info);
    if (!o.ok()) return o.status();
    GLASSBOX_RETURN_IF_ERROR(ValidateSizes(info.path, o->config, /*rotary=*/true));
    Weights w;
    GLASSBOX_RETURN_IF_ERROR(ReadWeights(*o, tensors, info.gguf != nullptr, w));
    return std::unique_ptr<Transformer>(new GemmaTransformer(*o, std::move(w), info.device, info.dtype));
  };
  return entry;
}

}  // namespace glassbox
