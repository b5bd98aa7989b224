// Runs jobs' bytes through decode -> validate -> run -> encode, turning every failure
// (including ones LibTorch or the allocator throw) into an error report for the user.
#include "worker/job.h"

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

std::vector<std::string> RunJobs(const Model& model, const std::string& served_name,
                                 const std::vector<JobInput>& jobs,
                                 const intervention::InterventionLimits& limits,
                                 intervention::BatchReport* report) {
  std::vector<std::string> out(jobs.size());
  std::vector<std::optional<protocol::Request>> requests(jobs.size());
  std::vector<intervention::BatchJob> batch;
  std::vector<size_t> batch_index;  // batch position -> job
  for (size_t j = 0; j < jobs.size(); ++j) {
    StatusOr<protocol::Request> request = Decode(served_name, jobs[j].request_bytes);
    if (!request.ok()) {
      out[j] = ErrorReportBytes(request.status());
      continue;
    }
    requests[j] = std::move(*request);
    batch.push_back({&*requests[j], limits, jobs[j].control});
    batch_index.push_back(j);
  }
  intervention::BatchReport ran;
  std::vector<StatusOr<protocol::Result>> results = intervention::RunBatched(model, batch, &ran);
  for (size_t b = 0; b < results.size(); ++b) out[batch_index[b]] = Encoded(results[b]);
  if (report != nullptr) {
    for (const std::vector<size_t>& pass : ran.passes) {
      std::vector<size_t> ids;
      for (size_t b : pass) ids.push_back(batch_index[b]);
      report->passes.push_back(std::move(ids));
    }
  }
  return out;
}

std::string RunJob(const Model& model, const std::string& served_name,
                   std::string_view request_bytes,
                   const intervention::InterventionLimits& limits,
                   const intervention::RunControl& control) {
  return RunJobs(model, served_name, {{request_bytes, control}}, limits).front();
}

}  // namespace glassbox::worker
