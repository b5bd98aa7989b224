// The intervention room's front door: validate and run a protocol::Request (one or more
// traces of intervention-graph nodes) against a loaded model.
//
//   decode (protocol/) -> Validate (every problem at once, nothing runs) -> Run
//
// Run validates first. Values flow from node to node as their inputs appear during the
// forward pass; only nodes marked with `save` come back. Validation ends with a shape-only
// pass over meta tensors (no data, no weights), which is also a scan's answer.
#ifndef GLASSBOX_INTERVENTION_INTERVENTION_H_
#define GLASSBOX_INTERVENTION_INTERVENTION_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "base/status.h"
#include "engine/engine.h"
#include "protocol/graph.h"

namespace glassbox::intervention {

struct InterventionLimits {
  int64_t max_nodes = 20000;
  int64_t max_traces = 32;
  int64_t max_invokes = 64;          // per trace
  int64_t max_prompt_tokens = 4096;  // per invoke
  int64_t max_new_tokens = 512;
  int64_t max_saved_bytes = int64_t{1} << 30;
  // A job whose memory estimate (from the shape-only pass: the forward pass at its batch and
  // prompt sizes, the KV cache of a generation, graph values alive at once, saved and cached
  // values) is over this is refused with kResourceExhausted before anything runs. 0: no
  // budget (`glassbox-engine serve` always sets one, see --max-job-bytes).
  int64_t max_job_bytes = 0;
  // What this worker's graph ops are assumed to compute per second. A job whose graph ops
  // (not the model's own pass, which stops between layers) need more FLOPs than this rate
  // gives within RunControl::time_limit_ms is refused with kResourceExhausted before it
  // runs. FLOPs are estimated from the shapes the shape-only pass knows: 2·m·n·k for a
  // matmul, 2 × output × contracted sizes for einsum and module calls, inputs + output
  // elements for everything else.
  double flops_per_second = 1e11;
};

// One problem found before anything ran. `node` is -1 for request-level problems.
struct ValidationError {
  int64_t node = -1;
  std::string source;  // the client's file:line for that node, if it sent one
  std::string message;
  std::string ToString() const;  // "node 5 (exp.py:12): unknown op 'frobnicate'"
};

// Every problem of the request: structure (ops, refs, hook points, ordering, limits) and,
// once the structure is sound, impossible shapes found by the shape-only pass. Empty: valid.
std::vector<ValidationError> Validate(const Model& model, const protocol::Request& request,
                                      const InterventionLimits& limits = InterventionLimits());

// How a caller steers a run from outside (the worker: cancellation and time limits).
struct RunControl {
  // Asked before every layer of every forward pass (and so at every generation step); a
  // non-OK status (e.g. Cancelled("time limit of 60 s exceeded")) stops the run between hook
  // points and is returned. Empty: never interrupted.
  std::function<Status()> interrupt;
  // The job's time limit, for refusing graph ops that cannot finish within it (see
  // InterventionLimits::flops_per_second). 0: none. `interrupt` is also asked before every
  // graph op of a real run, so the clock is checked between ops as well as between layers.
  int64_t time_limit_ms = 0;
  // RunBatched: told as the job's engine pass starts (or it joins a running generation) how
  // many jobs share it (1: alone).
  std::function<void(int64_t jobs)> on_pass;
};

// Validates, then runs every trace in order. A validation failure returns kInvalidArgument
// listing every problem; a failure while running names the node, its inputs' shapes and
// the cause. A request with `scan` set runs nothing: the result holds only `shapes` (every
// node's dtype and shape per step). The model is unchanged afterwards whatever happened.
StatusOr<protocol::Result> Run(const Model& model, const protocol::Request& request,
                               const InterventionLimits& limits = InterventionLimits(),
                               const RunControl& control = RunControl());

// One job of a batch (RunBatched): its request, limits and control, as Run takes them.
struct BatchJob {
  const protocol::Request* request = nullptr;
  InterventionLimits limits;
  RunControl control;
};

// Which jobs ran in which engine pass (indices into the batch), in order; a shared
// generation's entry also lists the jobs that joined it while it ran.
struct BatchReport {
  std::vector<std::vector<size_t>> passes;
};

// Runs several jobs (different users' requests, different graphs) with as few engine passes
// as it can: every job is validated and estimated as Run does; single-trace forwards share
// one forward pass and single-trace generations one generation (each job with its own
// sampling and seeded generator); the others run alone after them (scans, sessions of
// several traces, gradients, skipped modules, and a job whose memory estimate would take a
// shared pass over a job's max_job_bytes). In a shared pass a job's rows are its own:
// its reads, writes, caches and saves see only its rows (a whole-batch read gives its rows,
// indexed from 0) and its own prompt positions. Results, errors and cancellation
// (RunControl::interrupt) stay per job: a job that fails or is stopped leaves the pass and
// the others go on. Each result equals Run's within the engine's batched-vs-solo tolerance.
// One result per job, in order; never throws.
std::vector<StatusOr<protocol::Result>> RunBatched(const Model& model, const std::vector<BatchJob>& jobs,
                                                   BatchReport* report = nullptr);

// Continuous batching: what RunBatched's shared generation takes in and gives out while it
// runs.
struct BatchFeed {
  // Asked between steps of the shared generation (even one of a single job) with how many
  // jobs it runs: jobs that join it. A generation that may share the pass (and fits the
  // memory budget beside the jobs running) is prefilled at the next step and then decodes
  // with the others; any other job runs alone after the generation. Their indices (in
  // `done` and the report) follow the given jobs', in the order they came. Empty: none join.
  std::function<std::vector<BatchJob>(size_t running)> join;
  // Told each job's result as soon as the job ends: a job of a shared generation ends when
  // its own rows stop, while the others go on. Called once per job, on the calling thread.
  std::function<void(size_t job, StatusOr<protocol::Result> result)> done;
  // For a run nested in another (a worker runs waiting forwards between the layers of its
  // running batch): the memory that batch holds by estimate. A job whose estimate (alone, or
  // beside a shared pass's jobs) with `held_bytes` would go over its max_job_bytes is handed
  // to `defer` unrun (no result, no report) to run later; without `defer`, held_bytes is
  // ignored.
  int64_t held_bytes = 0;
  std::function<void(size_t job)> defer;
  // Told the estimated memory this run's passes hold while they run (a shared pass's jobs at
  // its padded length, or a job running alone), as that changes: up as jobs join a shared
  // generation, down as they leave it (a forward pass's rows are held to its end); 0 once
  // the run ends.
  std::function<void(int64_t bytes)> holding;
};
void RunBatched(const Model& model, const std::vector<BatchJob>& jobs, const BatchFeed& feed,
                BatchReport* report = nullptr);

}  // namespace glassbox::intervention

#endif  // GLASSBOX_INTERVENTION_INTERVENTION_H_
