// The GPT-2 family (GPT2LMHeadModel): learned position embeddings, LayerNorm with bias, one
// fused c_attn projection (Conv1D: weights stored [in, out]), GELU (tanh) MLP, tied
// unembedding. Follows transformers' modeling_gpt2 operation for operation, with hook
// points under its module paths (transformer.h.N.attn.c_attn, ...). Loads from Hugging Face
// directories and from `gpt2` GGUF files (llama.cpp's converter stores the Conv1D weights
// transposed, as [out, in]).
#include <ATen/TensorOperators.h>
#include <ATen/ops/embedding.h>
#include <ATen/ops/linear.h>

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

enum P : int {
  kInput, kLn1In, kLn1Out, kAttnIn, kQkvIn, kQkvOut, kQ, kK, kV, kScores, kPattern, kZ,
  kProjIn, kProjOut, kAttnOut, kLn2In, kLn2Out, kMlpIn, kFcIn, kFcOut, kMlpProjIn,
  kMlpProjOut, kMlpOut, kOutput, kPointCount
};

const PointRow kLayerPoints[] = {
    {kInput, "input", "hook_resid_pre", Dims::kResid, "residual stream entering the block"},
    {kLn1In, "ln_1.input", "ln1.hook_input", Dims::kResid, "input of the pre-attention LayerNorm"},
    {kLn1Out, "ln_1.output", "ln1.hook_normalized", Dims::kResid, "pre-attention LayerNorm output (with weight and bias)"},
    {kAttnIn, "attn.input", "attn.hook_input", Dims::kResid, "hidden states given to attention"},
    {kQkvIn, "attn.c_attn.input", "", Dims::kResid, "input of the fused q/k/v projection"},
    {kQkvOut, "attn.c_attn.output", "", Dims::kQkv, "queries, keys and values concatenated"},
    {kQ, "attn.q", "attn.hook_q", Dims::kQHeads, "queries per head"},
    {kK, "attn.k", "attn.hook_k", Dims::kQHeads, "keys per head (what the KV cache holds)"},
    {kV, "attn.v", "attn.hook_v", Dims::kQHeads, "values per head"},
    {kScores, "attn.attn_scores", "attn.hook_attn_scores", Dims::kScores, "scaled q.k scores plus the mask (dtype minimum where masked), before softmax"},
    {kPattern, "attn.attn_pattern", "attn.hook_pattern", Dims::kScores, "attention probabilities"},
    {kZ, "attn.z", "attn.hook_z", Dims::kQHeads, "each head's output (pattern times values) before c_proj"},
    {kProjIn, "attn.c_proj.input", "", Dims::kResid, "heads' outputs concatenated, input of c_proj"},
    {kProjOut, "attn.c_proj.output", "", Dims::kResid, "output of c_proj"},
    {kAttnOut, "attn.output", "hook_attn_out", Dims::kResid, "attention's contribution to the residual stream", "attn.input"},
    {kLn2In, "ln_2.input", "hook_resid_mid", Dims::kResid, "residual stream after attention, input of the pre-MLP LayerNorm"},
    {kLn2Out, "ln_2.output", "ln2.hook_normalized", Dims::kResid, "pre-MLP LayerNorm output"},
    {kMlpIn, "mlp.input", "mlp.hook_input", Dims::kResid, "hidden states given to the MLP"},
    {kFcIn, "mlp.c_fc.input", "", Dims::kResid, "input of c_fc"},
    {kFcOut, "mlp.c_fc.output", "mlp.hook_pre", Dims::kMlp, "MLP pre-activation"},
    {kMlpProjIn, "mlp.c_proj.input", "mlp.hook_post", Dims::kMlp, "act(c_fc output): the MLP's hidden activations"},
    {kMlpProjOut, "mlp.c_proj.output", "", Dims::kResid, "output of the MLP's c_proj"},
    {kMlpOut, "mlp.output", "hook_mlp_out", Dims::kResid, "the MLP's contribution to the residual stream", "mlp.input"},
    {kOutput, "output", "hook_resid_post", Dims::kResid, "residual stream leaving the block", "input"},
};
static_assert(sizeof(kLayerPoints) / sizeof(kLayerPoints[0]) == kPointCount, "every point in enum order");

struct Options {
  ModelConfig config;
  double eps = 1e-5;
  std::string activation = "gelu_new";
};

CatalogueSpec Gpt2Catalogue(const Options& o) {
  CatalogueSpec spec;
  std::vector<int> index;
  spec.num_layers = o.config.num_layers;
  spec.layer_prefix = "transformer.h.";
  spec.before = EmbeddingPoints("transformer.wte", o.config);
  spec.before.push_back({"transformer.wpe.output", "hook_pos_embed", ShapeOf(Dims::kResid, o.config),
                         "position embeddings", "", "", false});
  spec.layer = LayerPoints(kLayerPoints, kPointCount, o.config, nullptr, index);
  spec.after = HeadPoints("transformer.ln_f", "lm_head", o.config);
  return spec;
}

struct Linear {
  at::Tensor weight, bias;  // weight [out, in] (Conv1D weights are transposed at load)
  at::Tensor operator()(const at::Tensor& x) const { return at::linear(x, weight, bias); }
};
struct Norm {
  at::Tensor weight, bias;
};
struct Block {
  Norm ln_1, ln_2;
  Linear c_attn, attn_proj, c_fc, mlp_proj;
};
struct Weights {
  at::Tensor wte, wpe;
  std::vector<Block> blocks;
  Norm ln_f;
};

class Gpt2Transformer : public Transformer {
 public:
  Gpt2Transformer(const Options& o, Weights w, at::Device device, at::ScalarType dtype)
      : Transformer(o.config, Gpt2Catalogue(o), device, dtype), o_(o), w_(std::move(w)) {
    AddWeights();
  }

  at::Tensor Forward(const PassInputs& in) const override;
  StatusOr<at::Tensor> ApplyModule(const std::string& name, const at::Tensor& x) const override;
  std::vector<std::string> ModuleNames() const override;
  std::vector<std::string> MatmulModules() const override {
    return Filtered(ModuleNames(), {".c_attn", ".c_proj", ".c_fc", "lm_head"});
  }

 private:
  class Pass;
  int Id(int layer, P point) const { return catalogue_.LayerId(layer, point); }
  at::Tensor Ln(const Norm& n, const at::Tensor& x) const { return LayerNorm(x, n.weight, n.bias, o_.eps); }
  at::Tensor Mlp(const Block& b, const at::Tensor& x) const {
    return b.mlp_proj(Activate(o_.activation, b.c_fc(x)));
  }

  // Conv1D weights are listed as transformers holds them, [in, out] (a view, no copy).
  void AddWeights() {
    AddWeight("transformer.wte.weight", w_.wte);
    AddWeight("transformer.wpe.weight", w_.wpe);
    for (size_t i = 0; i < w_.blocks.size(); ++i) {
      const Block& b = w_.blocks[i];
      const std::string p = "transformer.h." + std::to_string(i) + ".";
      const std::pair<const char*, const Linear*> convs[] = {
          {"attn.c_attn", &b.c_attn}, {"attn.c_proj", &b.attn_proj}, {"mlp.c_fc", &b.c_fc}, {"mlp.c_proj", &b.mlp_proj}};
      AddWeight(p + "ln_1.weight", b.ln_1.weight);
      AddWeight(p + "ln_1.bias", b.ln_1.bias);
      for (int k = 0; k < 4; ++k) {
        if (k == 2) {
          AddWeight(p + "ln_2.weight", b.ln_2.weight);
          AddWeight(p + "ln_2.bias", b.ln_2.bias);
        }
        AddWeight(p + convs[k].first + ".weight", convs[k].second->weight.t(), WeightRole::kLinearInOut);
        AddWeight(p + convs[k].first + ".bias", convs[k].second->bias, WeightRole::kLinearBias);
      }
    }
    AddWeight("transformer.ln_f.weight", w_.ln_f.weight);
    AddWeight("transformer.ln_f.bias", w_.ln_f.bias);
    AddWeight("lm_head.weight", w_.wte);  // tied
    TlWeightLayout tl;
    tl.embed = "transformer.wte", tl.pos = "transformer.wpe", tl.unembed = "lm_head", tl.final_norm = "transformer.ln_f";
    tl.layer = "transformer.h.", tl.ln1 = "ln_1", tl.ln2 = "ln_2";
    tl.qkv = TlWeightLayout::Qkv::kConv1D, tl.q = "attn.c_attn", tl.o = "attn.c_proj";
    tl.mlp_in = "mlp.c_fc", tl.mlp_out = "mlp.c_proj", tl.conv1d = true;
    SetTlLayout(tl);
  }

  Options o_;
  Weights w_;
};

class Gpt2Transformer::Pass {
 public:
  Pass(const Gpt2Transformer& m, const PassInputs& in)
      : m_(m), in_(in), hooks_(in), c_(m.config_), where_(m.plan(), in),
        attention_(where_, hooks_, c_.num_heads, c_.num_heads, c_.head_dim,
                   1.0 / std::sqrt(static_cast<double>(c_.head_dim)), m.dtype_),
        batch_(in.ids.size(0)), seq_(in.ids.size(1)) {}

  at::Tensor Run() {
    const HookCatalogue& cat = m_.catalogue_;
    at::Tensor ids = in_.ids;
    hooks_.At(cat.BeforeId(0), ids);
    at::Tensor tokens = at::embedding(m_.w_.wte, ids);
    hooks_.At(cat.BeforeId(1), tokens);
    at::Tensor positions = at::embedding(m_.w_.wpe, in_.positions);
    hooks_.At(cat.BeforeId(2), positions);
    at::Tensor x = tokens + positions;
    for (int layer = 0; layer < c_.num_layers; ++layer) x = Block(layer, where_.EnterLayer(layer, x));
    return Head(where_.EnterHead(x));
  }

 private:
  int Id(int layer, P point) const { return m_.Id(layer, point); }

  at::Tensor Block(int layer, at::Tensor x) {
    const struct Block& b = m_.w_.blocks[layer];
    hooks_.CheckInterrupt();
    hooks_.At(Id(layer, kInput), x);
    if (hooks_.Skips(Id(layer, kOutput))) return hooks_.SkippedOutput(Id(layer, kOutput), x);
    at::Tensor h = m_.Ln(b.ln_1, hooks_.Tap(Id(layer, kLn1In), x));
    hooks_.At(Id(layer, kLn1Out), h);
    at::Tensor mid = x + Attention(layer, b, h);
    h = m_.Ln(b.ln_2, hooks_.Tap(Id(layer, kLn2In), mid));
    hooks_.At(Id(layer, kLn2Out), h);
    at::Tensor out = mid + Mlp(layer, b, h);
    hooks_.At(Id(layer, kOutput), out);
    return out;
  }

  at::Tensor Project(int layer, P in_point, const at::Tensor& x, const Linear& linear) {
    return hooks_.Around(Id(layer, in_point), Id(layer, static_cast<P>(in_point + 1)), x, linear);
  }

  at::Tensor Attention(int layer, const struct Block& b, at::Tensor h) {
    hooks_.At(Id(layer, kAttnIn), h);
    if (hooks_.Skips(Id(layer, kAttnOut))) return hooks_.SkippedOutput(Id(layer, kAttnOut), h);
    at::Tensor qkv = Project(layer, kQkvIn, h, b.c_attn);
    const std::vector<int64_t> heads = {batch_, seq_, c_.num_heads, c_.head_dim};
    at::Tensor q = qkv.narrow(-1, 0, c_.hidden_size).view(heads);
    at::Tensor k = qkv.narrow(-1, c_.hidden_size, c_.hidden_size).view(heads);
    at::Tensor v = qkv.narrow(-1, 2 * c_.hidden_size, c_.hidden_size).view(heads);
    hooks_.At(Id(layer, kQ), q);
    hooks_.At(Id(layer, kK), k);
    hooks_.At(Id(layer, kV), v);
    const AttentionPoints points{Id(layer, kScores), Id(layer, kPattern), Id(layer, kZ)};
    at::Tensor z = attention_.Attend(layer, points, q, k, v);
    at::Tensor out = Project(layer, kProjIn, z.reshape({batch_, seq_, c_.hidden_size}), b.attn_proj);
    hooks_.At(Id(layer, kAttnOut), out);
    return out;
  }

  at::Tensor Mlp(int layer, const struct Block& b, at::Tensor h) {
    hooks_.At(Id(layer, kMlpIn), h);
    if (hooks_.Skips(Id(layer, kMlpOut))) return hooks_.SkippedOutput(Id(layer, kMlpOut), h);
    at::Tensor pre = Project(layer, kFcIn, h, b.c_fc);
    at::Tensor out = Project(layer, kMlpProjIn, Activate(m_.o_.activation, pre), b.mlp_proj);
    hooks_.At(Id(layer, kMlpOut), out);
    return out;
  }

  at::Tensor Head(const at::Tensor& x) {
    auto norm = [this](const at::Tensor& t) { return m_.Ln(m_.w_.ln_f, t); };
    return Unembed(hooks_, m_.catalogue_, in_, x, norm, m_.w_.wte);
  }

  const Gpt2Transformer& m_;
  const PassInputs& in_;
  PassHooks hooks_;
  const ModelConfig& c_;
  PassPlacement where_;
  AttentionCore attention_;
  int64_t batch_, seq_;
};

at::Tensor Gpt2Transformer::Forward(const PassInputs& in) const {
  Pass pass(*this, in);
  return pass.Run();
}

std::vector<std::string> Gpt2Transformer::ModuleNames() const {
  return LayerModuleNames({"transformer.wte"}, "transformer.h.", config_.num_layers,
                          {"ln_1", "attn.c_attn", "attn.c_proj", "ln_2", "mlp", "mlp.c_fc", "mlp.c_proj"},
                          {"transformer.ln_f", "lm_head"});
}

StatusOr<at::Tensor> Gpt2Transformer::ApplyModule(const std::string& name, const at::Tensor& x) const {
  if (name == "transformer.wte") return at::embedding(w_.wte, x.to(at::kLong));
  const at::Tensor in = x.to(dtype_);
  if (name == "transformer.ln_f") return Ln(w_.ln_f, in);
  if (name == "lm_head") return at::linear(in, w_.wte);
  auto [layer, module] = SplitLayerModule(name, "transformer.h.", config_.num_layers);
  if (layer >= 0) {
    const Block& b = w_.blocks[layer];
    if (module == "ln_1") return Ln(b.ln_1, in);
    if (module == "ln_2") return Ln(b.ln_2, in);
    if (module == "mlp") return Mlp(b, in);
    if (module == "attn.c_attn") return b.c_attn(in);
    if (module == "attn.c_proj") return b.attn_proj(in);
    if (module == "mlp.c_fc") return b.c_fc(in);
    if (module == "mlp.c_proj") return b.mlp_proj(in);
  }
  return NotFound("no callable module '" + name + "'; callable: transformer.wte, transformer.ln_f, "
                  "lm_head, and per block transformer.h.N.{ln_1, attn.c_attn, attn.c_proj, ln_2, "
                  "mlp, mlp.c_fc, mlp.c_proj}");
}

// ---- loading ----

StatusOr<Options> ReadConfig(const CheckpointInfo& info) {
  Options o;
  ModelConfig& c = o.config;
  HfConfig config(*info.hf_config, info.path + "/config.json", "gpt2");
  c.architecture = "gpt2";
  c.vocab_size = config.Int("vocab_size");
  c.hidden_size = config.Int("n_embd");
  c.num_layers = config.Int("n_layer");
  c.num_heads = c.num_kv_heads = config.Int("n_head");
  c.head_dim = c.num_heads > 0 ? c.hidden_size / c.num_heads : 0;
  c.intermediate_size = config.Int("n_inner", 4 * c.hidden_size);
  c.max_position_embeddings = config.Int("n_positions");
  c.tie_word_embeddings = config.Bool("tie_word_embeddings", true);
  if (!c.tie_word_embeddings) config.Refuse("tie_word_embeddings", "GPT-2's unembedding is the token embedding");
  c.bos_id = config.Int("bos_token_id", -1);
  c.eos_id = config.Int("eos_token_id", -1);
  o.eps = config.Float("layer_norm_epsilon", 1e-5);
  o.activation = config.String("activation_function", "gelu_new");
  if (!KnownActivation(o.activation)) config.Refuse("activation_function", "not an activation this engine has");
  config.Expect("scale_attn_weights", true);
  config.Expect("scale_attn_by_inverse_layer_idx", false);
  config.Expect("reorder_and_upcast_attn", false);
  config.Expect("add_cross_attention", false);
  config.Ignore({"n_ctx"});  // old configs: the same as n_positions
  GLASSBOX_RETURN_IF_ERROR(config.Finish());
  return o;
}

// GGUF metadata (llama.cpp's `gpt2` keys) into the same options.
StatusOr<Options> ReadGgufConfig(const GgufFile& f) {
  GLASSBOX_RETURN_IF_ERROR(CheckGgufKeys(
      f, "gpt2", {"block_count", "context_length", "embedding_length", "feed_forward_length",
                  "attention.head_count", "attention.head_count_kv", "attention.layer_norm_epsilon"}));
  Options o;
  ModelConfig& c = o.config;
  GLASSBOX_RETURN_IF_ERROR(ReadGgufSizes(f, "gpt2", c));
  if (c.num_kv_heads != c.num_heads) {
    return Unimplemented(f.path() + ": gpt2.attention.head_count_kv differs from the head count; "
                         "GPT-2 has one key/value head per query head");
  }
  if (!c.tie_word_embeddings) return Unimplemented(f.path() + ": output.weight: GPT-2 ties its unembedding");
  o.eps = f.GetFloat("gpt2.attention.layer_norm_epsilon").value_or(1e-5);
  o.activation = "gelu_new";  // llama.cpp's GELU for gpt2 is the tanh approximation
  return o;
}

// Hugging Face name -> llama.cpp's GGUF name, e.g. transformer.h.3.mlp.c_fc.weight ->
// blk.3.ffn_up.weight (gguf-py's TensorNameMap for MODEL_ARCH.GPT2).
std::string GgufName(const std::string& hf) {
  static const std::map<std::string, std::string> kGlobal = {
      {"transformer.wte.weight", "token_embd.weight"},
      {"transformer.wpe.weight", "position_embd.weight"},
      {"transformer.ln_f.weight", "output_norm.weight"},
      {"transformer.ln_f.bias", "output_norm.bias"},
      {"lm_head.weight", "output.weight"}};
  static const std::map<std::string, std::string> kBlock = {
      {"ln_1", "attn_norm"}, {"attn.c_attn", "attn_qkv"}, {"attn.c_proj", "attn_output"},
      {"ln_2", "ffn_norm"},  {"mlp.c_fc", "ffn_up"},      {"mlp.c_proj", "ffn_down"}};
  auto global = kGlobal.find(hf);
  if (global != kGlobal.end()) return global->second;
  auto [block, rest] = SplitLayerModule(hf, "transformer.h.", int64_t{1} << 40);
  const size_t dot = rest.rfind('.');  // module . weight|bias
  if (block < 0 || dot == std::string::npos) return hf;
  auto local = kBlock.find(rest.substr(0, dot));
  if (local == kBlock.end()) return hf;
  return "blk." + std::to_string(block) + "." + local->second + rest.substr(dot);
}

// How a checkpoint spells a transformers name: GGUF's table, or without the "transformer."
// prefix in checkpoints saved from GPT2Model (OpenAI's own included).
WeightReader::Rename StoredNames(const TensorSource& tensors, bool gguf) {
  if (gguf) return GgufName;
  if (tensors.Has("transformer.wte.weight") || !tensors.Has("wte.weight")) return nullptr;
  return [](const std::string& name) {
    const std::string prefix = "transformer.";
    return name.compare(0, prefix.size(), prefix) == 0 ? name.substr(prefix.size()) : name;
  };
}

// A Conv1D (weight stored [in, out]; [out, in] in GGUF) as a Linear.
Status GetConv1D(WeightReader& r, bool gguf, const std::string& name, int64_t in, int64_t out, Linear& l) {
  if (gguf) {
    GLASSBOX_RETURN_IF_ERROR(r.Get(name + ".weight", {out, in}, l.weight));
  } else {
    GLASSBOX_RETURN_IF_ERROR(r.Get(name + ".weight", {in, out}, l.weight));
    l.weight = l.weight.t().contiguous();
  }
  return r.Get(name + ".bias", {out}, l.bias);
}

Status ReadWeights(const Options& o, TensorSource& tensors, bool gguf, Weights& w) {
  const ModelConfig& c = o.config;
  const int64_t d = c.hidden_size;
  WeightReader r(tensors, StoredNames(tensors, gguf));
  GLASSBOX_RETURN_IF_ERROR(r.Get("transformer.wte.weight", {c.vocab_size, d}, w.wte));
  GLASSBOX_RETURN_IF_ERROR(r.Get("transformer.wpe.weight", {c.max_position_embeddings, d}, w.wpe));
  w.blocks.resize(c.num_layers);
  for (int64_t i = 0; i < c.num_layers; ++i) {
    const std::string p = "transformer.h." + std::to_string(i) + ".";
    Block& b = w.blocks[i];
    tensors.PlaceLayer(i);
    for (const char* buffer : {"attn.bias", "attn.masked_bias"}) r.Discard(p + buffer);  // causal masks
    GLASSBOX_RETURN_IF_ERROR(r.Norm(p + "ln_1", d, b.ln_1.weight, b.ln_1.bias));
    GLASSBOX_RETURN_IF_ERROR(GetConv1D(r, gguf, p + "attn.c_attn", d, 3 * d, b.c_attn));
    GLASSBOX_RETURN_IF_ERROR(GetConv1D(r, gguf, p + "attn.c_proj", d, d, b.attn_proj));
    GLASSBOX_RETURN_IF_ERROR(r.Norm(p + "ln_2", d, b.ln_2.weight, b.ln_2.bias));
    GLASSBOX_RETURN_IF_ERROR(GetConv1D(r, gguf, p + "mlp.c_fc", d, c.intermediate_size, b.c_fc));
    GLASSBOX_RETURN_IF_ERROR(GetConv1D(r, gguf, p + "mlp.c_proj", c.intermediate_size, d, b.mlp_proj));
  }
  tensors.PlaceHead(/*tied=*/true);
  GLASSBOX_RETURN_IF_ERROR(r.Norm("transformer.ln_f", d, w.ln_f.weight, w.ln_f.bias));
  if (r.Has("lm_head.weight")) {  // a tied copy some checkpoints store
    at::Tensor head;
    GLASSBOX_RETURN_IF_ERROR(r.Get("lm_head.weight", {c.vocab_size, d}, head));
    if (!head.equal(w.wte)) return Unimplemented("lm_head.weight differs from transformer.wte.weight; GPT-2 ties them");
  }
  return Status::Ok();
}

}  // namespace

FamilyEntry Gpt2Family() {
  FamilyEntry entry;
  entry.name = "gpt2";
  entry.hf_model_types = {"gpt2"};
  entry.gguf_architectures = {"gpt2"};
  entry.load = [](const CheckpointInfo& info, TensorSource& tensors) -> StatusOr<std::unique_ptr<Transformer>> {
    const bool gguf = info.gguf != nullptr;
    GLASSBOX_ASSIGN_OR_RETURN(Options o, gguf ? ReadGgufConfig(*info.gguf) : ReadConfig(info));
    GLASSBOX_RETURN_IF_ERROR(ValidateSizes(info.path, o.config, /*rotary=*/false));
    if (o.config.head_dim * o.config.num_heads != o.config.hidden_size) {
      return InvalidArgument(info.path + ": the embedding size is not a multiple of the heads");
    }
    Weights w;
    GLASSBOX_RETURN_IF_ERROR(ReadWeights(o, tensors, gguf, w));
    return std::unique_ptr<Transformer>(new Gpt2Transformer(o, std::move(w), info.device, info.dtype));
  };
  return entry;
}

}  // namespace glassbox
