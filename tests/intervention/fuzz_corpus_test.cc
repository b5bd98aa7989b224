// The validation fuzzer's corpus (intervention/fuzz/corpus/) replays through the fuzz target
// itself in every build: inputs that once crashed stay fixed, and the corpus keeps reaching
// both verdicts (requests refused with problems, and valid ones through the shape pass).
#include <catch2/catch.hpp>

#include <map>
#include <memory>

#include "intervention/fuzz/validate_target.h"
#include "tests/engine/tensor_fixtures.h"
#include "tests/protocol/protocol_test_util.h"

namespace glassbox::intervention {
namespace {

TEST_CASE("The validation fuzzing corpus replays through the fuzz target", "[intervention]") {
  const std::unique_ptr<Model> model = testing::LoadOrFail(testing::kTinyLlamaDir);
  const auto files = protocol::testing::ListFiles("intervention/fuzz/corpus");
  REQUIRE(!files.empty());
  std::map<FuzzOutcome, int> outcomes;
  for (const auto& file : files) {
    INFO(file.string());
    ++outcomes[ValidateFuzzInput(*model, protocol::testing::ReadFile(file))];
  }
  INFO(outcomes[FuzzOutcome::kValid] << " valid, " << outcomes[FuzzOutcome::kInvalid]
                                     << " refused, " << outcomes[FuzzOutcome::kNotARequest]
                                     << " not requests, of " << files.size());
  CHECK(outcomes[FuzzOutcome::kValid] > 0);
  CHECK(outcomes[FuzzOutcome::kInvalid] > 0);
}

}  // namespace
}  // namespace glassbox::intervention
