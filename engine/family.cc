// The parts of the family interface every family shares: the Transformer base, the KV cache
// and the config.json reader that refuses what a family does not implement.
#include "engine/family.h"

#include <ATen/ops/empty.h>

#include <algorithm>

#include "engine/gguf.h"
#include "engine/weights.h"

namespace glassbox {

namespace {

CatalogueSpec WithDtype(CatalogueSpec spec, at::ScalarType dtype) {
  spec.dtype = DtypeName(dtype);
  return spec;
}

}  // namespace

Transformer::Transformer(const ModelConfig& config, CatalogueSpec catalogue, at::Device device,
                         at::ScalarType dtype)
    : config_(config), catalogue_(WithDtype(std::move(catalogue), dtype)), device_(device),
      dtype_(dtype), plan_(device) {}

void Transformer::AddWeight(const std::string& name, const at::Tensor& weight, WeightRole role) {
  if (!weight.defined()) return;
  named_weights_.emplace_back(name, weight);
  weight_roles_.push_back(role);
}

WeightRole Transformer::weight_role(const std::string& name) const {
  for (size_t i = 0; i < named_weights_.size(); ++i) {
    if (named_weights_[i].first == name) return weight_roles_[i];
  }
  return WeightRole::kOther;
}

at::Tensor Transformer::NamedWeight(const std::string& name) const {
  for (const auto& named : named_weights_) {
    if (named.first == name) return named.second;
  }
  return at::Tensor();
}

void Transformer::SetTlLayout(const TlWeightLayout& layout) {
  tl_layout_ = layout;
  tl_weights_.clear();
  const HfWeights hf = [this](const std::string& name) { return NamedWeight(name); };
  for (const std::string& name : TlWeightNames(layout, config_, hf)) {
    tl_weights_.emplace_back(name, glassbox::TlWeight(name, layout, config_, [&](const std::string& n) {
                               const at::Tensor w = NamedWeight(n);
                               return w.defined() ? at::empty(w.sizes(), w.options().device(at::kMeta)) : w;
                             }).value().sizes().vec());
  }
}

StatusOr<at::Tensor> Transformer::TlWeight(const std::string& name) const {
  return glassbox::TlWeight(name, tl_layout_, config_, [this](const std::string& n) { return NamedWeight(n); });
}

KvCache Transformer::NewCache(int64_t batch, int64_t capacity) const {
  KvCache cache;
  for (int64_t i = 0; i < config_.num_layers; ++i) {
    auto options = at::TensorOptions().device(plan_.layer_device(i)).dtype(dtype_);
    cache.keys.push_back(at::empty({batch, config_.num_kv_heads, capacity, config_.head_dim}, options));
    cache.values.push_back(at::empty({batch, config_.num_kv_heads, capacity, config_.head_dim}, options));
  }
  return cache;
}

namespace {

// Keys that never change what a model computes at inference: metadata, training-only
// settings (dropout, initialisation), generation defaults and special token ids (which the
// tokenizer and the generation loop read on their own).
bool Inert(const std::string& key) {
  static const char* kInert[] = {
      "architectures", "model_type", "torch_dtype", "dtype", "transformers_version",
      "_name_or_path", "use_cache", "initializer_range", "pad_token_id", "bos_token_id",
      "eos_token_id", "sep_token_id", "decoder_start_token_id", "attention_dropout",
      "hidden_dropout", "embd_pdrop", "resid_pdrop", "attn_pdrop", "summary_type",
      "summary_use_proj", "summary_activation", "summary_proj_to_labels", "summary_first_dropout",
      "output_attentions", "output_hidden_states", "return_dict", "id2label", "label2id",
      "problem_type", "tokenizer_class", "is_encoder_decoder", "task_specific_params",
      "chunk_size_feed_forward", "pruned_heads", "is_decoder", "tf_legacy_loss", "use_bfloat16",
      "classifier_dropout", "hidden_dropout_prob", "attention_probs_dropout_prob",
      "max_length", "min_length", "do_sample", "num_beams", "temperature", "top_k", "top_p",
      "repetition_penalty", "length_penalty", "no_repeat_ngram_size", "bad_words_ids",
      "num_return_sequences", "early_stopping", "finetuning_task", "prefix"};
  for (const char* k : kInert) {
    if (key == k) return true;
  }
  return false;
}

}  // namespace

HfConfig::HfConfig(const nlohmann::json& json, std::string path, std::string family)
    : json_(json), path_(std::move(path)), family_(std::move(family)) {}

bool HfConfig::Has(const std::string& key) const {
  return json_.contains(key) && !json_[key].is_null();
}

const nlohmann::json& HfConfig::Json(const std::string& key) {
  static const nlohmann::json kNull;
  used_.push_back(key);
  return json_.contains(key) ? json_[key] : kNull;
}

int64_t HfConfig::Int(const std::string& key) {
  const nlohmann::json& v = Json(key);
  if (!v.is_number_integer()) {
    errors_.push_back(key + " must be an integer (" + (v.is_null() ? "missing" : "got " + v.dump()) + ")");
    return 0;
  }
  return v.get<int64_t>();
}

int64_t HfConfig::Int(const std::string& key, int64_t fallback) {
  if (Has(key)) return Int(key);
  used_.push_back(key);
  return fallback;
}

double HfConfig::Float(const std::string& key, double fallback) {
  const nlohmann::json& v = Json(key);
  if (v.is_null()) return fallback;
  if (!v.is_number()) {
    errors_.push_back(key + " must be a number (got " + v.dump() + ")");
    return fallback;
  }
  return v.get<double>();
}

bool HfConfig::Bool(const std::string& key, bool fallback) {
  const nlohmann::json& v = Json(key);
  if (v.is_null()) return fallback;
  if (!v.is_boolean()) {
    errors_.push_back(key + " must be true or false (got " + v.dump() + ")");
    return fallback;
  }
  return v.get<bool>();
}

std::string HfConfig::String(const std::string& key, const std::string& fallback) {
  const nlohmann::json& v = Json(key);
  if (v.is_null()) return fallback;
  if (!v.is_string()) {
    errors_.push_back(key + " must be a string (got " + v.dump() + ")");
    return fallback;
  }
  return v.get<std::string>();
}

void HfConfig::Expect(const std::string& key, const nlohmann::json& allowed) {
  const nlohmann::json& v = Json(key);
  if (v.is_null() || v == allowed) return;
  Refuse(key, "only " + allowed.dump() + " is implemented");
}

void HfConfig::Ignore(std::initializer_list<const char*> keys) {
  for (const char* k : keys) used_.push_back(k);
}

void HfConfig::Refuse(const std::string& key, const std::string& why) {
  const std::string top = key.substr(0, key.find('.'));
  std::string value = json_.contains(top) ? json_[top].dump() : "absent";
  if (value.size() > 120) value = value.substr(0, 117) + "...";
  errors_.push_back(key + " = " + value + ": " + why);
}

Status HfConfig::Finish() const {
  std::vector<std::string> errors = errors_;
  for (const auto& [key, value] : json_.items()) {
    if (Inert(key) || std::find(used_.begin(), used_.end(), key) != used_.end()) continue;
    std::string text = value.dump();
    if (text.size() > 120) text = text.substr(0, 117) + "...";
    errors.push_back(key + " = " + text + ": not a key the " + family_ +
                     " family implements (it may change the computation)");
  }
  if (errors.empty()) return Status::Ok();
  std::string message = path_ + ": the " + family_ + " family cannot run this config: ";
  for (size_t i = 0; i < errors.size(); ++i) message += (i ? "; " : "") + errors[i];
  return Unimplemented(message);
}

// ---- hook point tables ----

std::vector<std::string> ShapeOf(Dims dims, const ModelConfig& c) {
  auto n = [](int64_t v) { return std::to_string(v); };
  switch (dims) {
    case Dims::kResid: return {"batch", "seq", n(c.hidden_size)};
    case Dims::kQProj: return {"batch", "seq", n(c.num_heads * c.head_dim)};
    case Dims::kKvProj: return {"batch", "seq", n(c.num_kv_heads * c.head_dim)};
    case Dims::kQkv: return {"batch", "seq", n((c.num_heads + 2 * c.num_kv_heads) * c.head_dim)};
    case Dims::kQHeads: return {"batch", "seq", n(c.num_heads), n(c.head_dim)};
    case Dims::kKvHeads: return {"batch", "seq", n(c.num_kv_heads), n(c.head_dim)};
    case Dims::kScores: return {"batch", n(c.num_heads), "seq", "k_seq"};
    case Dims::kMlp: return {"batch", "seq", n(c.intermediate_size)};
  }
  return {};
}

std::vector<PointSpec> LayerPoints(const PointRow* rows, size_t count, const ModelConfig& c,
                                   const std::function<bool(int point)>& keep,
                                   std::vector<int>& index) {
  std::vector<PointSpec> specs;
  index.assign(count, -1);
  for (size_t i = 0; i < count; ++i) {
    const PointRow& row = rows[i];
    if (keep && !keep(row.point)) continue;
    index[row.point] = static_cast<int>(specs.size());
    specs.push_back({row.name, row.alias, ShapeOf(row.dims, c), row.meaning, "", row.skip_from, false});
  }
  return specs;
}

std::vector<PointSpec> EmbeddingPoints(const std::string& embedding, const ModelConfig& c) {
  return {{embedding + ".input", "", {"batch", "seq"}, "token ids", "int64", "", false},
          {embedding + ".output", "hook_embed", ShapeOf(Dims::kResid, c), "token embeddings", "", "", false}};
}

std::vector<PointSpec> HeadPoints(const std::string& norm, const std::string& unembedding,
                                  const ModelConfig& c, const std::string& logits_note) {
  const std::vector<std::string> resid = ShapeOf(Dims::kResid, c);
  const std::vector<std::string> logits = {"batch", "seq", std::to_string(c.vocab_size)};
  return {{norm + ".input", "ln_final.hook_input", resid, "final residual stream, input of the last norm", "", "", false},
          {norm + ".output", "ln_final.hook_normalized", resid, "final norm output", "", "", false},
          {unembedding + ".input", "unembed.hook_input", resid, "input of the unembedding", "", "", true},
          {unembedding + ".output", "unembed.hook_logits", logits,
           "logits over the vocabulary" + logits_note, "", "", true}};
}

// ---- reading weights and metadata ----

Status WeightReader::Get(const std::string& name, const std::vector<int64_t>& shape,
                         at::Tensor& out, const TensorSource::Reorder& reorder) {
  GLASSBOX_ASSIGN_OR_RETURN(out, tensors_.Take(Stored(name), shape, reorder));
  return Status::Ok();
}

Status WeightReader::Optional(bool present, const std::string& name,
                              const std::vector<int64_t>& shape, at::Tensor& out) {
  return present ? Get(name, shape, out) : Status::Ok();
}

Status WeightReader::Norm(const std::string& name, int64_t d, at::Tensor& weight, at::Tensor& bias) {
  GLASSBOX_RETURN_IF_ERROR(Get(name + ".weight", {d}, weight));
  return Get(name + ".bias", {d}, bias);
}

Status ValidateSizes(const std::string& path, const ModelConfig& c, bool rotary) {
  if (c.num_layers <= 0 || c.hidden_size <= 0 || c.num_heads <= 0 || c.num_kv_heads <= 0 ||
      c.vocab_size <= 0 || c.intermediate_size <= 0 || c.head_dim <= 0 ||
      c.max_position_embeddings <= 0 || (rotary && c.head_dim % 2 != 0)) {
    return InvalidArgument(path + ": model config has a non-positive size (layers, hidden, heads, "
                           "kv heads, vocab, intermediate, head_dim, positions)" +
                           std::string(rotary ? " or an odd head_dim" : ""));
  }
  if (c.num_heads % c.num_kv_heads != 0) {
    return InvalidArgument(path + ": attention heads (" + std::to_string(c.num_heads) +
                           ") are not a multiple of key/value heads (" +
                           std::to_string(c.num_kv_heads) + ")");
  }
  return Status::Ok();
}

Status CheckGgufKeys(const GgufFile& file, const std::string& arch,
                     const std::vector<std::string>& known) {
  const std::string prefix = arch + ".";
  for (const auto& entry : file.metadata()) {
    const std::string& key = entry.first;
    if (key.compare(0, prefix.size(), prefix) != 0) continue;
    if (std::find(known.begin(), known.end(), key.substr(prefix.size())) == known.end()) {
      return Unimplemented(file.path() + ": metadata " + key + " is not implemented by the " +
                           arch + " family (it may change the computation)");
    }
  }
  return Status::Ok();
}

Status ReadGgufSizes(const GgufFile& f, const std::string& arch, ModelConfig& c) {
  const std::string a = arch + ".";
  c.architecture = arch;
  for (auto [key, out] : {std::pair<const char*, int64_t*>{"block_count", &c.num_layers},
                          {"embedding_length", &c.hidden_size},
                          {"feed_forward_length", &c.intermediate_size},
                          {"attention.head_count", &c.num_heads}}) {
    StatusOr<int64_t> v = f.GetInt(a + key);
    if (!v.ok()) return v.status().WithContext(f.path());
    *out = *v;
  }
  c.num_kv_heads = f.GetInt(a + "attention.head_count_kv").value_or(c.num_heads);
  c.head_dim = f.GetInt(a + "attention.key_length").value_or(c.num_heads > 0 ? c.hidden_size / c.num_heads : 0);
  if (f.GetInt(a + "attention.value_length").value_or(c.head_dim) != c.head_dim) {
    return Unimplemented(f.path() + ": key and value head sizes differ; not implemented");
  }
  c.max_position_embeddings = f.GetInt(a + "context_length").value_or(2048);
  const StoredTensor* embed = f.FindTensor("token_embd.weight");
  if (embed == nullptr || embed->shape.size() != 2) {
    return InvalidArgument(f.path() + ": no 2-D tensor 'token_embd.weight'");
  }
  c.vocab_size = embed->shape[0];
  c.tie_word_embeddings = f.FindTensor("output.weight") == nullptr;
  c.bos_id = f.GetInt("tokenizer.ggml.bos_token_id").value_or(-1);
  c.eos_id = f.GetInt("tokenizer.ggml.eos_token_id").value_or(-1);
  return Status::Ok();
}

}  // namespace glassbox
