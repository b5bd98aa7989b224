// Runs one job's bytes through decode -> validate -> run -> encode, turning every failure
// (including ones LibTorch or the allocator throw) into an error report for the user.
#include "worker/job.h"

#include <exception>
#include <new>

#include "protocol/codec.h"

namespace glassbox::worker {
namespace {

std::string ErrorBytes(const Status& status) {
  return protocol::EncodeErrorReport(protocol::ErrorReport::FromStatus(status));
}

StatusOr<protocol::Result> DecodeAndRun(const Model& model, const std::string& served_name,
                                        std::string_view request_bytes,
                                        const intervention::InterventionLimits& limits,
                                        const intervention::RunControl& control) {
  StatusOr<protocol::Request> request = protocol::DecodeRequest(request_bytes);
  if (!request.ok()) return request.status().WithContext("the request could not be decoded");
  if (request->model != served_name) {
    return InvalidArgument("this worker serves model '" + served_name + "', the request names '" +
                           request->model + "'");
  }
  return intervention::Run(model, *request, limits, control);
}

}  // namespace

std::string RunJob(const Model& model, const std::string& served_name,
                   std::string_view request_bytes,
                   const intervention::InterventionLimits& limits,
                   const intervention::RunControl& control) {
  try {
    StatusOr<protocol::Result> result =
        DecodeAndRun(model, served_name, request_bytes, limits, control);
    if (!result.ok()) return ErrorBytes(result.status());
    return protocol::EncodeResult(*result);
  } catch (const std::bad_alloc&) {
    return ErrorBytes(ResourceExhausted("the worker ran out of memory running this job"));
  } catch (const std::exception& e) {
    return ErrorBytes(Internal(std::string("the worker failed running this job: ") + e.what()));
  }
}

}  // namespace glassbox::worker
