// Model: loading onto a device, batching prompts with left padding, forward passes (the
// generation loop and sampling are in generation.cc). Every LibTorch or hook failure is caught here and returned as a Status.
#include <ATen/Context.h>
#include <ATen/detail/CUDAHooksInterface.h>
#include <ATen/Parallel.h>
#include <ATen/TensorOperators.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/cumsum.h>
#include <ATen/ops/full.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/tensor.h>
#include <c10/util/Exception.h>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include <algorithm>
#include <cmath>
#include <numeric>
#include <optional>
#include <random>

#include "engine/engine.h"
#include "engine/family.h"
#include "engine/generation.h"
#include "engine/weights.h"

namespace glassbox {

class ModelLoader {
 public:
  static StatusOr<std::unique_ptr<Model>> Load(const std::string& path, const EngineParams& params);
};

namespace {

StatusOr<at::Device> ParseDevice(const std::string& name) {
  try {
    if (name == "auto") return at::Device(at::hasCUDA() ? at::kCUDA : at::kCPU);
    at::Device device(name);
    if (device.is_cuda() && !at::hasCUDA()) {
      return InvalidArgument("device '" + name + "' requested but this LibTorch build or "
                             "machine has no CUDA; use --device cpu");
    }
    return device;
  } catch (const c10::Error&) {
    return InvalidArgument("unknown device '" + name + "'; expected cpu, cuda, cuda:N or auto");
  }
}

// A split: distinct CUDA devices, each named cuda:N, into `placement`.
Status ParseDeviceList(const std::string& list, Placement& placement) {
  if (!at::hasCUDA()) {
    return InvalidArgument("device list '" + list + "' splits the layers across CUDA devices, but "
                           "this LibTorch build or machine has no CUDA; use --device cpu");
  }
  size_t start = 0;
  while (start <= list.size()) {
    const size_t end = std::min(list.find(',', start), list.size());
    const std::string name = list.substr(start, end - start);
    start = end + 1;
    GLASSBOX_ASSIGN_OR_RETURN(at::Device device, ParseDevice(name));
    if (!device.is_cuda() || !device.has_index()) {
      return InvalidArgument("device list '" + list + "': '" + name + "' is not cuda:N (a split "
                             "names each GPU with its index)");
    }
    const int gpus = at::detail::getCUDAHooks().getNumGPUs();
    if (device.index() >= gpus) {
      return InvalidArgument("device list '" + list + "': " + name + " does not exist (" +
                             std::to_string(gpus) + " CUDA devices)");
    }
    if (std::find(placement.split.begin(), placement.split.end(), device) != placement.split.end()) {
      return InvalidArgument("device list '" + list + "' names " + name + " twice");
    }
    placement.split.push_back(device);
    placement.names.push_back(name);
  }
  placement.device = placement.split[0];
  return Status::Ok();
}

// The device (or devices) from --device, or the CPU placements of the test option.
Status ParseDevices(const EngineParams& params, Placement& placement) {
  if (params.testing_cpu_placements > 1) {
    GLASSBOX_ASSIGN_OR_RETURN(at::Device device, ParseDevice(params.device));
    if (!device.is_cpu()) {
      return InvalidArgument("testing_cpu_placements needs the CPU, not device '" + params.device + "'");
    }
    for (int i = 0; i < params.testing_cpu_placements; ++i) {
      placement.split.push_back(at::kCPU);
      placement.names.push_back("cpu[" + std::to_string(i) + "]");
    }
    placement.device = at::kCPU;
    placement.memory_budget = -1;  // the placements share the machine's memory
    return Status::Ok();
  }
  if (params.device.find(',') != std::string::npos) return ParseDeviceList(params.device, placement);
  GLASSBOX_ASSIGN_OR_RETURN(placement.device, ParseDevice(params.device));
  return Status::Ok();
}

StatusOr<at::ScalarType> ParseDtype(const std::string& name) {
  if (name == "float32") return at::kFloat;
  if (name == "bfloat16") return at::kBFloat16;
  if (name == "float16") return at::kHalf;
  return InvalidArgument("unknown dtype '" + name + "'; expected float32, bfloat16 or float16");
}

// Whether this LibTorch can multiply matrices of `dtype` on `device` (float16 on the CPU
// cannot in LibTorch 1.13, and can in 2.x): asked once, before any weights are loaded.
Status CheckDtypeSupported(at::Device device, at::ScalarType dtype, const std::string& name) {
  try {
    at::Tensor probe = at::ones({2, 2}, at::TensorOptions().device(device).dtype(dtype));
    (void)at::linear(probe, probe);
    return Status::Ok();
  } catch (const c10::Error& e) {
    return InvalidArgument("dtype " + name + " is not supported on " + device.str() +
                           " by this LibTorch (" + FirstLine(e.what()) +
                           "); use float32 or bfloat16");
  }
}

// The device of a callable module's weights: its layer's, the head's (its points come after
// the layers), or the embedding's.
at::Device ModuleDevice(const Transformer& t, const std::string& module) {
  const DevicePlan& plan = t.plan();
  if (!plan.split()) return t.device();
  for (const char* end : {".input", ".output"}) {
    std::optional<int> id = t.catalogue().Find(module + end);
    if (!id) continue;
    const HookPointInfo& point = t.catalogue().point(*id);
    if (point.layer >= 0) return plan.layer_device(point.layer);
    return *id < t.catalogue().AfterId(0) ? plan.device(0) : plan.device(plan.head());
  }
  return t.device();
}

}  // namespace

Status ValidatePrompts(const std::vector<std::vector<int64_t>>& prompts, const ModelConfig& c,
                       int64_t extra_positions) {
  if (prompts.empty()) return InvalidArgument("no prompts given");
  for (size_t row = 0; row < prompts.size(); ++row) {
    const auto& ids = prompts[row];
    if (ids.empty()) return InvalidArgument("prompt " + std::to_string(row) + " has no tokens");
    if (static_cast<int64_t>(ids.size()) + extra_positions > c.max_position_embeddings) {
      return InvalidArgument("prompt " + std::to_string(row) + " needs " +
                             std::to_string(ids.size() + extra_positions) +
                             " positions; the model's context is " +
                             std::to_string(c.max_position_embeddings));
    }
    for (size_t i = 0; i < ids.size(); ++i) {
      if (ids[i] < 0 || ids[i] >= c.vocab_size) {
        return InvalidArgument("prompt " + std::to_string(row) + " position " +
                               std::to_string(i) + ": token id " + std::to_string(ids[i]) +
                               " is outside the vocabulary [0, " + std::to_string(c.vocab_size) + ")");
      }
    }
  }
  return Status::Ok();
}

PaddedBatch PadLeft(const std::vector<std::vector<int64_t>>& prompts, int64_t pad_id,
                    at::Device device) {
  size_t seq = 0;
  for (const auto& p : prompts) seq = std::max(seq, p.size());
  std::vector<int64_t> ids(prompts.size() * seq, pad_id), mask(prompts.size() * seq, 0);
  for (size_t row = 0; row < prompts.size(); ++row) {
    const size_t offset = row * seq + (seq - prompts[row].size());
    std::copy(prompts[row].begin(), prompts[row].end(), ids.begin() + offset);
    std::fill(mask.begin() + offset, mask.begin() + (row + 1) * seq, 1);
  }
  const std::vector<int64_t> shape = {static_cast<int64_t>(prompts.size()), static_cast<int64_t>(seq)};
  PaddedBatch batch;
  batch.ids = at::tensor(ids, at::kLong).view(shape).to(device);
  batch.mask = at::tensor(mask, at::kLong).view(shape).to(device);
  batch.positions = (at::cumsum(batch.mask, 1) - 1).clamp_min(0);
  return batch;
}

Model::Model() = default;
Model::~Model() = default;

StatusOr<std::unique_ptr<Model>> ModelLoader::Load(const std::string& path, const EngineParams& params) {
  Placement placement;
  placement.memory_budget = params.memory_budget;
  GLASSBOX_RETURN_IF_ERROR(ParseDevices(params, placement));
  GLASSBOX_ASSIGN_OR_RETURN(placement.dtype, ParseDtype(params.dtype));
  for (const at::Device& device : placement.split.empty() ? std::vector<at::Device>{placement.device} : placement.split) {
    GLASSBOX_RETURN_IF_ERROR(CheckDtypeSupported(device, placement.dtype, params.dtype));
  }
  if (params.intra_op_threads > 0) at::set_num_threads(params.intra_op_threads);
#if defined(__GLIBC__)
  if (params.malloc_mmap_threshold > 0) {
    const size_t threshold = std::min<size_t>(params.malloc_mmap_threshold, size_t{1} << 28);
    mallopt(M_MMAP_THRESHOLD, static_cast<int>(threshold));
    // Setting the mmap threshold also pins glibc's trim threshold at 128 KiB, and then every
    // pass gives its freed activations back to the OS and faults them in again (1x128 tokens:
    // ~13,000 page faults per pass, ~10% of its time). Keep up to twice the threshold.
    mallopt(M_TRIM_THRESHOLD, static_cast<int>(2 * threshold));
  }
#endif
  GLASSBOX_ASSIGN_OR_RETURN(LoadedModel loaded,
                            LoadModelFiles(path, placement));
  std::unique_ptr<Model> model(new Model());
  model->transformer_ = std::move(loaded.transformer);
  model->tokenizer_ = std::move(loaded.tokenizer);
  model->chat_template_ = std::move(loaded.chat_template);
#if defined(__GLIBC__)
  malloc_trim(0);  // hand loading's temporaries back to the OS: a resident model stays lean
#endif
  return model;
}

StatusOr<std::unique_ptr<Model>> Model::Load(const std::string& path, const EngineParams& params) {
  try {
    return ModelLoader::Load(path, params);
  } catch (const c10::Error& e) {
    return Internal(path + ": LibTorch failed while loading: " + FirstLine(e.what()));
  }
}

const ModelConfig& Model::config() const { return transformer_->config(); }
const HookCatalogue& Model::catalogue() const { return transformer_->catalogue(); }
const Tokenizer* Model::tokenizer() const { return tokenizer_.get(); }
const ChatTemplate& Model::chat_template() const { return chat_template_; }
std::string Model::device() const { return transformer_->plan().DeviceNames(); }
std::string Model::placement() const { return transformer_->plan().ToString(); }
std::string Model::dtype() const { return DtypeName(transformer_->dtype()); }
at::Device Model::torch_device() const { return transformer_->device(); }

StatusOr<at::Tensor> Model::ApplyModule(const std::string& name, const at::Tensor& input) const {
  try {
    return transformer_->ApplyModule(name, input.to(ModuleDevice(*transformer_, name)));
  } catch (const c10::Error& e) {
    return InvalidArgument("module " + name + " cannot take a tensor of shape " +
                           c10::str(input.sizes()) + ": " + FirstLine(e.what()));
  }
}

std::vector<std::string> Model::ModuleNames() const { return transformer_->ModuleNames(); }
std::vector<std::string> Model::MatmulModules() const { return transformer_->MatmulModules(); }
int64_t Model::WeightBytes() const { return transformer_->weight_bytes(); }

std::vector<std::string> Model::WeightNames() const {
  std::vector<std::string> names;
  for (const auto& named : transformer_->named_weights()) names.push_back(named.first);
  for (const auto& named : transformer_->tl_weights()) names.push_back(named.first);
  return names;
}

namespace {

Status NoSuchWeight(const std::string& name, const std::vector<std::string>& names) {
  std::vector<std::pair<int, std::string>> scored;
  for (const std::string& n : names) scored.emplace_back(EditDistance(name, n), n);
  std::sort(scored.begin(), scored.end());
  std::string close;
  for (size_t i = 0; i < scored.size() && i < 3; ++i) close += (i ? ", " : "") + scored[i].second;
  return NotFound("the model has no weight '" + name + "'; did you mean: " + close + "?");
}

}  // namespace

StatusOr<std::vector<int64_t>> Model::WeightShape(const std::string& name) const {
  const at::Tensor held = transformer_->NamedWeight(name);
  if (held.defined()) return held.sizes().vec();
  for (const auto& named : transformer_->tl_weights()) {
    if (named.first == name) return named.second;
  }
  return NoSuchWeight(name, WeightNames());
}

WeightRole Model::WeightRoleOf(const std::string& name) const {
  for (const auto& named : transformer_->tl_weights()) {
    if (named.first == name) return WeightRole::kTransformerLens;
  }
  return transformer_->weight_role(name);
}

StatusOr<at::Tensor> Model::Weight(const std::string& name) const {
  const at::Tensor held = transformer_->NamedWeight(name);
  if (held.defined()) return held;
  GLASSBOX_RETURN_IF_ERROR(WeightShape(name).status());
  try {
    return transformer_->TlWeight(name);
  } catch (const c10::Error& e) {
    return Internal("weight '" + name + "': " + e.what_without_backtrace());
  }
}

StatusOr<ForwardResult> Model::Forward(const ForwardRequest& request, const HookSet* hooks) const {
  GLASSBOX_RETURN_IF_ERROR(ValidatePrompts(request.prompts, config(), 0));
  try {
    PaddedBatch batch = PadLeft(request.prompts, std::max<int64_t>(config().eos_id, 0), transformer_->device());
    PassInputs in{batch.ids, batch.positions, batch.mask, nullptr, hooks, 0, request.all_logits};
    ForwardResult result;
    at::Tensor logits = transformer_->Forward(in);
    if (request.return_logits) result.logits = logits.to(at::kCPU, at::kFloat);
    result.attention_mask = batch.mask.to(at::kCPU);
    return result;
  } catch (const HookFailure& failure) {
    return failure.status;
  } catch (const c10::Error& e) {
    return Internal("forward pass failed: " + FirstLine(e.what()));
  }
}

StatusOr<GenerateResult> Model::Generate(const std::vector<std::vector<int64_t>>& prompts,
                                         const SamplingParams& sampling, const HookSet* hooks) const {
  Generation generation(*this);
  GLASSBOX_ASSIGN_OR_RETURN(const int group, generation.Join(prompts, sampling));
  while (!generation.Idle()) GLASSBOX_RETURN_IF_ERROR(generation.Step(hooks));
  return generation.Take(group);
}

}  // namespace glassbox
