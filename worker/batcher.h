// The worker's batcher: jobs that arrive on the worker's broker links (one link per batch
// slot, each an ordinary worker to the broker) run together, as few engine passes as
// intervention::RunBatched manages. While one batch runs, the jobs that arrive wait for the
// next; an idle batcher starts a lone job at once (no waiting for company).
#ifndef GLASSBOX_WORKER_BATCHER_H_
#define GLASSBOX_WORKER_BATCHER_H_

#include <condition_variable>
#include <deque>
#include <future>
#include <mutex>
#include <string>
#include <thread>

#include "broker/worker_link.h"
#include "engine/engine.h"
#include "intervention/intervention.h"

namespace glassbox::worker {

class Batcher {
 public:
  // `hold_file` (tests only): while it exists, jobs gather and none runs (cancelled ones are
  // answered), so a test decides which jobs make up a batch.
  Batcher(const Model& model, std::string served_name, intervention::InterventionLimits limits,
          size_t max_jobs, std::string hold_file = "");
  ~Batcher();  // finishes the running batch; jobs still waiting get UNAVAILABLE
  Batcher(const Batcher&) = delete;
  Batcher& operator=(const Batcher&) = delete;

  // Runs `request` (encoded) in the next batch and returns its encoded result or error
  // report; blocks until then. Thread-safe: each link's compute thread calls it.
  std::string Run(const broker::JobContext& job, const std::string& request);

 private:
  struct Waiting {
    const broker::JobContext* job;
    const std::string* request;
    std::promise<std::string> result;
  };
  void Loop();
  // Answers waiting jobs that were stopped while held; true if the hold file still exists.
  bool Held();

  const Model& model_;
  const std::string served_name_;
  const intervention::InterventionLimits limits_;
  const size_t max_jobs_;
  const std::string hold_file_;
  std::mutex mu_;
  std::condition_variable wake_;
  std::deque<Waiting*> waiting_;  // guarded by mu_
  bool closing_ = false;          // guarded by mu_
  std::thread thread_;
};

}  // namespace glassbox::worker

#endif  // GLASSBOX_WORKER_BATCHER_H_
