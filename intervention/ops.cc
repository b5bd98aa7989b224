// Implementations of the whitelisted graph operations on LibTorch tensors.
#include "intervention/ops.h"

#include <ATen/TensorIndexing.h>
#include <ATen/TensorOperators.h>
#include <ATen/ops/abs.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/argmax.h>
#include <ATen/ops/argmin.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/clamp.h>
#include <ATen/ops/einsum.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/exp.h>
#include <ATen/ops/full.h>
#include <ATen/ops/full_like.h>
#include <ATen/ops/gelu.h>
#include <ATen/ops/log.h>
#include <ATen/ops/log_softmax.h>
#include <ATen/ops/matmul.h>
#include <ATen/ops/norm.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/ones_like.h>
#include <ATen/ops/randn.h>
#include <ATen/ops/relu.h>
#include <ATen/ops/scalar_tensor.h>
#include <ATen/ops/sigmoid.h>
#include <ATen/ops/silu.h>
#include <ATen/ops/softmax.h>
#include <ATen/ops/sqrt.h>
#include <ATen/ops/stack.h>
#include <ATen/ops/tanh.h>
#include <ATen/ops/topk.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <cctype>
#include <tuple>

#include "intervention/shape_pass.h"

namespace glassbox::intervention {
namespace {

using Kind = RuntimeValue::Kind;
using RV = RuntimeValue;

// Positional-or-keyword argument access with errors that name the argument.
class Args {
 public:
  Args(const OpCall& call, const std::vector<std::string>& names) : call_(call), names_(names) {}

  bool Has(size_t i) const {
    if (i < call_.args.size()) return call_.args[i].kind != Kind::kNone;
    auto it = call_.kwargs.find(names_[i]);
    return it != call_.kwargs.end() && it->second.kind != Kind::kNone;
  }
  const RV& Get(size_t i) const {
    if (i < call_.args.size()) return call_.args[i];
    return call_.kwargs.at(names_[i]);
  }
  StatusOr<at::Tensor> Tensor(size_t i) const {
    if (!Has(i)) return Missing(i);
    const RV& v = Get(i);
    if (v.is_tensor()) return v.tensor;
    if (v.kind == Kind::kInt) return at::scalar_tensor(v.int_value, at::kLong);
    if (v.kind == Kind::kFloat) return at::scalar_tensor(v.float_value, at::kFloat);
    if (v.kind == Kind::kBool) return at::scalar_tensor(v.bool_value, at::kBool);
    return Wrong(i, "a tensor or a number");
  }
  StatusOr<int64_t> Int(size_t i, std::optional<int64_t> fallback = std::nullopt) const {
    if (!Has(i)) return fallback ? StatusOr<int64_t>(*fallback) : StatusOr<int64_t>(Missing(i));
    const RV& v = Get(i);
    if (v.kind == Kind::kInt) return v.int_value;
    if (v.is_tensor() && v.tensor.is_meta()) return DataDependent("argument '" + names_[i] + "'");
    if (v.is_tensor() && v.tensor.numel() == 1 && !v.tensor.is_floating_point()) {
      return v.tensor.item<int64_t>();
    }
    return Wrong(i, "an int");
  }
  StatusOr<double> Float(size_t i, std::optional<double> fallback = std::nullopt) const {
    if (!Has(i)) return fallback ? StatusOr<double>(*fallback) : StatusOr<double>(Missing(i));
    const RV& v = Get(i);
    if (v.kind == Kind::kInt) return static_cast<double>(v.int_value);
    if (v.kind == Kind::kFloat) return v.float_value;
    if (v.is_tensor() && v.tensor.is_meta()) return DataDependent("argument '" + names_[i] + "'");
    if (v.is_tensor() && v.tensor.numel() == 1) return v.tensor.item<double>();
    return Wrong(i, "a number");
  }
  StatusOr<bool> Bool(size_t i, bool fallback) const {
    if (!Has(i)) return fallback;
    const RV& v = Get(i);
    if (v.kind == Kind::kBool) return v.bool_value;
    return Wrong(i, "a bool");
  }
  StatusOr<std::vector<int64_t>> Ints(size_t i) const {
    if (!Has(i)) return Missing(i);
    const RV& v = Get(i);
    if (v.kind == Kind::kInt) return std::vector<int64_t>{v.int_value};
    if (v.kind != Kind::kList) return Wrong(i, "a list of ints");
    std::vector<int64_t> out;
    for (const RV& e : v.list) {
      if (e.kind != Kind::kInt) return Wrong(i, "a list of ints");
      out.push_back(e.int_value);
    }
    return out;
  }
  StatusOr<std::vector<at::Tensor>> Tensors(size_t i) const {
    if (!Has(i)) return Missing(i);
    const RV& v = Get(i);
    if (v.kind != Kind::kList) return Wrong(i, "a list of tensors");
    std::vector<at::Tensor> out;
    for (const RV& e : v.list) {
      if (!e.is_tensor()) return Wrong(i, "a list of tensors");
      out.push_back(e.tensor);
    }
    return out;
  }
  StatusOr<std::string> String(size_t i) const {
    if (!Has(i)) return Missing(i);
    if (Get(i).kind != Kind::kString) return Wrong(i, "a string");
    return Get(i).string_value;
  }
  StatusOr<at::ScalarType> Dtype(size_t i, at::ScalarType fallback) const;

 private:
  Status Missing(size_t i) const { return InvalidArgument("missing argument '" + names_[i] + "'"); }
  Status Wrong(size_t i, const std::string& expected) const {
    return InvalidArgument("argument '" + names_[i] + "' must be " + expected + ", got " +
                           Get(i).Describe());
  }
  const OpCall& call_;
  const std::vector<std::string>& names_;
};

StatusOr<at::ScalarType> Args::Dtype(size_t i, at::ScalarType fallback) const {
  if (!Has(i)) return fallback;
  GLASSBOX_ASSIGN_OR_RETURN(std::string name, String(i));
  std::optional<at::ScalarType> type = ScalarTypeFromName(name);
  if (!type) {
    return InvalidArgument("unknown dtype '" + name + "'; use float32, float16, bfloat16, "
                           "float64, int64, int32, bool or uint8");
  }
  return *type;
}

// ---- checked arithmetic on user-given numbers ----

std::string ShapeText(const std::vector<int64_t>& shape) {
  std::string text = "[";
  for (size_t i = 0; i < shape.size(); ++i) text += (i ? ", " : "") + std::to_string(shape[i]);
  return text + "]";
}

// A shape for a new tensor: every size >= 0 (or -1 where `infer` allows one to be inferred)
// and the element count within int64.
Status CheckShape(const std::vector<int64_t>& shape, bool infer) {
  int64_t count = 1;
  for (int64_t d : shape) {
    if (d < (infer ? -1 : 0)) {
      return InvalidArgument("shape " + ShapeText(shape) + " has the negative size " + std::to_string(d));
    }
    if (d >= 0 && __builtin_mul_overflow(count, d, &count)) {
      return InvalidArgument("shape " + ShapeText(shape) + " has more than 2^63 elements");
    }
  }
  return Status::Ok();
}

// Slice bounds and steps beyond +-2^62 mean the same as +-2^62 for any tensor (no size comes
// near), and keep LibTorch's `(length + step - 1) / step` from overflowing.
int64_t ClampBound(int64_t v) {
  constexpr int64_t kFar = int64_t{1} << 62;
  return std::max(-kFar, std::min(kFar, v));
}

constexpr int64_t kMaxArange = int64_t{1} << 26;

// arange's length, computed in 128 bits so that no difference or quotient can overflow.
StatusOr<int64_t> ArangeLength(int64_t start, int64_t end, int64_t step) {
  const std::string call = "arange(" + std::to_string(start) + ", " + std::to_string(end) + ", " +
                           std::to_string(step) + ")";
  if (step == 0) return InvalidArgument(call + ": step must not be 0");
  const __int128 span = static_cast<__int128>(end) - start;
  __int128 length = 0;
  if (span != 0 && (span > 0) == (step > 0)) {
    const __int128 a = span > 0 ? span : -span;
    const __int128 b = step > 0 ? static_cast<__int128>(step) : -static_cast<__int128>(step);
    length = (a + b - 1) / b;
  }
  if (length > kMaxArange) {
    return InvalidArgument(call + " would give " +
                           std::to_string(static_cast<unsigned long long>(length)) +
                           " values; the limit is " + std::to_string(kMaxArange));
  }
  int64_t difference;  // LibTorch computes end - start in int64
  if (__builtin_sub_overflow(end, start, &difference)) {
    return InvalidArgument(call + ": end - start overflows int64");
  }
  return static_cast<int64_t>(length);
}

// ---- indexing ----

StatusOr<at::indexing::TensorIndex> ToIndex(const RV& v) {
  using at::indexing::TensorIndex;
  switch (v.kind) {
    case Kind::kInt: return TensorIndex(v.int_value);
    case Kind::kBool: return TensorIndex(v.bool_value);
    case Kind::kNone: return TensorIndex(at::indexing::None);
    case Kind::kEllipsis: return TensorIndex(at::indexing::Ellipsis);
    case Kind::kSlice: {
      const protocol::Slice& s = v.slice;
      if (s.step && *s.step <= 0) {
        return InvalidArgument("slice step must be positive, got " + std::to_string(*s.step));
      }
      return TensorIndex(at::indexing::Slice(
          s.start ? c10::optional<int64_t>(ClampBound(*s.start)) : c10::nullopt,
          s.stop ? c10::optional<int64_t>(ClampBound(*s.stop)) : c10::nullopt,
          s.step ? c10::optional<int64_t>(ClampBound(*s.step)) : c10::nullopt));
    }
    case Kind::kTensor: return TensorIndex(v.tensor);
    default: return InvalidArgument("cannot index with " + v.Describe());
  }
}

StatusOr<std::vector<at::indexing::TensorIndex>> ToIndices(const RV& index) {
  std::vector<at::indexing::TensorIndex> out;
  if (index.kind != Kind::kList) {
    GLASSBOX_ASSIGN_OR_RETURN(at::indexing::TensorIndex one, ToIndex(index));
    out.push_back(one);
    return out;
  }
  for (const RV& e : index.list) {
    GLASSBOX_ASSIGN_OR_RETURN(at::indexing::TensorIndex i, ToIndex(e));
    out.push_back(i);
  }
  return out;
}

StatusOr<RV> GetItem(const OpCall& call) {
  static const std::vector<std::string> names = {"x", "index"};
  Args a(call, names);
  const RV& x = a.Get(0);
  const RV& index = a.Get(1);
  if (x.kind == Kind::kList) {  // e.g. topk(...)[1]
    if (index.kind != Kind::kInt) return InvalidArgument("a list is indexed by an int");
    const int64_t n = static_cast<int64_t>(x.list.size());
    const int64_t i = index.int_value < 0 ? index.int_value + n : index.int_value;
    if (i < 0 || i >= n) return InvalidArgument("list index " + std::to_string(index.int_value) + " out of range for length " + std::to_string(n));
    return x.list[i];
  }
  GLASSBOX_ASSIGN_OR_RETURN(at::Tensor t, a.Tensor(0));
  GLASSBOX_ASSIGN_OR_RETURN(auto indices, ToIndices(index));
  return RV::FromTensor(t.index(indices));
}

StatusOr<RV> SetItem(const OpCall& call) {
  static const std::vector<std::string> names = {"x", "index", "value"};
  Args a(call, names);
  GLASSBOX_ASSIGN_OR_RETURN(at::Tensor t, a.Tensor(0));
  GLASSBOX_ASSIGN_OR_RETURN(auto indices, ToIndices(a.Get(1)));
  GLASSBOX_ASSIGN_OR_RETURN(at::Tensor v, a.Tensor(2));
  at::Tensor out = t.clone();  // values are immutable: reads keep what they read
  out.index_put_(indices, v.to(out.scalar_type()));
  return RV::FromTensor(out);
}

// ---- op table construction helpers ----

using TensorFn1 = at::Tensor (*)(const at::Tensor&);

OpSpec Unary(const std::string& name, TensorFn1 fn, const std::string& doc) {
  return {name, OpClass::kPure, 1, 1, {}, name + "(x)", doc, [fn](const OpCall& call) -> StatusOr<RV> {
    static const std::vector<std::string> names = {"x"};
    GLASSBOX_ASSIGN_OR_RETURN(at::Tensor x, Args(call, names).Tensor(0));
    return RV::FromTensor(fn(x));
  }};
}

template <typename Fn>
OpSpec Binary(const std::string& name, Fn fn, const std::string& doc) {
  return {name, OpClass::kPure, 2, 2, {}, name + "(a, b)", doc, [fn](const OpCall& call) -> StatusOr<RV> {
    static const std::vector<std::string> names = {"a", "b"};
    Args a(call, names);
    GLASSBOX_ASSIGN_OR_RETURN(at::Tensor x, a.Tensor(0));
    GLASSBOX_ASSIGN_OR_RETURN(at::Tensor y, a.Tensor(1));
    return RV::FromTensor(fn(x, y));
  }};
}

// Reductions over an optional dim with keepdim.
template <typename Fn>
OpSpec Reduction(const std::string& name, Fn fn, const std::string& doc) {
  return {name, OpClass::kPure, 1, 3, {"dim", "keepdim"}, name + "(x, dim=None, keepdim=False)", doc,
          [fn](const OpCall& call) -> StatusOr<RV> {
            static const std::vector<std::string> names = {"x", "dim", "keepdim"};
            Args a(call, names);
            GLASSBOX_ASSIGN_OR_RETURN(at::Tensor x, a.Tensor(0));
            GLASSBOX_ASSIGN_OR_RETURN(bool keepdim, a.Bool(2, false));
            std::optional<int64_t> dim;
            if (a.Has(1)) {
              GLASSBOX_ASSIGN_OR_RETURN(int64_t d, a.Int(1));
              dim = d;
            }
            return RV::FromTensor(fn(x, dim, keepdim));
          }};
}

StatusOr<RV> Creation(const OpCall& call, const std::string& kind) {
  static const std::vector<std::string> names = {"shape", "value", "dtype"};
  Args a(call, names);
  GLASSBOX_ASSIGN_OR_RETURN(std::vector<int64_t> shape, a.Ints(0));
  GLASSBOX_RETURN_IF_ERROR(CheckShape(shape, /*infer=*/false));
  GLASSBOX_ASSIGN_OR_RETURN(at::ScalarType dtype, a.Dtype(2, at::kFloat));
  auto options = at::TensorOptions().dtype(dtype).device(call.device);
  if (kind == "zeros") return RV::FromTensor(at::zeros(shape, options));
  if (kind == "ones") return RV::FromTensor(at::ones(shape, options));
  GLASSBOX_ASSIGN_OR_RETURN(double value, a.Float(1));
  return RV::FromTensor(at::full(shape, value, options));
}

std::vector<OpSpec> BuildOps() {
  std::vector<OpSpec> ops;
  auto interp = [&](const std::string& name, OpClass c, int min, int max,
                    std::vector<std::string> kwargs, const std::string& sig, const std::string& doc) {
    ops.push_back({name, c, min, max, std::move(kwargs), sig, doc, nullptr});
  };
  interp("read", OpClass::kRead, 0, 0, {"point", "invoke", "step"},
         "read(point=, invoke=None, step=0)",
         "the value at a hook point (invoke: that prompt's rows without padding; None: the whole padded batch); step: generation step, a [start, stop) list, or \"all\"");
  interp("write", OpClass::kWrite, 1, 1, {"point", "invoke", "step", "index"},
         "write(value, point=, invoke=None, step=0, index=None)",
         "replaces the value at a hook point (or x[index] = value when index is given)");
  interp("skip", OpClass::kSkip, 1, 1, {"module", "step"}, "skip(value, module=, step=0)",
         "the module (a layer, its attention or its MLP: model.layers.N or its .self_attn / .mlp, transformer.h.N or its .attn / .mlp, ...; the catalogue marks them skippable) does not run; value is its output for the whole batch");
  interp("backward", OpClass::kBackward, 1, 1, {}, "backward(loss)",
         "backpropagates from a scalar; grad nodes then hold gradients");
  interp("grad", OpClass::kGrad, 1, 1, {"point", "invoke", "step"},
         "grad(backward_node, point=, invoke=None, step=0)",
         "the gradient of the loss with respect to the value at a hook point (after that backward)");
  interp("write_grad", OpClass::kWriteGrad, 2, 2, {"point", "invoke", "step", "index"},
         "write_grad(backward_node, value, point=, invoke=None, step=0, index=None)",
         "while that backward runs, replaces the gradient flowing back through the value at a hook point (or grad[index] = value), so gradients at earlier points see the replacement; value must come from nodes before the backward node");
  interp("cache", OpClass::kCache, 0, 0, {"filter", "invoke", "step"},
         "cache(filter=\"\", invoke=None, step=0)",
         "saves the value at every hook point whose name or alias contains filter, each under its point's name");
  interp("save", OpClass::kSave, 1, 1, {"name"}, "save(x, name=None)",
         "marks a value to be returned; nothing else comes back");
  ops.push_back({"module", OpClass::kModule, 1, 1, {"name"}, "module(x, name=)",
                 "runs a model module on any tensor, e.g. name=\"lm_head\" (logit lens)",
                 [](const OpCall& call) -> StatusOr<RV> {
                   static const std::vector<std::string> names = {"x", "name"};
                   Args a(call, names);
                   GLASSBOX_ASSIGN_OR_RETURN(at::Tensor x, a.Tensor(0));
                   GLASSBOX_ASSIGN_OR_RETURN(std::string name, a.String(1));
                   GLASSBOX_ASSIGN_OR_RETURN(at::Tensor y, call.meta ? ModuleOnMeta(call.model->catalogue(), name, x)
                                                                     : call.model->ApplyModule(name, x));
                   return RV::FromTensor(y);
                 }});

  ops.push_back({"weight", OpClass::kPure, 0, 0, {"name"}, "weight(name=)",
                 "a weight of the model by name: a Hugging Face parameter name (\"lm_head.weight\", \"model.layers.3.self_attn.o_proj.bias\") or a TransformerLens one in its shapes (\"W_U\", \"blocks.3.attn.W_Q\"); the catalogue's weights list them. As the forward uses it: dequantized, in transformers' layout, in the run dtype; read-only",
                 [](const OpCall& call) -> StatusOr<RV> {
                   static const std::vector<std::string> names = {"name"};
                   Args a(call, names);
                   GLASSBOX_ASSIGN_OR_RETURN(std::string name, a.String(0));
                   if (call.meta) {
                     GLASSBOX_ASSIGN_OR_RETURN(std::vector<int64_t> shape, call.model->WeightShape(name));
                     std::string dtype = call.model->dtype();  // "Float", "BFloat16", "Half"
                     std::transform(dtype.begin(), dtype.end(), dtype.begin(), [](unsigned char ch) { return std::tolower(ch); });
                     auto options = at::TensorOptions().dtype(ScalarTypeFromName(dtype).value_or(at::kFloat)).device(at::kMeta);
                     return RV::FromTensor(at::empty(shape, options));
                   }
                   GLASSBOX_ASSIGN_OR_RETURN(at::Tensor w, call.model->Weight(name));
                   return RV::FromTensor(w);
                 }});

  // Arithmetic and comparisons (broadcasting).
  ops.push_back(Binary("add", [](const at::Tensor& a, const at::Tensor& b) { return a + b; }, "a + b"));
  ops.push_back(Binary("sub", [](const at::Tensor& a, const at::Tensor& b) { return a - b; }, "a - b"));
  ops.push_back(Binary("mul", [](const at::Tensor& a, const at::Tensor& b) { return a * b; }, "a * b"));
  ops.push_back(Binary("div", [](const at::Tensor& a, const at::Tensor& b) { return a / b; }, "a / b (true division)"));
  ops.push_back(Binary("pow", [](const at::Tensor& a, const at::Tensor& b) { return a.pow(b); }, "a ** b"));
  ops.push_back(Binary("matmul", [](const at::Tensor& a, const at::Tensor& b) { return at::matmul(a, b); }, "a @ b"));
  ops.push_back(Binary("eq", [](const at::Tensor& a, const at::Tensor& b) { return a.eq(b); }, "a == b"));
  ops.push_back(Binary("ne", [](const at::Tensor& a, const at::Tensor& b) { return a.ne(b); }, "a != b"));
  ops.push_back(Binary("lt", [](const at::Tensor& a, const at::Tensor& b) { return a.lt(b); }, "a < b"));
  ops.push_back(Binary("le", [](const at::Tensor& a, const at::Tensor& b) { return a.le(b); }, "a <= b"));
  ops.push_back(Binary("gt", [](const at::Tensor& a, const at::Tensor& b) { return a.gt(b); }, "a > b"));
  ops.push_back(Binary("ge", [](const at::Tensor& a, const at::Tensor& b) { return a.ge(b); }, "a >= b"));
  ops.push_back(Binary("logical_and", [](const at::Tensor& a, const at::Tensor& b) { return a.logical_and(b); }, "a & b on bools"));
  ops.push_back(Binary("logical_or", [](const at::Tensor& a, const at::Tensor& b) { return a.logical_or(b); }, "a | b on bools"));
  ops.push_back(Unary("neg", [](const at::Tensor& x) { return -x; }, "-x"));
  ops.push_back(Unary("abs", [](const at::Tensor& x) { return at::abs(x); }, "|x|"));
  ops.push_back(Unary("exp", [](const at::Tensor& x) { return at::exp(x); }, "e ** x"));
  ops.push_back(Unary("log", [](const at::Tensor& x) { return at::log(x); }, "natural logarithm"));
  ops.push_back(Unary("sqrt", [](const at::Tensor& x) { return at::sqrt(x); }, "square root"));
  ops.push_back(Unary("logical_not", [](const at::Tensor& x) { return x.logical_not(); }, "~x on bools"));
  ops.push_back(Unary("relu", [](const at::Tensor& x) { return at::relu(x); }, "max(x, 0)"));
  ops.push_back(Unary("gelu", [](const at::Tensor& x) { return at::gelu(x); }, "GELU (exact)"));
  ops.push_back(Unary("silu", [](const at::Tensor& x) { return at::silu(x); }, "x * sigmoid(x)"));
  ops.push_back(Unary("tanh", [](const at::Tensor& x) { return at::tanh(x); }, "tanh"));
  ops.push_back(Unary("sigmoid", [](const at::Tensor& x) { return at::sigmoid(x); }, "logistic sigmoid"));
  ops.push_back(Unary("clone", [](const at::Tensor& x) { return x.clone(); }, "a copy"));
  ops.push_back(Unary("detach", [](const at::Tensor& x) { return x.detach(); }, "the same values without gradient history"));

  // Indexing.
  ops.push_back({"getitem", OpClass::kPure, 2, 2, {}, "getitem(x, index)",
                 "x[index]: ints, negatives, slices with steps, None, Ellipsis, index tensors, or a tuple of them; lists by int", GetItem});
  ops.push_back({"setitem", OpClass::kPure, 3, 3, {}, "setitem(x, index, value)",
                 "a copy of x with x[index] = value (x itself is never modified)", SetItem});

  // Shapes.
  auto shape_op = [&](const std::string& name, const std::string& sig, const std::string& doc,
                      std::function<StatusOr<RV>(const Args&)> fn, int min, int max,
                      std::vector<std::string> names) {
    ops.push_back({name, OpClass::kPure, min, max, std::vector<std::string>(names.begin() + 1, names.end()), sig, doc,
                   [fn, names](const OpCall& call) { return fn(Args(call, names)); }});
  };
  auto reshape = [](const Args& a) -> StatusOr<RV> {
    GLASSBOX_ASSIGN_OR_RETURN(at::Tensor x, a.Tensor(0));
    GLASSBOX_ASSIGN_OR_RETURN(std::vector<int64_t> shape, a.Ints(1));
    GLASSBOX_RETURN_IF_ERROR(CheckShape(shape, /*infer=*/true));
    return RV::FromTensor(x.reshape(shape));
  };
  shape_op("reshape", "reshape(x, shape)", "x with a new shape (one -1 allowed)", reshape, 2, 2, {"x", "shape"});
  shape_op("view", "view(x, shape)", "same as reshape (values are never shared with the model)", reshape, 2, 2, {"x", "shape"});
  shape_op("transpose", "transpose(x, dim0, dim1)", "swaps two dims", [](const Args& a) -> StatusOr<RV> {
    GLASSBOX_ASSIGN_OR_RETURN(at::Tensor x, a.Tensor(0));
    GLASSBOX_ASSIGN_OR_RETURN(int64_t d0, a.Int(1));
    GLASSBOX_ASSIGN_OR_RETURN(int64_t d1, a.Int(2));
    return RV::FromTensor(x.transpose(d0, d1));
  }, 3, 3, {"x", "dim0", "dim1"});
  shape_op("permute", "permute(x, dims)", "reorders dims", [](const Args& a) -> StatusOr<RV> {
    GLASSBOX_ASSIGN_OR_RETURN(at::Tensor x, a.Tensor(0));
    GLASSBOX_ASSIGN_OR_RETURN(std::vector<int64_t> dims, a.Ints(1));
    return RV::FromTensor(x.permute(dims));
  }, 2, 2, {"x", "dims"});
  shape_op("squeeze", "squeeze(x, dim=None)", "drops size-1 dims (or one)", [](const Args& a) -> StatusOr<RV> {
    GLASSBOX_ASSIGN_OR_RETURN(at::Tensor x, a.Tensor(0));
    if (!a.Has(1)) return RV::FromTensor(x.squeeze());
    GLASSBOX_ASSIGN_OR_RETURN(int64_t d, a.Int(1));
    return RV::FromTensor(x.squeeze(d));
  }, 1, 2, {"x", "dim"});
  shape_op("unsqueeze", "unsqueeze(x, dim)", "inserts a size-1 dim", [](const Args& a) -> StatusOr<RV> {
    GLASSBOX_ASSIGN_OR_RETURN(at::Tensor x, a.Tensor(0));
    GLASSBOX_ASSIGN_OR_RETURN(int64_t d, a.Int(1));
    return RV::FromTensor(x.unsqueeze(d));
  }, 2, 2, {"x", "dim"});
  shape_op("flatten", "flatten(x, start_dim=0, end_dim=-1)", "merges a range of dims", [](const Args& a) -> StatusOr<RV> {
    GLASSBOX_ASSIGN_OR_RETURN(at::Tensor x, a.Tensor(0));
    GLASSBOX_ASSIGN_OR_RETURN(int64_t s, a.Int(1, 0));
    GLASSBOX_ASSIGN_OR_RETURN(int64_t e, a.Int(2, -1));
    return RV::FromTensor(x.flatten(s, e));
  }, 1, 3, {"x", "start_dim", "end_dim"});
  shape_op("cat", "cat(tensors, dim=0)", "concatenates a list of tensors", [](const Args& a) -> StatusOr<RV> {
    GLASSBOX_ASSIGN_OR_RETURN(std::vector<at::Tensor> xs, a.Tensors(0));
    GLASSBOX_ASSIGN_OR_RETURN(int64_t d, a.Int(1, 0));
    return RV::FromTensor(at::cat(xs, d));
  }, 1, 2, {"tensors", "dim"});
  shape_op("stack", "stack(tensors, dim=0)", "stacks a list of tensors along a new dim", [](const Args& a) -> StatusOr<RV> {
    GLASSBOX_ASSIGN_OR_RETURN(std::vector<at::Tensor> xs, a.Tensors(0));
    GLASSBOX_ASSIGN_OR_RETURN(int64_t d, a.Int(1, 0));
    return RV::FromTensor(at::stack(xs, d));
  }, 1, 2, {"tensors", "dim"});
  shape_op("split", "split(x, size, dim=0)", "a list of chunks of `size` along dim", [](const Args& a) -> StatusOr<RV> {
    GLASSBOX_ASSIGN_OR_RETURN(at::Tensor x, a.Tensor(0));
    GLASSBOX_ASSIGN_OR_RETURN(int64_t size, a.Int(1));
    GLASSBOX_ASSIGN_OR_RETURN(int64_t d, a.Int(2, 0));
    if (size <= 0) return InvalidArgument("split size must be positive, got " + std::to_string(size));
    std::vector<RV> parts;
    for (const at::Tensor& t : x.split(ClampBound(size), d)) parts.push_back(RV::FromTensor(t));
    return RV::List(parts);
  }, 2, 3, {"x", "size", "dim"});
  shape_op("size", "size(x, dim=None)", "the shape as a list of ints, or one dim's size", [](const Args& a) -> StatusOr<RV> {
    GLASSBOX_ASSIGN_OR_RETURN(at::Tensor x, a.Tensor(0));
    if (a.Has(1)) {
      GLASSBOX_ASSIGN_OR_RETURN(int64_t d, a.Int(1));
      return RV::Int(x.size(d));
    }
    std::vector<RV> dims;
    for (int64_t s : x.sizes()) dims.push_back(RV::Int(s));
    return RV::List(dims);
  }, 1, 2, {"x", "dim"});

  // Reductions.
  ops.push_back(Reduction("sum", [](const at::Tensor& x, std::optional<int64_t> d, bool k) {
    return d ? x.sum(*d, k) : x.sum(); }, "sum"));
  ops.push_back(Reduction("mean", [](const at::Tensor& x, std::optional<int64_t> d, bool k) {
    return d ? x.mean(*d, k) : x.mean(); }, "mean"));
  ops.push_back(Reduction("max", [](const at::Tensor& x, std::optional<int64_t> d, bool k) {
    return d ? std::get<0>(x.max(*d, k)) : x.max(); }, "maximum values (use argmax for indices)"));
  ops.push_back(Reduction("min", [](const at::Tensor& x, std::optional<int64_t> d, bool k) {
    return d ? std::get<0>(x.min(*d, k)) : x.min(); }, "minimum values (use argmin for indices)"));
  ops.push_back(Reduction("argmax", [](const at::Tensor& x, std::optional<int64_t> d, bool k) {
    return at::argmax(x, d ? c10::optional<int64_t>(*d) : c10::nullopt, k); }, "index of the maximum"));
  ops.push_back(Reduction("argmin", [](const at::Tensor& x, std::optional<int64_t> d, bool k) {
    return at::argmin(x, d ? c10::optional<int64_t>(*d) : c10::nullopt, k); }, "index of the minimum"));
  ops.push_back({"topk", OpClass::kPure, 2, 3, {"dim"}, "topk(x, k, dim=-1)",
                 "[values, indices] of the k largest along dim", [](const OpCall& call) -> StatusOr<RV> {
    static const std::vector<std::string> names = {"x", "k", "dim"};
    Args a(call, names);
    GLASSBOX_ASSIGN_OR_RETURN(at::Tensor x, a.Tensor(0));
    GLASSBOX_ASSIGN_OR_RETURN(int64_t k, a.Int(1));
    GLASSBOX_ASSIGN_OR_RETURN(int64_t d, a.Int(2, -1));
    auto [values, indices] = at::topk(x, k, d);
    return RV::List({RV::FromTensor(values), RV::FromTensor(indices)});
  }});
  ops.push_back({"norm", OpClass::kPure, 1, 4, {"p", "dim", "keepdim"}, "norm(x, p=2, dim=None, keepdim=False)",
                 "p-norm over all elements or one dim", [](const OpCall& call) -> StatusOr<RV> {
    static const std::vector<std::string> names = {"x", "p", "dim", "keepdim"};
    Args a(call, names);
    GLASSBOX_ASSIGN_OR_RETURN(at::Tensor x, a.Tensor(0));
    GLASSBOX_ASSIGN_OR_RETURN(double p, a.Float(1, 2.0));
    GLASSBOX_ASSIGN_OR_RETURN(bool keepdim, a.Bool(3, false));
    if (!a.Has(2)) return RV::FromTensor(at::norm(x, p));
    GLASSBOX_ASSIGN_OR_RETURN(int64_t d, a.Int(2));
    return RV::FromTensor(at::norm(x, p, {d}, keepdim));
  }});
  auto softmax_like = [&](const std::string& name, bool log) {
    ops.push_back({name, OpClass::kPure, 2, 2, {}, name + "(x, dim)", log ? "log of softmax" : "softmax along dim",
                   [log](const OpCall& call) -> StatusOr<RV> {
      static const std::vector<std::string> names = {"x", "dim"};
      Args a(call, names);
      GLASSBOX_ASSIGN_OR_RETURN(at::Tensor x, a.Tensor(0));
      GLASSBOX_ASSIGN_OR_RETURN(int64_t d, a.Int(1));
      return RV::FromTensor(log ? at::log_softmax(x, d) : at::softmax(x, d));
    }});
  };
  softmax_like("softmax", false);
  softmax_like("log_softmax", true);

  ops.push_back({"einsum", OpClass::kPure, 2, -1, {}, "einsum(equation, *tensors)",
                 "Einstein summation", [](const OpCall& call) -> StatusOr<RV> {
    if (call.args.empty() || call.args[0].kind != Kind::kString) return InvalidArgument("einsum needs an equation string first");
    std::vector<at::Tensor> xs;
    for (size_t i = 1; i < call.args.size(); ++i) {
      if (!call.args[i].is_tensor()) return InvalidArgument("einsum operand " + std::to_string(i) + " is not a tensor");
      xs.push_back(call.args[i].tensor);
    }
    return RV::FromTensor(at::einsum(call.args[0].string_value, xs));
  }});
  ops.push_back({"where", OpClass::kPure, 3, 3, {}, "where(condition, a, b)", "a where condition else b",
                 [](const OpCall& call) -> StatusOr<RV> {
    static const std::vector<std::string> names = {"condition", "a", "b"};
    Args a(call, names);
    GLASSBOX_ASSIGN_OR_RETURN(at::Tensor c, a.Tensor(0));
    GLASSBOX_ASSIGN_OR_RETURN(at::Tensor x, a.Tensor(1));
    GLASSBOX_ASSIGN_OR_RETURN(at::Tensor y, a.Tensor(2));
    return RV::FromTensor(at::where(c.to(at::kBool), x, y));
  }});
  ops.push_back({"clamp", OpClass::kPure, 1, 3, {"min", "max"}, "clamp(x, min=None, max=None)", "limits values to [min, max]",
                 [](const OpCall& call) -> StatusOr<RV> {
    static const std::vector<std::string> names = {"x", "min", "max"};
    Args a(call, names);
    GLASSBOX_ASSIGN_OR_RETURN(at::Tensor x, a.Tensor(0));
    c10::optional<at::Scalar> lo, hi;
    if (a.Has(1)) { GLASSBOX_ASSIGN_OR_RETURN(double v, a.Float(1)); lo = v; }
    if (a.Has(2)) { GLASSBOX_ASSIGN_OR_RETURN(double v, a.Float(2)); hi = v; }
    return RV::FromTensor(at::clamp(x, lo, hi));
  }});
  ops.push_back({"to", OpClass::kPure, 2, 2, {}, "to(x, dtype)", "casts to a dtype by name",
                 [](const OpCall& call) -> StatusOr<RV> {
    static const std::vector<std::string> names = {"x", "dtype"};
    Args a(call, names);
    GLASSBOX_ASSIGN_OR_RETURN(at::Tensor x, a.Tensor(0));
    GLASSBOX_ASSIGN_OR_RETURN(at::ScalarType t, a.Dtype(1, at::kFloat));
    return RV::FromTensor(x.to(t));
  }});
  ops.push_back({"item", OpClass::kPure, 1, 1, {}, "item(x)", "the number in a one-element tensor",
                 [](const OpCall& call) -> StatusOr<RV> {
    static const std::vector<std::string> names = {"x"};
    GLASSBOX_ASSIGN_OR_RETURN(at::Tensor x, Args(call, names).Tensor(0));
    if (x.numel() != 1) return InvalidArgument("item() needs one element, got " + std::to_string(x.numel()));
    if (x.is_meta()) return DataDependent("item()");
    if (x.is_floating_point()) return RV::Float(x.item<double>());
    if (x.scalar_type() == at::kBool) return RV::Bool(x.item<bool>());
    return RV::Int(x.item<int64_t>());
  }});

  // Creation.
  for (const char* kind : {"zeros", "ones"}) {
    const std::string k = kind;
    ops.push_back({k, OpClass::kPure, 1, 2, {"dtype"}, k + "(shape, dtype=\"float32\")", "a new tensor of " + k,
                   [k](const OpCall& call) {
                     std::map<std::string, RV> kw = call.kwargs;
                     std::vector<RV> args = {call.args[0], RV()};
                     if (call.args.size() > 1) args.push_back(call.args[1]);
                     return Creation({args, kw, call.model, call.meta, call.device}, k);
                   }});
  }
  ops.push_back({"full", OpClass::kPure, 2, 3, {"dtype"}, "full(shape, value, dtype=\"float32\")", "a new tensor filled with value",
                 [](const OpCall& call) { return Creation(call, "full"); }});
  for (const char* kind : {"zeros_like", "ones_like"}) {
    const std::string k = kind;
    ops.push_back({k, OpClass::kPure, 1, 1, {}, k + "(x)", "a tensor like x of " + k.substr(0, k.find('_')),
                   [k](const OpCall& call) -> StatusOr<RV> {
                     static const std::vector<std::string> names = {"x"};
                     GLASSBOX_ASSIGN_OR_RETURN(at::Tensor x, Args(call, names).Tensor(0));
                     return RV::FromTensor(k == "zeros_like" ? at::zeros_like(x) : at::ones_like(x));
                   }});
  }
  ops.push_back({"full_like", OpClass::kPure, 2, 2, {}, "full_like(x, value)", "a tensor like x filled with value",
                 [](const OpCall& call) -> StatusOr<RV> {
    static const std::vector<std::string> names = {"x", "value"};
    Args a(call, names);
    GLASSBOX_ASSIGN_OR_RETURN(at::Tensor x, a.Tensor(0));
    GLASSBOX_ASSIGN_OR_RETURN(double v, a.Float(1));
    return RV::FromTensor(at::full_like(x, v));
  }});
  ops.push_back({"arange", OpClass::kPure, 1, 3, {"dtype"}, "arange(start_or_end, end=None, step=1)", "integers in [start, end) by step",
                 [](const OpCall& call) -> StatusOr<RV> {
    static const std::vector<std::string> names = {"start", "end", "step"};
    Args a(call, names);
    GLASSBOX_ASSIGN_OR_RETURN(int64_t first, a.Int(0));
    GLASSBOX_ASSIGN_OR_RETURN(int64_t step, a.Int(2, 1));
    int64_t start = 0, end = first;
    if (a.Has(1)) { start = first; GLASSBOX_ASSIGN_OR_RETURN(end, a.Int(1)); }
    GLASSBOX_RETURN_IF_ERROR(ArangeLength(start, end, step).status());
    auto options = at::TensorOptions().dtype(at::kLong).device(call.device);
    return RV::FromTensor(at::arange(start, end, step, options));
  }});
  ops.push_back({"randn", OpClass::kPure, 2, 2, {}, "randn(shape, seed)", "standard normal samples, reproducible from seed",
                 [](const OpCall& call) -> StatusOr<RV> {
    static const std::vector<std::string> names = {"shape", "seed"};
    Args a(call, names);
    GLASSBOX_ASSIGN_OR_RETURN(std::vector<int64_t> shape, a.Ints(0));
    GLASSBOX_ASSIGN_OR_RETURN(int64_t seed, a.Int(1));
    GLASSBOX_RETURN_IF_ERROR(CheckShape(shape, /*infer=*/false));
    int64_t n = 1;
    for (int64_t d : shape) {
      if (d > 0 && n > (int64_t{1} << 28) / d) {
        return InvalidArgument("randn shape " + ShapeText(shape) + " has more than 2^28 elements");
      }
      n *= d;
    }
    if (call.meta) return RV::FromTensor(at::empty(shape, at::TensorOptions().dtype(at::kFloat).device(at::kMeta)));
    at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(static_cast<uint64_t>(seed));
    // Drawn on the CPU, so a seed gives the same values on every device; then moved once.
    at::Tensor drawn = at::randn(shape, gen, at::TensorOptions().dtype(at::kFloat));
    return RV::FromTensor(call.device.is_cpu() ? drawn : drawn.to(call.device));
  }});
  return ops;
}

double Elements(const RV& v) {
  if (v.is_tensor()) return static_cast<double>(v.tensor.numel());
  double total = 0;
  for (const RV& item : v.list) total += Elements(item);
  return total;
}

// einsum's contracted letters (on the left of "->", not on its right; without "->", those
// that appear more than once), each with its size: the product is the work per output value.
double EinsumContraction(const std::vector<RV>& args) {
  if (args.empty() || args[0].kind != Kind::kString) return 1;
  const std::string& eq = args[0].string_value;
  const size_t arrow = eq.find("->");
  const std::string lhs = eq.substr(0, arrow);
  std::map<char, int64_t> size;
  std::map<char, int> seen;
  size_t operand = 1;
  int64_t dim = 0;
  for (size_t i = 0; i < lhs.size(); ++i) {
    const char c = lhs[i];
    if (c == ',') { ++operand; dim = 0; continue; }
    if (c == '.' || c == ' ') { if (c == '.') dim = -1; continue; }  // dims after "..." unsized
    ++seen[c];
    if (dim >= 0 && operand < args.size() && args[operand].is_tensor() && dim < args[operand].tensor.dim()) {
      size[c] = std::max(size[c], args[operand].tensor.size(dim));
    }
    if (dim >= 0) ++dim;
  }
  double product = 1;
  for (const auto& [c, n] : seen) {
    const bool contracted = arrow == std::string::npos ? n > 1 : eq.find(c, arrow) == std::string::npos;
    if (contracted && size.count(c)) product *= static_cast<double>(size[c]);
  }
  return product;
}

}  // namespace

double EstimateFlops(const std::string& name, const std::vector<RuntimeValue>& args,
                     const RuntimeValue& out) {
  const double produced = Elements(out);
  if (name == "matmul" && !args.empty() && args[0].is_tensor() && args[0].tensor.dim() > 0) {
    return 2 * std::max(produced, 1.0) * static_cast<double>(args[0].tensor.size(-1));
  }
  if (name == "module" && !args.empty() && args[0].is_tensor() && args[0].tensor.dim() > 0) {
    return 2 * produced * static_cast<double>(args[0].tensor.size(-1));
  }
  if (name == "einsum") return 2 * std::max(produced, 1.0) * EinsumContraction(args);
  double total = produced;
  for (const RuntimeValue& a : args) total += Elements(a);
  return total;
}

Status DataDependent(const std::string& what) {
  return Unimplemented("data-dependent: " + what + " needs values, not just shapes");
}

bool IsDataDependent(const Status& status) {
  return status.code() == StatusCode::kUnimplemented && status.message().rfind("data-dependent: ", 0) == 0;
}

const std::vector<OpSpec>& AllOps() {
  static const std::vector<OpSpec>* ops = new std::vector<OpSpec>(BuildOps());
  return *ops;
}

std::string OpsMarkdown() {
  std::string out = "| op | signature | meaning |\n| --- | --- | --- |\n";
  for (const OpSpec& op : AllOps()) {
    std::string doc = op.doc;
    for (size_t i = 0; (i = doc.find('|', i)) != std::string::npos; i += 2) doc.replace(i, 1, "\\|");
    out += "| " + op.name + " | `" + op.signature + "` | " + doc + " |\n";
  }
  return out;
}

const OpSpec* FindOp(const std::string& name) {
  for (const OpSpec& op : AllOps()) {
    if (op.name == name) return &op;
  }
  return nullptr;
}

}  // namespace glassbox::intervention
