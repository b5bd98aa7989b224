// The JSON mirror of the wire format (protocol/SPEC.md, "JSON mirror"): the same envelope and
// structure as the msgpack form, for test vectors, tools and people. Differences: a tensor's
// data is a flat row-major list of numbers (bools for bool tensors; "nan", "inf", "-inf"
// strings for non-finite floats), or on input a base64 string under "data_base64"; a
// non-finite float Value is {"float": "nan" | "inf" | "-inf"}. Ints and floats stay apart
// (3 vs 3.0), as nlohmann::json keeps them.
//
// The *FromJson functions apply the same checks and limits as the msgpack decoders and name
// the position of every error; they never throw. Parse text yourself with
// nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false) and check is_discarded().
#ifndef GLASSBOX_PROTOCOL_JSON_H_
#define GLASSBOX_PROTOCOL_JSON_H_

#include <nlohmann/json.hpp>

#include "base/status.h"
#include "protocol/codec.h"
#include "protocol/graph.h"

namespace glassbox::protocol {

nlohmann::json RequestToJson(const Request& request);
nlohmann::json ResultToJson(const Result& result);
nlohmann::json ErrorReportToJson(const ErrorReport& error);
// One Value alone (no envelope), e.g. to show a node's arguments in a message.
nlohmann::json ValueToJson(const Value& value);

StatusOr<Request> RequestFromJson(const nlohmann::json& json, const DecodeLimits& limits = {});
StatusOr<Result> ResultFromJson(const nlohmann::json& json, const DecodeLimits& limits = {});
StatusOr<ErrorReport> ErrorReportFromJson(const nlohmann::json& json,
                                          const DecodeLimits& limits = {});

}  // namespace glassbox::protocol

#endif  // GLASSBOX_PROTOCOL_JSON_H_
