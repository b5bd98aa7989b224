// The operation whitelist: every op a graph node may name, with its arity, keyword
// arguments and one line of documentation (intervention/OPS.md is generated from the same
// facts and checked against this table by a test). Anything not listed here is rejected at
// validation, by name. Internal to intervention/.
#ifndef GLASSBOX_INTERVENTION_OPS_H_
#define GLASSBOX_INTERVENTION_OPS_H_

#include <functional>
#include <map>
#include <string>
#include <vector>

#include "base/status.h"
#include "engine/engine.h"
#include "intervention/value.h"

namespace glassbox::intervention {

// Ops whose meaning involves the forward pass; the interpreter runs these itself.
enum class OpClass { kPure, kRead, kWrite, kSave, kModule, kBackward, kGrad, kWriteGrad, kCache, kSkip };

struct OpCall {
  const std::vector<RuntimeValue>& args;
  const std::map<std::string, RuntimeValue>& kwargs;
  const Model* model;  // for module calls
  // A shape-only pass: tensors are meta tensors (no data); ops create meta tensors, modules
  // give their output shape without touching weights, and an op that needs data returns
  // DataDependent().
  bool meta = false;
  // Where ops create tensors: the model's device (kMeta in a shape-only pass).
  at::Device device = at::kCPU;
};

// The status of an op that cannot say anything without data (a meta tensor's item()).
Status DataDependent(const std::string& what);
bool IsDataDependent(const Status& status);

using OpFunction = std::function<StatusOr<RuntimeValue>(const OpCall& call)>;

struct OpSpec {
  std::string name;
  OpClass op_class = OpClass::kPure;
  int min_args = 0;
  int max_args = 0;  // -1: any number
  std::vector<std::string> kwargs;
  std::string signature;  // "add(a, b)"
  std::string doc;
  OpFunction run;  // null for ops the interpreter runs itself
};

// An estimate of the floating-point operations op `name` did to turn `args` into `out`
// (meta tensors will do): see InterventionLimits::flops_per_second. Never negative.
double EstimateFlops(const std::string& name, const std::vector<RuntimeValue>& args,
                     const RuntimeValue& out);

// The op of that name, or nullptr.
const OpSpec* FindOp(const std::string& name);
const std::vector<OpSpec>& AllOps();
// The whitelist as a Markdown table (what intervention/OPS.md holds).
std::string OpsMarkdown();

}  // namespace glassbox::intervention

#endif  // GLASSBOX_INTERVENTION_OPS_H_
