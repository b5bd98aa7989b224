// The op whitelist's documentation stays in step with the table.
#include <catch2/catch.hpp>

#include "intervention/ops.h"
#include "tests/engine/tensor_fixtures.h"

namespace glassbox::intervention {

TEST_CASE("every whitelisted op is documented in intervention/OPS.md", "[intervention]") {
  const std::string doc = testing::ReadTextFile("intervention/OPS.md");
  for (const OpSpec& op : AllOps()) {
    INFO(op.name);
    CHECK_THAT(doc, Catch::Contains("`" + op.signature + "`"));
  }
}

}  // namespace glassbox::intervention
