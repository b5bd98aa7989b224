// The shape-only stand-in for the engine's forward pass and generation, used by validation
// and by a scan: hook points produce meta tensors (shapes and dtypes, no data) of the
// concrete sizes the real pass would give them, and modules give their output's shape from
// the hook catalogue. Nothing touches the weights. Internal to intervention/.
#ifndef GLASSBOX_INTERVENTION_SHAPE_PASS_H_
#define GLASSBOX_INTERVENTION_SHAPE_PASS_H_

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <set>
#include <string>

#include "base/status.h"
#include "engine/hook_catalogue.h"

namespace glassbox::intervention {

// The sizes of one trace's passes.
struct ShapePassSizes {
  int64_t batch = 1;
  int64_t prompt = 1;     // the padded prompt length: the sequence of step 0
  int64_t steps = 1;      // forward passes (max_new_tokens when generating)
  bool generate = false;  // generation: lm_head sees only the last position
};

using ShapePassCallback = std::function<Status(int point, int step, at::Tensor& value)>;

// Calls `fire` at each point of `wanted` the real pass would reach, in forward order, step
// by step, with a meta tensor of that point's shape at that step. Points inside a module of
// `skipped` (module outputs, as in HookSet::AddSkip) are not reached. Stops at the first
// error `fire` returns and returns it.
Status RunShapePass(const HookCatalogue& catalogue, const ShapePassSizes& sizes,
                    const std::set<int>& wanted, const std::set<int>& skipped,
                    const ShapePassCallback& fire);

// What one trace's real pass takes beyond the weights, estimated from its sizes (an upper
// bound in spirit, not a measurement): the largest hook-point value at step 0 times
// kWorkingSetFactor (a layer's inputs, outputs and temporaries live at once), twice that
// when `backward` (autograd keeps the activations), and, when generating, the KV cache:
// `kv_bytes_per_token` (every layer's keys and values for one position of one prompt) for
// every prompt and every position up to prompt + steps. Saturates at INT64_MAX.
inline constexpr int64_t kWorkingSetFactor = 4;
int64_t PassBytes(const HookCatalogue& catalogue, const ShapePassSizes& sizes,
                  int64_t kv_bytes_per_token, bool backward);

// a * b and a + b for non-negative sizes, saturating at INT64_MAX.
int64_t SaturatingMul(int64_t a, int64_t b);
int64_t SaturatingAdd(int64_t a, int64_t b);

// A module's output for input `x` (a meta tensor) as a meta tensor, from the shapes of the
// module's .input and .output points: x's trailing sizes must be those the module takes.
// Unknown modules are kNotFound, wrong input sizes kInvalidArgument naming both shapes.
StatusOr<at::Tensor> ModuleOnMeta(const HookCatalogue& catalogue, const std::string& module,
                                  const at::Tensor& x);

}  // namespace glassbox::intervention

#endif  // GLASSBOX_INTERVENTION_SHAPE_PASS_H_
