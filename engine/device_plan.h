// Layers split across devices: the planner that assigns a model's layers to devices by
// memory (as accelerate's device_map="auto" with balanced memory does), and the plan a
// loaded model keeps: which placement holds the embedding, each layer and the head, and
// the one function by which the residual stream crosses from one placement to the next.
//
// A placement is a device plus an index. Real splits have one CUDA device per placement;
// tests split over several CPU placements (all at::kCPU), which run through the same code:
// per-placement weights, per-pass tensors and residual moves. Internal to engine/.
#ifndef GLASSBOX_ENGINE_DEVICE_PLAN_H_
#define GLASSBOX_ENGINE_DEVICE_PLAN_H_

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <cstdint>
#include <string>
#include <vector>

#include "base/status.h"

namespace glassbox {

struct StoredTensor;

// What a model needs in bytes, as it will be held (the run's dtype).
struct SplitSizes {
  int64_t embedding = 0;             // token (and position) embeddings: always placement 0
  std::vector<int64_t> layers;       // each decoder layer, in order
  int64_t head = 0;                  // final norm and unembedding when stored apart
  bool tied_head = false;            // the unembedding is the embedding: head on placement 0
};

struct DeviceBudget {
  std::string name;  // for messages: "cuda:1"
  int64_t bytes = 0;
};

// Which placement (index into the budgets) holds each part.
struct SplitAssignment {
  std::vector<int> layers;     // per layer
  int head = 0;
  std::vector<int64_t> bytes;  // per placement, what it holds
};

// A contiguous assignment of the layers to the devices in order, balanced: the smallest
// per-device maximum of bytes with which everything fits, each device filled in order up to
// that maximum (or its budget when smaller). The embedding is on the first device; the head
// on the first device when tied, else after the last layer. kResourceExhausted names the
// bytes needed and available (in total, and for the part that did not fit); an empty budget
// list or a negative size is kInvalidArgument. Pure: no devices are touched.
StatusOr<SplitAssignment> PlanSplit(const SplitSizes& sizes, const std::vector<DeviceBudget>& budgets);

// Sizes of a checkpoint's tensors held in `element_size`-byte elements: a tensor whose name
// has a numeric component ("model.layers.3.", "blk.3.", "transformer.h.3.") belongs to that
// layer; other tensors are the embedding (names with embed_tokens, embed_in, wte, wpe,
// token_embd, position_embd) or the head. The head is tied when no unembedding (lm_head,
// output, embed_out) is stored.
SplitSizes SizesOfStored(const std::vector<StoredTensor>& tensors, int64_t element_size);

// Where a loaded model's parts live. Immutable once the model is built; copyable.
class DevicePlan {
 public:
  // Everything on one device (the usual case; nothing ever moves).
  explicit DevicePlan(at::Device device = at::kCPU);
  // `devices` per placement with display names; `assignment` from PlanSplit.
  DevicePlan(std::vector<at::Device> devices, std::vector<std::string> names,
             const SplitAssignment& assignment);

  bool split() const { return devices_.size() > 1; }
  int size() const { return static_cast<int>(devices_.size()); }
  at::Device device(int placement) const { return devices_[placement]; }
  const std::string& name(int placement) const { return names_[placement]; }
  // Placement of layer `layer` (0 when unsplit), of the head; the embedding is on 0.
  int layer(int64_t layer) const { return split() ? layers_[layer] : 0; }
  int head() const { return head_; }
  at::Device layer_device(int64_t layer) const { return devices_[this->layer(layer)]; }
  // Layers the plan assigns (0 when unsplit: every layer is on placement 0).
  int64_t num_layers() const { return static_cast<int64_t>(layers_.size()); }
  // The head goes where the embedding is (a tied unembedding is the embedding tensor).
  void TieHead() { head_ = 0; }

  // "cpu" unsplit; else "cuda:0,cuda:1".
  std::string DeviceNames() const;
  // "cuda:0: embedding, layers 0-11; cuda:1: layers 12-23, head".
  std::string ToString() const;

 private:
  std::vector<at::Device> devices_;
  std::vector<std::string> names_;
  std::vector<int> layers_;  // empty when unsplit
  int head_ = 0;
};

// The residual stream `x` copied onto `to` (a copy even when the placements share a device,
// as CPU placements do): every crossing between placements goes through here.
at::Tensor MoveResidual(const at::Tensor& x, at::Device to);
// How many times MoveResidual ran in this process (for tests; thread-safe).
int64_t ResidualMoves();

}  // namespace glassbox

#endif  // GLASSBOX_ENGINE_DEVICE_PLAN_H_
