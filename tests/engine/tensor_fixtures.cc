// Reads golden tensors with the engine's own safetensors reader.
#include "tests/engine/tensor_fixtures.h"

#include <ATen/TensorOperators.h>
#include <ATen/ops/abs.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros_like.h>
#include <catch2/catch.hpp>

#include <fstream>
#include <sstream>

#include "engine/safetensors.h"

namespace glassbox::testing {
namespace {

at::ScalarType ScalarTypeOf(StoredType type) {
  switch (type) {
    case StoredType::kF32: return at::kFloat;
    case StoredType::kF16: return at::kHalf;
    case StoredType::kBF16: return at::kBFloat16;
    case StoredType::kI64: return at::kLong;
    case StoredType::kI32: return at::kInt;
    case StoredType::kU8: return at::kByte;
    case StoredType::kBool: return at::kBool;
    default: FAIL("unexpected stored type in a golden file"); return at::kFloat;
  }
}

}  // namespace

std::map<std::string, at::Tensor> ReadGoldenTensors(const std::string& path) {
  StatusOr<SafetensorsFile> file = SafetensorsFile::Open(path);
  INFO(file.status().ToString());
  REQUIRE(file.ok());
  std::map<std::string, at::Tensor> out;
  for (const StoredTensor& t : file->tensors()) {
    auto options = at::TensorOptions().dtype(ScalarTypeOf(t.type));
    out[t.name] = at::from_blob(const_cast<uint8_t*>(t.data), t.shape, options).clone();
  }
  return out;
}

double MaxAbsDiff(const at::Tensor& actual, const at::Tensor& expected) {
  INFO("actual " << actual.sizes() << " expected " << expected.sizes());
  REQUIRE(actual.sizes() == expected.sizes());
  if (actual.numel() == 0) return 0.0;
  return (actual.to(at::kDouble) - expected.to(at::kDouble)).abs().max().item<double>();
}

std::string ReadTextFile(const std::string& path) {
  std::ifstream in(path);
  INFO("reading " << path);
  REQUIRE(in.good());
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

double RelativeDiff(const at::Tensor& actual, const at::Tensor& expected) {
  at::Tensor e = expected.to(at::kDouble);
  at::Tensor unmasked = at::where(e > -1e30, e.abs(), at::zeros_like(e));
  const double scale = std::max(1.0, unmasked.max().item<double>());
  return MaxAbsDiff(actual, expected) / scale;
}

std::vector<int64_t> Row(const at::Tensor& ids) {
  at::Tensor c = ids.to(at::kLong).contiguous();
  return std::vector<int64_t>(c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + c.numel());
}

std::unique_ptr<Model> LoadOrFail(const std::string& path, const EngineParams& params) {
  auto model = Model::Load(path, params);
  INFO(path << ": " << model.status().ToString());
  REQUIRE(model.ok());
  return std::move(model).value();
}

std::map<std::string, at::Tensor> CaptureAll(const Model& model, const std::vector<int64_t>& ids,
                                             at::Tensor* logits) {
  HookSet hooks(model.catalogue());
  std::map<std::string, at::Tensor> captured;
  hooks.AddMatching("", [&captured](const HookContext& ctx, at::Tensor& value) {
    captured[ctx.point->name] = value.clone();
    return Status::Ok();
  });
  auto result = model.Forward({{ids}}, &hooks);
  REQUIRE(result.ok());
  if (logits != nullptr) *logits = result->logits;
  return captured;
}

}  // namespace glassbox::testing
