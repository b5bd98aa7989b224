// Model: loading onto a device, batching prompts with left padding, the generation loop and
// sampling. Every LibTorch or hook failure is caught here and returned as a Status.
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

std::string FirstLine(const std::string& text) { return text.substr(0, text.find('\n')); }

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

// Left-pads prompts into ids [batch, seq] and a mask; positions count only real tokens.
struct PaddedBatch {
  at::Tensor ids, mask, positions;
};

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

// Picks the next token from one row of logits (float32, CPU, contiguous).
int64_t SampleToken(const float* logits, int64_t vocab, const SamplingParams& s,
                    std::mt19937_64& rng) {
  if (s.temperature <= 0.0) return std::max_element(logits, logits + vocab) - logits;
  std::vector<int64_t> order(vocab);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return logits[a] > logits[b]; });
  const int64_t keep_k = s.top_k > 0 ? std::min<int64_t>(s.top_k, vocab) : vocab;
  std::vector<double> probs;
  const double max_logit = logits[order[0]];
  double total = 0;
  for (int64_t i = 0; i < keep_k; ++i) {
    probs.push_back(std::exp((logits[order[i]] - max_logit) / s.temperature));
    total += probs.back();
  }
  double cumulative = 0;
  size_t keep = probs.size();
  for (size_t i = 0; i < probs.size(); ++i) {
    cumulative += probs[i] / total;
    if (cumulative >= s.top_p) { keep = i + 1; break; }
  }
  std::discrete_distribution<size_t> pick(probs.begin(), probs.begin() + keep);
  return order[pick(rng)];
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
  return GenerateGroups(prompts, {{static_cast<int64_t>(prompts.size()), sampling}}, hooks);
}

StatusOr<GenerateResult> Model::GenerateGroups(const std::vector<std::vector<int64_t>>& prompts,
                                               const std::vector<RowGroup>& groups,
                                               const HookSet* hooks,
                                               std::vector<bool>* finished) const {
  const int64_t batch_size = static_cast<int64_t>(prompts.size());
  int64_t grouped = 0, max_new_tokens = 0;
  bool sampled = false, greedy = false;  // some rows sample; some pick the largest logit
  for (const RowGroup& g : groups) {
    if (g.sampling.max_new_tokens < 0) return InvalidArgument("max_new_tokens must be >= 0");
    if (g.rows <= 0) return InvalidArgument("a row group has no rows");
    grouped += g.rows;
    max_new_tokens = std::max<int64_t>(max_new_tokens, g.sampling.max_new_tokens);
    sampled |= g.sampling.temperature > 0.0;
    greedy |= g.sampling.temperature <= 0.0;
  }
  if (grouped != batch_size) {
    return InvalidArgument("the row groups cover " + std::to_string(grouped) + " rows, the prompts are " +
                           std::to_string(batch_size));
  }
  for (size_t g = 0, row = 0; g < groups.size(); row += groups[g].rows, ++g) {
    const std::vector<std::vector<int64_t>> rows(prompts.begin() + row, prompts.begin() + row + groups[g].rows);
    GLASSBOX_RETURN_IF_ERROR(ValidatePrompts(rows, config(), groups[g].sampling.max_new_tokens));
  }
  // Per row: its group's sampling, stop ids and generator (one generator per group, drawn in
  // row order, so a group samples exactly as it would alone).
  std::vector<const SamplingParams*> row_sampling;
  std::vector<std::vector<int64_t>> stop_ids(groups.size());
  std::vector<std::mt19937_64> rngs;
  std::vector<size_t> row_group;
  for (size_t g = 0; g < groups.size(); ++g) {
    stop_ids[g] = groups[g].sampling.stop_ids;
    if (stop_ids[g].empty() && config().eos_id >= 0) stop_ids[g].push_back(config().eos_id);
    rngs.emplace_back(groups[g].sampling.seed);
    for (int64_t r = 0; r < groups[g].rows; ++r) {
      row_sampling.push_back(&groups[g].sampling);
      row_group.push_back(g);
    }
  }
  GenerateResult result;
  result.new_tokens.resize(batch_size);
  result.stop_reasons.assign(batch_size, "max_new_tokens");
  std::vector<bool> own_done(batch_size, false);
  std::vector<bool>& done = finished != nullptr ? *finished : own_done;
  done.assign(batch_size, false);
  for (int64_t row = 0; row < batch_size; ++row) done[row] = row_sampling[row]->max_new_tokens == 0;
  auto all_done = [&done] { return std::all_of(done.begin(), done.end(), [](bool d) { return d; }); };
  if (all_done()) return result;
  try {
    const at::Device device = transformer_->device();
    PaddedBatch batch = PadLeft(prompts, std::max<int64_t>(config().eos_id, 0), device);
    KvCache cache = transformer_->NewCache(batch_size, batch.ids.size(1) + max_new_tokens);
    at::Tensor ids = batch.ids, mask = batch.mask, positions = batch.positions;
    for (int step = 0; step < max_new_tokens; ++step) {
      PassInputs in{ids, positions, mask, &cache, hooks, step, /*all_logits=*/false};
      at::Tensor logits = transformer_->Forward(in);
      cache.length += ids.size(1);
      // Greedy picks on the device and brings back one id per row; sampling brings the last
      // position's logits to the CPU, where each job's seeded generator lives.
      at::Tensor picked;
      std::vector<int64_t> next(batch_size);
      if (greedy) {
        picked = logits.argmax(-1).view({batch_size, 1});
        at::Tensor host = picked.to(at::kCPU);
        std::copy(host.data_ptr<int64_t>(), host.data_ptr<int64_t>() + batch_size, next.begin());
      }
      if (sampled) {
        at::Tensor host = logits.to(at::kCPU, at::kFloat).contiguous();
        for (int64_t row = 0; row < batch_size; ++row) {
          // Finished rows draw too, as they would alone in a batch of their own group.
          const SamplingParams& s = *row_sampling[row];
          if (s.temperature <= 0.0) continue;
          next[row] = SampleToken(host.data_ptr<float>() + row * config().vocab_size,
                                  config().vocab_size, s, rngs[row_group[row]]);
        }
        picked = at::tensor(next, at::kLong).view({batch_size, 1});
      }
      for (int64_t row = 0; row < batch_size; ++row) {
        if (done[row]) continue;
        result.new_tokens[row].push_back(next[row]);
        const std::vector<int64_t>& stops = stop_ids[row_group[row]];
        if (std::find(stops.begin(), stops.end(), next[row]) != stops.end()) {
          done[row] = true;
          result.stop_reasons[row] = "stop_token";
        } else if (static_cast<int64_t>(result.new_tokens[row].size()) >= row_sampling[row]->max_new_tokens) {
          done[row] = true;
        }
      }
      if (all_done()) break;
      // (A split model's logits are on the head's device; ids go in on the embedding's.)
      ids = picked.to(device);
      positions = positions.narrow(1, positions.size(1) - 1, 1) + 1;
      mask = at::cat({mask, at::ones({batch_size, 1}, mask.options())}, 1);
    }
    return result;
  } catch (const HookFailure& failure) {
    return failure.status;
  } catch (const c10::Error& e) {
    return Internal("generation failed: " + FirstLine(e.what()));
  }
}

}  // namespace glassbox
