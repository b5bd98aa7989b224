// The layer-to-device planner, the plan a split model keeps, and the counted residual move.
#include "engine/device_plan.h"

#include <algorithm>
#include <atomic>
#include <numeric>

#include "engine/stored_tensor.h"

namespace glassbox {
namespace {

std::atomic<int64_t> residual_moves{0};

// Why a greedy fill failed: the part that did not fit and its size.
struct Overflow {
  std::string part;
  int64_t bytes = 0;
};

// Fills the devices in order, none above min(budget, cap). True when everything fits.
bool Fill(const SplitSizes& s, const std::vector<DeviceBudget>& budgets, int64_t cap,
          SplitAssignment& out, Overflow& overflow) {
  const int n = static_cast<int>(budgets.size());
  auto limit = [&](int d) { return std::min(budgets[d].bytes, cap); };
  out.bytes.assign(n, 0);
  out.layers.assign(s.layers.size(), 0);
  out.head = 0;
  out.bytes[0] = s.embedding + (s.tied_head ? s.head : 0);
  if (out.bytes[0] > limit(0)) {
    overflow = {s.tied_head ? "the embedding and the tied head" : "the embedding", out.bytes[0]};
    return false;
  }
  int d = 0;
  auto place = [&](int64_t bytes) {
    while (d < n && out.bytes[d] + bytes > limit(d)) ++d;
    if (d == n) return false;
    out.bytes[d] += bytes;
    return true;
  };
  for (size_t i = 0; i < s.layers.size(); ++i) {
    if (!place(s.layers[i])) {
      overflow = {"layer " + std::to_string(i), s.layers[i]};
      return false;
    }
    out.layers[i] = d;
  }
  if (s.tied_head) return true;
  if (!place(s.head)) {
    overflow = {"the head (final norm and unembedding)", s.head};
    return false;
  }
  out.head = d;
  return true;
}

std::string BudgetList(const std::vector<DeviceBudget>& budgets) {
  std::string text;
  for (const DeviceBudget& b : budgets) {
    text += (text.empty() ? "" : ", ") + b.name + " " + std::to_string(b.bytes);
  }
  return text;
}

Status CheckSizes(const SplitSizes& s, const std::vector<DeviceBudget>& budgets) {
  if (budgets.empty()) return InvalidArgument("no devices to place the model on");
  for (const DeviceBudget& b : budgets) {
    if (b.bytes < 0) return InvalidArgument("device " + b.name + " has a negative memory budget");
  }
  bool negative = s.embedding < 0 || s.head < 0;
  for (int64_t l : s.layers) negative |= l < 0;
  return negative ? InvalidArgument("a model part has a negative size") : Status::Ok();
}

// An int64 sum that stops at the largest value instead of wrapping.
int64_t Total(const std::vector<int64_t>& values, int64_t start = 0) {
  int64_t total = start;
  for (int64_t v : values) total = v > INT64_MAX - total ? INT64_MAX : total + v;
  return total;
}

}  // namespace

StatusOr<SplitAssignment> PlanSplit(const SplitSizes& sizes, const std::vector<DeviceBudget>& budgets) {
  GLASSBOX_RETURN_IF_ERROR(CheckSizes(sizes, budgets));
  int64_t largest = 0;
  for (const DeviceBudget& b : budgets) largest = std::max(largest, b.bytes);
  SplitAssignment plan;
  Overflow overflow;
  if (!Fill(sizes, budgets, largest, plan, overflow)) {
    std::vector<int64_t> budget_bytes;
    for (const DeviceBudget& b : budgets) budget_bytes.push_back(b.bytes);
    const int64_t needed = Total(sizes.layers, Total({sizes.embedding, sizes.head}));
    return ResourceExhausted("the model needs " + std::to_string(needed) + " bytes and the devices have " +
                             std::to_string(Total(budget_bytes)) + " (" + BudgetList(budgets) + "); " +
                             overflow.part + " (" + std::to_string(overflow.bytes) +
                             " bytes) fits on none of the devices left after the parts before it");
  }
  // The smallest cap that still fits: the most even split the device order allows.
  int64_t low = 0, high = largest;  // Fill(high) holds
  while (low < high) {
    const int64_t mid = low + (high - low) / 2;
    SplitAssignment trial;
    if (Fill(sizes, budgets, mid, trial, overflow)) {
      high = mid;
    } else {
      low = mid + 1;
    }
  }
  Fill(sizes, budgets, high, plan, overflow);
  return plan;
}

SplitSizes SizesOfStored(const std::vector<StoredTensor>& tensors, int64_t element_size) {
  SplitSizes sizes;
  sizes.tied_head = true;
  for (const StoredTensor& t : tensors) {
    const int64_t bytes = t.NumElements() * element_size;
    int64_t layer = -1;
    size_t start = 0;
    while (layer < 0 && start <= t.name.size()) {
      const size_t end = std::min(t.name.find('.', start), t.name.size());
      const std::string part = t.name.substr(start, end - start);
      if (!part.empty() && part.size() < 7 && part.find_first_not_of("0123456789") == std::string::npos) {
        layer = std::stoll(part);
      }
      start = end + 1;
    }
    if (layer >= 0) {
      if (static_cast<int64_t>(sizes.layers.size()) <= layer) sizes.layers.resize(layer + 1, 0);
      sizes.layers[layer] += bytes;
      continue;
    }
    bool embedding = false;
    for (const char* e : {"embed_tokens", "embed_in", "wte", "wpe", "token_embd", "position_embd"}) {
      embedding |= t.name.find(e) != std::string::npos;
    }
    (embedding ? sizes.embedding : sizes.head) += bytes;
    for (const char* u : {"lm_head.", "output.weight", "embed_out."}) {
      if (t.name.compare(0, std::string(u).size(), u) == 0) sizes.tied_head = false;
    }
  }
  return sizes;
}

DevicePlan::DevicePlan(at::Device device) : devices_{device}, names_{device.str()} {}

DevicePlan::DevicePlan(std::vector<at::Device> devices, std::vector<std::string> names,
                       const SplitAssignment& assignment)
    : devices_(std::move(devices)), names_(std::move(names)), layers_(assignment.layers),
      head_(assignment.head) {}

std::string DevicePlan::DeviceNames() const {
  std::string text;
  for (const std::string& n : names_) text += (text.empty() ? "" : ",") + n;
  return text;
}

std::string DevicePlan::ToString() const {
  if (!split()) return names_[0] + ": everything";
  std::string text;
  for (int p = 0; p < size(); ++p) {
    std::vector<std::string> parts;
    if (p == 0) parts.push_back("embedding");
    for (size_t i = 0; i < layers_.size(); ++i) {
      if (layers_[i] != p) continue;
      size_t last = i;
      while (last + 1 < layers_.size() && layers_[last + 1] == p) ++last;
      parts.push_back(last == i ? "layer " + std::to_string(i)
                                : "layers " + std::to_string(i) + "-" + std::to_string(last));
      i = last;
    }
    if (head_ == p) parts.push_back("head");
    std::string list;
    for (const std::string& part : parts) list += (list.empty() ? "" : ", ") + part;
    text += (text.empty() ? "" : "; ") + names_[p] + ": " + (list.empty() ? "nothing" : list);
  }
  return text;
}

at::Tensor MoveResidual(const at::Tensor& x, at::Device to) {
  residual_moves.fetch_add(1, std::memory_order_relaxed);
  return x.to(to, x.scalar_type(), /*non_blocking=*/false, /*copy=*/true);
}

int64_t ResidualMoves() { return residual_moves.load(std::memory_order_relaxed); }

}  // namespace glassbox
