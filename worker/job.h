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

// RunJobs with continuous batching: `join` (may be empty) is asked between the steps of a
// shared generation, with how many jobs it runs, for jobs that join it (intervention::
// BatchFeed); each job's encoded result or error report goes to `done` as soon as the job
// ends, indexed as given, then joined jobs in the order they came. Never throws.
void RunJobs(const Model& model, const std::string& served_name, const std::vector<JobInput>& jobs,
             const intervention::InterventionLimits& limits,
             const std::function<std::vector<JobInput>(size_t running)>& join,
             const std::function<void(size_t job, std::string result)>& done,
             intervention::BatchReport* report = nullptr);

}  // namespace glassbox::worker

#endif  // GLASSBOX_WORKER_JOB_H_
