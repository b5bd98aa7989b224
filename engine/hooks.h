// HookSet: the callbacks one run (a forward pass or a generation) registers at hook points.
//
// The forward pass asks Wants(id) before it materialises or copies anything for a point, so
// a run with no callbacks costs what a forward without hook support costs. A callback sees
// the value at the point and may replace it by assigning a new tensor to `value` (same
// shape; it is cast to the model's dtype and device). Callbacks must not modify `value` in
// place: the tensor may be shared with the rest of the forward pass. Not thread-safe: one
// HookSet belongs to one run.
#ifndef GLASSBOX_ENGINE_HOOKS_H_
#define GLASSBOX_ENGINE_HOOKS_H_

#include <ATen/core/Tensor.h>

#include <functional>
#include <string>
#include <vector>

#include "base/status.h"
#include "engine/hook_catalogue.h"

namespace glassbox {

struct HookContext {
  int point_id = 0;
  const HookPointInfo* point = nullptr;
  int step = 0;  // 0 for the prompt's forward pass, i for the pass producing new token i+1
};

// Reads `value` and may assign a replacement. A non-OK status aborts the run; the engine
// reports it with the point's name.
using HookCallback = std::function<Status(const HookContext& context, at::Tensor& value)>;

class HookSet {
 public:
  explicit HookSet(const HookCatalogue& catalogue);

  // Registers `callback` at a name or alias. Several callbacks at one point run in order of
  // registration. kNotFound names the point and suggests the closest names.
  Status Add(const std::string& name, HookCallback callback);
  // Registers `callback` at every point whose name (or an alias) contains `filter`
  // ("" = every point); returns how many points matched.
  int AddMatching(const std::string& filter, const HookCallback& callback);

  // Marks a module as skipped: `name` is a point the catalogue marks skippable (a layer's,
  // its attention's or its MLP's output: "model.layers.3.output", "model.layers.3.mlp.output",
  // "transformer.h.3.attn.output" or a TransformerLens alias). The module does not run; its output is zeros unless a
  // callback at that point replaces it. Other names give kInvalidArgument.
  Status AddSkip(const std::string& name);
  bool Skips(int point_id) const { return !skips_.empty() && skips_[point_id]; }

  // Lets a run be stopped between hook points (a cancelled job, a time limit): the forward
  // pass calls `check` before every layer, at every generation step, and stops with its
  // status when that is not OK. `check` must be cheap; it runs on the forward's thread.
  void SetInterrupt(std::function<Status()> check) { interrupt_ = std::move(check); }
  Status CheckInterrupt() const { return interrupt_ ? interrupt_() : Status::Ok(); }

  bool Wants(int point_id) const { return !callbacks_[point_id].empty(); }
  bool empty() const { return count_ == 0; }
  // Runs the callbacks of `point_id` on `value`; validates replacements (shape, finite rank)
  // and converts them to the original dtype and device.
  Status Run(int point_id, int step, at::Tensor& value) const;

 private:
  const HookCatalogue& catalogue_;
  std::vector<std::vector<HookCallback>> callbacks_;
  std::vector<bool> skips_;  // empty until AddSkip
  std::function<Status()> interrupt_;
  int count_ = 0;
};

}  // namespace glassbox

#endif  // GLASSBOX_ENGINE_HOOKS_H_
