// The shape-only pass: meta tensors at hook points in the order and with the sizes of the
// engine's real pass (engine/families/), so validation and scans see what a run would see.
#include "intervention/shape_pass.h"

#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <vector>

#include "intervention/plan.h"
#include "intervention/value.h"

namespace glassbox::intervention {
namespace {

bool Reached(const HookCatalogue& catalogue, int point, const std::set<int>& skipped) {
  for (int skip : skipped) {
    if (catalogue.SkipCovers(skip, point)) return false;
  }
  return true;
}

// Concrete sizes of a point at one step: "batch", "seq", "k_seq" or a number.
std::vector<int64_t> SizesAt(const HookPointInfo& info, int64_t batch, int64_t seq, int64_t k_seq) {
  std::vector<int64_t> sizes;
  for (const std::string& dim : info.shape) {
    if (dim == "batch") sizes.push_back(batch);
    else if (dim == "seq") sizes.push_back(seq);
    else if (dim == "k_seq") sizes.push_back(k_seq);
    else sizes.push_back(std::stoll(dim));
  }
  return sizes;
}

at::Tensor MetaTensor(const std::vector<int64_t>& sizes, const std::string& dtype) {
  const at::ScalarType type = ScalarTypeFromName(dtype).value_or(at::kFloat);
  return at::empty(sizes, at::TensorOptions().dtype(type).device(at::kMeta));
}

// The trailing sizes a point's shape fixes (after its symbolic batch and sequence dims).
std::vector<int64_t> FixedSuffix(const HookPointInfo& info) {
  std::vector<int64_t> suffix;
  for (const std::string& dim : info.shape) {
    if (dim == "batch" || dim == "seq" || dim == "k_seq") {
      suffix.clear();
    } else {
      suffix.push_back(std::stoll(dim));
    }
  }
  return suffix;
}

}  // namespace

Status RunShapePass(const HookCatalogue& catalogue, const ShapePassSizes& sizes,
                    const std::set<int>& wanted, const std::set<int>& skipped,
                    const ShapePassCallback& fire) {
  std::vector<int> order(wanted.begin(), wanted.end());
  std::sort(order.begin(), order.end());  // catalogue ids are in forward order
  for (int64_t step = 0; step < sizes.steps; ++step) {
    const int64_t seq = step == 0 ? sizes.prompt : 1;
    const int64_t k_seq = sizes.prompt + step;
    for (int point : order) {
      if (!Reached(catalogue, point, skipped)) continue;
      const HookPointInfo& info = catalogue.point(point);
      const int64_t point_seq = sizes.generate && info.last_position ? 1 : seq;
      at::Tensor value = MetaTensor(SizesAt(info, sizes.batch, point_seq, k_seq), info.dtype);
      GLASSBOX_RETURN_IF_ERROR(fire(point, static_cast<int>(step), value));
    }
  }
  return Status::Ok();
}

int64_t SaturatingMul(int64_t a, int64_t b) {
  int64_t out;
  return __builtin_mul_overflow(a, b, &out) ? INT64_MAX : out;
}

int64_t SaturatingAdd(int64_t a, int64_t b) {
  int64_t out;
  return __builtin_add_overflow(a, b, &out) ? INT64_MAX : out;
}

int64_t PassBytes(const HookCatalogue& catalogue, const ShapePassSizes& sizes,
                  int64_t kv_bytes_per_token, bool backward) {
  int64_t largest = 0;
  for (const HookPointInfo& info : catalogue.points()) {
    const int64_t seq = sizes.generate && info.last_position ? 1 : sizes.prompt;
    int64_t bytes = c10::elementSize(ScalarTypeFromName(info.dtype).value_or(at::kFloat));
    for (int64_t d : SizesAt(info, sizes.batch, seq, sizes.prompt)) bytes = SaturatingMul(bytes, d);
    largest = std::max(largest, bytes);
  }
  int64_t total = SaturatingMul(largest, kWorkingSetFactor * (backward ? 2 : 1));
  if (sizes.generate) {
    const int64_t positions = SaturatingAdd(sizes.prompt, sizes.steps);
    total = SaturatingAdd(total, SaturatingMul(SaturatingMul(kv_bytes_per_token, sizes.batch), positions));
  }
  return total;
}

StatusOr<at::Tensor> ModuleOnMeta(const HookCatalogue& catalogue, const std::string& module,
                                  const at::Tensor& x) {
  std::optional<int> in = catalogue.Find(module + ".input");
  std::optional<int> out = catalogue.Find(module + ".output");
  if (!in || !out) return NotFound("no callable module '" + module + "'");
  const std::vector<int64_t> takes = FixedSuffix(catalogue.point(*in));
  const std::vector<int64_t> gives = FixedSuffix(catalogue.point(*out));
  const int64_t kept = x.dim() - static_cast<int64_t>(takes.size());
  const std::vector<int64_t> sizes = x.sizes().vec();
  if (kept < 0 || !std::equal(takes.begin(), takes.end(), sizes.begin() + kept)) {
    return InvalidArgument("module " + module + " cannot take a tensor of shape " +
                           c10::str(x.sizes()) + ": its input ends in " + c10::str(c10::IntArrayRef(takes)));
  }
  std::vector<int64_t> result(sizes.begin(), sizes.begin() + kept);
  result.insert(result.end(), gives.begin(), gives.end());
  return MetaTensor(result, catalogue.point(*out).dtype);
}

}  // namespace glassbox::intervention
