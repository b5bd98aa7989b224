// What one validation fuzz input does; see validate_target.h.
#include "intervention/fuzz/validate_target.h"

#include <cstdint>
#include <set>

#include "intervention/intervention.h"
#include "protocol/codec.h"
#include "protocol/json.h"

namespace glassbox::intervention {
namespace {

// A shape pass of 512 generation steps or 20,000 nodes is slow but unremarkable: smaller
// limits let the fuzzer try more inputs, and reaching a limit is still checked.
InterventionLimits FuzzLimits() {
  InterventionLimits limits;
  limits.max_nodes = 512;
  limits.max_traces = 4;
  limits.max_invokes = 4;
  limits.max_prompt_tokens = 64;
  limits.max_new_tokens = 8;
  limits.max_saved_bytes = int64_t{1} << 26;
  limits.max_job_bytes = int64_t{1} << 30;
  return limits;
}

StatusOr<protocol::Request> DecodeEither(std::string_view bytes) {
  protocol::DecodeLimits limits;
  limits.max_tensor_bytes = 1 << 20;  // keeps the fuzzer's memory use small
  StatusOr<protocol::Request> request = protocol::DecodeRequest(bytes, limits);
  if (request.ok()) return request;
  const nlohmann::json json = nlohmann::json::parse(bytes, nullptr, /*allow_exceptions=*/false);
  if (json.is_discarded()) return request;
  return protocol::RequestFromJson(json, limits);
}

}  // namespace

FuzzOutcome ValidateFuzzInput(const Model& model, std::string_view bytes) {
  StatusOr<protocol::Request> request = DecodeEither(bytes);
  if (!request.ok()) return FuzzOutcome::kNotARequest;
  std::set<int64_t> ids;
  for (const protocol::Trace& trace : request->traces) {
    for (const protocol::Node& node : trace.nodes) ids.insert(node.id);
  }
  const std::vector<ValidationError> errors = Validate(model, *request, FuzzLimits());
  for (const ValidationError& error : errors) {
    if (error.message.empty()) __builtin_trap();
    if (error.node != -1 && ids.count(error.node) == 0) __builtin_trap();
    (void)error.ToString();
  }
  return errors.empty() ? FuzzOutcome::kValid : FuzzOutcome::kInvalid;
}

}  // namespace glassbox::intervention
