// Load generation through the service (client -> broker -> Redis -> worker -> back), shared
// by broker_bench (a trivial test worker) and service_bench (the real engine).
#ifndef GLASSBOX_BENCH_SERVICE_LOAD_H_
#define GLASSBOX_BENCH_SERVICE_LOAD_H_

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "broker/client.h"
#include "tests/broker/processes.h"

namespace glassbox::bench {

using LoadClock = std::chrono::steady_clock;

struct LoadStats {
  double seconds = 0;
  std::vector<double> latencies_ms;  // submit to result fetched, per job
  int failures = 0;
};

inline double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(p * v.size()))];
}

inline double MsSince(LoadClock::time_point start) {
  return std::chrono::duration<double, std::milli>(LoadClock::now() - start).count();
}

// One job start to finish: submit, wait for COMPLETED, fetch the result.
inline bool OneJob(broker::Client& client, const std::string& request) {
  auto job = client.Submit(request);
  if (!job.ok()) return false;
  auto status = client.WaitForStatus(*job);
  if (!status.ok() || status->state != protocol::JobState::kCompleted) return false;
  return client.FetchResult(*job).ok();
}

inline void Sequential(broker::Client& client, const std::string& request, int jobs,
                       LoadStats* stats) {
  const auto start = LoadClock::now();
  for (int i = 0; i < jobs; ++i) {
    const auto job_start = LoadClock::now();
    if (!OneJob(client, request)) ++stats->failures;
    stats->latencies_ms.push_back(MsSince(job_start));
  }
  stats->seconds += std::chrono::duration<double>(LoadClock::now() - start).count();
}

// Keeps `window` jobs in flight from one client.
inline LoadStats Windowed(broker::Client& client, const std::string& request, int jobs, int window) {
  LoadStats stats;
  std::vector<std::pair<std::string, LoadClock::time_point>> in_flight;
  const auto start = LoadClock::now();
  int submitted = 0;
  while (submitted < jobs || !in_flight.empty()) {
    while (submitted < jobs && static_cast<int>(in_flight.size()) < window) {
      auto job = client.Submit(request);
      ++submitted;
      if (job.ok()) in_flight.emplace_back(*job, LoadClock::now());
      else ++stats.failures;
    }
    if (in_flight.empty()) continue;
    auto [job, submitted_at] = in_flight.front();
    in_flight.erase(in_flight.begin());
    auto status = client.WaitForStatus(job);
    if (!status.ok() || !client.FetchResult(job).ok()) ++stats.failures;
    stats.latencies_ms.push_back(MsSince(submitted_at));
  }
  stats.seconds = std::chrono::duration<double>(LoadClock::now() - start).count();
  return stats;
}

// `clients` connections in parallel threads, each doing jobs/clients jobs one at a time.
inline LoadStats Concurrent(const broker::ClientParams& params, const std::string& request,
                            int jobs, int clients) {
  std::vector<LoadStats> per_client(clients);
  std::vector<std::thread> threads;
  const auto start = LoadClock::now();
  for (int c = 0; c < clients; ++c) {
    threads.emplace_back([&, c] {
      auto own = broker::Client::Connect(params);
      if (!own.ok()) {
        per_client[c].failures = jobs / clients;
        return;
      }
      Sequential(**own, request, jobs / clients, &per_client[c]);
    });
  }
  for (auto& t : threads) t.join();
  LoadStats all;
  all.seconds = std::chrono::duration<double>(LoadClock::now() - start).count();
  for (const LoadStats& s : per_client) {
    all.latencies_ms.insert(all.latencies_ms.end(), s.latencies_ms.begin(), s.latencies_ms.end());
    all.failures += s.failures;
  }
  return all;
}

// Prints throughput and latency, and p50 against the in-process time of the same job.
inline void PrintLoad(const std::string& label, const LoadStats& s, double in_process_ms) {
  const double jobs = static_cast<double>(s.latencies_ms.size());
  const double p50 = Percentile(s.latencies_ms, 0.5);
  std::printf("%-34s %8.0f jobs/s   p50 %6.2f ms   p99 %6.2f ms   p50 - in-process %6.2f ms   "
              "p50/in-process %6.1fx%s\n",
              label.c_str(), jobs / s.seconds, p50, Percentile(s.latencies_ms, 0.99),
              p50 - in_process_ms, p50 / in_process_ms, s.failures ? "   (FAILURES!)" : "");
}

// Creates an API key with room for a benchmark's load; returns its secret ("" on failure).
inline std::string CreateBenchKey(const std::string& redis_address) {
  const std::string command = broker::testing::BinDir() + "/glassbox-broker keys --redis " +
                              redis_address +
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

// Redis, a broker and one worker (argv given) as real processes on free ports.
class BenchService {
 public:
  BenchService(const std::string& appendfsync, std::vector<std::string> worker_argv)
      : redis_(dir_.path(), appendfsync) {
    const int client_port = broker::testing::FreePort();
    client_endpoint_ = "tcp://127.0.0.1:" + std::to_string(client_port);
    const std::string worker_endpoint =
        "tcp://127.0.0.1:" + std::to_string(broker::testing::FreePort());
    broker_ = std::make_unique<broker::testing::ChildProcess>(
        std::vector<std::string>{broker::testing::BinDir() + "/glassbox-broker", "serve",
                                 "--clients", client_endpoint_, "--workers", worker_endpoint,
                                 "--redis", redis_.address()},
        dir_.path() + "/broker.log");
    worker_argv.push_back("--broker");
    worker_argv.push_back(worker_endpoint);
    worker_ = std::make_unique<broker::testing::ChildProcess>(worker_argv, dir_.path() + "/worker.log");
    broker::testing::WaitForPort(client_port, 10000);
    params_.endpoint = client_endpoint_;
    params_.api_key = CreateBenchKey(redis_.address());
  }

  const broker::ClientParams& params() const { return params_; }

  // Submits `request` until one job completes (the worker has registered), up to ~60 s.
  bool WaitUntilServing(broker::Client& client, const std::string& request) {
    for (int i = 0; i < 600; ++i) {
      if (OneJob(client, request)) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    return false;
  }

 private:
  broker::testing::TempDir dir_;
  broker::testing::RedisServer redis_;
  std::string client_endpoint_;
  std::unique_ptr<broker::testing::ChildProcess> broker_;
  std::unique_ptr<broker::testing::ChildProcess> worker_;
  broker::ClientParams params_;
};

}  // namespace glassbox::bench

#endif  // GLASSBOX_BENCH_SERVICE_LOAD_H_
