// Planning a trace: which hook point and generation steps each node is bound to, in what
// order nodes become ready, and every validation problem found on the way. Shared by
// Validate and the interpreter. Internal to intervention/.
#ifndef GLASSBOX_INTERVENTION_PLAN_H_
#define GLASSBOX_INTERVENTION_PLAN_H_

#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "engine/engine.h"
#include "intervention/intervention.h"
#include "intervention/ops.h"
#include "protocol/graph.h"

namespace glassbox::intervention {

// The generation steps at which a node runs: [first, last]. Nodes that depend on no hook
// point are constants: they run once, before the forward pass.
struct StepRange {
  bool constant = true;
  int64_t first = 0, last = 0;
  bool PerStep() const { return !constant && first != last; }
  bool Covers(int64_t step) const { return !constant && first <= step && step <= last; }
};

struct NodePlan {
  const protocol::Node* node = nullptr;
  const OpSpec* op = nullptr;
  int point = -1;                        // read / write: catalogue id
  std::optional<int64_t> invoke;         // read / write: which prompt's rows; none = all
  std::optional<protocol::Value> index;  // write: x[index] = value
  StepRange steps;
  int64_t point_step = 0;  // grad, write_grad: the generation step of the activation differentiated
  int64_t backward = -1;   // grad, write_grad: the id of their backward node
  int64_t phase = -1;  // when in the pass its value exists: step * points + forward order
  std::vector<int64_t> inputs;  // ids of referenced nodes
};

struct TracePlan {
  std::vector<NodePlan> nodes;               // in request order
  std::map<int64_t, size_t> index_of;        // node id -> position in `nodes`
  std::map<int, std::vector<size_t>> at_point;  // hook point -> read/write nodes there
  std::map<int, std::vector<size_t>> grad_at_point;  // hook point -> grad, write_grad nodes there
  std::map<int, std::vector<size_t>> cache_at_point;  // hook point -> cache nodes there
  std::set<int> skipped_points;  // outputs of modules that do not run
  int64_t steps = 1;                          // forward passes: 1, or max_new_tokens
  std::vector<std::vector<int64_t>> prompts;  // token ids per invoke
};

// A job's memory beyond the weights, estimated by the shape-only pass (bytes).
struct MemoryEstimate {
  int64_t pass = 0;    // the most demanding trace's pass: working set, backward, KV cache
  int64_t values = 0;  // the most graph values alive at once
  int64_t saved = 0;   // saved and cached values, counted twice (held, then encoded)
  double flops = 0;    // graph ops' work (EstimateFlops), not the model's pass
  int64_t Total() const;
  std::string ToString() const;  // "N bytes (pass A, values B, saved C)"
};

// Plans trace `t` of `request`. `earlier` holds ids of nodes of earlier traces in the same
// request (available as constants). Problems are appended to `errors`.
TracePlan PlanTrace(const Model& model, const protocol::Trace& trace,
                    const std::map<int64_t, bool>& earlier, const InterventionLimits& limits,
                    std::vector<ValidationError>& errors);


// Request-level checks and a plan per trace; every problem found goes to the result.
std::vector<ValidationError> PlanRequest(const Model& model, const protocol::Request& request,
                                         const InterventionLimits& limits,
                                         std::vector<TracePlan>& plans);

// Runs the planned request on meta tensors (no weights, no data): every shape problem a run
// would hit, each naming its node, op, inputs' shapes and cause. With `shapes`, also every
// node's dtype and shape (a scan's answer); with `estimate`, the job's memory estimate.
// Plans must be free of planning errors.
std::vector<ValidationError> CheckShapes(const Model& model, const protocol::Request& request,
                                         const std::vector<TracePlan>& plans,
                                         const InterventionLimits& limits,
                                         std::vector<protocol::NodeShape>* shapes,
                                         MemoryEstimate* estimate = nullptr);

}  // namespace glassbox::intervention

#endif  // GLASSBOX_INTERVENTION_PLAN_H_
