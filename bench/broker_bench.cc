// broker_bench: jobs through the whole service path — client, glassbox-broker, Redis,
// glassbox-test-worker (built on broker/worker_link.h) and back — with a trivial request, as
// real processes on this machine. Prints jobs/s and per-job latency (submit to result
// fetched) for one client doing one job at a time, one client keeping a window of jobs in
// flight, and 8 concurrent clients; and the ratio to handling the same request in-process
// (decode request, encode result: what the service path adds on top of the engine).
//
// Usage: build/bin/broker_bench [--jobs N] [--clients N] [--window N] [--appendfsync always]
#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <thread>

#include "bench/bench_util.h"
#include "broker/client.h"
#include "protocol/codec.h"
#include "tests/broker/processes.h"

namespace {

using namespace glassbox;
using Clock = std::chrono::steady_clock;

std::string TrivialRequest() {
  protocol::Request r;
  r.model = "test-model";
  r.traces.emplace_back();
  r.traces[0].invokes.push_back({"", std::nullopt});
  return protocol::EncodeRequest(r);
}

struct Stats {
  double seconds = 0;
  std::vector<double> latencies_ms;
  int failures = 0;
};

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(p * v.size()))];
}

void Print(const char* label, const Stats& s, double in_process_ms) {
  const double jobs = static_cast<double>(s.latencies_ms.size());
  const double p50 = Percentile(s.latencies_ms, 0.5);
  std::printf("%-34s %8.0f jobs/s   p50 %6.2f ms   p99 %6.2f ms   p50/in-process %6.0fx%s\n", label,
              jobs / s.seconds, p50, Percentile(s.latencies_ms, 0.99), p50 / in_process_ms,
              s.failures ? "   (FAILURES!)" : "");
}

// One job start to finish: submit, wait for COMPLETED, fetch the result.
bool OneJob(broker::Client& client, const std::string& request) {
  auto job = client.Submit(request);
  if (!job.ok()) return false;
  auto status = client.WaitForStatus(*job);
  if (!status.ok() || status->state != protocol::JobState::kCompleted) return false;
  return client.FetchResult(*job).ok();
}

void Sequential(broker::Client& client, int jobs, Stats* stats) {
  const std::string request = TrivialRequest();
  for (int i = 0; i < jobs; ++i) {
    const auto start = Clock::now();
    if (!OneJob(client, request)) ++stats->failures;
    stats->latencies_ms.push_back(
        std::chrono::duration<double, std::milli>(Clock::now() - start).count());
  }
}

// Keeps `window` jobs in flight from one client.
Stats Windowed(broker::Client& client, int jobs, int window) {
  const std::string request = TrivialRequest();
  Stats stats;
  std::vector<std::pair<std::string, Clock::time_point>> in_flight;
  const auto start = Clock::now();
  int submitted = 0;
  while (submitted < jobs || !in_flight.empty()) {
    while (submitted < jobs && static_cast<int>(in_flight.size()) < window) {
      auto job = client.Submit(request);
      ++submitted;
      if (job.ok())
        in_flight.emplace_back(*job, Clock::now());
      else
        ++stats.failures;
    }
    auto [job, submitted_at] = in_flight.front();
    in_flight.erase(in_flight.begin());
    auto status = client.WaitForStatus(job);
    if (!status.ok() || !client.FetchResult(job).ok()) ++stats.failures;
    stats.latencies_ms.push_back(
        std::chrono::duration<double, std::milli>(Clock::now() - submitted_at).count());
  }
  stats.seconds = std::chrono::duration<double>(Clock::now() - start).count();
  return stats;
}

double InProcessMs() {
  const std::string request = TrivialRequest();
  return 1000 *
         bench::Seconds(
             [&] {
               for (int i = 0; i < 1000; ++i) {
                 auto decoded = protocol::DecodeRequest(request);
                 protocol::Result result;
                 result.saved.push_back({"echo", 1, protocol::Value::Int(decoded->traces.size())});
                 std::string bytes = protocol::EncodeResult(result);
                 (void)protocol::DecodeResult(bytes);
               }
             },
             5) /
         1000;
}

std::string CreateKey(const std::string& redis) {
  const std::string command = broker::testing::BinDir() + "/glassbox-broker keys --redis " + redis +
                              " create --name bench --max-queued 100000 --max-running 1000";
  FILE* pipe = popen(command.c_str(), "r");
  char buf[256];
  std::string secret;
  while (pipe && fgets(buf, sizeof buf, pipe)) {
    std::string line = buf;
    if (line.rfind("secret: ", 0) == 0) secret = line.substr(8, line.find('\n') - 8);
  }
  if (pipe) pclose(pipe);
  return secret;
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
  std::string appendfsync = "everysec";
  app.add_option("--appendfsync", appendfsync, "redis fsync policy: always or everysec")
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);

  using broker::testing::ChildProcess;
  broker::testing::TempDir dir;
  broker::testing::RedisServer redis(dir.path(), appendfsync);
  const int client_port = broker::testing::FreePort();
  const std::string client_endpoint = "tcp://127.0.0.1:" + std::to_string(client_port);
  const std::string worker_endpoint =
      "tcp://127.0.0.1:" + std::to_string(broker::testing::FreePort());
  ChildProcess broker_process(
      {broker::testing::BinDir() + "/glassbox-broker", "serve", "--clients", client_endpoint,
       "--workers", worker_endpoint, "--redis", redis.address()},
      dir.path() + "/broker.log");
  ChildProcess worker(
      {broker::testing::BinDir() + "/glassbox-test-worker", "--broker", worker_endpoint},
      dir.path() + "/worker.log");
  broker::testing::WaitForPort(client_port, 10000);
  broker::ClientParams params;
  params.endpoint = client_endpoint;
  params.api_key = CreateKey(redis.address());
  auto client = broker::Client::Connect(params).value();
  for (int i = 0; i < 200 && !OneJob(*client, TrivialRequest());
       ++i) {  // warm up, wait for the worker
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }

  const double in_process_ms = InProcessMs();
  std::printf(
      "broker_bench: trivial request of %zu bytes, 1 worker, redis appendfsync %s, "
      "%u hardware threads\n",
      TrivialRequest().size(), appendfsync.c_str(), std::thread::hardware_concurrency());
  std::printf("in-process decode request + encode result: %.4f ms per job\n\n", in_process_ms);

  Stats one;
  const auto start = Clock::now();
  Sequential(*client, jobs, &one);
  one.seconds = std::chrono::duration<double>(Clock::now() - start).count();
  Print("1 client, one job at a time", one, in_process_ms);

  Print(("1 client, " + std::to_string(window) + " jobs in flight").c_str(),
        Windowed(*client, jobs, window), in_process_ms);

  std::vector<Stats> per_client(clients);
  std::vector<std::thread> threads;
  const auto many_start = Clock::now();
  for (int c = 0; c < clients; ++c) {
    threads.emplace_back([&, c] {
      auto own = broker::Client::Connect(params).value();
      Sequential(*own, jobs / clients, &per_client[c]);
    });
  }
  for (auto& t : threads) t.join();
  Stats many;
  many.seconds = std::chrono::duration<double>(Clock::now() - many_start).count();
  for (const Stats& s : per_client) {
    many.latencies_ms.insert(many.latencies_ms.end(), s.latencies_ms.begin(), s.latencies_ms.end());
    many.failures += s.failures;
  }
  Print((std::to_string(clients) + " clients, one job at a time each").c_str(), many,
        in_process_ms);
  std::printf("\n%d-client throughput / 1-client throughput: %.2fx\n", clients,
              (many.latencies_ms.size() / many.seconds) / (one.latencies_ms.size() / one.seconds));
  return 0;
}
