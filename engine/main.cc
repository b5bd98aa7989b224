// glassbox-engine: the engine on the command line (catalogue, next-token top-k, generation).
#include <ATen/ops/softmax.h>
#include <ATen/ops/topk.h>
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <atomic>
#include <chrono>
#include <csignal>
#include <fstream>
#include <sstream>
#include <iostream>
#include <tuple>

#include "engine/engine.h"
#include "intervention/intervention.h"
#include "intervention/ops.h"
#include "protocol/codec.h"
#include "protocol/json.h"
#include "worker/serve.h"

namespace glassbox {
namespace {

struct CommonFlags {
  std::string model_path;
  EngineParams engine;
};

void AddCommonFlags(CLI::App* command, CommonFlags& flags) {
  command->add_option("--model", flags.model_path, "a .gguf file or a Hugging Face directory")
      ->required();
  command->add_option("--device", flags.engine.device, "cpu, cuda, cuda:N, auto (CUDA when this LibTorch and machine have it), or cuda:0,cuda:1,... to split the layers across GPUs")
      ->capture_default_str();
  command->add_option("--dtype", flags.engine.dtype, "float32, bfloat16 or float16")
      ->capture_default_str();
  command->add_option("--threads", flags.engine.intra_op_threads, "LibTorch intra-op threads")
      ->capture_default_str();
  command->add_option_function<int64_t>(
      "--memory-budget-mib", [&flags](int64_t mib) { flags.engine.memory_budget = mib << 20; },
      "MiB the weights may take on the device (default: what it has free; -1: no check)");
}

StatusOr<std::unique_ptr<Model>> LoadVerbose(const CommonFlags& flags) {
  const auto start = std::chrono::steady_clock::now();
  std::cerr << "loading " << flags.model_path << " ..." << std::flush;
  auto model = Model::Load(flags.model_path, flags.engine);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (model.ok()) std::cerr << " done in " << seconds << " s\n";
  else std::cerr << " failed\n";
  return model;
}

StatusOr<std::vector<int64_t>> EncodePrompt(const Model& model, const std::string& prompt) {
  if (model.tokenizer() == nullptr) {
    return InvalidArgument("this model has no tokenizer (no tokenizer.json in its directory)");
  }
  return model.tokenizer()->Encode(prompt, /*add_special_tokens=*/false);
}

Status RunInfo(const CommonFlags& flags) {
  GLASSBOX_ASSIGN_OR_RETURN(std::unique_ptr<Model> model, LoadVerbose(flags));
  std::cout << nlohmann::json::parse(worker::CatalogueJson(*model)).dump(2) << "\n";
  return Status::Ok();
}

Status RunTopK(const CommonFlags& flags, const std::string& prompt, int k) {
  GLASSBOX_ASSIGN_OR_RETURN(std::unique_ptr<Model> model, LoadVerbose(flags));
  GLASSBOX_ASSIGN_OR_RETURN(std::vector<int64_t> ids, EncodePrompt(*model, prompt));
  GLASSBOX_ASSIGN_OR_RETURN(ForwardResult result, model->Forward({{ids}, /*all_logits=*/false}));
  at::Tensor logits = result.logits[0][0];
  at::Tensor probs = at::softmax(logits, -1);
  k = std::max(1, std::min<int>(k, logits.size(0)));
  at::Tensor top_values, top_ids;
  std::tie(top_values, top_ids) = at::topk(logits, k);
  nlohmann::json top = nlohmann::json::array();
  for (int i = 0; i < k; ++i) {
    const int64_t id = top_ids[i].item<int64_t>();
    StatusOr<std::string> text = model->tokenizer()->Decode({id});
    top.push_back({{"id", id}, {"token", text.ok() ? *text : ""},
                   {"logit", top_values[i].item<double>()},
                   {"prob", probs[id].item<double>()}});
  }
  nlohmann::json out = {{"prompt", prompt}, {"token_ids", ids}, {"top", top}};
  std::cout << out.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
  return Status::Ok();
}

Status RunGenerate(const CommonFlags& flags, const std::string& prompt,
                   const SamplingParams& sampling, bool json) {
  GLASSBOX_ASSIGN_OR_RETURN(std::unique_ptr<Model> model, LoadVerbose(flags));
  GLASSBOX_ASSIGN_OR_RETURN(std::vector<int64_t> ids, EncodePrompt(*model, prompt));
  const auto start = std::chrono::steady_clock::now();
  GLASSBOX_ASSIGN_OR_RETURN(GenerateResult result, model->Generate({ids}, sampling));
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  GLASSBOX_ASSIGN_OR_RETURN(std::string text, model->tokenizer()->Decode(result.new_tokens[0]));
  if (json) {
    nlohmann::json out = {{"prompt", prompt}, {"prompt_ids", ids},
                          {"new_ids", result.new_tokens[0]}, {"text", text},
                          {"stop_reason", result.stop_reasons[0]}, {"seconds", seconds}};
    std::cout << out.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
  } else {
    std::cout << text << "\n";
    std::cerr << result.new_tokens[0].size() << " tokens in " << seconds << " s ("
              << result.stop_reasons[0] << ")\n";
  }
  return Status::Ok();
}

// A saved value for people: small tensors in full, large ones as shape, dtype and a preview.
nlohmann::json DescribeSaved(const protocol::Value& value) {
  if (value.kind == protocol::Value::Kind::kList) {
    nlohmann::json items = nlohmann::json::array();
    for (const protocol::Value& v : value.list) items.push_back(DescribeSaved(v));
    return items;
  }
  if (value.kind != protocol::Value::Kind::kTensor) return protocol::ValueToJson(value);
  nlohmann::json full = protocol::ValueToJson(value)["tensor"];
  nlohmann::json out = {{"dtype", full["dtype"]}, {"shape", full["shape"]}};
  const nlohmann::json& data = full["data"];
  if (data.size() <= 64) {
    out["values"] = data;
  } else {
    out["first_values"] = nlohmann::json(std::vector<nlohmann::json>(data.begin(), data.begin() + 8));
  }
  return out;
}

// `scan`: a dry run whatever the graph says (the graph's own "scan": true does the same).
Status RunGraph(const CommonFlags& flags, const std::string& graph_path, const std::string& out_path,
                bool scan) {
  std::ifstream in(graph_path);
  if (!in) return NotFound("cannot open graph file " + graph_path);
  nlohmann::json text = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
  if (text.is_discarded()) return InvalidArgument(graph_path + ": not valid JSON");
  StatusOr<protocol::Request> request = protocol::RequestFromJson(text);
  if (!request.ok()) return request.status().WithContext(graph_path);
  request->scan |= scan;
  GLASSBOX_ASSIGN_OR_RETURN(std::unique_ptr<Model> model, LoadVerbose(flags));
  const auto start = std::chrono::steady_clock::now();
  GLASSBOX_ASSIGN_OR_RETURN(protocol::Result result, intervention::Run(*model, *request));
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  nlohmann::json saved = nlohmann::json::object();
  for (const protocol::SavedValue& s : result.saved) saved[s.name] = DescribeSaved(s.value);
  nlohmann::json out = {{"saved", saved}, {"seconds", seconds}};
  if (request->scan) out["shapes"] = protocol::ResultToJson(result)["body"].value("shapes", nlohmann::json::array());
  if (!result.generated.empty()) {
    out["generated_ids"] = result.generated;
    if (model->tokenizer() != nullptr) {
      nlohmann::json texts = nlohmann::json::array();
      for (const auto& ids : result.generated) texts.push_back(model->tokenizer()->Decode(ids).ok() ? *model->tokenizer()->Decode(ids) : "");
      out["generated_text"] = texts;
    }
  }
  std::cout << out.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
  if (!out_path.empty()) {
    std::ofstream file(out_path, std::ios::binary);
    file << protocol::EncodeResult(result);
    if (!file) return Internal("cannot write " + out_path);
    std::cerr << "wrote the result in the wire format to " << out_path << "\n";
  }
  return Status::Ok();
}

std::atomic<bool> stop_serving{false};  // set by SIGINT / SIGTERM
void StopServing(int) { stop_serving = true; }

Status RunServe(const CommonFlags& flags, worker::ServeParams params) {
  params.model_path = flags.model_path;
  params.engine = flags.engine;
  std::signal(SIGINT, StopServing);
  std::signal(SIGTERM, StopServing);
  return worker::Serve(params, stop_serving);
}

}  // namespace
}  // namespace glassbox

int main(int argc, char** argv) {
  using namespace glassbox;
  CLI::App app{"Glassbox engine: load a model, inspect its hook points, run it."};
  app.require_subcommand(1);
  CommonFlags flags;
  std::string prompt;
  int k = 10;
  SamplingParams sampling;
  bool json = false;

  CLI::App* info = app.add_subcommand("info", "print the model config and hook catalogue as JSON");
  AddCommonFlags(info, flags);
  CLI::App* topk = app.add_subcommand("topk", "print the next-token top-k as JSON");
  AddCommonFlags(topk, flags);
  topk->add_option("--prompt", prompt, "text to continue")->required();
  topk->add_option("--k", k, "how many tokens")->capture_default_str();
  CLI::App* generate = app.add_subcommand("generate", "print a continuation of the prompt");
  AddCommonFlags(generate, flags);
  generate->add_option("--prompt", prompt, "text to continue")->required();
  generate->add_option("--max-new-tokens", sampling.max_new_tokens)->capture_default_str();
  generate->add_option("--seed", sampling.seed, "sampling seed")->capture_default_str();
  generate->add_option("--temperature", sampling.temperature, "0 = greedy")->capture_default_str();
  generate->add_option("--top-k", sampling.top_k, "0 = off")->capture_default_str();
  generate->add_option("--top-p", sampling.top_p, "1 = off")->capture_default_str();
  generate->add_flag("--json", json, "print ids, text and timing as JSON");
  CLI::App* ops = app.add_subcommand("ops", "print the whitelist of graph operations (Markdown)");
  CLI::App* run = app.add_subcommand("run", "run an intervention graph (JSON) and print saved values");
  AddCommonFlags(run, flags);
  std::string graph_path, out_path;
  run->add_option("--graph", graph_path, "request in the JSON mirror of the wire format")->required();
  run->add_option("--out", out_path, "also write the result in the wire format (msgpack)");
  bool scan = false;
  run->add_flag("--scan", scan, "dry run: print every node's dtype and shape, touch no weights");
  CLI::App* serve = app.add_subcommand("serve", "keep the model resident and run jobs from a broker");
  AddCommonFlags(serve, flags);
  worker::ServeParams serve_params;
  serve->add_option("--name", serve_params.name, "the model name clients ask for")->required();
  serve->add_option("--broker", serve_params.broker_endpoint, "the broker's worker endpoint")
      ->capture_default_str();
  serve->add_option("--heartbeat-ms", serve_params.heartbeat_interval_ms)->capture_default_str();
  serve->add_option("--broker-key", serve_params.broker_key_file,
                    "file with the broker's worker public key (CURVE; with --worker-key)");
  serve->add_option("--worker-key", serve_params.worker_key_file,
                    "file with this worker's CURVE secret key, whose public key the broker "
                    "lists (glassbox-broker serve --worker-keys)");
  serve->add_option("--batch-slots", serve_params.batch_slots,
                    "jobs taken at once; they share forward passes and generations where their "
                    "graphs allow (see the README's batching section)")
      ->capture_default_str();
  serve->add_option("--hold-file", serve_params.hold_file,
                    "tests only: while this file exists, jobs wait before running");
  serve->add_option("--max-new-tokens", serve_params.limits.max_new_tokens,
                    "the most new tokens a job may generate")->capture_default_str();
  serve->add_option("--max-saved-bytes", serve_params.limits.max_saved_bytes,
                    "the most bytes a job may save")->capture_default_str();
  serve->add_option("--max-job-bytes", serve_params.limits.max_job_bytes,
                    "refuse jobs whose memory estimate is over this many bytes (default: half "
                    "of MemAvailable at start)");
  serve->add_option("--flops-per-second", serve_params.limits.flops_per_second,
                    "the rate graph ops are costed at: ops that cannot finish within a job's "
                    "time limit at this rate are refused before they run")
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  if (*ops) {
    std::cout << intervention::OpsMarkdown();
    return 0;
  }

  Status status;
  if (*info) status = RunInfo(flags);
  else if (*topk) status = RunTopK(flags, prompt, k);
  else if (*run) status = RunGraph(flags, graph_path, out_path, scan);
  else if (*serve) status = RunServe(flags, serve_params);
  else status = RunGenerate(flags, prompt, sampling, json);
  if (!status.ok()) {
    std::cerr << "error: " << status.ToString() << "\n";
    return 1;
  }
  return 0;
}
