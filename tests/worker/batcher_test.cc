// The worker's batcher on the tiny checkpoint: jobs handed to it from several threads (as
// the worker's links hand them) run together, a short job is not stuck behind a long
// generation, and a generation joins a running one.
// LibTorch brings glog, whose CHECK would replace Catch's: it goes first, so Catch's wins.
#include <c10/util/Logging.h>
#include <catch2/catch.hpp>

#include <condition_variable>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <thread>
#include <unistd.h>

#include "protocol/codec.h"
#include "tests/engine/tensor_fixtures.h"
#include "worker/batcher.h"
#include "worker/job.h"

namespace glassbox::worker {
namespace {

using protocol::Value;

std::string Forward(std::vector<int64_t> prompt) {
  protocol::Request request;
  request.model = "tiny";
  protocol::Trace trace;
  trace.invokes.push_back({std::nullopt, std::move(prompt)});
  trace.nodes.push_back({0, "read", {}, {{"point", Value::String("lm_head.output")}}, ""});
  trace.nodes.push_back({1, "save", {Value::Ref(0)}, {{"name", Value::String("logits")}}, ""});
  request.traces.push_back(trace);
  return protocol::EncodeRequest(request);
}

std::string Generation(int64_t max_new_tokens) {
  protocol::Request request;
  request.model = "tiny";
  protocol::Trace trace;
  trace.invokes.push_back({std::nullopt, std::vector<int64_t>{1, 5, 9}});
  trace.generate = protocol::GenerateOptions{};
  trace.generate->max_new_tokens = max_new_tokens;
  trace.generate->stop_ids = {-1};
  request.traces.push_back(trace);
  return protocol::EncodeRequest(request);
}

protocol::Result ExpectResult(const std::string& bytes) {
  auto result = protocol::DecodeResult(bytes);
  INFO((result.ok() ? std::string() : result.status().ToString()));
  REQUIRE(result.ok());
  return *result;
}

std::unique_ptr<Model> Tiny() {
  auto loaded = Model::Load(testing::kTinyLlamaDir);
  REQUIRE(loaded.ok());
  return std::move(loaded).value();
}

// A hold file of this test's own (the batcher gathers jobs while it exists); its path.
std::string NewHoldFile(const std::string& name) {
  const std::string path = (std::filesystem::temp_directory_path() /
                            ("glassbox-batcher-" + name + "-" + std::to_string(::getpid()))).string();
  std::ofstream(path).put('x');
  return path;
}

TEST_CASE("jobs handed to the batcher while held run as one batch, each with its own result", "[worker]") {
  auto model = Tiny();
  const std::string hold = NewHoldFile("together");
  Batcher batcher(*model, "tiny", {}, 3, hold);
  const std::vector<std::string> requests = {Forward({1, 5, 9}), Forward({1, 7}), Forward({1, 5, 9, 3, 2})};
  std::vector<std::unique_ptr<broker::JobContext>> jobs;
  std::vector<std::string> results(requests.size());
  std::vector<std::thread> links;
  for (size_t j = 0; j < requests.size(); ++j) {
    jobs.push_back(std::make_unique<broker::JobContext>("job" + std::to_string(j), 60000));
    links.emplace_back([&, j] { results[j] = batcher.Run(*jobs[j], requests[j]); });
  }
  while (batcher.Waiting() < requests.size()) std::this_thread::yield();  // all three handed over
  // The held count is reported beside the hold file, for tests outside the worker's process.
  auto reported = [&hold] {
    std::ifstream in(hold + ".waiting");
    size_t count = 0;
    return (in >> count) ? count : size_t{0};
  };
  while (reported() < requests.size()) std::this_thread::yield();
  CHECK(reported() == requests.size());
  std::filesystem::remove(hold);
  for (std::thread& t : links) t.join();
  CHECK(!std::filesystem::exists(hold + ".waiting"));  // gone with the hold
  for (size_t j = 0; j < requests.size(); ++j) {
    INFO("job " << j);
    // Batched with the two others, reported to the link for the broker.
    CHECK(jobs[j]->TakeBatchReport() == 3);
    protocol::Result batched = ExpectResult(results[j]);
    protocol::Result alone = ExpectResult(RunJob(*model, "tiny", requests[j], {}, {}));
    REQUIRE(batched.saved.size() == 1);
    const protocol::TensorData& a = *batched.saved[0].value.tensor;
    const protocol::TensorData& b = *alone.saved[0].value.tensor;
    REQUIRE(a.shape == b.shape);
    const float* x = reinterpret_cast<const float*>(a.bytes.data());
    const float* y = reinterpret_cast<const float*>(b.bytes.data());
    float worst = 0, scale = 1;
    for (size_t i = 0; i < a.bytes.size() / 4; ++i) {
      worst = std::max(worst, std::abs(x[i] - y[i]));
      scale = std::max(scale, std::abs(y[i]));
    }
    CHECK(worst <= 1e-4f * scale);
  }
}

// A batcher's probes for a test: the order it answered jobs in (job ids; not the order
// their callers happened to wake up in), and a pause at the first layer boundary of its
// first batch, which lasts until a job handed over meanwhile (HandOver) waits there.
class Watch {
 public:
  BatcherProbes Probes() {
    BatcherProbes probes;
    probes.at_layer = [this] {
      std::unique_lock<std::mutex> lock(mu_);
      if (paused_) return;
      paused_ = true;
      changed_.notify_all();
      changed_.wait(lock, [this] { return batcher_->Waiting() > 0; });
    };
    probes.answered = [this](const broker::JobContext& job) {
      std::lock_guard<std::mutex> lock(mu_);
      answered_.push_back(job.job_id());
    };
    return probes;
  }
  void Watching(const Batcher& batcher) { batcher_ = &batcher; }

  // Once the batch is paused: `request` handed over on a link thread of its own (joined by
  // the caller; `result` is set when the job is answered), then the batch goes on.
  std::thread HandOver(Batcher& batcher, const broker::JobContext& job, const std::string& request,
                       std::string& result) {
    {
      std::unique_lock<std::mutex> lock(mu_);
      changed_.wait(lock, [this] { return paused_; });
    }
    std::thread link([&batcher, &job, &request, &result] { result = batcher.Run(job, request); });
    while (batcher.Waiting() == 0) std::this_thread::yield();
    std::lock_guard<std::mutex> lock(mu_);
    changed_.notify_all();
    return link;
  }

  std::vector<std::string> Answered() {
    std::lock_guard<std::mutex> lock(mu_);
    return answered_;
  }

 private:
  std::mutex mu_;
  std::condition_variable changed_;
  bool paused_ = false;
  std::vector<std::string> answered_;
  const Batcher* batcher_ = nullptr;
};

// Two jobs on one batcher: `first` starts; at its first layer boundary the batch thread
// waits until `second` is with the batcher. What each returned, the order the batcher
// answered them in (1, 2), and the batch size reported for second.
struct SecondDuringFirst {
  std::string first_result, second_result;
  int first_done = 0, second_done = 0;
  int64_t second_batch = 0;
};

SecondDuringFirst RunSecondDuringFirst(const Model& model, const std::string& first, const std::string& second,
                                       intervention::InterventionLimits limits = {}) {
  Watch watch;
  Batcher batcher(model, "tiny", limits, 4, "", watch.Probes());
  watch.Watching(batcher);
  broker::JobContext first_job("first", 60000), second_job("second", 60000);
  SecondDuringFirst out;
  std::thread first_link([&] { out.first_result = batcher.Run(first_job, first); });
  std::thread second_link = watch.HandOver(batcher, second_job, second, out.second_result);
  second_link.join();
  first_link.join();
  const std::vector<std::string> answered = watch.Answered();
  REQUIRE(answered.size() == 2);
  for (int i = 0; i < 2; ++i) (answered[i] == "first" ? out.first_done : out.second_done) = i + 1;
  out.second_batch = second_job.TakeBatchReport();
  return out;
}

TEST_CASE("a short job runs at a layer boundary of a running generation, not after it", "[worker]") {
  auto model = Tiny();
  const SecondDuringFirst run = RunSecondDuringFirst(*model, Generation(40), Forward({1, 7}));
  CHECK(run.second_done == 1);  // before the generation's 40 steps were through
  CHECK(run.first_done == 2);
  CHECK(ExpectResult(run.second_result).saved.size() == 1);
  CHECK(ExpectResult(run.first_result).generated.at(0).size() == 40);
}

// A job's memory estimate, as the worker's refusal at a limit of 1 byte states it.
int64_t EstimatedBytes(const Model& model, const std::string& request) {
  intervention::InterventionLimits one_byte;
  one_byte.max_job_bytes = 1;
  StatusOr<protocol::ErrorReport> refusal = protocol::DecodeErrorReport(RunJob(model, "tiny", request, one_byte, {}));
  REQUIRE(refusal.ok());
  const std::string lead = "this job needs an estimated ";
  REQUIRE(refusal->message.rfind(lead, 0) == 0);
  return std::stoll(refusal->message.substr(lead.size()));
}

TEST_CASE("a short job that does not fit beside a running generation's memory waits for it to end", "[worker]") {
  auto model = Tiny();
  const std::string generation = Generation(40), forward = Forward({1, 7});
  const int64_t g = EstimatedBytes(*model, generation), f = EstimatedBytes(*model, forward);
  // Each fits alone; the two at once would not.
  intervention::InterventionLimits limits;
  limits.max_job_bytes = std::max(g, f) + std::min(g, f) / 2;
  const SecondDuringFirst run = RunSecondDuringFirst(*model, generation, forward, limits);
  CHECK(run.first_done == 1);  // the forward was not run between the generation's layers
  CHECK(run.second_done == 2);
  CHECK(run.second_batch == 0);  // and ran alone, after
  CHECK(ExpectResult(run.second_result).saved.size() == 1);
  CHECK(ExpectResult(run.first_result).generated.at(0).size() == 40);
  // With room for both, it runs between the generation's layers as before.
  limits.max_job_bytes = g + f + g / 2;
  const SecondDuringFirst roomy = RunSecondDuringFirst(*model, generation, forward, limits);
  CHECK(roomy.second_done == 1);
  CHECK(roomy.first_done == 2);
  CHECK(ExpectResult(roomy.second_result).saved.size() == 1);
}

TEST_CASE("a short job held back by two generations' memory runs between the layers of the one left once the other ends", "[worker]") {
  auto model = Tiny();
  const std::string long_generation = Generation(40), short_generation = Generation(3);
  std::vector<int64_t> prompt;
  for (int64_t i = 0; i < 24; ++i) prompt.push_back(1 + (i * 7) % 50);
  const std::string forward = Forward(prompt);
  const int64_t g_long = EstimatedBytes(*model, long_generation), g_short = EstimatedBytes(*model, short_generation),
                f = EstimatedBytes(*model, forward);
  // The two generations share a pass; the forward fits beside the long one alone, not
  // beside both.
  REQUIRE(f >= g_short);
  intervention::InterventionLimits limits;
  limits.max_job_bytes = g_long + f;
  Watch watch;  // pauses at the first layer boundary of the two generations' pass
  const std::string hold = NewHoldFile("leave");
  Batcher batcher(*model, "tiny", limits, 4, hold, watch.Probes());
  watch.Watching(batcher);
  broker::JobContext long_job("long", 60000), short_job("short", 60000), forward_job("forward", 60000);
  std::string long_result, short_result, forward_result;
  std::thread long_link([&] { long_result = batcher.Run(long_job, long_generation); });
  std::thread short_link([&] { short_result = batcher.Run(short_job, short_generation); });
  while (batcher.Waiting() < 2) std::this_thread::yield();
  std::filesystem::remove(hold);  // the two generations start as one batch
  std::thread forward_link = watch.HandOver(batcher, forward_job, forward, forward_result);
  for (std::thread* t : {&forward_link, &short_link, &long_link}) t->join();
  CHECK(long_job.TakeBatchReport() == 2);  // the generations shared a pass
  // The forward did not run beside both generations; it ran as soon as it fitted beside what
  // was left, before the long generation ended.
  CHECK(watch.Answered() == std::vector<std::string>{"short", "forward", "long"});
  CHECK(ExpectResult(forward_result).saved.size() == 1);
  CHECK(ExpectResult(short_result).generated.at(0).size() == 3);
  CHECK(ExpectResult(long_result).generated.at(0).size() == 40);
}

TEST_CASE("a generation handed over while another generates joins it at the next step and is answered first", "[worker]") {
  auto model = Tiny();
  const SecondDuringFirst run = RunSecondDuringFirst(*model, Generation(60), Generation(3));
  CHECK(run.second_done == 1);  // it joined the running generation and left it after 3 tokens
  CHECK(run.first_done == 2);
  CHECK(run.second_batch == 2);
  CHECK(ExpectResult(run.second_result).generated ==
        ExpectResult(RunJob(*model, "tiny", Generation(3), {}, {})).generated);
  CHECK(ExpectResult(run.first_result).generated ==
        ExpectResult(RunJob(*model, "tiny", Generation(60), {}, {})).generated);
}

}  // namespace
}  // namespace glassbox::worker

namespace glassbox::worker {
namespace {

TEST_CASE("a job that was running when a worker died runs alone, the others still share", "[worker]") {
  auto model = Tiny();
  const std::string hold = NewHoldFile("retry");
  Batcher batcher(*model, "tiny", {}, 4, hold);
  std::vector<std::unique_ptr<broker::JobContext>> jobs;
  // Handed over in this order: fresh, retried, fresh, fresh.
  for (int64_t attempts : {0, 1, 0, 0}) {
    jobs.push_back(std::make_unique<broker::JobContext>("job" + std::to_string(jobs.size()), 60000, attempts));
  }
  std::vector<std::string> results(jobs.size());
  std::vector<std::thread> links;
  for (size_t j = 0; j < jobs.size(); ++j) {
    links.emplace_back([&, j] { results[j] = batcher.Run(*jobs[j], Forward({1, 5, static_cast<int64_t>(9 + j)})); });
    while (batcher.Waiting() < j + 1) std::this_thread::yield();  // in this order
  }
  std::filesystem::remove(hold);
  for (std::thread& t : links) t.join();
  CHECK(jobs[0]->TakeBatchReport() == 3);  // the three fresh jobs shared a pass
  CHECK(jobs[2]->TakeBatchReport() == 3);
  CHECK(jobs[3]->TakeBatchReport() == 3);
  CHECK(jobs[1]->TakeBatchReport() == 0);  // the retried one ran alone (nothing reported)
  for (const std::string& r : results) CHECK(ExpectResult(r).saved.size() == 1);
}

}  // namespace
}  // namespace glassbox::worker
