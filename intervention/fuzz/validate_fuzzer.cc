// libFuzzer entry point for graph validation: arbitrary bytes are decoded as a request
// (msgpack as the worker receives it, or its JSON mirror, which mutates well from the
// example graphs) and validated against a tiny Llama checkpoint's hook catalogue, the
// shape-only pass included (validate_target.h says what counts as a failure). The model is
// the fixture tests/fixtures/tiny_llama (3 layers, 128 token ids, no tokenizer), or
// $GLASSBOX_FUZZ_MODEL: its weights are loaded once and never used, as validation reads only
// the catalogue and sizes.
// Build and run from the repository root (clang only; scripts/fuzz/run.sh validate does all
// of it, in build-asan/):
//   CXX=clang++ cmake -S . -B build-fuzz -G Ninja -DGLASSBOX_FUZZ=ON
//   cmake --build build-fuzz --target intervention_validate_fuzzer
//   mkdir -p /tmp/fuzz && build-fuzz/bin/intervention_validate_fuzzer /tmp/fuzz \
//     intervention/fuzz/corpus -dict=intervention/fuzz/validate.dict -max_total_time=300
//   build-fuzz/bin/intervention_validate_fuzzer -merge=1 intervention/fuzz/corpus /tmp/fuzz
// The corpus is replayed through the same target by tests/intervention/fuzz_corpus_test.cc
// in every build (and under ASan + UBSan by scripts/sanitize_check.sh).
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string_view>

#include "engine/engine.h"
#include "intervention/fuzz/validate_target.h"

namespace {
std::unique_ptr<glassbox::Model> fuzz_model;
}  // namespace

extern "C" int LLVMFuzzerInitialize(int* /*argc*/, char*** /*argv*/) {
  const char* path = std::getenv("GLASSBOX_FUZZ_MODEL");
  auto model = glassbox::Model::Load(path != nullptr ? path : "tests/fixtures/tiny_llama");
  if (!model.ok()) {
    std::fprintf(stderr, "validate fuzzer: %s (run it from the repository root)\n",
                 model.status().ToString().c_str());
    std::abort();
  }
  fuzz_model = std::move(*model);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  (void)glassbox::intervention::ValidateFuzzInput(
      *fuzz_model, std::string_view(reinterpret_cast<const char*>(data), size));
  return 0;
}
