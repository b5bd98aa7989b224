// The body of the validation fuzz target (validate_fuzzer.cc), shared with the corpus replay
// in tests/intervention/fuzz_corpus_test.cc so both run exactly the same code.
#ifndef GLASSBOX_INTERVENTION_FUZZ_VALIDATE_TARGET_H_
#define GLASSBOX_INTERVENTION_FUZZ_VALIDATE_TARGET_H_

#include <string_view>

#include "engine/engine.h"

namespace glassbox::intervention {

enum class FuzzOutcome { kNotARequest, kInvalid, kValid };

// Decodes `bytes` as a request (msgpack, else its JSON mirror) and validates it against
// `model` with small limits (InterventionLimits scaled down so one input stays fast; every
// check still runs). Traps (__builtin_trap) when validation breaks its contract: a problem
// with an empty message or naming a node the request does not have. A crash, an exception
// or a sanitizer report is a bug in the decoder or the validator.
FuzzOutcome ValidateFuzzInput(const Model& model, std::string_view bytes);

}  // namespace glassbox::intervention

#endif  // GLASSBOX_INTERVENTION_FUZZ_VALIDATE_TARGET_H_
