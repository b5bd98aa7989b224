// The interpreter: runs a validated request's nodes as their inputs appear during the
// forward pass (or generation), applies writes at hook points, collects saved values.
#include <ATen/TensorIndexing.h>
#include <ATen/TensorOperators.h>
#include <ATen/ops/scalar_tensor.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <set>

#include "intervention/plan.h"

namespace glassbox::intervention {
namespace {

using protocol::Value;

std::string FirstLine(const std::string& text) { return text.substr(0, text.find('\n')); }

double NumberOf(const RuntimeValue& v) {
  if (v.kind == RuntimeValue::Kind::kInt) return static_cast<double>(v.int_value);
  if (v.kind == RuntimeValue::Kind::kBool) return v.bool_value ? 1.0 : 0.0;
  return v.float_value;
}

// Values shared by every trace of one request (sessions pass values forward).
struct Environment {
  std::map<int64_t, RuntimeValue> values;
  std::map<int64_t, int64_t> uses_left;  // single-run consumers still to run; -1: keep
  std::set<int64_t> per_step_inputs;     // read by a node that runs at every step: keep
  int64_t saved_bytes = 0;
};

class TraceRunner {
 public:
  TraceRunner(const Model& model, const TracePlan& plan, const protocol::Trace& trace,
              Environment& env, const InterventionLimits& limits, const RunControl& control,
              protocol::Result& result)
      : model_(model), plan_(plan), trace_(trace), env_(env), limits_(limits), control_(control),
        result_(result),
        done_(plan.nodes.size(), -1) {
    for (const auto& p : plan.prompts) padded_ = std::max<int64_t>(padded_, p.size());
    for (const NodePlan& p : plan.nodes) {
      const bool at_hook = p.op->op_class == OpClass::kRead || p.op->op_class == OpClass::kWrite ||
                           p.op->op_class == OpClass::kCache || p.op->op_class == OpClass::kSkip;
      has_cache_ |= p.op->op_class == OpClass::kCache;
      if (!p.steps.constant && !at_hook) dependents_.push_back(&p - plan.nodes.data());
    }
  }

  Status Run() {
    for (size_t i = 0; i < plan_.nodes.size(); ++i) {
      if (plan_.nodes[i].steps.constant) {
        GLASSBOX_RETURN_IF_ERROR(RunNode(i, 0));
      }
    }
    HookSet hooks(model_.catalogue());
    hooks.SetInterrupt(control_.interrupt);
    std::set<int> points;
    for (const auto& entry : plan_.at_point) points.insert(entry.first);
    for (const auto& entry : plan_.grad_at_point) points.insert(entry.first);
    for (const auto& entry : plan_.cache_at_point) points.insert(entry.first);
    for (const int point : points) {
      GLASSBOX_RETURN_IF_ERROR(hooks.Add(model_.catalogue().point(point).name,
          [this, point](const HookContext& ctx, at::Tensor& value) { return Fire(point, ctx.step, value); }));
    }
    for (int point : plan_.skipped_points) {
      GLASSBOX_RETURN_IF_ERROR(hooks.AddSkip(model_.catalogue().point(point).name));
    }
    Status status = RunModel(hooks);
    if (!status.ok() && !(status.code() == StatusCode::kCancelled && stopped_early_)) return status;
    return CheckEverythingRan();
  }

 private:
  Status RunModel(const HookSet& hooks) {
    if (!trace_.generate) {
      StatusOr<ForwardResult> r = model_.Forward({plan_.prompts, /*all_logits=*/true}, &hooks);
      return r.status();
    }
    const protocol::GenerateOptions& g = *trace_.generate;
    SamplingParams s;
    s.max_new_tokens = static_cast<int>(g.max_new_tokens);
    s.temperature = g.temperature;
    s.top_k = static_cast<int>(g.top_k);
    s.top_p = g.top_p;
    s.seed = g.seed;
    s.stop_ids = g.stop_ids;
    StatusOr<GenerateResult> r = model_.Generate(plan_.prompts, s, &hooks);
    if (!r.ok()) return r.status();
    for (const auto& tokens : r->new_tokens) result_.generated.push_back(tokens);
    return Status::Ok();
  }

  Status NodeError(const NodePlan& p, const std::string& message) const {
    std::string where = "node " + std::to_string(p.node->id);
    if (!p.node->source.empty()) where += " (" + p.node->source + ")";
    return InvalidArgument(where + ", op " + p.node->op + ": " + message);
  }

  // Called by the engine at a hook point: runs the reads and writes bound there in order,
  // and every node that becomes ready.
  Status Fire(int point, int step, at::Tensor& value) {
    TrackGradient(point, step, value);
    GLASSBOX_RETURN_IF_ERROR(Cache(point, step, value));
    auto bound = plan_.at_point.find(point);
    for (size_t i : bound == plan_.at_point.end() ? std::vector<size_t>() : bound->second) {
      const NodePlan& p = plan_.nodes[i];
      if (!p.steps.Covers(step)) continue;
      if (p.op->op_class == OpClass::kRead) {
        StatusOr<at::Tensor> read = Slice(p, point, value, step);
        if (!read.ok()) return NodeError(p, read.status().message());
        Store(i, RuntimeValue::FromTensor(*read), step);
        GLASSBOX_RETURN_IF_ERROR(Propagate(step));
      } else {
        GLASSBOX_RETURN_IF_ERROR(Propagate(step));
        GLASSBOX_RETURN_IF_ERROR(ApplyWrite(i, value, step));
      }
    }
    if (!trace_.generate && !has_cache_ && AllDone()) {
      stopped_early_ = true;  // nothing later is needed: stop the forward pass here
      return Cancelled("every node has run");
    }
    return Status::Ok();
  }

  // Saves the value at `point` for every cache node bound there (a copy: later writes at the
  // same point do not change what was cached).
  Status Cache(int point, int step, const at::Tensor& value) {
    auto caches = plan_.cache_at_point.find(point);
    if (caches == plan_.cache_at_point.end()) return Status::Ok();
    for (size_t i : caches->second) {
      const NodePlan& p = plan_.nodes[i];
      if (!p.steps.Covers(step)) continue;
      StatusOr<at::Tensor> slice = Slice(p, point, value, step);
      if (!slice.ok()) return NodeError(p, slice.status().message());
      std::map<std::string, RuntimeValue> kwargs;
      kwargs["name"].kind = RuntimeValue::Kind::kString;
      kwargs["name"].string_value = model_.catalogue().point(point).name +
                                    (p.steps.PerStep() ? ".step" + std::to_string(step) : "");
      GLASSBOX_RETURN_IF_ERROR(SaveValue(p, RuntimeValue::FromTensor(slice->detach().clone()), kwargs, /*per_step=*/false));
      done_[i] = step;
    }
    return Status::Ok();
  }

  // For points whose gradient a grad node asks for: the earliest becomes a leaf that
  // requires grad (nothing before it needs differentiating); later ones keep their grad.
  void TrackGradient(int point, int step, at::Tensor& value) {
    auto grads = plan_.grad_at_point.find(point);
    if (grads == plan_.grad_at_point.end()) return;
    bool wanted = false;
    for (size_t i : grads->second) wanted |= plan_.nodes[i].point_step == step;
    if (!wanted) return;
    if (!value.requires_grad()) {
      value = value.detach().requires_grad_(true);
    } else {
      value.retain_grad();
    }
    grad_targets_[{point, step}] = value;
  }

  Status RunBackward(size_t i, const std::vector<RuntimeValue>& args, int64_t step) {
    const NodePlan& p = plan_.nodes[i];
    if (!args[0].is_tensor() || args[0].tensor.numel() != 1) {
      return NodeError(p, "backward needs a scalar tensor, got " + args[0].Describe());
    }
    if (!args[0].tensor.requires_grad()) {
      return NodeError(p, "the loss does not depend on any point a grad node asks about");
    }
    try {
      args[0].tensor.backward();
    } catch (const c10::Error& e) {
      return NodeError(p, "backward failed: " + FirstLine(e.what()));
    }
    Store(i, RuntimeValue(), step);
    return Status::Ok();
  }

  Status RunGrad(size_t i, int64_t step) {
    const NodePlan& p = plan_.nodes[i];
    const int64_t point_step = p.point_step;
    auto target = grad_targets_.find({p.point, point_step});
    if (target == grad_targets_.end() || !target->second.grad().defined()) {
      return NodeError(p, "no gradient reached " + model_.catalogue().point(p.point).name +
                              ": the loss does not depend on it");
    }
    StatusOr<at::Tensor> grad = Slice(p, p.point, target->second.grad(), point_step);
    if (!grad.ok()) return NodeError(p, grad.status().message());
    Store(i, RuntimeValue::FromTensor(*grad), step);
    return Status::Ok();
  }

  // Dimension roles of a point's value for per-invoke access.
  // `point` is the point the value comes from (a cache node is bound to many).
  StatusOr<at::Tensor> Slice(const NodePlan& p, int point, const at::Tensor& value, int64_t step) const {
    if (!p.invoke) return value;
    const int64_t row = *p.invoke;
    const int64_t len = static_cast<int64_t>(plan_.prompts[row].size());
    const int64_t pad = padded_ - len;
    at::Tensor out = value;
    const std::vector<std::string>& shape = model_.catalogue().point(point).shape;
    for (size_t d = 0; d < shape.size() && static_cast<int64_t>(d) < out.dim(); ++d) {
      if (shape[d] == "batch") out = out.narrow(d, row, 1);
      if (shape[d] == "seq" && step == 0 && out.size(d) == padded_) out = out.narrow(d, pad, len);
      if (shape[d] == "k_seq") out = out.narrow(d, pad, out.size(d) - pad);
    }
    return out;
  }

  Status ApplyWrite(size_t i, at::Tensor& value, int64_t step) {
    const NodePlan& p = plan_.nodes[i];
    auto input = Resolve(p.node->args[0]);
    if (!input.ok()) return NodeError(p, input.status().message());
    if (!input->is_tensor() && !input->is_number()) return NodeError(p, "writes need a tensor or a number, got " + input->Describe());
    try {
      at::Tensor v = input->is_tensor() ? input->tensor : at::scalar_tensor(NumberOf(*input));
      at::Tensor full = value.clone();
      StatusOr<at::Tensor> region = Slice(p, p.point, full, step);
      if (!region.ok()) return NodeError(p, region.status().message());
      v = v.to(full.device(), full.scalar_type());
      if (p.index) {
        GLASSBOX_ASSIGN_OR_RETURN(RuntimeValue index, Resolve(*p.index));
        std::vector<RuntimeValue> args = {RuntimeValue::FromTensor(*region), index, RuntimeValue::FromTensor(v)};
        std::map<std::string, RuntimeValue> none;
        StatusOr<RuntimeValue> patched = FindOp("setitem")->run(OpCall{args, none, &model_});
        if (!patched.ok()) return NodeError(p, patched.status().message());
        region->copy_(patched->tensor);
      } else {
        region->copy_(v);
      }
      value = full;
    } catch (const c10::Error& e) {
      return NodeError(p, "cannot write into " + model_.catalogue().point(p.point).name + " (shape " +
                              c10::str(value.sizes()) + "): " + FirstLine(e.what()));
    }
    done_[i] = step;
    return Status::Ok();
  }

  StatusOr<RuntimeValue> Resolve(const Value& v) const {
    if (v.kind == Value::Kind::kRef) {
      auto it = env_.values.find(v.int_value);
      if (it == env_.values.end()) return Internal("the value of node " + std::to_string(v.int_value) + " is not available");
      return it->second;
    }
    if (v.kind == Value::Kind::kList) {
      std::vector<RuntimeValue> items;
      for (const Value& item : v.list) {
        GLASSBOX_ASSIGN_OR_RETURN(RuntimeValue r, Resolve(item));
        items.push_back(std::move(r));
      }
      return RuntimeValue::List(std::move(items));
    }
    return FromLiteral(v);
  }

  bool InputsReady(const NodePlan& p, int64_t step) const {
    for (int64_t ref : p.inputs) {
      auto it = plan_.index_of.find(ref);
      if (it == plan_.index_of.end()) continue;  // from an earlier trace
      const NodePlan& in = plan_.nodes[it->second];
      const int64_t done = done_[it->second];
      if (in.steps.PerStep() ? done != step : done < 0) return false;
    }
    return true;
  }

  Status Propagate(int64_t step) {
    for (size_t i : dependents_) {
      const NodePlan& p = plan_.nodes[i];
      if (done_[i] == step || !p.steps.Covers(step)) continue;
      if (!p.steps.PerStep() && done_[i] >= 0) continue;
      if (!InputsReady(p, step)) continue;
      GLASSBOX_RETURN_IF_ERROR(RunNode(i, step));
    }
    return Status::Ok();
  }

  Status RunNode(size_t i, int64_t step) {
    const NodePlan& p = plan_.nodes[i];
    std::vector<RuntimeValue> args;
    std::map<std::string, RuntimeValue> kwargs;
    for (const Value& v : p.node->args) {
      StatusOr<RuntimeValue> r = Resolve(v);
      if (!r.ok()) return NodeError(p, r.status().message());
      args.push_back(std::move(*r));
    }
    for (const auto& kv : p.node->kwargs) {
      StatusOr<RuntimeValue> r = Resolve(kv.second);
      if (!r.ok()) return NodeError(p, r.status().message());
      kwargs[kv.first] = std::move(*r);
    }
    if (p.op->op_class == OpClass::kSave) return Save(i, args[0], kwargs, step);
    if (p.op->op_class == OpClass::kBackward) return RunBackward(i, args, step);
    if (p.op->op_class == OpClass::kGrad) return RunGrad(i, step);
    StatusOr<RuntimeValue> out = Internal("not run");
    try {
      out = p.op->run(OpCall{args, kwargs, &model_});
    } catch (const c10::Error& e) {
      out = InvalidArgument(FirstLine(e.what()));
    }
    if (!out.ok()) {
      std::string shapes;
      for (const RuntimeValue& a : args) shapes += (shapes.empty() ? "" : ", ") + a.Describe();
      return NodeError(p, out.status().message() + " (inputs: " + shapes + ")");
    }
    Store(i, std::move(*out), step);
    return Status::Ok();
  }

  Status Save(size_t i, const RuntimeValue& value, const std::map<std::string, RuntimeValue>& kwargs, int64_t step) {
    GLASSBOX_RETURN_IF_ERROR(SaveValue(plan_.nodes[i], value, kwargs, plan_.nodes[i].steps.PerStep()));
    done_[i] = step;
    return Status::Ok();
  }

  Status SaveValue(const NodePlan& p, const RuntimeValue& value,
                   const std::map<std::string, RuntimeValue>& kwargs, bool per_step) {
    const size_t i = plan_.index_of.at(p.node->id);
    env_.saved_bytes += value.Bytes();
    if (env_.saved_bytes > limits_.max_saved_bytes) {
      return NodeError(p, "saved values exceed the limit of " + std::to_string(limits_.max_saved_bytes) + " bytes");
    }
    StatusOr<protocol::Value> wire = ToProtocolValue(value);
    if (!wire.ok()) return NodeError(p, wire.status().message());
    auto name = kwargs.find("name");
    const std::string saved_name = name != kwargs.end() && name->second.kind == RuntimeValue::Kind::kString
                                       ? name->second.string_value : "node_" + std::to_string(p.node->id);
    if (!per_step) {
      result_.saved.push_back({saved_name, p.node->id, std::move(*wire)});
    } else {
      auto it = per_step_saves_.find(i);
      if (it == per_step_saves_.end()) {
        it = per_step_saves_.emplace(i, result_.saved.size()).first;
        result_.saved.push_back({saved_name, p.node->id, protocol::Value::List({})});
      }
      result_.saved[it->second].value.list.push_back(std::move(*wire));
    }
    return Status::Ok();
  }

  void Store(size_t i, RuntimeValue value, int64_t step) {
    env_.values[plan_.nodes[i].node->id] = std::move(value);
    done_[i] = step;
    Release(plan_.nodes[i]);
  }

  // Frees inputs nobody needs any more (memory stays bounded by what is saved and live).
  void Release(const NodePlan& consumer) {
    if (consumer.steps.PerStep()) return;
    for (int64_t ref : consumer.inputs) {
      auto it = env_.uses_left.find(ref);
      if (it == env_.uses_left.end() || it->second < 0) continue;
      if (--it->second == 0 && !env_.per_step_inputs.count(ref)) env_.values.erase(ref);
    }
  }

  bool AllDone() const {
    for (size_t i = 0; i < plan_.nodes.size(); ++i) {
      if (done_[i] < 0) return false;
    }
    return true;
  }

  Status CheckEverythingRan() const {
    for (size_t i = 0; i < plan_.nodes.size(); ++i) {
      const NodePlan& p = plan_.nodes[i];
      if (done_[i] >= 0 && (!p.steps.PerStep() || done_[i] >= p.steps.last)) continue;
      if (done_[i] >= 0 || p.steps.constant) continue;
      return NodeError(p, trace_.generate ? "never ran: generation ended (stop token) before step " +
                                                std::to_string(p.steps.first)
                                          : "never ran: its hook point was not reached");
    }
    return Status::Ok();
  }

  const Model& model_;
  const TracePlan& plan_;
  const protocol::Trace& trace_;
  Environment& env_;
  const InterventionLimits& limits_;
  const RunControl& control_;
  protocol::Result& result_;
  std::vector<int64_t> done_;        // last step each node ran at, -1: not yet
  std::vector<size_t> dependents_;   // non-constant nodes not bound to a hook point
  std::map<size_t, size_t> per_step_saves_;
  std::map<std::pair<int, int64_t>, at::Tensor> grad_targets_;  // (point, step) -> tracked value
  int64_t padded_ = 0;
  bool stopped_early_ = false;
  bool has_cache_ = false;
};

void CountUses(const std::vector<TracePlan>& plans, Environment& env) {
  for (const TracePlan& plan : plans) {
    for (const NodePlan& p : plan.nodes) {
      for (int64_t ref : p.inputs) {
        if (p.steps.PerStep()) env.per_step_inputs.insert(ref);
        env.uses_left[ref] += 1;
      }
    }
  }
}

}  // namespace

StatusOr<protocol::Result> Run(const Model& model, const protocol::Request& request,
                               const InterventionLimits& limits, const RunControl& control) {
  std::vector<ValidationError> errors;
  std::vector<TracePlan> plans;
  std::map<int64_t, bool> earlier;
  for (const protocol::Trace& t : request.traces) {
    plans.push_back(PlanTrace(model, t, earlier, limits, errors));
    for (const NodePlan& p : plans.back().nodes) earlier[p.node->id] = true;
  }
  std::vector<ValidationError> request_errors = Validate(model, request, limits);
  if (!request_errors.empty()) {
    std::string message = std::to_string(request_errors.size()) + " problem(s) in the request:";
    for (const ValidationError& e : request_errors) message += "\n  " + e.ToString();
    return InvalidArgument(message);
  }
  Environment env;
  CountUses(plans, env);
  protocol::Result result;
  for (size_t t = 0; t < plans.size(); ++t) {
    TraceRunner runner(model, plans[t], request.traces[t], env, limits, control, result);
    Status status = runner.Run();
    if (!status.ok()) return status.WithContext("trace " + std::to_string(t));
  }
  return result;
}

}  // namespace glassbox::intervention
