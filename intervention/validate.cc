// Validation and planning of intervention graphs: every problem is reported at once, each
// naming its node, before anything runs.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <set>
#include <sstream>

#include "engine/hooks.h"

#include "intervention/plan.h"

namespace glassbox::intervention {
namespace {

// The callable modules, each layer's once ("model.layers.N.mlp"), for error messages.
std::string ModuleList(const std::vector<std::string>& modules) {
  std::string text;
  for (const std::string& name : modules) {
    const size_t zero = name.find(".0.");
    const bool other_layer = zero == std::string::npos &&
                             name.find_first_of("0123456789") != std::string::npos &&
                             name.find_first_of("0123456789") < name.size() - 1;
    if (other_layer) continue;
    const std::string shown = zero == std::string::npos ? name : name.substr(0, zero) + ".N." + name.substr(zero + 3);
    text += (text.empty() ? "" : ", ") + shown;
  }
  return text;
}

using protocol::Value;

// Names a client chose (ops, hook points, modules, filters) are short; a longer one is
// refused before it is compared with anything, and messages quote only its start.
constexpr size_t kMaxNameBytes = 256;

std::string Quoted(const std::string& name) {
  if (name.size() <= 64) return "'" + name + "'";
  return "'" + name.substr(0, 64) + "...' (" + std::to_string(name.size()) + " bytes)";
}

bool TooLong(const std::string& name) { return name.size() > kMaxNameBytes; }

std::string TooLongMessage(const std::string& what, const std::string& name) {
  return what + " " + Quoted(name) + " is longer than " + std::to_string(kMaxNameBytes) + " bytes";
}

std::string Join(const std::vector<std::string>& names) {
  std::string out;
  for (const std::string& n : names) out += (out.empty() ? "" : ", ") + n;
  return out;
}

void CollectRefs(const Value& v, std::vector<int64_t>& out) {
  if (v.kind == Value::Kind::kRef) out.push_back(v.int_value);
  for (const Value& item : v.list) CollectRefs(item, out);
}

// Checks one trace's nodes; fills a plan. `Fail` records a problem for the current node.
class Planner {
 public:
  Planner(const Model& model, const protocol::Trace& trace, const std::map<int64_t, bool>& earlier,
          const InterventionLimits& limits, std::vector<ValidationError>& errors)
      : model_(model), trace_(trace), earlier_(earlier), limits_(limits), errors_(errors) {}

  TracePlan Plan() {
    PlanPrompts();
    plan_.steps = trace_.generate ? std::max<int64_t>(trace_.generate->max_new_tokens, 1) : 1;
    if (trace_.generate) CheckGenerate(*trace_.generate);
    for (const protocol::Node& node : trace_.nodes) PlanNode(node);
    return std::move(plan_);
  }

 private:
  void Fail(const protocol::Node* node, const std::string& message) {
    errors_.push_back({node ? node->id : -1, node ? node->source : "", message});
  }

  void PlanPrompts() {
    if (trace_.invokes.empty()) Fail(nullptr, "a trace needs at least one invoke (prompt)");
    if (static_cast<int64_t>(trace_.invokes.size()) > limits_.max_invokes) {
      Fail(nullptr, "a trace has " + std::to_string(trace_.invokes.size()) +
                        " invokes; the limit is " + std::to_string(limits_.max_invokes));
    }
    for (size_t i = 0; i < trace_.invokes.size(); ++i) {
      const protocol::Invoke& inv = trace_.invokes[i];
      std::vector<int64_t> ids;
      if (inv.ids) {
        ids = *inv.ids;
      } else if (inv.prompt && model_.tokenizer() != nullptr) {
        ids = model_.tokenizer()->Encode(*inv.prompt, /*add_special_tokens=*/true);
      } else if (inv.prompt) {
        Fail(nullptr, "invoke " + std::to_string(i) + " is text but this model has no tokenizer; send token ids");
      }
      if ((inv.ids || inv.prompt) && ids.empty()) Fail(nullptr, "invoke " + std::to_string(i) + " has no tokens");
      if (!inv.ids && !inv.prompt) Fail(nullptr, "invoke " + std::to_string(i) + " has neither a prompt nor ids");
      if (static_cast<int64_t>(ids.size()) > limits_.max_prompt_tokens) {
        Fail(nullptr, "invoke " + std::to_string(i) + " has " + std::to_string(ids.size()) +
                          " tokens; the limit is " + std::to_string(limits_.max_prompt_tokens));
      }
      for (int64_t id : ids) {
        if (id < 0 || id >= model_.config().vocab_size) {
          Fail(nullptr, "invoke " + std::to_string(i) + ": token id " + std::to_string(id) +
                            " is outside the vocabulary [0, " + std::to_string(model_.config().vocab_size) + ")");
          break;
        }
      }
      plan_.prompts.push_back(std::move(ids));
    }
  }

  void CheckGenerate(const protocol::GenerateOptions& g) {
    if (g.max_new_tokens < 1 || g.max_new_tokens > limits_.max_new_tokens) {
      Fail(nullptr, "max_new_tokens is " + std::to_string(g.max_new_tokens) + "; it must be in [1, " +
                        std::to_string(limits_.max_new_tokens) + "]");
    }
    // Written so that NaN fails every check.
    if (!(g.temperature >= 0 && std::isfinite(g.temperature))) {
      Fail(nullptr, "temperature is " + Number(g.temperature) + "; it must be a finite number >= 0 (0: greedy)");
    }
    if (!(g.top_p > 0 && g.top_p <= 1)) {
      Fail(nullptr, "top_p is " + Number(g.top_p) + "; it must be in (0, 1]");
    }
    if (g.top_k < 0 || g.top_k > std::numeric_limits<int32_t>::max()) {
      Fail(nullptr, "top_k is " + std::to_string(g.top_k) + "; it must be in [0, 2147483647] (0: off)");
    }
  }

  static std::string Number(double v) {
    std::ostringstream out;
    out << v;
    return out.str();
  }

  void PlanNode(const protocol::Node& node) {
    NodePlan p;
    p.node = &node;
    if (plan_.index_of.count(node.id) || earlier_.count(node.id)) {
      Fail(&node, "node id " + std::to_string(node.id) + " is used twice");
      return;
    }
    p.op = TooLong(node.op) ? nullptr : FindOp(node.op);
    if (TooLong(node.op)) {
      Fail(&node, TooLongMessage("op name", node.op) + "; only the operations listed in intervention/OPS.md may be used");
    } else if (p.op == nullptr) {
      Fail(&node, "unknown op " + Quoted(node.op) + "; only the operations listed in intervention/OPS.md may be used" + SuggestOp(node.op));
    } else {
      CheckArity(node, *p.op);
    }
    for (const Value& v : node.args) CollectRefs(v, p.inputs);
    for (const auto& kv : node.kwargs) CollectRefs(kv.second, p.inputs);
    ResolveInputs(node, p);
    if (p.op != nullptr && (p.op->op_class == OpClass::kRead || p.op->op_class == OpClass::kWrite)) {
      PlanHookNode(node, p);
    }
    const bool grad = p.op != nullptr && (p.op->op_class == OpClass::kGrad || p.op->op_class == OpClass::kWriteGrad);
    if (grad) PlanGradNode(node, p);
    if (grad && p.op->op_class == OpClass::kWriteGrad) CheckGradValueOrder(node, p);
    if (p.op != nullptr && p.op->op_class == OpClass::kCache) PlanCacheNode(node, p);
    if (p.op != nullptr && p.op->op_class == OpClass::kSkip) PlanSkipNode(node, p);
    if (p.op != nullptr && p.op->op_class == OpClass::kModule) CheckModule(node);
    if (p.op != nullptr && p.op->name == "weight") CheckWeight(node);
    plan_.index_of[node.id] = plan_.nodes.size();
    if (p.point >= 0) (grad ? plan_.grad_at_point : plan_.at_point)[p.point].push_back(plan_.nodes.size());
    if (p.point >= 0 && p.op->op_class == OpClass::kSkip) plan_.skipped_points.insert(p.point);
    plan_.nodes.push_back(std::move(p));
  }

  std::string SuggestOp(const std::string& name) const {
    for (const OpSpec& op : AllOps()) {
      if (op.name.find(name) != std::string::npos || name.find(op.name) != std::string::npos) {
        return " (did you mean '" + op.name + "'?)";
      }
    }
    return "";
  }

  void CheckArity(const protocol::Node& node, const OpSpec& op) {
    const int n = static_cast<int>(node.args.size());
    if (n < op.min_args || (op.max_args >= 0 && n > op.max_args)) {
      Fail(&node, op.name + " takes " + std::to_string(op.min_args) +
                      (op.max_args == op.min_args ? "" : op.max_args < 0 ? " or more" : " to " + std::to_string(op.max_args)) +
                      " positional arguments, got " + std::to_string(n) + ": " + op.signature);
    }
    for (const auto& kv : node.kwargs) {
      if (std::find(op.kwargs.begin(), op.kwargs.end(), kv.first) == op.kwargs.end()) {
        Fail(&node, op.name + " has no argument '" + kv.first + "': " + op.signature);
      }
    }
  }

  // Inputs must be earlier nodes; the node's steps and phase follow from theirs.
  void ResolveInputs(const protocol::Node& node, NodePlan& p) {
    for (int64_t ref : p.inputs) {
      if (earlier_.count(ref)) continue;  // a value from an earlier trace: a constant here
      auto it = plan_.index_of.find(ref);
      if (it == plan_.index_of.end()) {
        Fail(&node, "refers to node " + std::to_string(ref) + ", which is not an earlier node");
        continue;
      }
      const NodePlan& in = plan_.nodes[it->second];
      p.phase = std::max(p.phase, in.phase);
      if (in.steps.constant) continue;
      if (p.steps.constant || (!p.steps.PerStep() && !in.steps.PerStep())) {
        p.steps = p.steps.constant ? in.steps : (in.steps.first > p.steps.first ? in.steps : p.steps);
      } else if (in.steps.PerStep() && !p.steps.PerStep()) {
        if (p.steps.first > in.steps.first) Fail(&node, "mixes a value from step " + std::to_string(p.steps.first) + " with values of every step from " + std::to_string(in.steps.first));
        p.steps = in.steps;
      } else if (in.steps.PerStep() && (in.steps.first != p.steps.first || in.steps.last != p.steps.last)) {
        Fail(&node, "combines values bound to different ranges of generation steps");
      } else if (!in.steps.PerStep() && in.steps.first > p.steps.first) {
        Fail(&node, "uses a value from step " + std::to_string(in.steps.first) + " in steps starting at " + std::to_string(p.steps.first));
      }
    }
  }

  void PlanHookNode(const protocol::Node& node, NodePlan& p) {
    const HookCatalogue& catalogue = model_.catalogue();
    auto point = node.kwargs.find("point");
    if (point == node.kwargs.end() || point->second.kind != Value::Kind::kString) {
      Fail(&node, node.op + " needs point=\"<hook point name>\"");
      return;
    }
    if (TooLong(point->second.string_value)) {
      Fail(&node, TooLongMessage("hook point name", point->second.string_value));
      return;
    }
    std::optional<int> id = catalogue.Find(point->second.string_value);
    if (!id) {
      Fail(&node, "unknown hook point " + Quoted(point->second.string_value) + "; did you mean: " +
                      Join(catalogue.Suggest(point->second.string_value)) + "?");
      return;
    }
    p.point = *id;
    PlanInvoke(node, p);
    PlanSteps(node, p);
    const int64_t order = p.point;
    const int64_t points = catalogue.size();
    const int64_t at = p.steps.first * points + order;
    if (p.op->op_class == OpClass::kRead) {
      p.phase = std::max(p.phase, at);
      return;
    }
    auto index = node.kwargs.find("index");
    if (index != node.kwargs.end() && index->second.kind != Value::Kind::kNone) p.index = index->second;
    if (p.phase > at) {
      Fail(&node, "writes " + catalogue.point(p.point).name + " at step " + std::to_string(p.steps.first) +
                      " using a value that only exists later in the pass; a forward pass cannot go back");
    }
  }

  // skip(value, module=...): a write at the module's output, and the module does not run.
  void PlanSkipNode(const protocol::Node& node, NodePlan& p) {
    auto module = node.kwargs.find("module");
    if (module == node.kwargs.end() || module->second.kind != Value::Kind::kString) {
      Fail(&node, "skip needs module=\"<a layer, its attention or its MLP>\", e.g. \"model.layers.3\" or \"transformer.h.3.mlp\"");
      return;
    }
    if (TooLong(module->second.string_value)) {
      Fail(&node, TooLongMessage("module name", module->second.string_value));
      return;
    }
    const std::string point = module->second.string_value + ".output";
    HookSet probe(model_.catalogue());
    Status skippable = probe.AddSkip(point);
    if (!skippable.ok()) {
      Fail(&node, "cannot skip '" + module->second.string_value + "': " + skippable.message());
      return;
    }
    p.point = *model_.catalogue().Find(point);
    PlanSteps(node, p);
    if (trace_.generate && (p.steps.first != 0 || p.steps.last != plan_.steps - 1)) {
      Fail(&node, "in a generation, a skipped module must be skipped at every step (step=\"all\"): its keys and values would be missing from the cache");
    }
    const int64_t at = p.steps.first * model_.catalogue().size() + p.point;
    if (p.phase > at) Fail(&node, "skips " + point + " with a value that only exists later in the pass");
  }

  // cache(filter=...): bound to every matching point; its values are saved as they appear.
  void PlanCacheNode(const protocol::Node& node, NodePlan& p) {
    auto filter = node.kwargs.find("filter");
    std::string text;
    if (filter != node.kwargs.end()) {
      if (filter->second.kind != Value::Kind::kString) {
        Fail(&node, "cache's filter must be a string");
        return;
      }
      text = filter->second.string_value;
    }
    if (TooLong(text)) {
      Fail(&node, TooLongMessage("cache filter", text));
      return;
    }
    PlanInvoke(node, p);
    PlanSteps(node, p);
    const HookCatalogue& catalogue = model_.catalogue();
    const size_t position = plan_.nodes.size();
    int matches = 0;
    for (int id = 0; id < catalogue.size(); ++id) {
      const HookPointInfo& info = catalogue.point(id);
      bool match = info.name.find(text) != std::string::npos;
      for (const std::string& alias : info.aliases) match |= alias.find(text) != std::string::npos;
      if (!match) continue;
      plan_.cache_at_point[id].push_back(position);
      ++matches;
    }
    if (matches == 0) Fail(&node, "cache filter " + Quoted(text) + " matches no hook point");
  }

  // grad(backward_node, point=...): a gradient exists once that backward has run, for a
  // point the forward pass reached before the loss.
  void PlanGradNode(const protocol::Node& node, NodePlan& p) {
    const StepRange after_backward = p.steps;
    const int64_t phase = p.phase;
    const Value& first = node.args.empty() ? Value() : node.args[0];
    auto it = first.kind == Value::Kind::kRef ? plan_.index_of.find(first.int_value) : plan_.index_of.end();
    if (it == plan_.index_of.end() || plan_.nodes[it->second].op == nullptr ||
        plan_.nodes[it->second].op->op_class != OpClass::kBackward) {
      Fail(&node, node.op + "'s first argument must be a backward node of this trace");
    } else {
      p.backward = first.int_value;
    }
    auto point = node.kwargs.find("point");
    std::optional<int> id;
    if (point != node.kwargs.end() && point->second.kind == Value::Kind::kString &&
        !TooLong(point->second.string_value)) {
      id = model_.catalogue().Find(point->second.string_value);
    }
    if (!id) {
      Fail(&node, node.op + " needs point=\"<hook point name>\" naming a known point");
      return;
    }
    p.point = *id;
    PlanInvoke(node, p);
    PlanSteps(node, p);
    const int64_t at = p.steps.first * model_.catalogue().size() + p.point;
    if (at > phase) Fail(&node, "asks for the gradient at " + model_.catalogue().point(p.point).name + ", which the forward pass reaches after the loss");
    p.point_step = p.steps.first;
    p.steps = after_backward;
    p.phase = phase;
  }

  // write_grad's value and index (which this records) are used while its backward runs:
  // they must come from nodes before the backward node (or from earlier traces).
  void CheckGradValueOrder(const protocol::Node& node, NodePlan& p) {
    std::vector<int64_t> refs;
    auto index = node.kwargs.find("index");
    if (index != node.kwargs.end() && index->second.kind != Value::Kind::kNone) {
      p.index = index->second;
      CollectRefs(index->second, refs);
    }
    if (p.backward < 0) return;
    if (node.args.size() > 1) CollectRefs(node.args[1], refs);
    const size_t backward = plan_.index_of.at(p.backward);
    for (int64_t ref : refs) {
      auto it = plan_.index_of.find(ref);
      if (it == plan_.index_of.end() || it->second < backward) continue;
      Fail(&node, "write_grad uses node " + std::to_string(ref) + ", which comes after its backward node " +
                      std::to_string(p.backward) + "; the replacement must exist when the backward runs");
    }
  }

  void PlanInvoke(const protocol::Node& node, NodePlan& p) {
    auto inv = node.kwargs.find("invoke");
    if (inv == node.kwargs.end() || inv->second.kind == Value::Kind::kNone) return;
    if (inv->second.kind != Value::Kind::kInt || inv->second.int_value < 0 ||
        inv->second.int_value >= static_cast<int64_t>(trace_.invokes.size())) {
      Fail(&node, "invoke must be an int in [0, " + std::to_string(trace_.invokes.size()) + ") or None");
      return;
    }
    p.invoke = inv->second.int_value;
  }

  void PlanSteps(const protocol::Node& node, NodePlan& p) {
    p.steps = {false, 0, 0};
    auto step = node.kwargs.find("step");
    if (step == node.kwargs.end() || step->second.kind == Value::Kind::kNone) return;
    const Value& s = step->second;
    if (s.kind == Value::Kind::kInt) {
      p.steps.first = p.steps.last = s.int_value;
    } else if (s.kind == Value::Kind::kString && s.string_value == "all") {
      p.steps.last = plan_.steps - 1;
    } else if (s.kind == Value::Kind::kList && s.list.size() == 2 && s.list[0].kind == Value::Kind::kInt &&
               s.list[1].kind == Value::Kind::kInt && s.list[0].int_value < s.list[1].int_value) {
      p.steps.first = s.list[0].int_value;
      p.steps.last = s.list[1].int_value - 1;
    } else {
      Fail(&node, "step must be an int, [start, stop) or \"all\"");
      return;
    }
    if (p.steps.first < 0 || p.steps.last >= plan_.steps) {
      Fail(&node, "step is outside this trace's " + std::to_string(plan_.steps) + " forward pass(es)" +
                      (trace_.generate ? "" : " (steps beyond 0 need generation)"));
      p.steps = {false, 0, 0};  // reported; later arithmetic (phases) stays within range
    }
  }

  void CheckModule(const protocol::Node& node) {
    auto name = node.kwargs.find("name");
    if (name == node.kwargs.end() || name->second.kind != Value::Kind::kString) {
      Fail(&node, "module needs name=\"<module path>\", e.g. \"lm_head\"");
      return;
    }
    const std::vector<std::string> modules = model_.ModuleNames();
    if (std::find(modules.begin(), modules.end(), name->second.string_value) == modules.end()) {
      Fail(&node, "no callable module " + Quoted(name->second.string_value) + "; callable: " + ModuleList(modules));
    }
  }

  void CheckWeight(const protocol::Node& node) {
    auto name = node.kwargs.find("name");
    if (name == node.kwargs.end() || name->second.kind != Value::Kind::kString) {
      Fail(&node, "weight needs name=\"<parameter name>\", e.g. \"lm_head.weight\"");
    } else if (TooLong(name->second.string_value)) {
      Fail(&node, TooLongMessage("weight name", name->second.string_value));
    } else if (auto w = model_.WeightShape(name->second.string_value); !w.ok()) {
      Fail(&node, w.status().message());
    }
  }

  const Model& model_;
  const protocol::Trace& trace_;
  const std::map<int64_t, bool>& earlier_;
  const InterventionLimits& limits_;
  std::vector<ValidationError>& errors_;
  TracePlan plan_;
};

}  // namespace

TracePlan PlanTrace(const Model& model, const protocol::Trace& trace,
                    const std::map<int64_t, bool>& earlier, const InterventionLimits& limits,
                    std::vector<ValidationError>& errors) {
  return Planner(model, trace, earlier, limits, errors).Plan();
}

std::string ValidationError::ToString() const {
  std::string where = node >= 0 ? "node " + std::to_string(node) : "request";
  if (!source.empty()) where += " (" + source + ")";
  return where + ": " + message;
}

std::vector<ValidationError> PlanRequest(const Model& model, const protocol::Request& request,
                                         const InterventionLimits& limits,
                                         std::vector<TracePlan>& plans) {
  std::vector<ValidationError> errors;
  if (request.version != protocol::kProtocolVersion) {
    errors.push_back({-1, "", "request speaks protocol " + std::to_string(request.version) +
                                  ", this server speaks protocol " + std::to_string(protocol::kProtocolVersion)});
  }
  if (request.traces.empty()) errors.push_back({-1, "", "the request has no traces"});
  if (static_cast<int64_t>(request.traces.size()) > limits.max_traces) {
    errors.push_back({-1, "", "the request has " + std::to_string(request.traces.size()) + " traces; the limit is " + std::to_string(limits.max_traces)});
  }
  int64_t nodes = 0;
  for (const protocol::Trace& t : request.traces) nodes += static_cast<int64_t>(t.nodes.size());
  if (nodes > limits.max_nodes) {
    errors.push_back({-1, "", "the request has " + std::to_string(nodes) + " nodes; the limit is " + std::to_string(limits.max_nodes)});
    return errors;
  }
  std::map<int64_t, bool> earlier;
  for (const protocol::Trace& t : request.traces) {
    plans.push_back(PlanTrace(model, t, earlier, limits, errors));
    for (const NodePlan& p : plans.back().nodes) earlier[p.node->id] = true;
  }
  return errors;
}

std::vector<ValidationError> Validate(const Model& model, const protocol::Request& request,
                                      const InterventionLimits& limits) {
  std::vector<TracePlan> plans;
  std::vector<ValidationError> errors = PlanRequest(model, request, limits, plans);
  if (!errors.empty()) return errors;
  return CheckShapes(model, request, plans, limits, /*shapes=*/nullptr);
}

}  // namespace glassbox::intervention
