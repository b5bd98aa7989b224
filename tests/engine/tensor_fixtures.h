// Test helpers: golden tensors from safetensors fixtures, and tensor comparison.
#ifndef GLASSBOX_TESTS_ENGINE_TENSOR_FIXTURES_H_
#define GLASSBOX_TESTS_ENGINE_TENSOR_FIXTURES_H_

#include <ATen/core/Tensor.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "engine/engine.h"

namespace glassbox::testing {

// Every tensor of a safetensors file, as CPU tensors owning their memory. Fails the test
// (REQUIRE) when the file cannot be read.
std::map<std::string, at::Tensor> ReadGoldenTensors(const std::string& path);

// Largest absolute elementwise difference (shapes must match: checked with REQUIRE).
double MaxAbsDiff(const at::Tensor& actual, const at::Tensor& expected);

// |actual - expected| relative to the largest unmasked |expected| (at least 1); masked
// attention scores hold the dtype's minimum, equal in both.
double RelativeDiff(const at::Tensor& actual, const at::Tensor& expected);

// The ids of a 1-D tensor.
std::vector<int64_t> Row(const at::Tensor& ids);

// Loads a model, failing the test (REQUIRE) with its status when it cannot.
std::unique_ptr<Model> LoadOrFail(const std::string& path, const EngineParams& params = {});

// Every hook point's value (by name) in a forward pass of one prompt; the logits too if asked.
std::map<std::string, at::Tensor> CaptureAll(const Model& model, const std::vector<int64_t>& ids,
                                             at::Tensor* logits = nullptr);

// Reads a whole text file (REQUIRE that it exists).
std::string ReadTextFile(const std::string& path);

constexpr const char* kTinyLlamaDir = "tests/fixtures/tiny_llama";
constexpr const char* kSmolLm2Path = "models/SmolLM2-135M-Instruct.Q4_1.gguf";

}  // namespace glassbox::testing

#endif  // GLASSBOX_TESTS_ENGINE_TENSOR_FIXTURES_H_
