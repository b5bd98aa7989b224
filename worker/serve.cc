// glassbox-engine serve: load once, announce the catalogue, run job after job. Heartbeats
// and chunking are the broker link's business (broker/worker_link.h); stopping a job
// between hook points when it is cancelled or out of time is ours.
#include "worker/serve.h"

#include <nlohmann/json.hpp>

#include <cstdio>
#include <fstream>
#include <iostream>
#include <memory>
#include <sstream>
#include <thread>

#include <unistd.h>

#include "base/random.h"
#include "broker/worker_link.h"
#include "protocol/codec.h"
#include "worker/batcher.h"

namespace glassbox::worker {
namespace {

nlohmann::json ConfigJson(const Model& model) {
  const ModelConfig& c = model.config();
  return {{"architecture", c.architecture}, {"vocab_size", c.vocab_size},
          {"hidden_size", c.hidden_size}, {"intermediate_size", c.intermediate_size},
          {"num_layers", c.num_layers}, {"num_heads", c.num_heads},
          {"num_kv_heads", c.num_kv_heads}, {"head_dim", c.head_dim},
          {"rope_theta", c.rope_theta}, {"rms_norm_eps", c.rms_norm_eps},
          {"tie_word_embeddings", c.tie_word_embeddings},
          {"max_position_embeddings", c.max_position_embeddings},
          {"bos_id", c.bos_id}, {"eos_id", c.eos_id},
          {"device", model.device()}, {"dtype", model.dtype()}};
}

// What a client needs to turn ids back into text as the server would: every token in its
// byte-level form (GPT-2's byte-to-unicode mapping) or SentencePiece's ("▁" for a space,
// <0xNN> for a byte), and which ids are special (literal).
nlohmann::json TokenizerJson(const Tokenizer& tokenizer) {
  nlohmann::json tokens = nlohmann::json::array();
  for (int64_t id = 0; id < tokenizer.vocab_size(); ++id) tokens.push_back(tokenizer.TokenText(id));
  const bool sentencepiece = tokenizer.model() == TokenizerModel::kSentencePieceBpe;
  return {{"kind", sentencepiece ? "sentencepiece_bpe" : "byte_level_bpe"},
          {"strip_leading_spaces", tokenizer.strip_leading_spaces()},
          {"tokens", std::move(tokens)}, {"special_ids", tokenizer.special_ids()},
          {"bos_id", tokenizer.bos_id()}, {"eos_id", tokenizer.eos_id()}};
}

// The chat template for the client to render (null where the files carry none), with the
// special-token strings transformers passes to it.
void AddChatTemplate(const ChatTemplate& chat, nlohmann::json& tokenizer) {
  auto or_null = [](const std::string& s) { return s.empty() ? nlohmann::json() : nlohmann::json(s); };
  tokenizer["chat_template"] = or_null(chat.source);
  tokenizer["bos_token"] = or_null(chat.bos_token);
  tokenizer["eos_token"] = or_null(chat.eos_token);
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

constexpr int kMaxBatchSlots = 64;

// What names this process to the broker for all its links: host, pid and a random part.
std::string ProcessGroup() {
  char host[256] = {0};
  if (gethostname(host, sizeof(host) - 1) != 0) host[0] = '\0';
  return std::string(host).substr(0, 32) + ":" + std::to_string(getpid()) + ":" + RandomHex(1);
}

}  // namespace

int64_t DefaultMaxJobBytes(const std::string& meminfo) {
  std::istringstream lines(meminfo);
  std::string line;
  while (std::getline(lines, line)) {
    std::istringstream fields(line);
    std::string key, unit;
    int64_t kib = 0;
    if (fields >> key >> kib >> unit && key == "MemAvailable:" && unit == "kB" && kib > 0) {
      return kib * 1024 / 2;
    }
  }
  return 0;
}

std::string CatalogueJson(const Model& model) {
  nlohmann::json out = nlohmann::json::parse(model.catalogue().ToJson());
  out["model"] = ConfigJson(model);
  nlohmann::json weights = nlohmann::json::array();
  for (const std::string& name : model.WeightNames()) {
    nlohmann::json entry = {{"name", name}, {"shape", model.WeightShape(name).value()}};
    const WeightRole role = model.WeightRoleOf(name);
    if (role == WeightRole::kLinearOutIn) entry["linear"] = "out_in";
    if (role == WeightRole::kLinearInOut) entry["linear"] = "in_out";
    if (role == WeightRole::kLinearBias) entry["linear"] = "bias";
    if (role == WeightRole::kTransformerLens) entry["transformer_lens"] = true;
    weights.push_back(std::move(entry));
  }
  out["weights"] = std::move(weights);
  if (model.tokenizer() != nullptr) {
    out["tokenizer"] = TokenizerJson(*model.tokenizer());
    AddChatTemplate(model.chat_template(), out["tokenizer"]);
  }
  return out.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

Status Serve(const ServeParams& params, const std::atomic<bool>& stop) {
  if (params.batch_slots < 1 || params.batch_slots > kMaxBatchSlots) {
    return InvalidArgument("--batch-slots must be between 1 and " + std::to_string(kMaxBatchSlots) + ", got " +
                           std::to_string(params.batch_slots));
  }
  broker::WorkerParams link;
  if (params.broker_key_file.empty() != params.worker_key_file.empty()) {
    return InvalidArgument("--broker-key and --worker-key go together (CURVE authentication)");
  }
  if (!params.broker_key_file.empty()) {
    GLASSBOX_RETURN_IF_ERROR(
        broker::ReadWorkerCurveKeys(params.broker_key_file, params.worker_key_file, &link));
  }
  std::cerr << "loading " << params.model_path << " ..." << std::flush;
  StatusOr<std::unique_ptr<Model>> loaded = Model::Load(params.model_path, params.engine);
  if (!loaded.ok()) {
    std::cerr << " failed\n";
    return loaded.status();
  }
  const Model& model = **loaded;
  intervention::InterventionLimits limits = params.limits;
  if (limits.max_job_bytes <= 0) limits.max_job_bytes = DefaultMaxJobBytes(ReadFile("/proc/meminfo"));
  std::cerr << " done; serving '" << params.name << "' to the broker at "
            << params.broker_endpoint << "; jobs estimated over " << limits.max_job_bytes
            << " bytes of memory are refused; " << params.batch_slots
            << (params.batch_slots == 1 ? " job at a time\n" : " jobs at a time, batched\n");

  link.broker_endpoint = params.broker_endpoint;
  link.model_name = params.name;
  link.catalogue_json = CatalogueJson(model);
  link.heartbeat_interval_ms = params.heartbeat_interval_ms;
  if (params.batch_slots > 1) link.group = ProcessGroup();
  if (model.tokenizer() != nullptr) {
    // As a trace's text prompt is encoded (intervention/validate.cc); the tokenizer is
    // immutable, so this runs safely beside a job.
    link.tokenizer = [&model](const std::string& text) -> StatusOr<std::vector<int64_t>> {
      return model.tokenizer()->Encode(text, /*add_special_tokens=*/true);
    };
  } else {
    link.tokenizer = [&params](const std::string&) -> StatusOr<std::vector<int64_t>> {
      return NotFound("model " + params.name + " has no tokenizer: send token ids");
    };
  }
  Batcher batcher(model, params.name, limits, static_cast<size_t>(params.batch_slots), params.hold_file);
  auto handler = [&batcher](const broker::JobContext& job, const std::string& request) {
    return batcher.Run(job, request);
  };
  // One link per slot, each on a thread of its own; the first error any of them returns.
  std::vector<Status> statuses(params.batch_slots);
  std::vector<std::thread> links;
  for (int slot = 1; slot < params.batch_slots; ++slot) {
    links.emplace_back([&, slot] { statuses[slot] = broker::ServeJobs(link, handler, stop); });
  }
  statuses[0] = broker::ServeJobs(link, handler, stop);
  for (std::thread& t : links) t.join();
  for (const Status& s : statuses) GLASSBOX_RETURN_IF_ERROR(s);
  return Status::Ok();
}

}  // namespace glassbox::worker
