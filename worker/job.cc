// Runs jobs' bytes through decode -> validate -> run -> encode, turning every failure
// (including ones LibTorch or the allocator throw) into an error report for the user.
#include "worker/job.h"

#include <deque>
#include <exception>
#include <new>
#include <optional>

#include "protocol/codec.h"

namespace glassbox::worker {
namespace {

StatusOr<protocol::Request> Decode(const std::string& served_name, std::string_view request_bytes) {
  StatusOr<protocol::Request> request = protocol::DecodeRequest(request_bytes);
  if (!request.ok()) return request.status().WithContext("the request could not be decoded");
  if (request->model != served_name) {
    return InvalidArgument("this worker serves model '" + served_name + "', the request names '" +
                           request->model + "'");
  }
  return request;
}

// The result's bytes, or the error report's when the result is an error (or cannot be encoded).
std::string Encoded(const StatusOr<protocol::Result>& result) {
  if (!result.ok()) return ErrorReportBytes(result.status());
  try {
    return protocol::EncodeResult(*result);
  } catch (const std::bad_alloc&) {
    return ErrorReportBytes(ResourceExhausted("the worker ran out of memory encoding this job's result"));
  } catch (const std::exception& e) {
    return ErrorReportBytes(Internal(std::string("the worker failed encoding this job's result: ") + e.what()));
  }
}

}  // namespace

std::string ErrorReportBytes(const Status& status) {
  return protocol::EncodeErrorReport(protocol::ErrorReport::FromStatus(status));
}

bool IsGeneration(std::string_view request_bytes) {
  StatusOr<protocol::Request> request = protocol::DecodeRequest(request_bytes);
  if (!request.ok()) return false;
  for (const protocol::Trace& trace : request->traces) {
    if (trace.generate) return true;
  }
  return false;
}

void RunJobs(const Model& model, const std::string& served_name, const std::vector<JobInput>& jobs,
             const intervention::InterventionLimits& limits, const JobsFeed& given,
             intervention::BatchReport* report) {
  std::deque<protocol::Request> requests;  // (a deque: joined jobs' requests stay where they are)
  std::vector<size_t> job_of;              // intervention's job index -> ours
  size_t next_job = 0;
  // Decodes a job: a request that cannot run is answered at once; the others go on.
  auto decode = [&](const JobInput& input, std::vector<intervention::BatchJob>& out) {
    const size_t index = next_job++;
    StatusOr<protocol::Request> request = Decode(served_name, input.request_bytes);
    if (!request.ok()) return given.done(index, ErrorReportBytes(request.status()));
    requests.push_back(std::move(*request));
    out.push_back({&requests.back(), limits, input.control});
    job_of.push_back(index);
  };
  std::vector<intervention::BatchJob> batch;
  for (const JobInput& input : jobs) decode(input, batch);
  intervention::BatchFeed feed;
  if (given.join) {
    feed.join = [&](size_t running) {
      std::vector<intervention::BatchJob> joined;
      for (const JobInput& input : given.join(running)) decode(input, joined);
      return joined;
    };
  }
  feed.done = [&](size_t b, StatusOr<protocol::Result> result) { given.done(job_of[b], Encoded(result)); };
  feed.held_bytes = given.held_bytes;
  if (given.defer) feed.defer = [&](size_t b) { given.defer(job_of[b]); };
  feed.holding = given.holding;
  intervention::BatchReport ran;
  intervention::RunBatched(model, batch, feed, &ran);
  if (report != nullptr) {
    for (const std::vector<size_t>& pass : ran.passes) {
      std::vector<size_t> ids;
      for (size_t b : pass) ids.push_back(job_of[b]);
      report->passes.push_back(std::move(ids));
    }
  }
}

std::vector<std::string> RunJobs(const Model& model, const std::string& served_name,
                                 const std::vector<JobInput>& jobs,
                                 const intervention::InterventionLimits& limits,
                                 intervention::BatchReport* report) {
  std::vector<std::string> out(jobs.size());
  JobsFeed feed;
  feed.done = [&out](size_t job, std::string result) { out[job] = std::move(result); };
  RunJobs(model, served_name, jobs, limits, feed, report);
  return out;
}

std::string RunJob(const Model& model, const std::string& served_name,
                   std::string_view request_bytes,
                   const intervention::InterventionLimits& limits,
                   const intervention::RunControl& control) {
  return RunJobs(model, served_name, {{request_bytes, control}}, limits).front();
}

}  // namespace glassbox::worker
