// One job on an engine worker: request bytes in, result (or error report) bytes out.
// The worker process (worker/serve.h) calls this for every job the broker hands it; tests
// and tools may call it directly. Internal to the worker room and its tests.
#ifndef GLASSBOX_WORKER_JOB_H_
#define GLASSBOX_WORKER_JOB_H_

#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "engine/engine.h"
#include "intervention/intervention.h"

namespace glassbox::worker {

// Decodes `request_bytes` (a protocol request message), checks that it is meant for
// `served_name`, runs it on `model` under `limits` and `control`, and returns the encoded
// result — or an encoded error report whose code tells the broker whether a retry can help
// (INVALID_ARGUMENT: never; CANCELLED: stopped on purpose; INTERNAL/UNAVAILABLE: maybe) and
// whose message names the cause and, for graph problems, the node. Never throws.
// Thread-safe as far as `model` is (Model::Forward may run concurrently).
std::string RunJob(const Model& model, const std::string& served_name,
                   std::string_view request_bytes,
                   const intervention::InterventionLimits& limits,
                   const intervention::RunControl& control);

// One job of a batch (RunJobs): its request bytes and how to stop it.
struct JobInput {
  std::string_view request_bytes;
  intervention::RunControl control;
};

// An encoded error report for `status` (what a job that fails returns).
std::string ErrorReportBytes(const Status& status);

// Whether the encoded request generates (a trace with generate options); false for bytes
// that do not decode (RunJob then reports why).
bool IsGeneration(std::string_view request_bytes);

// RunJob for several jobs at once (a batch of different users' jobs, worker/batcher.h):
// each is decoded and checked on its own, then they run with as few engine passes as
// intervention::RunBatched can manage. One encoded result or error report per job, in
// order; `report` (optional) says which jobs shared which pass. Never throws.
std::vector<std::string> RunJobs(const Model& model, const std::string& served_name,
                                 const std::vector<JobInput>& jobs,
                                 const intervention::InterventionLimits& limits,
                                 intervention::BatchReport* report = nullptr);

// What RunJobs with continuous batching takes in and gives out while it runs (as
// intervention::BatchFeed, with encoded jobs and results). Jobs are indexed as given, then
// joined jobs in the order they came.
struct JobsFeed {
  // May be empty; asked between the steps of a shared generation, with how many jobs it
  // runs, for jobs that join it.
  std::function<std::vector<JobInput>(size_t running)> join;
  // Each job's encoded result or error report, as soon as the job ends.
  std::function<void(size_t job, std::string result)> done;
  // A run nested in a running batch: what that batch holds, and where jobs that do not fit
  // beside it go unrun (BatchFeed::held_bytes, defer).
  int64_t held_bytes = 0;
  std::function<void(size_t job)> defer;
  // Told what this run's passes hold while they run (BatchFeed::holding).
  std::function<void(int64_t bytes)> holding;
};

// RunJobs with continuous batching (JobsFeed). Never throws.
void RunJobs(const Model& model, const std::string& served_name, const std::vector<JobInput>& jobs,
             const intervention::InterventionLimits& limits, const JobsFeed& feed,
             intervention::BatchReport* report = nullptr);

}  // namespace glassbox::worker

#endif  // GLASSBOX_WORKER_JOB_H_
