// The worker's batcher: jobs that arrive on the worker's broker links (one link per batch
// slot, each an ordinary worker to the broker) run together, as few engine passes as
// intervention::RunBatched manages. An idle batcher starts a lone job at once (no waiting for
// company). While a batch runs, generations that arrive join its generation at the next
// step (continuous batching; up to max_jobs running) and leave it when their own rows stop;
// jobs that arrive and do not generate run at the next layer boundary of its pass, as a
// batch of their own (the generation pauses meanwhile, on the same thread); the rest wait
// for the next batch. A job that was running when an earlier worker died
// (JobContext::attempts) runs alone and shares nothing, so a job that crashes workers takes
// no other job's run down with it twice.
#ifndef GLASSBOX_WORKER_BATCHER_H_
#define GLASSBOX_WORKER_BATCHER_H_

#include <cstdint>
#include <condition_variable>
#include <deque>
#include <functional>
#include <future>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "broker/worker_link.h"
#include "engine/engine.h"
#include "intervention/intervention.h"
#include "worker/job.h"

namespace glassbox::worker {

// Tests' views of the batch thread (both unset in a worker).
struct BatcherProbes {
  // Called on the batch thread at every layer boundary of a running batch, before the
  // waiting jobs that may run there are looked at.
  std::function<void()> at_layer;
  // Called as each job is answered, before its Run returns: the order jobs were answered in,
  // which the order Run's callers wake up in need not be.
  std::function<void(const broker::JobContext& job)> answered;
};

class Batcher {
 public:
  // `hold_file` (tests only): while it exists, jobs gather and none runs (cancelled ones are
  // answered), so a test decides which jobs make up a batch. Meanwhile `<hold_file>.waiting`
  // holds how many jobs have gathered (a decimal count, replaced whole when it changes), so a
  // test outside the process releases the hold only once every job it sent is with the batcher.
  // `probes`: tests only (BatcherProbes).
  Batcher(const Model& model, std::string served_name, intervention::InterventionLimits limits,
          size_t max_jobs, std::string hold_file = "", BatcherProbes probes = {});
  ~Batcher();  // finishes the running batch; jobs still waiting get UNAVAILABLE
  Batcher(const Batcher&) = delete;
  Batcher& operator=(const Batcher&) = delete;

  // Runs `request` (encoded) in the next batch and returns its encoded result or error
  // report; blocks until then. Thread-safe: each link's compute thread calls it.
  std::string Run(const broker::JobContext& job, const std::string& request);
  // Jobs handed to Run that have not started yet.
  size_t Waiting() const;

 private:
  struct WaitingJob {
    const broker::JobContext* job;
    const std::string* request;
    bool generates;  // a generation (never run inside another batch's pass)
    std::promise<std::string> result;
    // Guarded by mu_: did not fit beside the running batch; not nested again in it until
    // what it holds goes down.
    bool deferred = false;
  };
  void Loop();
  // Hands `result` to the Run waiting for `waiting`.
  void Answer(WaitingJob& waiting, std::string result);
  JobInput Input(const WaitingJob& waiting);
  // Runs `batch`; generations that arrive meanwhile join its generation between steps.
  void RunBatch(const std::vector<WaitingJob*>& batch);
  // Called between layers of a running batch: runs the waiting jobs that do not generate,
  // when the running batch generates (and is not itself such a nested batch).
  void RunWaitingForwards();
  // Takes up to `most` waiting jobs that generate (or not), in order; retried and deferred
  // jobs stay.
  std::vector<WaitingJob*> TakeWaiting(bool generates, size_t most);
  // Answers waiting jobs that were stopped while held; true if the hold file still exists.
  bool Held();
  // Replaces `<hold_file>.waiting` with `count` (batch thread only).
  void ReportHeld(size_t count);

  const Model& model_;
  const std::string served_name_;
  const intervention::InterventionLimits limits_;
  const size_t max_jobs_;
  const std::string hold_file_;
  const BatcherProbes probes_;
  mutable std::mutex mu_;
  std::condition_variable wake_;
  std::deque<WaitingJob*> waiting_;  // guarded by mu_
  bool closing_ = false;          // guarded by mu_
  bool outer_generates_ = false;  // the batch thread's: its running batch has a generation
  bool nested_ = false;           // the batch thread's: a nested batch runs
  bool outer_retried_ = false;    // the batch thread's: the running batch is a retried job, alone
  size_t held_reported_ = SIZE_MAX;  // the batch thread's: the count in <hold_file>.waiting
  int64_t outer_held_ = 0;  // the batch thread's: the running (outer) batch's memory, by estimate
  std::thread thread_;
};

}  // namespace glassbox::worker

#endif  // GLASSBOX_WORKER_BATCHER_H_
