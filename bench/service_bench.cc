// service_bench: a trivial graph on the tiny checkpoint, end to end through the whole service
// — client, glassbox-broker, Redis, `glassbox-engine serve` and back — as real processes on
// this machine, against running the same graph in-process (intervention::Run on a loaded
// model). Prints jobs/s and latency (submit to result fetched; p50, p99) for one client doing
// one job at a time, one client with a window of jobs in flight, and N concurrent clients,
// with the latency the service adds over the in-process run. Targets (issue 4): >= 1,000
// jobs/s; p50 added <= 2 ms.
//
// Usage: build/bin/service_bench [--model DIR] [--jobs N] [--clients N] [--window N]
#include <CLI/CLI.hpp>

#include <cstdio>
#include <thread>

#include "bench/bench_util.h"
#include "bench/service_load.h"
#include "intervention/intervention.h"
#include "protocol/codec.h"

namespace {

using namespace glassbox;

// Reads one hook point for a 4-token prompt and saves it (1 x 4 x hidden floats). At the
// embedding, the interpreter stops the pass there (the trivial graph); at the final norm, the
// whole forward pass runs.
protocol::Request ReadOnePoint(const std::string& point) {
  protocol::Request r;
  r.model = "bench-model";
  protocol::Trace trace;
  trace.invokes.push_back({std::nullopt, std::vector<int64_t>{1, 17, 42, 99}});
  trace.nodes.push_back({0, "read", {}, {{"point", protocol::Value::String(point)}}, ""});
  trace.nodes.push_back({1, "save", {protocol::Value::Ref(0)}, {}, ""});
  r.traces.push_back(trace);
  return r;
}

struct LoadShape {
  int jobs, clients, window;
};

// The three load patterns for one graph, each against the graph's in-process time.
void Measure(const Model& model, const protocol::Request& graph, const std::string& label,
             bench::BenchService& service, broker::Client& client, const LoadShape& load) {
  const std::string request = protocol::EncodeRequest(graph);
  const double run_ms = 1000 * bench::Seconds([&] { (void)intervention::Run(model, graph); }, 200);
  const double round_trip_ms = 1000 * bench::Seconds([&] {
    auto decoded = protocol::DecodeRequest(request);
    (void)protocol::EncodeResult(*intervention::Run(model, *decoded));
  }, 200);
  std::printf("\n%s (request %zu bytes): in-process intervention::Run %.3f ms, with decode + "
              "encode %.3f ms\n", label.c_str(), request.size(), run_ms, round_trip_ms);
  bench::LoadStats one;
  bench::Sequential(client, request, load.jobs, &one);
  bench::PrintLoad("1 client, one job at a time", one, run_ms);
  bench::PrintLoad("1 client, " + std::to_string(load.window) + " jobs in flight",
                   bench::Windowed(client, request, load.jobs, load.window), run_ms);
  bench::PrintLoad(std::to_string(load.clients) + " clients, one job at a time each",
                   bench::Concurrent(service.params(), request, load.jobs, load.clients), run_ms);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"service_bench: a trivial graph through broker, Redis and an engine worker"};
  std::string model_path = "tests/fixtures/tiny_llama";
  int jobs = 2000, clients = 8, window = 16;
  std::string appendfsync = "everysec";
  app.add_option("--model", model_path, "model for the worker and the in-process run")
      ->capture_default_str();
  app.add_option("--jobs", jobs, "jobs per measurement")->capture_default_str();
  app.add_option("--clients", clients, "concurrent clients")->capture_default_str();
  app.add_option("--window", window, "jobs in flight for the windowed run")->capture_default_str();
  app.add_option("--appendfsync", appendfsync, "redis fsync policy: always or everysec")
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);

  auto model = Model::Load(model_path);
  if (!model.ok()) {
    std::fprintf(stderr, "error: %s\n", model.status().ToString().c_str());
    return 1;
  }
  bench::BenchService service(appendfsync, {broker::testing::BinDir() + "/glassbox-engine", "serve",
                                            "--model", model_path, "--name", "bench-model",
                                            "--heartbeat-ms", "1000"});
  auto client = broker::Client::Connect(service.params());
  const protocol::Request trivial = ReadOnePoint("model.embed_tokens.output");
  if (!client.ok() || !service.WaitUntilServing(**client, protocol::EncodeRequest(trivial))) {
    std::fprintf(stderr, "error: the engine worker never completed a job\n");
    return 1;
  }
  std::printf("service_bench: %s, 1 engine worker, redis appendfsync %s, %u hardware threads\n",
              model_path.c_str(), appendfsync.c_str(), std::thread::hardware_concurrency());
  const LoadShape load{jobs, clients, window};
  Measure(**model, trivial, "trivial graph: read the embedding output", service, **client, load);
  Measure(**model, ReadOnePoint("model.norm.output"), "whole forward: read the final norm's output",
          service, **client, load);
  return 0;
}
