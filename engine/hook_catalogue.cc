// Builds the hook catalogue of a Llama-family model: names, TransformerLens aliases,
// symbolic shapes and meanings, in forward order.
#include "engine/hook_catalogue.h"

#include <algorithm>
#include <nlohmann/json.hpp>

namespace glassbox {
namespace {

// Symbolic shapes; sizes are filled from CatalogueDims.
enum class ShapeKind { kIds, kResid, kQProj, kKvProj, kQHeads, kKvHeads, kScores, kMlp, kLogits };

struct LayerPointSpec {
  LayerPoint point;
  const char* suffix;  // after "model.layers.N."
  const char* alias;   // after "blocks.N.", "" for none
  ShapeKind shape;
  const char* meaning;
};

// Must list every LayerPoint in enum order.
const LayerPointSpec kLayerSpecs[] = {
    {LayerPoint::kInput, "input", "hook_resid_pre", ShapeKind::kResid,
     "residual stream entering the layer"},
    {LayerPoint::kLn1Input, "input_layernorm.input", "ln1.hook_input", ShapeKind::kResid,
     "input of the pre-attention RMSNorm"},
    {LayerPoint::kLn1Output, "input_layernorm.output", "ln1.hook_normalized", ShapeKind::kResid,
     "pre-attention RMSNorm output (scaled by its weight)"},
    {LayerPoint::kAttnInput, "self_attn.input", "attn.hook_input", ShapeKind::kResid,
     "hidden states given to self-attention"},
    {LayerPoint::kQProjInput, "self_attn.q_proj.input", "", ShapeKind::kResid, "input of q_proj"},
    {LayerPoint::kQProjOutput, "self_attn.q_proj.output", "", ShapeKind::kQProj,
     "queries, all heads concatenated, before RoPE"},
    {LayerPoint::kKProjInput, "self_attn.k_proj.input", "", ShapeKind::kResid, "input of k_proj"},
    {LayerPoint::kKProjOutput, "self_attn.k_proj.output", "", ShapeKind::kKvProj,
     "keys, all key/value heads concatenated, before RoPE"},
    {LayerPoint::kVProjInput, "self_attn.v_proj.input", "", ShapeKind::kResid, "input of v_proj"},
    {LayerPoint::kVProjOutput, "self_attn.v_proj.output", "", ShapeKind::kKvProj,
     "values, all key/value heads concatenated"},
    {LayerPoint::kQ, "self_attn.q", "attn.hook_q", ShapeKind::kQHeads,
     "queries per head, before RoPE"},
    {LayerPoint::kK, "self_attn.k", "attn.hook_k", ShapeKind::kKvHeads,
     "keys per key/value head, before RoPE"},
    {LayerPoint::kV, "self_attn.v", "attn.hook_v", ShapeKind::kKvHeads,
     "values per key/value head"},
    {LayerPoint::kQRot, "self_attn.q_rot", "attn.hook_rot_q", ShapeKind::kQHeads,
     "queries per head after RoPE"},
    {LayerPoint::kKRot, "self_attn.k_rot", "attn.hook_rot_k", ShapeKind::kKvHeads,
     "keys per key/value head after RoPE (what the KV cache holds)"},
    {LayerPoint::kAttnScores, "self_attn.attn_scores", "attn.hook_attn_scores",
     ShapeKind::kScores,
     "scaled q.k scores plus the mask (dtype minimum where masked), before softmax"},
    {LayerPoint::kAttnPattern, "self_attn.attn_pattern", "attn.hook_pattern", ShapeKind::kScores,
     "attention probabilities"},
    {LayerPoint::kZ, "self_attn.z", "attn.hook_z", ShapeKind::kQHeads,
     "each head's output (pattern times values) before o_proj"},
    {LayerPoint::kOProjInput, "self_attn.o_proj.input", "", ShapeKind::kQProj,
     "heads' outputs concatenated, input of o_proj"},
    {LayerPoint::kOProjOutput, "self_attn.o_proj.output", "", ShapeKind::kResid,
     "output of o_proj"},
    {LayerPoint::kAttnOutput, "self_attn.output", "hook_attn_out", ShapeKind::kResid,
     "self-attention's contribution to the residual stream"},
    {LayerPoint::kLn2Input, "post_attention_layernorm.input", "hook_resid_mid",
     ShapeKind::kResid, "residual stream after attention, input of the pre-MLP RMSNorm"},
    {LayerPoint::kLn2Output, "post_attention_layernorm.output", "ln2.hook_normalized",
     ShapeKind::kResid, "pre-MLP RMSNorm output"},
    {LayerPoint::kMlpInput, "mlp.input", "mlp.hook_input", ShapeKind::kResid,
     "hidden states given to the MLP"},
    {LayerPoint::kGateProjInput, "mlp.gate_proj.input", "", ShapeKind::kResid,
     "input of gate_proj"},
    {LayerPoint::kGateProjOutput, "mlp.gate_proj.output", "mlp.hook_pre", ShapeKind::kMlp,
     "gate pre-activation"},
    {LayerPoint::kUpProjInput, "mlp.up_proj.input", "", ShapeKind::kResid, "input of up_proj"},
    {LayerPoint::kUpProjOutput, "mlp.up_proj.output", "mlp.hook_pre_linear", ShapeKind::kMlp,
     "linear (up) branch of the gated MLP"},
    {LayerPoint::kDownProjInput, "mlp.down_proj.input", "mlp.hook_post", ShapeKind::kMlp,
     "silu(gate) * up: the MLP's hidden activations"},
    {LayerPoint::kDownProjOutput, "mlp.down_proj.output", "", ShapeKind::kResid,
     "output of down_proj"},
    {LayerPoint::kMlpOutput, "mlp.output", "hook_mlp_out", ShapeKind::kResid,
     "the MLP's contribution to the residual stream"},
    {LayerPoint::kOutput, "output", "hook_resid_post", ShapeKind::kResid,
     "residual stream leaving the layer"},
};
static_assert(sizeof(kLayerSpecs) / sizeof(kLayerSpecs[0]) ==
                  static_cast<size_t>(LayerPoint::kCount),
              "kLayerSpecs must list every LayerPoint");

std::vector<std::string> ShapeOf(ShapeKind kind, const CatalogueDims& d) {
  auto n = [](int64_t v) { return std::to_string(v); };
  switch (kind) {
    case ShapeKind::kIds: return {"batch", "seq"};
    case ShapeKind::kResid: return {"batch", "seq", n(d.hidden)};
    case ShapeKind::kQProj: return {"batch", "seq", n(d.heads * d.head_dim)};
    case ShapeKind::kKvProj: return {"batch", "seq", n(d.kv_heads * d.head_dim)};
    case ShapeKind::kQHeads: return {"batch", "seq", n(d.heads), n(d.head_dim)};
    case ShapeKind::kKvHeads: return {"batch", "seq", n(d.kv_heads), n(d.head_dim)};
    case ShapeKind::kScores: return {"batch", n(d.heads), "seq", "k_seq"};
    case ShapeKind::kMlp: return {"batch", "seq", n(d.intermediate)};
    case ShapeKind::kLogits: return {"batch", "seq", n(d.vocab)};
  }
  return {};
}

int EditDistance(const std::string& a, const std::string& b) {
  std::vector<int> prev(b.size() + 1), cur(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) prev[j] = static_cast<int>(j);
  for (size_t i = 1; i <= a.size(); ++i) {
    cur[0] = static_cast<int>(i);
    for (size_t j = 1; j <= b.size(); ++j) {
      int sub = prev[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1);
      cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, sub});
    }
    std::swap(prev, cur);
  }
  return prev[b.size()];
}

}  // namespace

HookCatalogue::HookCatalogue(const CatalogueDims& dims) : num_layers_(dims.num_layers) {
  AddGlobalPoints(dims);
  for (int layer = 0; layer < dims.num_layers; ++layer) AddLayerPoints(dims, layer);
}

void HookCatalogue::AddGlobalPoints(const CatalogueDims& d) {
  const std::string& t = d.dtype;
  Add({"model.embed_tokens.input", {}, ShapeOf(ShapeKind::kIds, d), "int64", "token ids"});
  Add({"model.embed_tokens.output", {"hook_embed"}, ShapeOf(ShapeKind::kResid, d), t,
       "token embeddings"});
  Add({"model.norm.input", {"ln_final.hook_input"}, ShapeOf(ShapeKind::kResid, d), t,
       "final residual stream, input of the last RMSNorm"});
  Add({"model.norm.output", {"ln_final.hook_normalized"}, ShapeOf(ShapeKind::kResid, d), t,
       "final RMSNorm output"});
  Add({"lm_head.input", {"unembed.hook_input"}, ShapeOf(ShapeKind::kResid, d), t,
       "input of the unembedding"});
  Add({"lm_head.output", {"unembed.hook_logits"}, ShapeOf(ShapeKind::kLogits, d), t,
       "logits over the vocabulary"});
}

void HookCatalogue::AddLayerPoints(const CatalogueDims& d, int layer) {
  const std::string prefix = "model.layers." + std::to_string(layer) + ".";
  const std::string tl_prefix = "blocks." + std::to_string(layer) + ".";
  for (const LayerPointSpec& spec : kLayerSpecs) {
    HookPointInfo info{prefix + spec.suffix, {}, ShapeOf(spec.shape, d), d.dtype, spec.meaning,
                       layer};
    if (spec.alias[0] != '\0') info.aliases.push_back(tl_prefix + spec.alias);
    Add(std::move(info));
  }
}

void HookCatalogue::Add(HookPointInfo info) {
  const int id = static_cast<int>(points_.size());
  by_name_[info.name] = id;
  for (const std::string& alias : info.aliases) by_name_[alias] = id;
  points_.push_back(std::move(info));
}

std::optional<int> HookCatalogue::Find(const std::string& name) const {
  auto it = by_name_.find(name);
  if (it == by_name_.end()) return std::nullopt;
  return it->second;
}

std::vector<std::string> HookCatalogue::Suggest(const std::string& name, int max) const {
  std::vector<std::pair<int, std::string>> scored;
  scored.reserve(by_name_.size());
  for (const auto& entry : by_name_) scored.emplace_back(EditDistance(name, entry.first), entry.first);
  std::sort(scored.begin(), scored.end());
  std::vector<std::string> out;
  for (int i = 0; i < max && i < static_cast<int>(scored.size()); ++i) out.push_back(scored[i].second);
  return out;
}

std::string HookCatalogue::ToJson() const {
  nlohmann::json points = nlohmann::json::array();
  for (const HookPointInfo& p : points_) {
    points.push_back({{"name", p.name}, {"aliases", p.aliases}, {"shape", p.shape},
                      {"dtype", p.dtype}, {"meaning", p.meaning}, {"layer", p.layer}});
  }
  return nlohmann::json{{"hook_points", points}}.dump();
}

}  // namespace glassbox
