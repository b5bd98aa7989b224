// The GPT-NeoX family (GPTNeoXForCausalLM: Pythia, GPT-NeoX-20B): LayerNorm with bias, one
// fused query_key_value projection laid out per head ([q|k|v] for each head), partial
// rotary embeddings, exact-GELU MLP, parallel residual (attention and MLP both read the
// layer input) or sequential, untied unembedding (embed_out). Follows transformers'
// modeling_gpt_neox operation for operation, with hook points under its module paths.
// Loads from Hugging Face directories and from `gptneox` GGUF files (whose fused q/k/v rows
// llama.cpp's converter regroups as all queries, all keys, all values; undone at load).
#include <ATen/TensorOperators.h>
#include <ATen/ops/embedding.h>
#include <ATen/ops/linear.h>

#include <algorithm>
#include <cmath>
#include <iterator>
#include <map>

#include "engine/family.h"
#include "engine/gguf.h"
#include "engine/layers.h"

namespace glassbox {
namespace {

enum P : int {
  kInput, kLn1In, kLn1Out, kAttnIn, kQkvIn, kQkvOut, kQ, kK, kV, kQRot, kKRot, kScores,
  kPattern, kZ, kDenseIn, kDenseOut, kAttnOut, kLn2In, kLn2Out, kMlpIn, kUpIn, kUpOut,
  kDownIn, kDownOut, kMlpOut, kOutput, kPointCount
};

const PointRow kLayerPoints[] = {
    {kInput, "input", "hook_resid_pre", Dims::kResid, "residual stream entering the layer"},
    {kLn1In, "input_layernorm.input", "ln1.hook_input", Dims::kResid, "input of the attention LayerNorm"},
    {kLn1Out, "input_layernorm.output", "ln1.hook_normalized", Dims::kResid, "attention LayerNorm output (with weight and bias)"},
    {kAttnIn, "attention.input", "attn.hook_input", Dims::kResid, "hidden states given to attention"},
    {kQkvIn, "attention.query_key_value.input", "", Dims::kResid, "input of the fused q/k/v projection"},
    {kQkvOut, "attention.query_key_value.output", "", Dims::kQkv, "queries, keys and values, interleaved per head"},
    {kQ, "attention.q", "attn.hook_q", Dims::kQHeads, "queries per head, before the rotary embedding"},
    {kK, "attention.k", "attn.hook_k", Dims::kQHeads, "keys per head, before the rotary embedding"},
    {kV, "attention.v", "attn.hook_v", Dims::kQHeads, "values per head"},
    {kQRot, "attention.q_rot", "attn.hook_rot_q", Dims::kQHeads, "queries per head after the (partial) rotary embedding"},
    {kKRot, "attention.k_rot", "attn.hook_rot_k", Dims::kQHeads, "keys per head after the (partial) rotary embedding (what the KV cache holds)"},
    {kScores, "attention.attn_scores", "attn.hook_attn_scores", Dims::kScores, "scaled q.k scores plus the mask (dtype minimum where masked), before softmax"},
    {kPattern, "attention.attn_pattern", "attn.hook_pattern", Dims::kScores, "attention probabilities"},
    {kZ, "attention.z", "attn.hook_z", Dims::kQHeads, "each head's output (pattern times values) before dense"},
    {kDenseIn, "attention.dense.input", "", Dims::kResid, "heads' outputs concatenated, input of dense"},
    {kDenseOut, "attention.dense.output", "", Dims::kResid, "output of dense"},
    {kAttnOut, "attention.output", "hook_attn_out", Dims::kResid, "attention's contribution to the residual stream", "attention.input"},
    {kLn2In, "post_attention_layernorm.input", "ln2.hook_input", Dims::kResid, "input of the MLP LayerNorm (the layer input with a parallel residual)"},
    {kLn2Out, "post_attention_layernorm.output", "ln2.hook_normalized", Dims::kResid, "MLP LayerNorm output"},
    {kMlpIn, "mlp.input", "mlp.hook_input", Dims::kResid, "hidden states given to the MLP"},
    {kUpIn, "mlp.dense_h_to_4h.input", "", Dims::kResid, "input of dense_h_to_4h"},
    {kUpOut, "mlp.dense_h_to_4h.output", "mlp.hook_pre", Dims::kMlp, "MLP pre-activation"},
    {kDownIn, "mlp.dense_4h_to_h.input", "mlp.hook_post", Dims::kMlp, "act(dense_h_to_4h output): the MLP's hidden activations"},
    {kDownOut, "mlp.dense_4h_to_h.output", "", Dims::kResid, "output of dense_4h_to_h"},
    {kMlpOut, "mlp.output", "hook_mlp_out", Dims::kResid, "the MLP's contribution to the residual stream", "mlp.input"},
    {kOutput, "output", "hook_resid_post", Dims::kResid, "residual stream leaving the layer", "input"},
};
static_assert(sizeof(kLayerPoints) / sizeof(kLayerPoints[0]) == kPointCount, "every point in enum order");

struct Options {
  ModelConfig config;
  RopeSpec rope;
  double eps = 1e-5;
  std::string activation = "gelu";
  bool parallel_residual = true, attention_bias = true;
};

CatalogueSpec NeoxCatalogue(const Options& o) {
  CatalogueSpec spec;
  std::vector<int> index;
  spec.num_layers = o.config.num_layers;
  spec.layer_prefix = "gpt_neox.layers.";
  spec.before = EmbeddingPoints("gpt_neox.embed_in", o.config);
  spec.layer = LayerPoints(kLayerPoints, kPointCount, o.config, nullptr, index);
  if (!o.parallel_residual) {  // the MLP norm's input is then the residual after attention
    spec.layer[kLn2In].alias = "hook_resid_mid|ln2.hook_input";
    spec.layer[kLn2In].meaning = "residual stream after attention, input of the MLP LayerNorm";
  }
  spec.after = HeadPoints("gpt_neox.final_layer_norm", "embed_out", o.config);
  return spec;
}

struct Linear {
  at::Tensor weight, bias;  // bias undefined when absent
  at::Tensor operator()(const at::Tensor& x) const { return at::linear(x, weight, bias); }
};
struct Norm {
  at::Tensor weight, bias;
};
struct Layer {
  Norm input_layernorm, post_attention_layernorm;
  Linear query_key_value, dense, dense_h_to_4h, dense_4h_to_h;
};
struct Weights {
  at::Tensor embed_in, embed_out;
  std::vector<Layer> layers;
  Norm final_layer_norm;
};

class NeoxTransformer : public Transformer {
 public:
  NeoxTransformer(const Options& o, Weights w, at::Device device, at::ScalarType dtype)
      : Transformer(o.config, NeoxCatalogue(o), device, dtype), o_(o), w_(std::move(w)),
        rotary_(o.rope, device) {
    AddWeights();
  }

  at::Tensor Forward(const PassInputs& in) const override;
  StatusOr<at::Tensor> ApplyModule(const std::string& name, const at::Tensor& x) const override;
  std::vector<std::string> ModuleNames() const override;
  std::vector<std::string> MatmulModules() const override {
    return Filtered(ModuleNames(), {".query_key_value", ".dense", "embed_out"});
  }

 private:
  class Pass;
  int Id(int layer, P point) const { return catalogue_.LayerId(layer, point); }
  at::Tensor Ln(const Norm& n, const at::Tensor& x) const { return LayerNorm(x, n.weight, n.bias, o_.eps); }
  at::Tensor Mlp(const Layer& l, const at::Tensor& x) const {
    return l.dense_4h_to_h(Activate(o_.activation, l.dense_h_to_4h(x)));
  }

  void AddWeights() {
    AddWeight("gpt_neox.embed_in.weight", w_.embed_in);
    for (size_t i = 0; i < w_.layers.size(); ++i) {
      const Layer& l = w_.layers[i];
      const std::string p = "gpt_neox.layers." + std::to_string(i) + ".";
      AddNorm(p + "input_layernorm", l.input_layernorm);
      AddNorm(p + "post_attention_layernorm", l.post_attention_layernorm);
      AddLinear(p + "attention.query_key_value", l.query_key_value);
      AddLinear(p + "attention.dense", l.dense);
      AddLinear(p + "mlp.dense_h_to_4h", l.dense_h_to_4h);
      AddLinear(p + "mlp.dense_4h_to_h", l.dense_4h_to_h);
    }
    AddNorm("gpt_neox.final_layer_norm", w_.final_layer_norm);
    AddWeight("embed_out.weight", w_.embed_out, o_.config.tie_word_embeddings ? WeightRole::kOther : WeightRole::kLinearOutIn);
    TlWeightLayout tl;
    tl.embed = "gpt_neox.embed_in", tl.unembed = "embed_out", tl.final_norm = "gpt_neox.final_layer_norm";
    tl.layer = "gpt_neox.layers.", tl.ln1 = "input_layernorm", tl.ln2 = "post_attention_layernorm";
    tl.qkv = TlWeightLayout::Qkv::kFusedPerHead, tl.q = "attention.query_key_value", tl.o = "attention.dense";
    tl.mlp_in = "mlp.dense_h_to_4h", tl.mlp_out = "mlp.dense_4h_to_h";
    SetTlLayout(tl);
  }
  void AddNorm(const std::string& name, const Norm& n) {
    AddWeight(name + ".weight", n.weight);
    AddWeight(name + ".bias", n.bias);
  }
  void AddLinear(const std::string& name, const Linear& l) {
    AddWeight(name + ".weight", l.weight, WeightRole::kLinearOutIn);
    AddWeight(name + ".bias", l.bias, WeightRole::kLinearBias);
  }

  Options o_;
  Weights w_;
  Rotary rotary_;
};

class NeoxTransformer::Pass {
 public:
  Pass(const NeoxTransformer& m, const PassInputs& in)
      : m_(m), in_(in), hooks_(in), c_(m.config_), where_(m.plan(), in),
        attention_(where_, hooks_, c_.num_heads, c_.num_heads, c_.head_dim,
                   1.0 / std::sqrt(static_cast<double>(c_.head_dim)), m.dtype_),
        rope_(m.rotary_, where_, m.dtype_), batch_(in.ids.size(0)), seq_(in.ids.size(1)) {}

  at::Tensor Run() {
    const HookCatalogue& cat = m_.catalogue_;
    at::Tensor ids = in_.ids;
    hooks_.At(cat.BeforeId(0), ids);
    at::Tensor x = at::embedding(m_.w_.embed_in, ids);
    hooks_.At(cat.BeforeId(1), x);
    for (int layer = 0; layer < c_.num_layers; ++layer) x = DecoderLayer(layer, where_.EnterLayer(layer, x));
    return Head(where_.EnterHead(x));
  }

 private:
  int Id(int layer, P point) const { return m_.Id(layer, point); }

  // transformers: parallel: mlp(ln2(x)) + attn(ln1(x)) + x; sequential: mid = attn + x,
  // out = mlp(ln2(mid)) + mid.
  at::Tensor DecoderLayer(int layer, at::Tensor x) {
    const Layer& l = m_.w_.layers[layer];
    hooks_.CheckInterrupt();
    hooks_.At(Id(layer, kInput), x);
    if (hooks_.Skips(Id(layer, kOutput))) return hooks_.SkippedOutput(Id(layer, kOutput), x);
    at::Tensor h = m_.Ln(l.input_layernorm, hooks_.Tap(Id(layer, kLn1In), x));
    hooks_.At(Id(layer, kLn1Out), h);
    at::Tensor attn = Attention(layer, l, h);
    const at::Tensor mlp_base = m_.o_.parallel_residual ? x : attn + x;
    h = m_.Ln(l.post_attention_layernorm, hooks_.Tap(Id(layer, kLn2In), mlp_base));
    hooks_.At(Id(layer, kLn2Out), h);
    at::Tensor mlp = Mlp(layer, l, h);
    at::Tensor out = m_.o_.parallel_residual ? mlp + attn + x : mlp + mlp_base;
    hooks_.At(Id(layer, kOutput), out);
    return out;
  }

  at::Tensor Project(int layer, P in_point, const at::Tensor& x, const Linear& linear) {
    return hooks_.Around(Id(layer, in_point), Id(layer, static_cast<P>(in_point + 1)), x, linear);
  }

  at::Tensor Attention(int layer, const Layer& l, at::Tensor h) {
    hooks_.At(Id(layer, kAttnIn), h);
    if (hooks_.Skips(Id(layer, kAttnOut))) return hooks_.SkippedOutput(Id(layer, kAttnOut), h);
    // [batch, seq, heads, 3 * head_dim]: each head's q, k and v side by side.
    at::Tensor qkv = Project(layer, kQkvIn, h, l.query_key_value).view({batch_, seq_, c_.num_heads, 3 * c_.head_dim});
    at::Tensor q = qkv.narrow(-1, 0, c_.head_dim);
    at::Tensor k = qkv.narrow(-1, c_.head_dim, c_.head_dim);
    at::Tensor v = qkv.narrow(-1, 2 * c_.head_dim, c_.head_dim);
    hooks_.At(Id(layer, kQ), q);
    hooks_.At(Id(layer, kK), k);
    hooks_.At(Id(layer, kV), v);
    at::Tensor q_rot = m_.rotary_.Apply(q, rope_.Get());
    at::Tensor k_rot = m_.rotary_.Apply(k, rope_.Get());
    hooks_.At(Id(layer, kQRot), q_rot);
    hooks_.At(Id(layer, kKRot), k_rot);
    const AttentionPoints points{Id(layer, kScores), Id(layer, kPattern), Id(layer, kZ)};
    at::Tensor z = attention_.Attend(layer, points, q_rot, k_rot, v);
    at::Tensor out = Project(layer, kDenseIn, z.reshape({batch_, seq_, c_.hidden_size}), l.dense);
    hooks_.At(Id(layer, kAttnOut), out);
    return out;
  }

  at::Tensor Mlp(int layer, const Layer& l, at::Tensor h) {
    hooks_.At(Id(layer, kMlpIn), h);
    if (hooks_.Skips(Id(layer, kMlpOut))) return hooks_.SkippedOutput(Id(layer, kMlpOut), h);
    at::Tensor pre = Project(layer, kUpIn, h, l.dense_h_to_4h);
    at::Tensor out = Project(layer, kDownIn, Activate(m_.o_.activation, pre), l.dense_4h_to_h);
    hooks_.At(Id(layer, kMlpOut), out);
    return out;
  }

  at::Tensor Head(const at::Tensor& x) {
    auto norm = [this](const at::Tensor& t) { return m_.Ln(m_.w_.final_layer_norm, t); };
    return Unembed(hooks_, m_.catalogue_, in_, x, norm, m_.w_.embed_out);
  }

  const NeoxTransformer& m_;
  const PassInputs& in_;
  PassHooks hooks_;
  const ModelConfig& c_;
  PassPlacement where_;
  AttentionCore attention_;
  PassRope rope_;
  int64_t batch_, seq_;
};

at::Tensor NeoxTransformer::Forward(const PassInputs& in) const {
  Pass pass(*this, in);
  return pass.Run();
}

std::vector<std::string> NeoxTransformer::ModuleNames() const {
  return LayerModuleNames({"gpt_neox.embed_in"}, "gpt_neox.layers.", config_.num_layers,
                          {"input_layernorm", "attention.query_key_value", "attention.dense",
                           "post_attention_layernorm", "mlp", "mlp.dense_h_to_4h", "mlp.dense_4h_to_h"},
                          {"gpt_neox.final_layer_norm", "embed_out"});
}

StatusOr<at::Tensor> NeoxTransformer::ApplyModule(const std::string& name, const at::Tensor& x) const {
  if (name == "gpt_neox.embed_in") return at::embedding(w_.embed_in, x.to(at::kLong));
  const at::Tensor in = x.to(dtype_);
  if (name == "gpt_neox.final_layer_norm") return Ln(w_.final_layer_norm, in);
  if (name == "embed_out") return at::linear(in, w_.embed_out);
  auto [layer, module] = SplitLayerModule(name, "gpt_neox.layers.", config_.num_layers);
  if (layer >= 0) {
    const Layer& l = w_.layers[layer];
    if (module == "input_layernorm") return Ln(l.input_layernorm, in);
    if (module == "post_attention_layernorm") return Ln(l.post_attention_layernorm, in);
    if (module == "mlp") return Mlp(l, in);
    if (module == "attention.query_key_value") return l.query_key_value(in);
    if (module == "attention.dense") return l.dense(in);
    if (module == "mlp.dense_h_to_4h") return l.dense_h_to_4h(in);
    if (module == "mlp.dense_4h_to_h") return l.dense_4h_to_h(in);
  }
  return NotFound("no callable module '" + name + "'; callable: gpt_neox.embed_in, "
                  "gpt_neox.final_layer_norm, embed_out, and per layer gpt_neox.layers.N.{"
                  "input_layernorm, attention.query_key_value, attention.dense, "
                  "post_attention_layernorm, mlp, mlp.dense_h_to_4h, mlp.dense_4h_to_h}");
}

// ---- loading ----

StatusOr<Options> ReadConfig(const CheckpointInfo& info) {
  Options o;
  ModelConfig& c = o.config;
  HfConfig config(*info.hf_config, info.path + "/config.json", "gpt_neox");
  c.architecture = "gpt_neox";
  c.vocab_size = config.Int("vocab_size");
  c.hidden_size = config.Int("hidden_size");
  c.num_layers = config.Int("num_hidden_layers");
  c.num_heads = c.num_kv_heads = config.Int("num_attention_heads");
  c.head_dim = c.num_heads > 0 ? c.hidden_size / c.num_heads : 0;
  c.intermediate_size = config.Int("intermediate_size");
  c.max_position_embeddings = config.Int("max_position_embeddings", 2048);
  c.tie_word_embeddings = config.Bool("tie_word_embeddings", false);
  c.bos_id = config.Int("bos_token_id", -1);
  c.eos_id = config.Int("eos_token_id", -1);
  o.eps = config.Float("layer_norm_eps", 1e-5);
  o.activation = config.String("hidden_act", "gelu");
  if (!KnownActivation(o.activation)) config.Refuse("hidden_act", "not an activation this engine has");
  o.parallel_residual = config.Bool("use_parallel_residual", true);
  o.attention_bias = config.Bool("attention_bias", true);
  // The rotary fraction: rotary_pct in older configs, partial_rotary_factor (possibly inside
  // rope_parameters) in newer ones.
  double fraction = config.Float("rotary_pct", config.Float("partial_rotary_factor", 1.0));
  const nlohmann::json& rope = config.Json("rope_parameters");
  if (rope.is_object() && rope.contains("partial_rotary_factor")) fraction = rope["partial_rotary_factor"].get<double>();
  const int64_t rotary_dims = static_cast<int64_t>(c.head_dim * fraction);
  o.rope = ReadRope(config, c.head_dim, rotary_dims, config.Float("rotary_emb_base", 10000.0));
  config.Ignore({"classifier_dropout"});
  GLASSBOX_RETURN_IF_ERROR(config.Finish());
  return o;
}

// GGUF metadata (llama.cpp's `gptneox` keys) into the same options. llama.cpp computes the MLP
// with tanh-approximated GELU; GGUF does not record the activation, so this keeps the exact
// GELU of GPTNeoXConfig's default (Pythia, GPT-NeoX-20B), as transformers computes it.
StatusOr<Options> ReadGgufConfig(const GgufFile& f) {
  GLASSBOX_RETURN_IF_ERROR(CheckGgufKeys(
      f, "gptneox", {"block_count", "context_length", "embedding_length", "feed_forward_length",
                     "attention.head_count", "attention.head_count_kv", "attention.layer_norm_epsilon",
                     "rope.dimension_count", "rope.freq_base", "use_parallel_residual"}));
  Options o;
  ModelConfig& c = o.config;
  GLASSBOX_RETURN_IF_ERROR(ReadGgufSizes(f, "gptneox", c));
  c.architecture = "gpt_neox";
  if (c.num_kv_heads != c.num_heads) {
    return Unimplemented(f.path() + ": gptneox.attention.head_count_kv differs from the head "
                         "count; GPT-NeoX has one key/value head per query head");
  }
  StatusOr<int64_t> rotary_dims = f.GetInt("gptneox.rope.dimension_count");
  if (!rotary_dims.ok()) return rotary_dims.status().WithContext(f.path());
  o.eps = f.GetFloat("gptneox.attention.layer_norm_epsilon").value_or(1e-5);
  o.parallel_residual = f.GetBool("gptneox.use_parallel_residual").value_or(true);
  o.attention_bias = f.FindTensor("blk.0.attn_qkv.bias") != nullptr;
  o.rope.head_dim = c.head_dim;
  o.rope.rotary_dims = *rotary_dims;
  o.rope.theta = f.GetFloat("gptneox.rope.freq_base").value_or(10000.0);  // llama.cpp's default
  return o;
}

Status ValidateSizes(const std::string& path, const Options& o) {
  GLASSBOX_RETURN_IF_ERROR(ValidateSizes(path, o.config, /*rotary=*/false));
  const int64_t rotary_dims = o.rope.rotary_dims;
  if (o.config.head_dim * o.config.num_heads != o.config.hidden_size || rotary_dims % 2 != 0 ||
      rotary_dims <= 0 || rotary_dims > o.config.head_dim) {
    return InvalidArgument(path + ": hidden size not a multiple of the heads, or an odd or "
                           "oversized number of rotary dimensions");
  }
  return Status::Ok();
}

// Hugging Face name -> llama.cpp's GGUF name, e.g. gpt_neox.layers.3.mlp.dense_h_to_4h.weight
// -> blk.3.ffn_up.weight (gguf-py's TensorNameMap for MODEL_ARCH.GPTNEOX).
std::string GgufName(const std::string& hf) {
  static const std::map<std::string, std::string> kGlobal = {
      {"gpt_neox.embed_in.weight", "token_embd.weight"},
      {"gpt_neox.final_layer_norm.weight", "output_norm.weight"},
      {"gpt_neox.final_layer_norm.bias", "output_norm.bias"},
      {"embed_out.weight", "output.weight"}};
  static const std::map<std::string, std::string> kLayer = {
      {"input_layernorm", "attn_norm"},
      {"post_attention_layernorm", "ffn_norm"},
      {"attention.query_key_value", "attn_qkv"},
      {"attention.dense", "attn_output"},
      {"mlp.dense_h_to_4h", "ffn_up"},
      {"mlp.dense_4h_to_h", "ffn_down"}};
  auto global = kGlobal.find(hf);
  if (global != kGlobal.end()) return global->second;
  auto [layer, rest] = SplitLayerModule(hf, "gpt_neox.layers.", int64_t{1} << 40);
  const size_t dot = rest.rfind('.');  // module . weight|bias
  if (layer < 0 || dot == std::string::npos) return hf;
  auto local = kLayer.find(rest.substr(0, dot));
  if (local == kLayer.end()) return hf;
  return "blk." + std::to_string(layer) + "." + local->second + rest.substr(dot);
}

// Undoes the converter's regrouping of query_key_value rows (weight or bias): GGUF holds
// [q of every head | k of every head | v of every head], transformers [q|k|v] per head.
TensorSource::Reorder PerHeadQkv(int64_t heads) {
  return [heads](const at::Tensor& stored) {
    std::vector<int64_t> grouped = {3, heads, stored.size(0) / 3 / heads};
    for (int64_t i = 1; i < stored.dim(); ++i) grouped.push_back(stored.size(i));
    return stored.reshape(grouped).transpose(0, 1).reshape(stored.sizes());
  };
}

Status GetLinear(WeightReader& r, const std::string& name, int64_t in, int64_t out, bool bias,
                 Linear& l, const TensorSource::Reorder& reorder = nullptr) {
  GLASSBOX_RETURN_IF_ERROR(r.Get(name + ".weight", {out, in}, l.weight, reorder));
  return bias ? r.Get(name + ".bias", {out}, l.bias, reorder) : Status::Ok();
}

Status ReadWeights(const Options& o, TensorSource& tensors, bool gguf, Weights& w) {
  const ModelConfig& c = o.config;
  const int64_t d = c.hidden_size, m = c.intermediate_size;
  WeightReader r(tensors, gguf ? WeightReader::Rename(GgufName) : nullptr);
  GLASSBOX_RETURN_IF_ERROR(r.Get("gpt_neox.embed_in.weight", {c.vocab_size, d}, w.embed_in));
  w.layers.resize(c.num_layers);
  for (int64_t i = 0; i < c.num_layers; ++i) {
    const std::string p = "gpt_neox.layers." + std::to_string(i) + ".";
    Layer& l = w.layers[i];
    tensors.PlaceLayer(i);
    for (const char* b : {"attention.bias", "attention.masked_bias", "attention.rotary_emb.inv_freq"}) {
      r.Discard(p + b);  // buffers some checkpoints saved: causal masks, rotary frequencies
    }
    GLASSBOX_RETURN_IF_ERROR(r.Norm(p + "input_layernorm", d, l.input_layernorm.weight, l.input_layernorm.bias));
    GLASSBOX_RETURN_IF_ERROR(r.Norm(p + "post_attention_layernorm", d, l.post_attention_layernorm.weight, l.post_attention_layernorm.bias));
    GLASSBOX_RETURN_IF_ERROR(GetLinear(r, p + "attention.query_key_value", d, 3 * d, o.attention_bias, l.query_key_value,
                                       gguf ? PerHeadQkv(c.num_heads) : nullptr));
    GLASSBOX_RETURN_IF_ERROR(GetLinear(r, p + "attention.dense", d, d, o.attention_bias, l.dense));
    GLASSBOX_RETURN_IF_ERROR(GetLinear(r, p + "mlp.dense_h_to_4h", d, m, true, l.dense_h_to_4h));
    GLASSBOX_RETURN_IF_ERROR(GetLinear(r, p + "mlp.dense_4h_to_h", m, d, true, l.dense_4h_to_h));
  }
  tensors.PlaceHead(c.tie_word_embeddings);
  GLASSBOX_RETURN_IF_ERROR(r.Norm("gpt_neox.final_layer_norm", d, w.final_layer_norm.weight, w.final_layer_norm.bias));
  if (c.tie_word_embeddings) {
    w.embed_out = w.embed_in;
    return Status::Ok();
  }
  return r.Get("embed_out.weight", {c.vocab_size, d}, w.embed_out);
}

}  // namespace

FamilyEntry NeoxFamily() {
  FamilyEntry entry;
  entry.name = "gpt_neox";
  entry.hf_model_types = {"gpt_neox"};
  entry.gguf_architectures = {"gptneox"};
  entry.load = [](const CheckpointInfo& info, TensorSource& tensors) -> StatusOr<std::unique_ptr<Transformer>> {
    const bool gguf = info.gguf != nullptr;
    GLASSBOX_ASSIGN_OR_RETURN(Options o, gguf ? ReadGgufConfig(*info.gguf) : ReadConfig(info));
    GLASSBOX_RETURN_IF_ERROR(ValidateSizes(info.path, o));
    Weights w;
    GLASSBOX_RETURN_IF_ERROR(ReadWeights(o, tensors, gguf, w));
    return std::unique_ptr<Transformer>(new NeoxTransformer(o, std::move(w), info.device, info.dtype));
  };
  return entry;
}

}  // namespace glassbox
