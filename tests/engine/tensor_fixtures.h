// Test helpers: golden tensors from safetensors fixtures, and tensor comparison.
#ifndef GLASSBOX_TESTS_ENGINE_TENSOR_FIXTURES_H_
#define GLASSBOX_TESTS_ENGINE_TENSOR_FIXTURES_H_

#include <ATen/core/Tensor.h>

#include <map>
#include <string>

namespace glassbox::testing {

// Every tensor of a safetensors file, as CPU tensors owning their memory. Fails the test
// (REQUIRE) when the file cannot be read.
std::map<std::string, at::Tensor> ReadGoldenTensors(const std::string& path);

// Largest absolute elementwise difference (shapes must match: checked with REQUIRE).
double MaxAbsDiff(const at::Tensor& actual, const at::Tensor& expected);

// Reads a whole text file (REQUIRE that it exists).
std::string ReadTextFile(const std::string& path);

constexpr const char* kTinyLlamaDir = "tests/fixtures/tiny_llama";
constexpr const char* kSmolLm2Path = "models/SmolLM2-135M-Instruct.Q4_1.gguf";

}  // namespace glassbox::testing

#endif  // GLASSBOX_TESTS_ENGINE_TENSOR_FIXTURES_H_
