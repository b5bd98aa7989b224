// Cross-user batching (RunBatched): several users' graphs in one engine pass, each job
// seeing only its own rows, each result equal to running the job alone.
#include <ATen/ops/linspace.h>
#include <catch2/catch.hpp>

#include <algorithm>

#include "tests/intervention/graph_test_util.h"

namespace glassbox::intervention {
namespace {

using namespace testing_graphs;

// Every saved value of `batched` equals `solo`'s within 1e-4 of its largest magnitude (the
// issue's batched-vs-solo bound), with the same names, kinds and shapes; generated tokens
// are the same.
void CheckSameResult(const protocol::Result& batched, const protocol::Result& solo) {
  REQUIRE(batched.saved.size() == solo.saved.size());
  CHECK(batched.generated == solo.generated);
  for (size_t i = 0; i < solo.saved.size(); ++i) {
    INFO("saved value " << solo.saved[i].name);
    CHECK(batched.saved[i].name == solo.saved[i].name);
    std::vector<const protocol::Value*> a = {&batched.saved[i].value}, b = {&solo.saved[i].value};
    if (solo.saved[i].value.kind == protocol::Value::Kind::kList) {
      REQUIRE(batched.saved[i].value.list.size() == solo.saved[i].value.list.size());
      a.clear();
      b.clear();
      for (size_t k = 0; k < solo.saved[i].value.list.size(); ++k) {
        a.push_back(&batched.saved[i].value.list[k]);
        b.push_back(&solo.saved[i].value.list[k]);
      }
    }
    for (size_t k = 0; k < a.size(); ++k) {
      at::Tensor x = TensorOf(*a[k]), y = TensorOf(*b[k]);
      REQUIRE(x.sizes() == y.sizes());
      const double scale = std::max(1.0, y.abs().max().item<double>());
      CHECK(MaxAbsDiff(x, y) <= 1e-4 * scale);
    }
  }
}

// A logit lens user: one prompt, the whole batch's residual (its own rows only) and logits.
protocol::Request LogitLens() {
  protocol::Request r;
  r.model = "tiny";
  GraphBuilder g(r);
  g.Trace({kClean});
  g.Save(g.Read("model.layers.0.output", std::nullopt), "resid_all_rows");
  int64_t logits = g.Read("lm_head.output", std::nullopt);
  g.Save(g.Add("getitem", {Value::Ref(logits), Value::List({Slice(), Value::Int(-1)})}), "last_logits");
  return r;
}

// A patching user: two invokes of different lengths, a write into invoke 1 at position -1
// from invoke 0, logits of both.
protocol::Request Patching() {
  protocol::Request r;
  r.model = "tiny";
  GraphBuilder g(r);
  g.Trace({kCorrupt, {1, 8, 9}});
  int64_t clean = g.Read("model.layers.1.output", 0);
  int64_t last = g.Add("getitem", {Value::Ref(clean), Value::List({Slice(), Value::Int(-1)})});
  g.Add("write", {Value::Ref(last)}, {{"point", Value::String("model.layers.1.output")},
                                      {"invoke", Value::Int(1)},
                                      {"index", Value::List({Slice(), Value::Int(-1)})}});
  g.Save(g.Read("lm_head.output", 0), "logits0");
  g.Save(g.Read("lm_head.output", 1), "logits1");
  return r;
}

// An attention user: a short prompt (so its rows are left-padded in the batch), the whole
// pattern (k positions its own), a zero-ablated layer output over the whole batch, a cache.
protocol::Request Attention() {
  protocol::Request r;
  r.model = "tiny";
  GraphBuilder g(r);
  g.Trace({{1, 3}});
  g.Save(g.Read("blocks.0.attn.hook_pattern", std::nullopt), "pattern");
  g.Add("cache", {}, {{"filter", Value::String("hook_resid_post")}});
  g.Add("write", {Value::Int(0)}, {{"point", Value::String("model.layers.1.mlp.output")}});
  g.Save(g.Read("lm_head.output", std::nullopt), "ablated_logits");
  return r;
}

// A steering user: generation with a vector added at every step, the logits per step.
protocol::Request Steering(int64_t max_new_tokens, double temperature, uint64_t seed,
                           const std::vector<int64_t>& prompt = kClean) {
  at::Tensor direction = at::linspace(-1.0, 1.0, 64, at::kFloat);
  protocol::TensorData data{protocol::DType::kFloat32, {64},
                            std::string(reinterpret_cast<const char*>(direction.data_ptr()), 64 * 4)};
  protocol::Request r;
  r.model = "tiny";
  GraphBuilder g(r);
  g.Trace({prompt});
  r.traces.back().generate = protocol::GenerateOptions{};
  r.traces.back().generate->max_new_tokens = max_new_tokens;
  r.traces.back().generate->temperature = temperature;
  r.traces.back().generate->seed = seed;
  r.traces.back().generate->stop_ids = {-1};
  int64_t h = g.Read("model.layers.0.output", 0, Value::String("all"));
  int64_t steered = g.Add("add", {Value::Ref(h), Value::Tensor(data)});
  g.Add("write", {Value::Ref(steered)}, {{"point", Value::String("model.layers.0.output")},
                                         {"invoke", Value::Int(0)}, {"step", Value::String("all")}});
  g.Save(g.Read("lm_head.output", 0, Value::String("all")), "logits_per_step");
  return r;
}

// A gradient user: attribution needs a pass of its own.
protocol::Request Gradient() {
  protocol::Request r;
  r.model = "tiny";
  GraphBuilder g(r);
  g.Trace({kClean});
  int64_t logits = g.Read("lm_head.output");
  int64_t target = g.Add("getitem", {Value::Ref(logits), Value::List({Value::Int(0), Value::Int(-1), Value::Int(7)})});
  int64_t backward = g.Add("backward", {Value::Ref(target)});
  g.Save(g.Add("grad", {Value::Ref(backward)}, {{"point", Value::String("model.layers.1.output")}, {"invoke", Value::Int(0)}}), "grad");
  return r;
}

std::vector<BatchJob> Jobs(const std::vector<protocol::Request>& requests) {
  std::vector<BatchJob> jobs;
  for (const protocol::Request& r : requests) jobs.push_back({&r, InterventionLimits(), RunControl()});
  return jobs;
}

TEST_CASE("forward graphs of several users share one pass and each equals its solo run", "[intervention]") {
  auto model = TinyModel();
  const std::vector<protocol::Request> requests = {LogitLens(), Patching(), Attention(), LogitLens()};
  BatchReport report;
  auto results = RunBatched(*model, Jobs(requests), &report);
  REQUIRE(report.passes == std::vector<std::vector<size_t>>{{0, 1, 2, 3}});
  for (size_t j = 0; j < requests.size(); ++j) {
    INFO("job " << j);
    INFO(results[j].status().ToString());
    REQUIRE(results[j].ok());
    CheckSameResult(*results[j], RunOk(*model, requests[j]));
  }
  // The whole-batch reads are the job's own rows: one row, its own positions.
  CHECK(TensorOf(Saved(*results[0], "resid_all_rows").value).sizes() == at::IntArrayRef({1, 6, 64}));
  CHECK(TensorOf(Saved(*results[2], "pattern").value).size(-1) == 2);
  // The ablation of job 2 reached no one else: job 0 and job 3 (the same graph, other rows)
  // agree within the tolerance.
  at::Tensor first = TensorOf(Saved(*results[0], "last_logits").value);
  CHECK(MaxAbsDiff(first, TensorOf(Saved(*results[3], "last_logits").value)) <= 1e-4 * first.abs().max().item<double>());
}

TEST_CASE("generations with their own sampling share one pass and each equals its solo run", "[intervention]") {
  auto model = TinyModel();
  const std::vector<protocol::Request> requests = {Steering(5, 0.0, 0), Steering(3, 0.9, 7), LogitLens(),
                                                   Steering(4, 0.9, 8)};
  BatchReport report;
  auto results = RunBatched(*model, Jobs(requests), &report);
  for (const auto& pass : report.passes) {
    std::string ids;
    for (size_t j : pass) ids += std::to_string(j) + " ";
    UNSCOPED_INFO("pass: " << ids);
  }
  REQUIRE(report.passes == std::vector<std::vector<size_t>>{{0, 1, 3}, {2}});
  for (size_t j = 0; j < requests.size(); ++j) {
    INFO("job " << j);
    INFO(results[j].status().ToString());
    REQUIRE(results[j].ok());
    CheckSameResult(*results[j], RunOk(*model, requests[j]));
  }
  // Each job stopped at its own length: per-step saves end with its own generation.
  CHECK(results[1]->generated.at(0).size() == 3);
  CHECK(Saved(*results[1], "logits_per_step").value.list.size() == 3);
  CHECK(results[0]->generated.at(0).size() == 5);
}

TEST_CASE("a job that fails or is stopped leaves a shared pass without disturbing the others", "[intervention]") {
  auto model = TinyModel();
  std::vector<protocol::Request> requests = {LogitLens(), Patching(), Attention()};
  // Job 1 indexes a position that depends on the data (the argmax's value plus 1000): only
  // a real run finds it out of range (the shape pass leaves item's value unknown).
  protocol::Request& bad = requests[1];
  auto add = [&bad](int64_t id, const std::string& op, std::vector<Value> args) {
    protocol::Node node;
    node.id = id;
    node.op = op;
    node.args = std::move(args);
    node.source = "batch_test.cc";
    bad.traces[0].nodes.push_back(node);
  };
  const int64_t read = bad.traces[0].nodes.front().id;
  add(1000, "argmax", {Value::Ref(read)});
  add(1001, "item", {Value::Ref(1000)});
  add(1002, "add", {Value::Ref(1001), Value::Int(1000)});
  add(1003, "getitem", {Value::Ref(read), Value::List({Slice(), Value::Ref(1002)})});
  std::vector<BatchJob> jobs = Jobs(requests);
  jobs[2].control.interrupt = [] { return Cancelled("cancelled by the user"); };
  BatchReport report;
  auto results = RunBatched(*model, jobs, &report);
  REQUIRE(report.passes == std::vector<std::vector<size_t>>{{0, 1, 2}});
  REQUIRE(!results[1].ok());
  CHECK(results[1].status().code() == StatusCode::kInvalidArgument);
  CHECK(results[1].status().message().find("node 1003") != std::string::npos);
  REQUIRE(!results[2].ok());
  CHECK(results[2].status().code() == StatusCode::kCancelled);
  INFO(results[0].status().ToString());
  REQUIRE(results[0].ok());
  CheckSameResult(*results[0], RunOk(*model, requests[0]));
}

TEST_CASE("generations that arrive while one runs join it between steps, end on their own, and equal their solo runs",
          "[intervention]") {
  auto model = TinyModel();
  const std::vector<int64_t> long_prompt = {1, 5, 9, 13, 17, 21, 25, 29, 33, 37, 41, 45, 49, 53, 57, 61, 65};
  // Job 0 generates 12 tokens. Before its 3rd step, job 1 (sampled, 3 tokens) joins; before
  // its 6th, job 2 (a prompt longer than the batch's keys so far) and two jobs that cannot
  // join (a gradient, a forward), which run alone after the generation.
  const std::vector<protocol::Request> requests = {Steering(12, 0.0, 0), Steering(3, 0.9, 7),
                                                   Steering(4, 0.0, 0, long_prompt), Gradient(), LogitLens()};
  std::vector<size_t> running_when_asked, ended;
  std::vector<StatusOr<protocol::Result>> results(requests.size(), Internal("no result"));
  BatchFeed feed;
  feed.join = [&](size_t running) {
    running_when_asked.push_back(running);
    std::vector<BatchJob> joining;
    if (running_when_asked.size() == 3) joining.push_back({&requests[1], InterventionLimits(), RunControl()});
    if (running_when_asked.size() == 6) {
      for (size_t j : {2, 3, 4}) joining.push_back({&requests[j], InterventionLimits(), RunControl()});
    }
    return joining;
  };
  feed.done = [&](size_t job, StatusOr<protocol::Result> result) {
    ended.push_back(job);
    results.at(job) = std::move(result);
  };
  BatchReport report;
  RunBatched(*model, {{&requests[0], InterventionLimits(), RunControl()}}, feed, &report);
  CHECK(report.passes == std::vector<std::vector<size_t>>{{0, 1, 2}, {3}, {4}});
  // Job 1 ended (and was handed out) while job 0 still ran; so did job 2.
  CHECK(ended == std::vector<size_t>{1, 2, 0, 3, 4});
  CHECK(running_when_asked.at(2) == 1);
  CHECK(std::count(running_when_asked.begin(), running_when_asked.end(), 2) >= 1);
  for (size_t j = 0; j < requests.size(); ++j) {
    INFO("job " << j << ": " << results[j].status().ToString());
    REQUIRE(results[j].ok());
    CheckSameResult(*results[j], RunOk(*model, requests[j]));
  }
  CHECK(Saved(*results[1], "logits_per_step").value.list.size() == 3);
}

TEST_CASE("a job that is stopped after joining a running generation leaves it while the others go on", "[intervention]") {
  auto model = TinyModel();
  const std::vector<protocol::Request> requests = {Steering(8, 0.0, 0), Steering(6, 0.9, 3)};
  std::vector<StatusOr<protocol::Result>> results(requests.size(), Internal("no result"));
  int asked = 0, steps_of_1 = 0;
  BatchFeed feed;
  feed.join = [&](size_t) {
    std::vector<BatchJob> joining;
    if (++asked != 2) return joining;
    joining.push_back({&requests[1], InterventionLimits(), RunControl()});
    joining[0].control.interrupt = [&steps_of_1] {  // cancelled by its user at its 3rd layer
      return ++steps_of_1 >= 3 ? Cancelled("cancelled by the user") : Status::Ok();
    };
    return joining;
  };
  feed.done = [&](size_t job, StatusOr<protocol::Result> result) { results.at(job) = std::move(result); };
  RunBatched(*model, {{&requests[0], InterventionLimits(), RunControl()}}, feed);
  REQUIRE(!results[1].ok());
  CHECK(results[1].status().code() == StatusCode::kCancelled);
  INFO(results[0].status().ToString());
  REQUIRE(results[0].ok());
  CheckSameResult(*results[0], RunOk(*model, requests[0]));
}

TEST_CASE("jobs that cannot share a pass run alone, refusals come back per job", "[intervention]") {
  auto model = TinyModel();
  protocol::Request unknown = LogitLens();
  unknown.traces[0].nodes[0].kwargs["point"] = Value::String("model.layers.0.outptu");
  const std::vector<protocol::Request> requests = {Gradient(), LogitLens(), unknown, Attention()};
  BatchReport report;
  auto results = RunBatched(*model, Jobs(requests), &report);
  CHECK(report.passes == std::vector<std::vector<size_t>>{{1, 3}, {0}});
  REQUIRE(!results[2].ok());
  CHECK(results[2].status().code() == StatusCode::kInvalidArgument);
  CHECK(results[2].status().message().find("outptu") != std::string::npos);
  for (size_t j : {0, 1, 3}) {
    INFO("job " << j << ": " << results[j].status().ToString());
    REQUIRE(results[j].ok());
    CheckSameResult(*results[j], RunOk(*model, requests[j]));
  }
}

}  // namespace
}  // namespace glassbox::intervention

namespace glassbox::intervention {
namespace {

using namespace testing_graphs;

TEST_CASE("a shared pass takes jobs only while their memory estimates fit one job's budget", "[intervention]") {
  auto model = TinyModel();
  const protocol::Request lens = LogitLens();
  // The job's own estimate, from the refusal under a 1-byte budget.
  InterventionLimits tiny_budget;
  tiny_budget.max_job_bytes = 1;
  auto refused = Run(*model, lens, tiny_budget);
  REQUIRE(refused.status().code() == StatusCode::kResourceExhausted);
  const std::string& message = refused.status().message();
  const size_t at = message.find("needs an estimated ") + std::string("needs an estimated ").size();
  const int64_t estimate = std::stoll(message.substr(at));
  REQUIRE(estimate > 0);
  const std::vector<protocol::Request> requests = {lens, lens, lens};
  for (const auto& [budget, expected] : std::vector<std::pair<int64_t, size_t>>{{estimate * 5 / 2, 2}, {estimate * 3, 1}}) {
    INFO("budget " << budget);
    std::vector<BatchJob> jobs = Jobs(requests);
    for (BatchJob& job : jobs) job.limits.max_job_bytes = budget;
    BatchReport report;
    auto results = RunBatched(*model, jobs, &report);
    CHECK(report.passes.size() == expected);  // 2.5 estimates: two share, one alone; 3: all share
    for (const auto& r : results) CHECK(r.ok());
  }
}

TEST_CASE("a shared pass counts its jobs' memory at the batch's padded prompt length", "[intervention]") {
  auto model = TinyModel();
  auto estimate_of = [&](const protocol::Request& request) {
    InterventionLimits tiny_budget;
    tiny_budget.max_job_bytes = 1;
    auto refused = Run(*model, request, tiny_budget);
    INFO(refused.status().ToString());
    REQUIRE(refused.status().code() == StatusCode::kResourceExhausted);
    const std::string& message = refused.status().message();
    return std::stoll(message.substr(message.find("needs an estimated ") + std::string("needs an estimated ").size()));
  };
  protocol::Request short_lens = LogitLens(), long_lens = LogitLens();
  std::vector<int64_t> long_prompt;
  for (int64_t i = 0; i < 60; ++i) long_prompt.push_back(1 + (i * 37) % 127);
  long_lens.traces[0].invokes[0].ids = long_prompt;
  const int64_t short_bytes = estimate_of(short_lens), long_bytes = estimate_of(long_lens);
  REQUIRE(long_bytes > short_bytes);
  const std::vector<protocol::Request> requests = {short_lens, short_lens, long_lens};
  // Their own estimates add up to the budget, but beside the long prompt the short ones'
  // rows are 60 positions long: the long job runs alone. With room for that, all share.
  for (const auto& [budget, expected] : std::vector<std::pair<int64_t, std::vector<std::vector<size_t>>>>{
           {2 * short_bytes + long_bytes, {{0, 1}, {2}}}, {3 * long_bytes, {{0, 1, 2}}}}) {
    INFO("budget " << budget);
    std::vector<BatchJob> jobs = Jobs(requests);
    for (BatchJob& job : jobs) job.limits.max_job_bytes = budget;
    BatchReport report;
    auto results = RunBatched(*model, jobs, &report);
    CHECK(report.passes == expected);
    for (size_t j = 0; j < results.size(); ++j) {
      INFO("job " << j << ": " << results[j].status().ToString());
      REQUIRE(results[j].ok());
      CheckSameResult(*results[j], RunOk(*model, requests[j]));
    }
  }
}

}  // namespace
}  // namespace glassbox::intervention
