// broker_bench: jobs through the whole service path — client, glassbox-broker, Redis,
// glassbox-test-worker (built on broker/worker_link.h) and back — with a trivial request, as
// real processes on this machine. Prints jobs/s and per-job latency (submit to result
// fetched) for one client doing one job at a time, one client keeping a window of jobs in
// flight, and 8 concurrent clients; and the ratio to handling the same request in-process
// (decode request, encode result: what the service path adds on top of the engine).
//
// Usage: build/bin/broker_bench [--jobs N] [--clients N] [--window N] [--appendfsync always]
#include <CLI/CLI.hpp>

#include <cstdio>
#include <thread>
#include <zmq.hpp>

#include "bench/bench_util.h"
#include "bench/service_load.h"
#include "protocol/codec.h"

namespace {

using namespace glassbox;

// The test worker reads its instructions from the prompt (tests/broker/test_worker.cc).
std::string TestWorkerRequest(const std::string& prompt) {
  protocol::Request r;
  r.model = "test-model";
  r.traces.emplace_back();
  r.traces[0].invokes.push_back({prompt, std::nullopt});
  return protocol::EncodeRequest(r);
}

std::string TrivialRequest() { return TestWorkerRequest(""); }

// What the same transfer costs with nothing but ZeroMQ over loopback TCP: a ROUTER thread
// answering each request with a 1 MiB message from memory, `window` requests in flight. MB/s.
double LoopbackMBps(int window, int64_t bytes) {
  zmq::context_t ctx;
  zmq::socket_t server(ctx, zmq::socket_type::router);
  server.bind("tcp://127.0.0.1:*");
  const std::string endpoint = server.get(zmq::sockopt::last_endpoint);
  const int64_t chunk = int64_t{1} << 20, chunks = (bytes + chunk - 1) / chunk;
  std::thread serve([&server, chunks, chunk] {
    const std::string data(static_cast<size_t>(chunk), 'x');
    for (int64_t i = 0; i < chunks; ++i) {
      zmq::message_t peer, request;
      (void)server.recv(peer);
      (void)server.recv(request);
      server.send(peer, zmq::send_flags::sndmore);
      server.send(zmq::buffer(data));
    }
  });
  zmq::socket_t client(ctx, zmq::socket_type::dealer);
  client.connect(endpoint);
  const auto start = bench::LoadClock::now();
  std::string out;
  out.reserve(static_cast<size_t>(chunks * chunk));
  int64_t sent = 0;
  for (int64_t received = 0; received < chunks; ++received) {
    while (sent < chunks && sent < received + window) {
      client.send(zmq::str_buffer("fetch"));
      ++sent;
    }
    zmq::message_t reply;
    (void)client.recv(reply);
    out.append(static_cast<const char*>(reply.data()), reply.size());
  }
  const double ms = bench::MsSince(start);
  serve.join();
  return out.size() / 1e6 / (ms / 1e3);
}

// A large result: stored in chunks, fetched with a window of chunks in flight.
void MeasureLargeResult(broker::ClientParams params, int fetch_window, int64_t bytes) {
  params.fetch_window = fetch_window;
  auto connected = broker::Client::Connect(params);
  if (!connected.ok()) return;
  broker::Client& client = **connected;
  const std::string request = TestWorkerRequest("result_bytes=" + std::to_string(bytes));
  auto job = client.Submit(request);
  auto done = job.ok() ? client.WaitForStatus(*job, {}, 300000)
                       : StatusOr<broker::JobStatus>(job.status());
  if (!done.ok() || done->state != protocol::JobState::kCompleted) {
    std::printf("large result: the job did not complete: %s\n",
                done.ok() ? done->message.c_str() : done.status().ToString().c_str());
    return;
  }
  const auto start = bench::LoadClock::now();
  auto result = client.FetchResult(*job);
  const double ms = bench::MsSince(start);
  if (!result.ok()) {
    std::printf("large result: fetch failed: %s\n", result.status().ToString().c_str());
    return;
  }
  const double mbps = result->size() / 1e6 / (ms / 1e3);
  const double loopback = LoopbackMBps(fetch_window, bytes);
  std::printf("large result of %.0f MB fetched in %.0f ms (%d chunks ahead), right after it "
              "was stored: %.0f MB/s; ZeroMQ alone over loopback: %.0f MB/s (%.2fx)\n",
              bytes / 1e6, ms, fetch_window, mbps, loopback, mbps / loopback);
}

// What a job costs without the service: decode the request, encode and decode a result.
double InProcessMs() {
  const std::string request = TrivialRequest();
  return 1000 * bench::Seconds([&] {
    for (int i = 0; i < 1000; ++i) {
      auto decoded = protocol::DecodeRequest(request);
      protocol::Result result;
      result.saved.push_back({"echo", 1, protocol::Value::Int(decoded->traces.size())});
      std::string bytes = protocol::EncodeResult(result);
      (void)protocol::DecodeResult(bytes);
    }
  }, 5) / 1000;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"broker_bench: jobs/s and latency through broker, Redis and a worker"};
  int jobs = 2000;
  int clients = 8;
  int window = 16;
  app.add_option("--jobs", jobs, "jobs per measurement")->capture_default_str();
  app.add_option("--clients", clients, "concurrent clients")->capture_default_str();
  app.add_option("--window", window, "jobs in flight for the windowed run")->capture_default_str();
  int fetch_window = broker::ClientParams().fetch_window;
  app.add_option("--fetch-window", fetch_window, "result chunks requested ahead")
      ->capture_default_str();
  bool large_only = false;
  app.add_flag("--large-result-only", large_only, "only measure fetching a 200 MB result");
  std::string appendfsync = "everysec";
  app.add_option("--appendfsync", appendfsync, "redis fsync policy: always or everysec")
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);

  const std::string request = TrivialRequest();
  bench::BenchService service(appendfsync, {broker::testing::BinDir() + "/glassbox-test-worker"});
  auto client = broker::Client::Connect(service.params());
  if (!client.ok() || !service.WaitUntilServing(**client, request)) {
    std::fprintf(stderr, "error: the test worker never completed a job\n");
    return 1;
  }
  if (large_only) {
    MeasureLargeResult(service.params(), fetch_window, int64_t{200} << 20);
    return 0;
  }
  const double in_process_ms = InProcessMs();
  std::printf("broker_bench: trivial request of %zu bytes, 1 worker, redis appendfsync %s, "
              "%u hardware threads\n",
              request.size(), appendfsync.c_str(), std::thread::hardware_concurrency());
  std::printf("in-process decode request + encode result: %.4f ms per job\n\n", in_process_ms);

  bench::LoadStats one;
  bench::Sequential(**client, request, jobs, &one);
  bench::PrintLoad("1 client, one job at a time", one, in_process_ms);
  bench::PrintLoad("1 client, " + std::to_string(window) + " jobs in flight",
                   bench::Windowed(**client, request, jobs, window), in_process_ms);
  const bench::LoadStats many = bench::Concurrent(service.params(), request, jobs, clients);
  bench::PrintLoad(std::to_string(clients) + " clients, one job at a time each", many,
                   in_process_ms);
  std::printf("\n%d-client throughput / 1-client throughput: %.2fx\n", clients,
              (many.latencies_ms.size() / many.seconds) / (one.latencies_ms.size() / one.seconds));
  MeasureLargeResult(service.params(), fetch_window, int64_t{200} << 20);
  return 0;
}
