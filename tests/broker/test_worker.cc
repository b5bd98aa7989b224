// glassbox-test-worker: an engine worker without an engine, for the broker's end-to-end
// tests and benchmark. Built on broker/worker_link.h like the real one. What it does with a
// job is read from the request's first prompt, a list of settings such as
// "sleep_ms=500;result_bytes=3000000" (all optional):
//   sleep_ms=N       take N ms, checking JobContext::ShouldStop every 5 ms (unless ignore_stop=1)
//   result_bytes=N   save a uint8 tensor of N bytes (named "echo"); default 0
//   error=TEXT       return an INVALID_ARGUMENT error report with TEXT instead of a result
//   touch=PATH       create the file PATH when the job starts (a test sees the job reached
//                    the worker)
//   wait_file=PATH   block until the file PATH exists (checking ShouldStop every 5 ms unless
//                    ignore_stop=1): a test releases the job explicitly instead of timing it
//   crash=1          kill the worker process (SIGSEGV) as soon as the job starts
//   done_file=PATH   create the file PATH just before returning the result
// The result also saves the prompt (as "prompt") and the worker's --tag, so a test can tell
// which worker ran a job. `tokenize` is answered with one id per byte of the text (the byte's
// value), at once, also while a job runs.
#include <CLI/CLI.hpp>
#include <atomic>
#include <cstdio>
#include <filesystem>
#include <chrono>
#include <csignal>
#include <map>
#include <sstream>
#include <thread>

#include "broker/worker_link.h"
#include "protocol/codec.h"

namespace {

using namespace glassbox;

std::atomic<bool> g_stop{false};
void OnSignal(int) { g_stop.store(true); }

std::map<std::string, std::string> ParseSettings(const std::string& text) {
  std::map<std::string, std::string> out;
  std::stringstream in(text);
  std::string item;
  while (std::getline(in, item, ';')) {
    const size_t eq = item.find('=');
    if (eq != std::string::npos) out[item.substr(0, eq)] = item.substr(eq + 1);
  }
  return out;
}

std::string ErrorOf(const Status& status) {
  return protocol::EncodeErrorReport(protocol::ErrorReport::FromStatus(status));
}

// Sleeps `ms`, returning early (false) when the job should stop.
bool Sleep(const broker::JobContext& job, int64_t ms, bool ignore_stop) {
  const auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(ms);
  while (std::chrono::steady_clock::now() < end) {
    if (!ignore_stop && job.ShouldStop()) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return true;
}

void Touch(const std::string& path) {
  if (FILE* f = std::fopen(path.c_str(), "w")) std::fclose(f);
}

// Waits until `path` exists, returning early (false) when the job should stop.
bool WaitForFile(const broker::JobContext& job, const std::string& path, bool ignore_stop) {
  while (!std::filesystem::exists(path)) {
    if (!ignore_stop && job.ShouldStop()) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return true;
}

std::string Handle(const std::string& tag, const broker::JobContext& job,
                   const std::string& request_bytes) {
  auto request = protocol::DecodeRequest(request_bytes);
  if (!request.ok()) return ErrorOf(request.status());
  std::string prompt;
  if (!request->traces.empty() && !request->traces[0].invokes.empty()) {
    prompt = request->traces[0].invokes[0].prompt.value_or("");
  }
  auto settings = ParseSettings(prompt);
  if (settings.count("touch")) Touch(settings["touch"]);
  if (settings["crash"] == "1") std::raise(SIGSEGV);
  const bool ignore_stop = settings["ignore_stop"] == "1";
  const int64_t sleep_ms = settings.count("sleep_ms") ? std::stoll(settings["sleep_ms"]) : 0;
  if (!Sleep(job, sleep_ms, ignore_stop) ||
      (settings.count("wait_file") && !WaitForFile(job, settings["wait_file"], ignore_stop))) {
    return ErrorOf(Cancelled(job.StopReason()));
  }
  if (settings.count("error")) return ErrorOf(InvalidArgument(settings["error"]));
  protocol::TensorData tensor;
  tensor.dtype = protocol::DType::kUInt8;
  const int64_t n = settings.count("result_bytes") ? std::stoll(settings["result_bytes"]) : 0;
  tensor.shape = {n};
  tensor.bytes.resize(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) tensor.bytes[i] = static_cast<char>(i * 7 % 251);
  protocol::Result result;
  result.saved.push_back({"echo", 1, protocol::Value::Tensor(std::move(tensor))});
  result.saved.push_back({"prompt", 2, protocol::Value::String(prompt)});
  result.saved.push_back({"worker", 3, protocol::Value::String(tag)});
  std::string encoded = protocol::EncodeResult(result);
  if (settings.count("done_file")) Touch(settings["done_file"]);
  return encoded;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"glassbox-test-worker: a fake engine worker for broker tests"};
  broker::WorkerParams params;
  params.model_name = "test-model";
  params.catalogue_json = R"({"points":[{"name":"model.norm.output"}]})";
  params.tokenizer = [](const std::string& text) -> StatusOr<std::vector<int64_t>> {
    return std::vector<int64_t>(text.begin(), text.end());  // char: bytes under 0x80 in tests
  };
  std::string tag = "worker";
  app.add_option("--broker", params.broker_endpoint)->capture_default_str();
  app.add_option("--name", params.model_name)->capture_default_str();
  app.add_option("--heartbeat-ms", params.heartbeat_interval_ms)->capture_default_str();
  app.add_option("--heartbeat-liveness", params.heartbeat_liveness)->capture_default_str();
  app.add_option("--chunk-bytes", params.result_chunk_bytes)->capture_default_str();
  app.add_option("--send-queue", params.send_queue_chunks)->capture_default_str();
  app.add_option("--tag", tag, "saved in every result, to tell workers apart");
  std::string broker_key, worker_key;
  app.add_option("--broker-key", broker_key, "the broker's worker public key file (CURVE)");
  app.add_option("--worker-key", worker_key, "this worker's CURVE secret key file");
  CLI11_PARSE(app, argc, argv);
  if (!broker_key.empty()) {
    Status keys = broker::ReadWorkerCurveKeys(broker_key, worker_key, &params);
    if (!keys.ok()) {
      std::fprintf(stderr, "glassbox-test-worker: %s\n", keys.ToString().c_str());
      return 1;
    }
  }
  std::signal(SIGINT, OnSignal);
  std::signal(SIGTERM, OnSignal);
  auto handler = [&](const broker::JobContext& job, const std::string& request) {
    return Handle(tag, job, request);
  };
  Status status = broker::ServeJobs(params, handler, g_stop);
  if (!status.ok()) {
    std::fprintf(stderr, "glassbox-test-worker: %s\n", status.ToString().c_str());
    return 1;
  }
  return 0;
}
