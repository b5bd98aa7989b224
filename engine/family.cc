// The parts of the family interface every family shares: the Transformer base, the KV cache
// and the config.json reader that refuses what a family does not implement.
#include "engine/family.h"

#include <ATen/ops/empty.h>

#include <algorithm>

namespace glassbox {

namespace {

CatalogueSpec WithDtype(CatalogueSpec spec, at::ScalarType dtype) {
  spec.dtype = dtype == at::kBFloat16 ? "bfloat16" : dtype == at::kHalf ? "float16" : "float32";
  return spec;
}

}  // namespace

Transformer::Transformer(const ModelConfig& config, CatalogueSpec catalogue, at::Device device,
                         at::ScalarType dtype)
    : config_(config), catalogue_(WithDtype(std::move(catalogue), dtype)), device_(device),
      dtype_(dtype) {}

KvCache Transformer::NewCache(int64_t batch, int64_t capacity) const {
  KvCache cache;
  auto options = at::TensorOptions().device(device_).dtype(dtype_);
  for (int64_t i = 0; i < config_.num_layers; ++i) {
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

}  // namespace glassbox
