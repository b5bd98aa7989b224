// Gathers the jobs of a worker's links and runs them batch by batch on one thread.
#include "worker/batcher.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "protocol/codec.h"

#include "worker/job.h"

namespace glassbox::worker {
namespace {

// A job stopped from outside (cancelled, out of time) is logged with how far it got, so an
// operator sees that the worker let go of it.
void LogStopped(const broker::JobContext& job, const std::string& result) {
  if (!job.ShouldStop()) return;
  StatusOr<protocol::ErrorReport> report = protocol::DecodeErrorReport(result);
  if (!report.ok()) return;  // it finished before it was stopped
  std::fprintf(stderr, "glassbox worker: job %s stopped: %s\n", job.job_id().c_str(), report->message.c_str());
}

}  // namespace

Batcher::Batcher(const Model& model, std::string served_name, intervention::InterventionLimits limits,
                 size_t max_jobs, std::string hold_file, BatcherProbes probes)
    : model_(model), served_name_(std::move(served_name)), limits_(limits),
      max_jobs_(std::max<size_t>(max_jobs, 1)), hold_file_(std::move(hold_file)),
      probes_(std::move(probes)),
      thread_([this] { Loop(); }) {}

Batcher::~Batcher() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    closing_ = true;
  }
  wake_.notify_all();
  thread_.join();
  for (WaitingJob* w : waiting_) Answer(*w, ErrorReportBytes(Unavailable("the worker is stopping")));
}

void Batcher::Answer(WaitingJob& waiting, std::string result) {
  if (probes_.answered) probes_.answered(*waiting.job);
  waiting.result.set_value(std::move(result));
}

std::string Batcher::Run(const broker::JobContext& job, const std::string& request) {
  WaitingJob waiting{&job, &request, IsGeneration(request), {}};
  std::future<std::string> result = waiting.result.get_future();
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (closing_) return ErrorReportBytes(Unavailable("the worker is stopping"));
    waiting_.push_back(&waiting);
  }
  wake_.notify_all();
  return result.get();
}

size_t Batcher::Waiting() const {
  std::lock_guard<std::mutex> lock(mu_);
  return waiting_.size();
}

bool Batcher::Held() {
  if (hold_file_.empty()) return false;
  if (!std::filesystem::exists(hold_file_)) {
    if (held_reported_ != SIZE_MAX) {
      std::error_code ignored;
      std::filesystem::remove(hold_file_ + ".waiting", ignored);
      held_reported_ = SIZE_MAX;
    }
    return false;
  }
  size_t count;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto it = waiting_.begin(); it != waiting_.end();) {
      if ((*it)->job->ShouldStop()) {
        Answer(**it, ErrorReportBytes(Cancelled((*it)->job->StopReason())));
        it = waiting_.erase(it);
      } else {
        ++it;
      }
    }
    count = waiting_.size();
  }
  if (count != held_reported_) ReportHeld(count);
  return true;
}

void Batcher::ReportHeld(size_t count) {
  // Written beside, then renamed over: a reader never sees a partial count.
  const std::string path = hold_file_ + ".waiting";
  {
    std::ofstream out(path + ".new", std::ios::trunc);
    out << count;
  }
  std::error_code failed;
  std::filesystem::rename(path + ".new", path, failed);
  if (failed) {
    std::fprintf(stderr, "glassbox worker: cannot write %s: %s\n", path.c_str(), failed.message().c_str());
    return;
  }
  held_reported_ = count;
}

void Batcher::Loop() {
  for (;;) {
    std::vector<WaitingJob*> batch;
    {
      std::unique_lock<std::mutex> lock(mu_);
      wake_.wait_for(lock, std::chrono::milliseconds(hold_file_.empty() ? 1000 : 5),
                     [this] { return closing_ || (!waiting_.empty() && hold_file_.empty()); });
      if (closing_) return;
      if (waiting_.empty()) continue;
    }
    if (Held()) continue;
    {
      // A job whose earlier run died with its worker runs alone: if it crashes the worker
      // again, no other job's run is lost with it (and counted towards the poison limit).
      // It waits its turn (first come, first run); the others pass it by when it is not first.
      std::lock_guard<std::mutex> lock(mu_);
      for (auto it = waiting_.begin(); it != waiting_.end() && batch.size() < max_jobs_;) {
        const bool retried = (*it)->job->attempts() > 0;
        if (retried && !(batch.empty() && it == waiting_.begin())) {
          ++it;
          continue;
        }
        batch.push_back(*it);
        it = waiting_.erase(it);
        if (retried) break;
      }
      for (WaitingJob* w : waiting_) w->deferred = false;  // a new batch: any may nest in it
    }
    if (batch.empty()) continue;
    outer_generates_ = std::any_of(batch.begin(), batch.end(), [](const WaitingJob* w) { return w->generates; });
    outer_retried_ = batch.front()->job->attempts() > 0;
    RunBatch(batch);
    outer_generates_ = outer_retried_ = false;
  }
}

JobInput Batcher::Input(const WaitingJob& waiting) {
  JobInput input{*waiting.request, {}};
  const broker::JobContext* job = waiting.job;
  input.control.interrupt = [this, job]() -> Status {
    if (job->ShouldStop()) return Cancelled(job->StopReason());
    if (probes_.at_layer) probes_.at_layer();
    RunWaitingForwards();
    return Status::Ok();
  };
  // Graph ops that cannot finish in the time left at --flops-per-second are refused.
  input.control.time_limit_ms = std::max<int64_t>(job->RemainingMs(), 1);
  input.control.on_pass = [job](int64_t jobs) {
    if (jobs > 1) job->ReportBatch(jobs);
  };
  return input;
}

void Batcher::RunBatch(const std::vector<WaitingJob*>& batch) {
  std::vector<WaitingJob*> jobs = batch;  // then the generations that join its generation
  std::vector<JobInput> inputs;
  for (const WaitingJob* w : batch) inputs.push_back(Input(*w));
  // Between steps of the batch's generation, waiting generations join it (up to max_jobs_
  // running); a retried job's batch takes no one.
  auto join = [this, &jobs](size_t running) {
    std::vector<JobInput> joined;
    if (outer_retried_ || Held() || running >= max_jobs_) return joined;
    for (WaitingJob* w : TakeWaiting(/*generates=*/true, max_jobs_ - running)) {
      jobs.push_back(w);
      joined.push_back(Input(*w));
    }
    return joined;
  };
  JobsFeed feed;
  feed.join = join;
  feed.done = [this, &jobs](size_t j, std::string result) {
    LogStopped(*jobs[j]->job, result);
    Answer(*jobs[j], std::move(result));
  };
  // A nested batch runs while the batch around it holds its memory: a job that does not fit
  // beside that goes back to wait, first in line, not nested again until what the batch
  // around it holds goes down (jobs left it) or that batch ends.
  std::vector<WaitingJob*> deferred;
  if (nested_) {
    feed.held_bytes = outer_held_;
    feed.defer = [&jobs, &deferred](size_t j) { deferred.push_back(jobs[j]); };
  } else {
    feed.holding = [this](int64_t bytes) {
      if (bytes < outer_held_) {  // jobs left the batch: what did not fit beside it may now
        std::lock_guard<std::mutex> lock(mu_);
        for (WaitingJob* w : waiting_) w->deferred = false;
      }
      outer_held_ = bytes;
    };
  }
  RunJobs(model_, served_name_, inputs, limits_, feed);
  if (deferred.empty()) return;
  std::lock_guard<std::mutex> lock(mu_);
  for (auto it = deferred.rbegin(); it != deferred.rend(); ++it) {
    (*it)->deferred = true;
    waiting_.push_front(*it);
  }
}

std::vector<Batcher::WaitingJob*> Batcher::TakeWaiting(bool generates, size_t most) {
  std::vector<WaitingJob*> taken;
  std::lock_guard<std::mutex> lock(mu_);
  for (auto it = waiting_.begin(); it != waiting_.end() && taken.size() < most;) {
    if ((*it)->generates != generates || (*it)->job->attempts() > 0 || (*it)->deferred) {
      ++it;
      continue;
    }
    taken.push_back(*it);
    it = waiting_.erase(it);
  }
  return taken;
}

void Batcher::RunWaitingForwards() {
  if (!outer_generates_ || outer_retried_ || nested_ || Held()) return;
  const std::vector<WaitingJob*> batch = TakeWaiting(/*generates=*/false, max_jobs_);
  if (batch.empty()) return;
  nested_ = true;
  RunBatch(batch);
  nested_ = false;
}

}  // namespace glassbox::worker
