// The interpreter: runs a validated request's nodes as their inputs appear during the
// forward pass (or generation), applies writes at hook points, collects saved values.
#include <ATen/TensorIndexing.h>
#include <ATen/TensorOperators.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/scalar_tensor.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdio>
#include <deque>
#include <functional>
#include <memory>
#include <new>
#include <optional>
#include <set>
#include <sstream>

#include "engine/generation.h"
#include "intervention/plan.h"
#include "intervention/shape_pass.h"

namespace glassbox::intervention {
namespace {

using protocol::Value;

double NumberOf(const RuntimeValue& v) {
  if (v.kind == RuntimeValue::Kind::kInt) return static_cast<double>(v.int_value);
  if (v.kind == RuntimeValue::Kind::kBool) return v.bool_value ? 1.0 : 0.0;
  return v.float_value;
}

// Every layer's keys and values for one position of one prompt.
int64_t KvBytesPerToken(const Model& model) {
  const ModelConfig& c = model.config();
  const int64_t heads = c.num_kv_heads > 0 ? c.num_kv_heads : c.num_heads;
  const int64_t head_dim = c.head_dim > 0 ? c.head_dim : (c.num_heads > 0 ? c.hidden_size / c.num_heads : 0);
  const int64_t element = c10::elementSize(ScalarTypeFromName(model.dtype()).value_or(at::kFloat));
  return SaturatingMul(SaturatingMul(SaturatingMul(2 * c.num_layers, heads), head_dim), element);
}

// The engine's sampling parameters for a trace's generate options.
SamplingParams Sampling(const protocol::GenerateOptions& g) {
  SamplingParams s;
  s.max_new_tokens = static_cast<int>(g.max_new_tokens);
  s.temperature = g.temperature;
  s.top_k = static_cast<int>(g.top_k);
  s.top_p = g.top_p;
  s.seed = g.seed;
  s.stop_ids = g.stop_ids;
  return s;
}

// What a shape-only pass collects: every problem, and for a scan every node's shape.
struct ShapeCheck {
  std::vector<ValidationError> errors;
  std::vector<protocol::NodeShape> shapes;
};

// Values shared by every trace of one request (sessions pass values forward).
struct Environment {
  std::map<int64_t, RuntimeValue> values;  // meta tensors in a shape-only pass
  std::map<int64_t, int64_t> uses_left;  // single-run consumers still to run; -1: keep
  std::set<int64_t> per_step_inputs;     // read by a node that runs at every step: keep
  int64_t saved_bytes = 0;
  double flops = 0;        // graph ops' estimated work (shape-only pass)
  int64_t live_bytes = 0;  // of `values` (in a shape-only pass, what a run would hold)
  int64_t peak_bytes = 0;  // the most `live_bytes` ever was

  void Put(int64_t id, RuntimeValue value) {
    Erase(id);
    live_bytes = SaturatingAdd(live_bytes, value.Bytes());
    peak_bytes = std::max(peak_bytes, live_bytes);
    values[id] = std::move(value);
  }
  void Erase(int64_t id) {
    auto it = values.find(id);
    if (it == values.end()) return;
    live_bytes -= std::min(live_bytes, it->second.Bytes());
    values.erase(it);
  }
};

class TraceRunner {
 public:
  // With `check`, a shape-only pass: meta tensors stand in for every value, problems are
  // collected in `check` (the pass goes on), and nothing touches the weights.
  TraceRunner(const Model& model, const TracePlan& plan, const protocol::Trace& trace,
              Environment& env, const InterventionLimits& limits, const RunControl& control,
              protocol::Result& result, ShapeCheck* check = nullptr)
      : model_(model), plan_(plan), trace_(trace), env_(env), limits_(limits), control_(control),
        result_(result), check_(check), done_(plan.nodes.size(), -1),
        device_(check ? at::Device(at::kMeta) : model.torch_device()),
        split_(!check && model.device().find(',') != std::string::npos) {
    for (const auto& p : plan.prompts) padded_ = std::max<int64_t>(padded_, p.size());
    for (const NodePlan& p : plan.nodes) {
      const bool at_hook = p.op->op_class == OpClass::kRead || p.op->op_class == OpClass::kWrite ||
                           p.op->op_class == OpClass::kCache || p.op->op_class == OpClass::kSkip;
      has_cache_ |= p.op->op_class == OpClass::kCache;
      if (!p.steps.constant && !at_hook) dependents_.push_back(&p - plan.nodes.data());
    }
  }

  Status Run() {
    GLASSBOX_RETURN_IF_ERROR(RunConstants());
    return Finish(check_ ? RunShapes(Points()) : RunModel(Points()));
  }

  // The pieces of Run, for a pass shared with other jobs (SharedPass): the nodes that depend
  // on no hook point; the points this trace wants called; after the pass (its status), the
  // check that every node ran.
  Status RunConstants() {
    for (size_t i = 0; i < plan_.nodes.size(); ++i) {
      if (plan_.nodes[i].steps.constant) {
        GLASSBOX_RETURN_IF_ERROR(RunNode(i, 0));
      }
    }
    return Status::Ok();
  }
  std::set<int> Points() const {
    std::set<int> points;
    for (const auto& entry : plan_.at_point) points.insert(entry.first);
    for (const auto& entry : plan_.grad_at_point) points.insert(entry.first);
    for (const auto& entry : plan_.cache_at_point) points.insert(entry.first);
    return points;
  }
  Status Finish(const Status& pass) {
    if (!pass.ok() && !(pass.code() == StatusCode::kCancelled && stopped_early_)) return pass;
    return CheckEverythingRan();
  }
  // True once a forward pass may stop for this trace: every node has run (Fire then returns
  // Cancelled("every node has run")).
  bool stopped_early() const { return stopped_early_; }
  int64_t padded() const { return padded_; }
  void AddGenerated(std::vector<std::vector<int64_t>> tokens) {
    for (auto& row : tokens) result_.generated.push_back(std::move(row));
  }

 private:
  Status RunModel(const std::set<int>& points) {
    HookSet hooks(model_.catalogue());
    hooks.SetInterrupt(control_.interrupt);
    for (const int point : points) {
      GLASSBOX_RETURN_IF_ERROR(hooks.Add(model_.catalogue().point(point).name,
          [this, point](const HookContext& ctx, at::Tensor& value) { return Fire(point, ctx.step, value); }));
    }
    for (int point : plan_.skipped_points) {
      GLASSBOX_RETURN_IF_ERROR(hooks.AddSkip(model_.catalogue().point(point).name));
    }
    return RunEngine(hooks);
  }

  // The shape-only stand-in for RunModel: no weights, every step runs.
  Status RunShapes(const std::set<int>& points) {
    return RunShapePass(model_.catalogue(), Sizes(), points, plan_.skipped_points,
                        [this](int point, int step, at::Tensor& value) { return Fire(point, step, value); });
  }

 public:
  ShapePassSizes Sizes() const {
    ShapePassSizes sizes;
    sizes.batch = static_cast<int64_t>(plan_.prompts.size());
    sizes.prompt = padded_;
    sizes.steps = plan_.steps;
    sizes.generate = trace_.generate.has_value();
    return sizes;
  }

  // The estimated memory of this trace's engine pass (see PassBytes).
  // With `prompt`, as if its prompts were left-padded to that many positions (a shared pass
  // whose longest prompt is longer than this trace's).
  int64_t PassEstimate(int64_t prompt = 0) const {
    bool backward = false;
    for (const NodePlan& p : plan_.nodes) backward |= p.op->op_class == OpClass::kBackward;
    ShapePassSizes sizes = Sizes();
    sizes.prompt = std::max(sizes.prompt, prompt);
    return PassBytes(model_.catalogue(), sizes, KvBytesPerToken(model_), backward);
  }

 private:

  Status RunEngine(const HookSet& hooks) {
    if (!trace_.generate) {
      StatusOr<ForwardResult> r =
          model_.Forward({plan_.prompts, /*all_logits=*/true, /*return_logits=*/false}, &hooks);
      return r.status();
    }
    StatusOr<GenerateResult> r = model_.Generate(plan_.prompts, Sampling(*trace_.generate), &hooks);
    if (!r.ok()) return r.status();
    for (const auto& tokens : r->new_tokens) result_.generated.push_back(tokens);
    return Status::Ok();
  }

  Status NodeError(const NodePlan& p, const std::string& message) const {
    std::string where = "node " + std::to_string(p.node->id);
    if (!p.node->source.empty()) where += " (" + p.node->source + ")";
    return InvalidArgument(where + ", op " + p.node->op + ": " + message);
  }

  // What a user reads when saved values pass the limit: MiB, and how to save less.
  static std::string SavedBytesMessage(int64_t saved, int64_t limit) {
    auto mib = [](int64_t bytes) {
      char text[32];
      std::snprintf(text, sizeof(text), "%.1f MiB", static_cast<double>(bytes) / (1 << 20));
      return std::string(text);
    };
    return "the values saved up to this node come to " + mib(saved) + ", over the limit of " +
           mib(limit) + " per job; save less: index what you need before saving (h[:, -1]), " +
           "cache fewer points (tr.cache(\"resid_post\")), or split the experiment into " +
           "several traces";
  }

  // A problem with node `p`: a real run stops with it; a shape-only pass records it, gives
  // the node an unknown value and goes on, so that every problem is reported at once.
  Status Problem(size_t i, int64_t step, const std::string& message) {
    const NodePlan& p = plan_.nodes[i];
    if (!check_) return NodeError(p, message);
    check_->errors.push_back({p.node->id, p.node->source, "op " + p.node->op + ": " + message});
    Store(i, RuntimeValue::Unknown(), step);
    return Status::Ok();
  }

  // Called by the engine at a hook point: runs the reads and writes bound there in order,
  // and every node that becomes ready.
 public:
  Status Fire(int point, int step, at::Tensor& value) {
    TrackGradient(point, step, value);
    GLASSBOX_RETURN_IF_ERROR(Cache(point, step, value));
    auto bound = plan_.at_point.find(point);
    for (size_t i : bound == plan_.at_point.end() ? std::vector<size_t>() : bound->second) {
      const NodePlan& p = plan_.nodes[i];
      if (!p.steps.Covers(step)) continue;
      if (p.op->op_class == OpClass::kRead) {
        StatusOr<at::Tensor> read = Slice(p, point, value, step);
        if (read.ok()) {
          Store(i, RuntimeValue::FromTensor(*read), step);
        } else {
          GLASSBOX_RETURN_IF_ERROR(Problem(i, step, read.status().message()));
        }
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

 private:
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
      const RuntimeValue cached = RuntimeValue::FromTensor(slice->detach().clone());
      if (check_) RecordShape(p, cached, step, kwargs["name"].string_value);
      GLASSBOX_RETURN_IF_ERROR(SaveValue(p, cached, kwargs, /*per_step=*/false, step));
      done_[i] = step;
    }
    return Status::Ok();
  }

  // For points whose gradient a grad or write_grad node asks for: the earliest becomes a
  // leaf that requires grad (nothing before it needs differentiating); later ones keep their
  // grad. A write_grad's hook is registered before the grad is retained, so grad nodes at
  // the same point see the replaced gradient (retain_grad runs last in LibTorch 2 anyway).
  void TrackGradient(int point, int step, at::Tensor& value) {
    auto grads = plan_.grad_at_point.find(point);
    if (grads == plan_.grad_at_point.end()) return;
    bool wanted = false, rewritten = false;
    for (size_t i : grads->second) {
      if (plan_.nodes[i].point_step != step) continue;
      wanted = true;
      rewritten |= plan_.nodes[i].op->op_class == OpClass::kWriteGrad;
    }
    if (!wanted) return;
    const bool leaf = !value.requires_grad();
    if (leaf) value = value.detach().requires_grad_(true);
    if (rewritten && !check_) {
      // A later trace's backward may reach this tensor after this runner is gone.
      std::weak_ptr<int> alive = alive_;
      value.register_hook([this, alive, point, step](const at::Tensor& grad) {
        return alive.expired() ? grad : ReplaceGradient(point, step, grad);
      });
    }
    if (!leaf) value.retain_grad();
    grad_targets_[{point, step}] = value;
  }

  // Runs inside backward: the write_grad nodes of the running backward at (point, step)
  // replace the gradient. Errors are kept for RunBackward (autograd cannot carry a Status).
  at::Tensor ReplaceGradient(int point, int step, const at::Tensor& grad) {
    at::Tensor out = grad;
    for (size_t i : plan_.grad_at_point.at(point)) {
      const NodePlan& p = plan_.nodes[i];
      if (p.op->op_class != OpClass::kWriteGrad || p.point_step != step || p.backward != running_backward_) continue;
      StatusOr<at::Tensor> replaced = Replaced(p, out, step, /*detach=*/true);
      if (!replaced.ok()) {
        if (gradient_error_.ok()) gradient_error_ = NodeError(p, replaced.status().message());
        continue;
      }
      out = *replaced;
      rewrote_.insert(i);
    }
    return out;
  }

  Status RunBackward(size_t i, const std::vector<RuntimeValue>& args, int64_t step) {
    const NodePlan& p = plan_.nodes[i];
    if (!args[0].is_tensor() || args[0].tensor.numel() != 1) {
      return Problem(i, step, "backward needs a scalar tensor, got " + args[0].Describe());
    }
    // (A shape-only pass cannot tell: its hook points' values are not connected.)
    if (!check_ && !args[0].tensor.requires_grad()) {
      return NodeError(p, "the loss does not depend on any point a grad node asks about");
    }
    if (check_) {
      CheckGradientWrites(p.node->id, step);
    } else {
      running_backward_ = p.node->id;
      Status status;
      try {
        args[0].tensor.backward();
      } catch (const c10::Error& e) {
        status = NodeError(p, "backward failed: " + FirstLine(e.what()));
      }
      running_backward_ = -1;
      GLASSBOX_RETURN_IF_ERROR(status);
      GLASSBOX_RETURN_IF_ERROR(gradient_error_);
    }
    Store(i, RuntimeValue(), step);
    return Status::Ok();
  }

  // In a shape-only pass: would each write_grad of this backward fit its point's gradient?
  void CheckGradientWrites(int64_t backward, int64_t step) {
    for (const auto& [point, nodes] : plan_.grad_at_point) {
      for (size_t i : nodes) {
        const NodePlan& p = plan_.nodes[i];
        auto target = grad_targets_.find({point, p.point_step});
        if (p.op->op_class != OpClass::kWriteGrad || p.backward != backward || target == grad_targets_.end()) continue;
        StatusOr<at::Tensor> replaced = Replaced(p, at::empty_like(target->second), p.point_step, /*detach=*/true);
        if (!replaced.ok()) check_->errors.push_back({p.node->id, p.node->source, "op " + p.node->op + ": " + replaced.status().message()});
        rewrote_.insert(i);
      }
    }
  }

  Status RunGrad(size_t i, int64_t step) {
    const NodePlan& p = plan_.nodes[i];
    const int64_t point_step = p.point_step;
    auto target = grad_targets_.find({p.point, point_step});
    const bool reached = target != grad_targets_.end() && (check_ || target->second.grad().defined());
    if (!reached) {
      return Problem(i, step, "no gradient reached " + model_.catalogue().point(p.point).name +
                                  ": the loss does not depend on it");
    }
    if (p.op->op_class == OpClass::kWriteGrad) {
      if (!rewrote_.count(i)) return Problem(i, step, "its backward never reached " + model_.catalogue().point(p.point).name);
      Store(i, RuntimeValue(), step);
      return Status::Ok();
    }
    const at::Tensor gradient = check_ ? at::empty_like(target->second) : target->second.grad();
    StatusOr<at::Tensor> grad = Slice(p, p.point, gradient, point_step);
    if (!grad.ok()) return Problem(i, step, grad.status().message());
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

  // `value` (the whole batch's tensor at p's point) with p's region replaced by p's value
  // (write: args[0]; write_grad: args[1]), or region[index] = value. `value` is not changed.
  StatusOr<at::Tensor> Replaced(const NodePlan& p, const at::Tensor& value, int64_t step, bool detach) {
    GLASSBOX_ASSIGN_OR_RETURN(RuntimeValue input, Resolve(p.node->args[p.op->op_class == OpClass::kWriteGrad ? 1 : 0]));
    if (input.kind == RuntimeValue::Kind::kUnknown) return value;
    if (!input.is_tensor() && !input.is_number()) return InvalidArgument("writes need a tensor or a number, got " + input.Describe());
    try {
      at::Tensor v = input.is_tensor() ? input.tensor : at::scalar_tensor(NumberOf(input));
      if (detach) v = v.detach();
      at::Tensor full = value.clone();
      GLASSBOX_ASSIGN_OR_RETURN(at::Tensor region, Slice(p, p.point, full, step));
      v = v.to(full.device(), full.scalar_type());
      if (p.index) {
        GLASSBOX_ASSIGN_OR_RETURN(RuntimeValue index, Resolve(*p.index));
        if (index.HasUnknown()) return value;
        std::vector<RuntimeValue> args = {RuntimeValue::FromTensor(region), index, RuntimeValue::FromTensor(v)};
        std::map<std::string, RuntimeValue> none;
        GLASSBOX_ASSIGN_OR_RETURN(RuntimeValue patched, FindOp("setitem")->run(OpCall{args, none, &model_, check_ != nullptr, device_}));
        region.copy_(patched.tensor);
      } else {
        region.copy_(v.expand_as(region));
      }
      return full;
    } catch (const std::exception& e) {  // c10::Error, or a shape check on meta tensors
      return InvalidArgument("cannot write " + input.Describe() + " into " + model_.catalogue().point(p.point).name +
                             " (shape " + c10::str(value.sizes()) + "): " + FirstLine(e.what()));
    }
  }

  Status ApplyWrite(size_t i, at::Tensor& value, int64_t step) {
    StatusOr<at::Tensor> replaced = Replaced(plan_.nodes[i], value, step, /*detach=*/false);
    if (!replaced.ok()) return Problem(i, step, replaced.status().message());
    value = *replaced;
    if (check_) RecordShape(plan_.nodes[i], RuntimeValue(), step, "");
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
    return FromLiteral(v, device_);
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
    bool unknown = false;
    for (const Value& v : p.node->args) {
      StatusOr<RuntimeValue> r = Resolve(v);
      if (!r.ok()) return NodeError(p, r.status().message());
      unknown |= r->HasUnknown();
      args.push_back(std::move(*r));
    }
    for (const auto& kv : p.node->kwargs) {
      StatusOr<RuntimeValue> r = Resolve(kv.second);
      if (!r.ok()) return NodeError(p, r.status().message());
      unknown |= r->HasUnknown();
      kwargs[kv.first] = std::move(*r);
    }
    if (p.op->op_class == OpClass::kSave) return Save(i, args[0], kwargs, step);
    if (unknown) {  // a shape-only pass cannot say more about what depends on data
      Store(i, RuntimeValue::Unknown(), step);
      return Status::Ok();
    }
    if (p.op->op_class == OpClass::kBackward) return RunBackward(i, args, step);
    if (p.op->op_class == OpClass::kGrad || p.op->op_class == OpClass::kWriteGrad) return RunGrad(i, step);
    return RunOp(i, args, kwargs, step);
  }

  // A model split across devices holds each layer's values on that layer's device, while
  // literals and created tensors are made on its first device: an op whose tensors are on
  // several devices runs on the first of them that is not the model's first device (where
  // the data it reads came from), and the others are copied there, once. False (nothing
  // copied) when every tensor is on one device, as always on an unsplit model.
  bool OnOneDevice(const std::vector<RuntimeValue>& args, const std::map<std::string, RuntimeValue>& kwargs,
                   std::vector<RuntimeValue>& moved_args, std::map<std::string, RuntimeValue>& moved_kwargs) const {
    std::vector<at::Device> devices;
    std::optional<at::Device> target;
    std::function<void(const RuntimeValue&)> look = [&](const RuntimeValue& v) {
      if (v.is_tensor()) {
        if (std::find(devices.begin(), devices.end(), v.tensor.device()) == devices.end()) {
          devices.push_back(v.tensor.device());
        }
        if (!target && v.tensor.device() != device_) target = v.tensor.device();
      }
      for (const RuntimeValue& e : v.list) look(e);
    };
    for (const RuntimeValue& v : args) look(v);
    for (const auto& entry : kwargs) look(entry.second);
    if (devices.size() < 2) return false;
    std::function<RuntimeValue(const RuntimeValue&)> move = [&](const RuntimeValue& v) {
      RuntimeValue out = v;
      if (out.is_tensor() && out.tensor.device() != *target) out.tensor = out.tensor.to(*target);
      for (RuntimeValue& e : out.list) e = move(e);
      return out;
    };
    for (const RuntimeValue& v : args) moved_args.push_back(move(v));
    for (const auto& entry : kwargs) moved_kwargs[entry.first] = move(entry.second);
    return true;
  }

  Status RunOp(size_t i, const std::vector<RuntimeValue>& args,
               const std::map<std::string, RuntimeValue>& kwargs, int64_t step) {
    const NodePlan& p = plan_.nodes[i];
    if (!check_ && control_.interrupt) {  // the clock between ops, not only between layers
      Status go_on = control_.interrupt();
      if (!go_on.ok()) return go_on.WithContext("before node " + std::to_string(p.node->id));
    }
    StatusOr<RuntimeValue> out = Internal("not run");
    try {
      std::vector<RuntimeValue> moved_args;
      std::map<std::string, RuntimeValue> moved_kwargs;
      const bool moved = split_ && OnOneDevice(args, kwargs, moved_args, moved_kwargs);
      out = p.op->run(OpCall{moved ? moved_args : args, moved ? moved_kwargs : kwargs, &model_,
                             check_ != nullptr, device_});
    } catch (const c10::NotImplementedError& e) {
      out = check_ ? DataDependent(p.op->name + " on meta tensors") : InvalidArgument(FirstLine(e.what()));
    } catch (const c10::Error& e) {
      out = InvalidArgument(FirstLine(e.what()));
    } catch (const std::exception& e) {  // some LibTorch 1.13 shape checks on meta tensors
      out = InvalidArgument(FirstLine(e.what()));
    }
    if (check_ && !out.ok() && IsDataDependent(out.status())) out = RuntimeValue::Unknown();
    if (!out.ok()) {
      std::string shapes;
      for (const RuntimeValue& a : args) shapes += (shapes.empty() ? "" : ", ") + a.Describe();
      return Problem(i, step, out.status().message() + " (inputs: " + shapes + ")");
    }
    if (check_) env_.flops += EstimateFlops(p.op->name, args, *out);
    Store(i, std::move(*out), step);
    return Status::Ok();
  }

  Status Save(size_t i, const RuntimeValue& value, const std::map<std::string, RuntimeValue>& kwargs, int64_t step) {
    GLASSBOX_RETURN_IF_ERROR(SaveValue(plan_.nodes[i], value, kwargs, plan_.nodes[i].steps.PerStep(), step));
    if (check_) RecordShape(plan_.nodes[i], value, step, "");
    done_[i] = step;
    return Status::Ok();
  }

  // Saved values count against the limit in a shape-only pass too (so a run that would go
  // over it never starts); only a real run returns them.
  Status SaveValue(const NodePlan& p, const RuntimeValue& value,
                   const std::map<std::string, RuntimeValue>& kwargs, bool per_step, int64_t step) {
    const size_t i = plan_.index_of.at(p.node->id);
    const int64_t before = env_.saved_bytes;
    env_.saved_bytes = SaturatingAdd(env_.saved_bytes, value.Bytes());
    if (env_.saved_bytes > limits_.max_saved_bytes) {
      // Said once, by the save that crosses the limit (a shape-only pass goes on past it).
      if (before > limits_.max_saved_bytes) return Status::Ok();
      return Problem(i, step, SavedBytesMessage(env_.saved_bytes, limits_.max_saved_bytes));
    }
    if (check_) return Status::Ok();
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
    if (check_) RecordShape(plan_.nodes[i], value, step, "");
    env_.Put(plan_.nodes[i].node->id, std::move(value));
    done_[i] = step;
    Release(plan_.nodes[i]);
  }

  // A scan's answer for one node at one step.
  void RecordShape(const NodePlan& p, const RuntimeValue& value, int64_t step, const std::string& name) {
    protocol::NodeShape shape;
    shape.node = p.node->id;
    shape.step = p.steps.constant ? 0 : step;
    shape.name = name;
    shape.dtype = value.is_tensor() ? ScalarTypeName(value.tensor.scalar_type()) : KindName(value.kind);
    if (value.kind == RuntimeValue::Kind::kNone) shape.dtype = "none";
    if (value.is_tensor()) shape.shape = std::vector<std::optional<int64_t>>(value.tensor.sizes().begin(), value.tensor.sizes().end());
    check_->shapes.push_back(std::move(shape));
  }

  // Frees inputs nobody needs any more (memory stays bounded by what is saved and live).
  void Release(const NodePlan& consumer) {
    if (consumer.steps.PerStep()) return;
    for (int64_t ref : consumer.inputs) {
      auto it = env_.uses_left.find(ref);
      if (it == env_.uses_left.end() || it->second < 0) continue;
      if (--it->second == 0 && !env_.per_step_inputs.count(ref)) env_.Erase(ref);
    }
  }

  bool AllDone() const {
    for (size_t i = 0; i < plan_.nodes.size(); ++i) {
      if (done_[i] < 0) return false;
    }
    return true;
  }

  // A real run stops at the first node that never ran; a shape-only pass reports them all.
  Status CheckEverythingRan() {
    for (size_t i = 0; i < plan_.nodes.size(); ++i) {
      const NodePlan& p = plan_.nodes[i];
      if (done_[i] >= 0 && (!p.steps.PerStep() || done_[i] >= p.steps.last)) continue;
      if (done_[i] >= 0 || p.steps.constant) continue;
      GLASSBOX_RETURN_IF_ERROR(Problem(i, 0, trace_.generate ? "never ran: generation ended (stop token) before step " +
                                                                    std::to_string(p.steps.first)
                                                              : "never ran: its hook point was not reached"));
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
  ShapeCheck* check_;                // null: a real run
  std::vector<int64_t> done_;        // last step each node ran at, -1: not yet
  const at::Device device_;          // where values are made: the model's device, or kMeta
  const bool split_;                 // a real run on a model split across devices (OnOneDevice)
  std::vector<size_t> dependents_;   // non-constant nodes not bound to a hook point
  std::map<size_t, size_t> per_step_saves_;
  std::map<std::pair<int, int64_t>, at::Tensor> grad_targets_;  // (point, step) -> tracked value
  int64_t running_backward_ = -1;    // the backward node whose backward() is running
  Status gradient_error_;            // the first write_grad failure inside backward()
  std::set<size_t> rewrote_;         // write_grad nodes that replaced a gradient
  std::shared_ptr<int> alive_ = std::make_shared<int>(0);  // expires with this runner
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

int64_t MemoryEstimate::Total() const { return SaturatingAdd(SaturatingAdd(pass, values), saved); }

std::string MemoryEstimate::ToString() const {
  return std::to_string(Total()) + " bytes (model pass " + std::to_string(pass) + ", graph values " +
         std::to_string(values) + ", saved values " + std::to_string(saved) + ")";
}

std::vector<ValidationError> CheckShapes(const Model& model, const protocol::Request& request,
                                         const std::vector<TracePlan>& plans,
                                         const InterventionLimits& limits,
                                         std::vector<protocol::NodeShape>* shapes,
                                         MemoryEstimate* estimate) {
  ShapeCheck check;
  const RunControl no_control;  // the shape pass runs no engine: nothing to interrupt
  Environment env;
  CountUses(plans, env);
  protocol::Result unused;
  for (size_t t = 0; t < plans.size(); ++t) {
    TraceRunner runner(model, plans[t], request.traces[t], env, limits, no_control, unused, &check);
    Status status = runner.Run();
    if (!status.ok()) check.errors.push_back({-1, "", "trace " + std::to_string(t) + ": " + status.message()});
    if (estimate != nullptr) estimate->pass = std::max(estimate->pass, runner.PassEstimate());
  }
  if (estimate != nullptr) {
    estimate->flops = env.flops;
    estimate->values = env.peak_bytes;
    estimate->saved = SaturatingMul(env.saved_bytes, 2);
  }
  if (shapes != nullptr) *shapes = std::move(check.shapes);
  return check.errors;
}

namespace {

// A request that passed every check before running: its plans, and for a scan its answer.
struct Prepared {
  std::vector<TracePlan> plans;
  protocol::Result result;
  MemoryEstimate estimate;
};

// Validation, the shape pass and the memory and time estimates: every refusal Run gives
// before anything runs.
StatusOr<Prepared> Prepare(const Model& model, const protocol::Request& request,
                           const InterventionLimits& limits, const RunControl& control) {
  Prepared prepared;
  MemoryEstimate& estimate = prepared.estimate;
  std::vector<ValidationError> errors = PlanRequest(model, request, limits, prepared.plans);
  if (errors.empty()) {
    errors = CheckShapes(model, request, prepared.plans, limits,
                         request.scan ? &prepared.result.shapes : nullptr, &estimate);
  }
  if (!errors.empty()) {
    std::string message = std::to_string(errors.size()) + " problem(s) in the request:";
    for (const ValidationError& e : errors) message += "\n  " + e.ToString();
    return InvalidArgument(message);
  }
  if (request.scan) return prepared;
  if (limits.max_job_bytes > 0 && estimate.Total() > limits.max_job_bytes) {
    return ResourceExhausted("this job needs an estimated " + estimate.ToString() +
                             " of memory; this worker's limit is " + std::to_string(limits.max_job_bytes) +
                             " bytes per job (--max-job-bytes)");
  }
  const double seconds = limits.flops_per_second > 0 ? estimate.flops / limits.flops_per_second : 0;
  if (control.time_limit_ms > 0 && seconds * 1000 > static_cast<double>(control.time_limit_ms)) {
    std::ostringstream message;
    message << "this job's graph ops need an estimated " << estimate.flops << " FLOP, " << seconds
            << " s at this worker's rate of " << limits.flops_per_second
            << " FLOP/s (--flops-per-second); its time limit is " << control.time_limit_ms / 1000.0 << " s";
    return ResourceExhausted(message.str());
  }
  return prepared;
}

StatusOr<protocol::Result> RunPrepared(const Model& model, const protocol::Request& request,
                                       Prepared& prepared, const InterventionLimits& limits,
                                       const RunControl& control) {
  if (request.scan) return std::move(prepared.result);
  Environment env;
  CountUses(prepared.plans, env);
  for (size_t t = 0; t < prepared.plans.size(); ++t) {
    TraceRunner runner(model, prepared.plans[t], request.traces[t], env, limits, control, prepared.result);
    Status status = runner.Run();
    if (!status.ok()) return status.WithContext("trace " + std::to_string(t));
  }
  return std::move(prepared.result);
}

// Whether a prepared request may share an engine pass with other jobs. Not: a scan (it runs
// no pass), a session of several traces, gradients (their backward would cross the batch),
// skipped modules (a skip holds for every row of the pass).
bool SharesPass(const protocol::Request& request, const Prepared& prepared) {
  if (request.scan || request.traces.size() != 1) return false;
  const TracePlan& plan = prepared.plans[0];
  if (!plan.skipped_points.empty()) return false;
  for (const NodePlan& p : plan.nodes) {
    const OpClass c = p.op->op_class;
    if (c == OpClass::kBackward || c == OpClass::kGrad || c == OpClass::kWriteGrad) return false;
  }
  return true;
}

// `work`'s result (a Status or a StatusOr), or the status of what it threw: out of memory, a
// LibTorch error.
template <typename Work>
auto CatchAll(Work work) -> decltype(work()) {
  try {
    return work();
  } catch (const std::bad_alloc&) {
    return ResourceExhausted("the worker ran out of memory running this job");
  } catch (const std::exception& e) {
    return Internal(std::string("the worker failed running this job: ") + FirstLine(e.what()));
  }
}

// One job's place in a shared pass: its rows [row0, row0 + rows) of the pass's batch and
// its own step; its rows are left-padded to the job's own longest prompt (`padded`) inside
// the pass's (every job's rows are left-padded, so a job's positions are the last of the
// batch's).
struct Member {
  size_t job = 0;
  const protocol::Request* request = nullptr;
  const RunControl* control = nullptr;
  Prepared prepared;
  Environment env;
  std::unique_ptr<TraceRunner> runner;
  std::set<int> points;
  int group = -1;            // its rows' group in a shared Generation
  bool in_pass = false;      // the running pass has its rows
  int64_t row0 = 0, rows = 0;
  int step = 0;
  bool active = true;        // still called at hook points
  bool ended = false;        // its result has gone out (SharedPass::End)
  Status failure;            // the job's own failure, if any
};

// The part of a batch tensor at `point` that is `m`'s: its rows, and of the sequence its own
// positions (its prompt at step 0, every key position it has: padded + step).
at::Tensor MemberView(const HookCatalogue& catalogue, int point, int64_t pass_padded, const Member& m,
                      const at::Tensor& value) {
  const int64_t padded = m.runner->padded(), keys = padded + m.step;
  at::Tensor out = value;
  const std::vector<std::string>& shape = catalogue.point(point).shape;
  for (size_t d = 0; d < shape.size() && static_cast<int64_t>(d) < out.dim(); ++d) {
    if (shape[d] == "batch") out = out.narrow(d, m.row0, m.rows);
    if (shape[d] == "seq" && m.step == 0 && out.size(d) == pass_padded && pass_padded > padded) {
      out = out.narrow(d, pass_padded - padded, padded);
    }
    if (shape[d] == "k_seq" && out.size(d) > keys) out = out.narrow(d, out.size(d) - keys, keys);
  }
  return out;
}

// Several jobs' traces in engine passes of one batch: one forward pass, or a generation
// that jobs join and leave between steps (continuous batching). The engine sees one batch;
// at every hook point each job's runner sees, and may replace, only its own part of the
// value. A job that fails or is stopped leaves without disturbing the others; a pass stops
// early once no job in it needs it any more.
class SharedPass {
 public:
  // `admit` (generation only, may be empty): asked between steps for jobs that join;
  // `done`: told as each job ends (its result is then in m.prepared.result or m.failure).
  SharedPass(const Model& model, std::function<std::vector<Member*>(size_t running)> admit,
             std::function<void(Member&)> done)
      : model_(model), hooks_(model.catalogue()), admit_(std::move(admit)), done_(std::move(done)) {
    hooks_.SetInterrupt([this]() -> Status {
      for (Member* m : members_) {
        if (!m->active || !m->in_pass || !m->control->interrupt) continue;
        Status go_on = m->control->interrupt();
        if (!go_on.ok()) Leave(*m, AtStep(*m, go_on));
      }
      return PassActive() ? Status::Ok() : AllStopped();
    });
  }

  void RunForward(const std::vector<Member*>& members) {
    std::vector<std::vector<int64_t>> prompts;
    for (Member* m : members) {
      if (!Add(m)) continue;
      const TracePlan& plan = m->prepared.plans[0];
      m->row0 = static_cast<int64_t>(prompts.size());
      m->rows = static_cast<int64_t>(plan.prompts.size());
      prompts.insert(prompts.end(), plan.prompts.begin(), plan.prompts.end());
      pass_padded_ = std::max(pass_padded_, m->runner->padded());
      m->in_pass = true;
    }
    if (PassActive()) {
      const Status pass = model_.Forward({prompts, /*all_logits=*/true, /*return_logits=*/false}, &hooks_).status();
      EndPass(pass);
    }
    for (Member* m : members_) End(*m);
  }

  void RunGeneration(const std::vector<Member*>& members) {
    Generation generation(model_);
    for (Member* m : members) Join(generation, m);
    for (;;) {
      if (admit_) {
        for (Member* m : admit_(Live())) Join(generation, m);
      }
      for (int group : generation.Finished()) {
        Member* m = ByGroup(group);
        const GenerateResult tokens = generation.Take(group);
        if (m == nullptr) continue;
        m->runner->AddGenerated(tokens.new_tokens);
        m->group = -1;
        End(*m);
      }
      if (generation.Idle()) break;
      pass_padded_ = 0;
      for (Member* m : members_) m->in_pass = false;
      for (const Generation::Slot& slot : generation.NextPass()) {
        Member* m = ByGroup(slot.group);
        if (m == nullptr) continue;
        m->in_pass = true;
        m->row0 = slot.row0;
        m->rows = slot.rows;
        m->step = slot.step;
        if (slot.step == 0) pass_padded_ = std::max(pass_padded_, m->runner->padded());
      }
      EndPass(PassActive() ? generation.Step(&hooks_) : AllStopped());
      // Jobs that left during the pass (failed, stopped, or done early) take their rows out.
      for (Member* m : members_) {
        if (m->group >= 0 && !m->active) {
          generation.Take(m->group);
          m->group = -1;
          End(*m);
        }
      }
    }
    for (Member* m : members_) End(*m);
  }

 private:
  // Takes `m` in: its graph's constant nodes run, its hook points are registered. False if
  // it failed already.
  bool Add(Member* m) {
    members_.push_back(m);
    m->points = m->runner->Points();
    Guard(*m, [&] { return m->runner->RunConstants(); });
    for (int point : m->points) {
      if (!registered_.insert(point).second) continue;
      Status added = hooks_.Add(model_.catalogue().point(point).name,
                                [this, point](const HookContext&, at::Tensor& value) { return Fire(point, value); });
      if (!added.ok()) Leave(*m, added);
    }
    return m->active;
  }

  void Join(Generation& generation, Member* m) {
    if (!Add(m)) return End(*m);
    StatusOr<int> group = generation.Join(m->prepared.plans[0].prompts, Sampling(*m->request->traces[0].generate));
    if (!group.ok()) {
      Leave(*m, group.status());
      return End(*m);
    }
    m->group = *group;
  }

  Status Fire(int point, at::Tensor& value) {
    at::Tensor replaced;  // the batch's value once some job replaced its part
    for (Member* m : members_) {
      if (!m->active || !m->in_pass || !m->points.count(point)) continue;
      const at::Tensor view = MemberView(model_.catalogue(), point, pass_padded_, *m, value);
      at::Tensor part = view;
      Guard(*m, [&] { return m->runner->Fire(point, m->step, part); });
      if (!m->active || part.unsafeGetTensorImpl() == view.unsafeGetTensorImpl()) continue;
      Guard(*m, [&] {
        if (!replaced.defined()) replaced = value.clone();
        MemberView(model_.catalogue(), point, pass_padded_, *m, replaced).copy_(part);
        return Status::Ok();
      });
    }
    if (replaced.defined()) value = replaced;
    return PassActive() ? Status::Ok() : AllStopped();
  }

  // Stops the engine's pass: no job in it needs it any more.
  Status AllStopped() {
    all_stopped_ = true;
    return Cancelled("every job of the shared pass has stopped");
  }

  // A pass's failure (not one that every job in it stopped) is every job's in it.
  void EndPass(const Status& pass) {
    const bool stopped = pass.code() == StatusCode::kCancelled && all_stopped_;
    all_stopped_ = false;
    if (pass.ok() || stopped) return;
    for (Member* m : members_) {
      if (m->in_pass && m->active) Leave(*m, pass);
    }
  }

  // Runs `work` for `m`: a failure (a status or an exception) ends m's part in the pass; a
  // forward trace whose every node has run leaves it too, successfully.
  template <typename Work>
  void Guard(Member& m, Work work) {
    if (!m.active) return;
    const Status status = CatchAll(work);
    if (status.ok()) return;
    if (status.code() == StatusCode::kCancelled && m.runner->stopped_early()) {
      m.active = false;
      return;
    }
    Leave(m, status);
  }

  // A generation stopped from outside (cancelled, out of time) says how far it got.
  static Status AtStep(const Member& m, const Status& why) {
    const auto& generate = m.request->traces[0].generate;
    if (!generate) return why;
    return Status(why.code(), why.message() + " (at generation step " + std::to_string(m.step) + " of " +
                                  std::to_string(generate->max_new_tokens) + ")");
  }

  void Leave(Member& m, const Status& why) {
    m.active = false;
    if (m.failure.ok()) m.failure = why.WithContext("trace 0");
  }

  // The job's end: the check that every node ran, then its result goes out (once).
  void End(Member& m) {
    if (m.ended) return;
    m.ended = true;
    m.active = false;
    m.in_pass = false;
    if (m.failure.ok()) {
      const Status finish = CatchAll([&] { return m.runner->Finish(Status::Ok()); });
      if (!finish.ok()) m.failure = finish.WithContext("trace 0");
    }
    done_(m);
  }

  Member* ByGroup(int group) const {
    for (Member* m : members_) {
      if (m->group == group) return m;
    }
    return nullptr;
  }

  size_t Live() const {
    return static_cast<size_t>(std::count_if(members_.begin(), members_.end(), [](const Member* m) { return !m->ended; }));
  }

  bool PassActive() const {
    return std::any_of(members_.begin(), members_.end(), [](const Member* m) { return m->active && m->in_pass; });
  }

  const Model& model_;
  HookSet hooks_;
  std::set<int> registered_;  // points with a hook
  const std::function<std::vector<Member*>(size_t)> admit_;
  const std::function<void(Member&)> done_;
  std::vector<Member*> members_;
  int64_t pass_padded_ = 0;  // the longest prompt of the pass's batch (a prefill or a forward)
  bool all_stopped_ = false;
};

// RunBatched's work: sorting jobs into passes, the memory budget of a shared pass, and
// handing out results as jobs end.
class BatchRun {
 public:
  BatchRun(const Model& model, const BatchFeed& feed, BatchReport* report)
      : model_(model), feed_(feed), report_(report) {}

  void Run(const std::vector<BatchJob>& jobs) {
    for (const BatchJob& job : jobs) Sort(Take(job), forwards_);
    // A pass of one runs alone, exactly as Run would run it, unless others may join it.
    std::vector<Member*> singles;
    for (std::vector<Member*>* pass : {&forwards_, &generations_}) {
      if (pass->size() != 1 || (pass == &generations_ && feed_.join)) continue;
      singles.push_back(pass->front());
      pass->clear();
    }
    alone_.insert(alone_.begin(), singles.begin(), singles.end());
    if (!forwards_.empty()) {
      Report(forwards_);
      Holding(PassBytes(forwards_));
      SharedPass(model_, nullptr, [this](Member& m) { Done(m); }).RunForward(forwards_);
    }
    if (!generations_.empty()) {
      const size_t pass = Report(generations_);
      Holding(PassBytes(generations_));
      std::function<std::vector<Member*>(size_t)> admit;
      if (feed_.join) admit = [this, pass](size_t running) { return Admit(running, pass); };
      // A job that ends gives back what it held: its rows leave the KV cache before the next step.
      SharedPass(model_, admit, [this](Member& m) {
        Done(m);
        Holding(PassBytes(generations_));
      }).RunGeneration(generations_);
    }
    // Jobs that cannot share a pass run alone, in the order they came.
    for (size_t a = 0; a < alone_.size(); ++a) {
      Member& m = *alone_[a];
      if (report_ != nullptr) report_->passes.push_back({m.job});
      if (m.control->on_pass) m.control->on_pass(1);
      Holding(m.prepared.estimate.Total());
      StatusOr<protocol::Result> result =
          CatchAll([&] { return RunPrepared(model_, *m.request, m.prepared, jobs_[m.job].limits, *m.control); });
      feed_.done(m.job, std::move(result));
    }
    Holding(0);
  }

 private:
  // Validates and estimates a job; a refusal is its result at once.
  std::unique_ptr<Member> Take(const BatchJob& job) {
    jobs_.push_back(job);
    auto m = std::make_unique<Member>();
    m->job = jobs_.size() - 1;
    m->request = job.request;
    m->control = &jobs_.back().control;
    StatusOr<Prepared> prepared = CatchAll([&] { return Prepare(model_, *job.request, job.limits, job.control); });
    if (!prepared.ok()) {
      feed_.done(m->job, prepared.status());
      return nullptr;
    }
    m->prepared = std::move(*prepared);
    return m;
  }

  // Into the forward pass (`forwards`), the generation, or the jobs that run alone. A shared
  // pass holds its jobs' memory at once: it takes a job only while the estimates of the jobs
  // still in it, each at the pass's padded prompt length (SharedBytes), stay within the
  // job's own budget; the rest run alone, after.
  void Sort(std::unique_ptr<Member> m, std::vector<Member*>& forwards) {
    if (m == nullptr) return;
    Member* member = m.get();
    members_.push_back(std::move(m));
    const int64_t budget = jobs_[member->job].limits.max_job_bytes;
    if (Deferred(*member, member->prepared.estimate.Total(), budget)) return;
    if (!SharesPass(*member->request, member->prepared)) {
      alone_.push_back(member);
      return;
    }
    CountUses(member->prepared.plans, member->env);
    member->runner = std::make_unique<TraceRunner>(model_, member->prepared.plans[0], member->request->traces[0],
                                                   member->env, jobs_[member->job].limits, *member->control,
                                                   member->prepared.result);
    std::vector<Member*>& pass = member->request->traces[0].generate ? generations_ : forwards;
    const int64_t shared = PassBytesWith(pass, member);
    if (budget > 0 && !pass.empty() && shared > budget) {
      alone_.push_back(member);
      return;
    }
    if (Deferred(*member, shared, budget)) return;  // it fits alone, not beside the others and what is held
    pass.push_back(member);
  }

  // In a nested run (BatchFeed::defer): hands `m` back unrun when its `bytes`, beside what
  // the run around it holds, would go over `budget`.
  bool Deferred(const Member& m, int64_t bytes, int64_t budget) {
    if (!feed_.defer || budget <= 0 || SaturatingAdd(feed_.held_bytes, bytes) <= budget) return false;
    feed_.defer(m.job);
    return true;
  }

  void Holding(int64_t bytes) {
    if (feed_.holding) feed_.holding(bytes);
  }

  static int64_t PassBytes(const std::vector<Member*>& pass) { return PassBytesWith(pass, nullptr); }

  // The estimated memory of `pass`'s jobs still running, with `joining` (if any) beside them.
  // In a shared pass every row is as long as the batch's longest prompt, so each job's model
  // pass (activations, KV cache) is taken at that length; graph and saved values stay its own.
  static int64_t PassBytesWith(const std::vector<Member*>& pass, const Member* joining) {
    std::vector<const Member*> running;
    if (joining != nullptr) running.push_back(joining);
    for (const Member* m : pass) {
      if (!m->ended) running.push_back(m);
    }
    int64_t prompt = 0, bytes = 0;
    for (const Member* m : running) prompt = std::max(prompt, m->runner->padded());
    for (const Member* m : running) {
      const MemoryEstimate& e = m->prepared.estimate;
      bytes = SaturatingAdd(bytes, SaturatingAdd(SaturatingAdd(e.values, e.saved), m->runner->PassEstimate(prompt)));
    }
    return bytes;
  }

  // A running generation's new members: the fed jobs that may share its pass and fit the
  // memory budget beside the jobs still in it. The others run alone after it.
  std::vector<Member*> Admit(size_t running, size_t pass) {
    std::vector<Member*> joining;
    std::vector<Member*> forwards;  // (a fed job that does not generate runs alone, after)
    for (const BatchJob& job : feed_.join(running)) {
      std::unique_ptr<Member> m = Take(job);
      if (m == nullptr) continue;
      Member* member = m.get();
      const size_t before = generations_.size();
      Sort(std::move(m), forwards);
      alone_.insert(alone_.end(), forwards.begin(), forwards.end());
      forwards.clear();
      if (generations_.size() == before) continue;
      joining.push_back(member);
      if (report_ != nullptr) report_->passes[pass].push_back(member->job);
      if (member->control->on_pass) member->control->on_pass(static_cast<int64_t>(running + joining.size()));
    }
    if (!joining.empty()) Holding(PassBytes(generations_));
    return joining;
  }

  // A job's result goes out as soon as it ends.
  void Done(Member& m) {
    if (m.failure.ok()) {
      feed_.done(m.job, std::move(m.prepared.result));
    } else {
      feed_.done(m.job, m.failure);
    }
  }

  size_t Report(const std::vector<Member*>& pass) {
    for (const Member* m : pass) {
      if (m->control->on_pass) m->control->on_pass(static_cast<int64_t>(pass.size()));
    }
    if (report_ == nullptr) return 0;
    std::vector<size_t> ids;
    for (const Member* m : pass) ids.push_back(m->job);
    report_->passes.push_back(std::move(ids));
    return report_->passes.size() - 1;
  }

  const Model& model_;
  const BatchFeed& feed_;
  BatchReport* report_;
  std::deque<BatchJob> jobs_;  // given, then joined (a deque: controls stay where they are)
  std::vector<std::unique_ptr<Member>> members_;
  std::vector<Member*> forwards_, generations_, alone_;
};

}  // namespace

StatusOr<protocol::Result> Run(const Model& model, const protocol::Request& request,
                               const InterventionLimits& limits, const RunControl& control) {
  GLASSBOX_ASSIGN_OR_RETURN(Prepared prepared, Prepare(model, request, limits, control));
  return RunPrepared(model, request, prepared, limits, control);
}

void RunBatched(const Model& model, const std::vector<BatchJob>& jobs, const BatchFeed& feed,
                BatchReport* report) {
  BatchRun(model, feed, report).Run(jobs);
}

std::vector<StatusOr<protocol::Result>> RunBatched(const Model& model, const std::vector<BatchJob>& jobs,
                                                   BatchReport* report) {
  std::vector<StatusOr<protocol::Result>> results(jobs.size(), Internal("not run"));
  BatchFeed feed;
  feed.done = [&results](size_t job, StatusOr<protocol::Result> result) { results[job] = std::move(result); };
  RunBatched(model, jobs, feed, report);
  return results;
}

}  // namespace glassbox::intervention
