// Model files to a family's Transformer: GGUF (dequantized into one mapping) and Hugging
// Face safetensors directories (memory-mapped, not copied when the stored dtype is the run's),
// each behind a TensorSource that hands every tensor out once, on the run's device and in its
// dtype, and reports the ones no family consumed.
#include "engine/weights.h"

#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <nlohmann/json.hpp>

#include <fstream>
#include <functional>
#include <map>
#include <set>
#include <sstream>
#include <dlfcn.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engine/gguf.h"
#include "engine/safetensors.h"

namespace glassbox {
namespace {

std::string ShapeText(const std::vector<int64_t>& shape) {
  std::ostringstream out;
  out << "[";
  for (size_t i = 0; i < shape.size(); ++i) out << (i ? ", " : "") << shape[i];
  return out.str() + "]";
}

// A CPU tensor viewing the mapped bytes of a plain float tensor (F32, F16, BF16): no copy;
// the mapping stays alive as long as the tensor. Misaligned data (possible in hand-made
// safetensors files) is copied instead.
StatusOr<at::Tensor> ViewStoredTensor(const StoredTensor& stored) {
  at::ScalarType dtype = stored.type == StoredType::kF32    ? at::kFloat
                         : stored.type == StoredType::kF16  ? at::kHalf
                         : stored.type == StoredType::kBF16 ? at::kBFloat16
                                                            : at::kChar;
  if (dtype == at::kChar) {
    return Unimplemented(stored.file->path() + ": tensor '" + stored.name + "' has type " +
                         StoredTypeName(stored.type) + "; model weights must be F32, F16 or BF16");
  }
  std::shared_ptr<MappedFile> keep = stored.file;
  at::Tensor view = at::from_blob(const_cast<uint8_t*>(stored.data), stored.shape,
                                  [keep](void*) {}, at::TensorOptions().dtype(dtype));
  const bool aligned = reinterpret_cast<uintptr_t>(stored.data) % view.element_size() == 0;
  return aligned ? view : view.clone();
}

// Float32 weights dequantized from a GGUF file, kept together in one anonymous mapping
// rather than in the heap: loading leaves no holes in the heap for later passes to fault in
// (they had made each pass ~22 MB more resident), and the kernel may back the weights with
// huge pages (fewer TLB misses while passes stream them).
class WeightArena : public std::enable_shared_from_this<WeightArena> {
 public:
  static StatusOr<std::shared_ptr<WeightArena>> Create(const std::string& file, size_t bytes) {
    if (bytes == 0) return std::shared_ptr<WeightArena>(new WeightArena(nullptr, 0));  // all heap
    void* base = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED) {
      return ResourceExhausted(file + ": cannot reserve " + std::to_string(bytes >> 20) +
                               " MiB for the float32 weights");
    }
#ifdef MADV_HUGEPAGE
    madvise(base, bytes, MADV_HUGEPAGE);  // advice only: ignored where huge pages are off
#endif
    return std::shared_ptr<WeightArena>(new WeightArena(static_cast<uint8_t*>(base), bytes));
  }
  ~WeightArena() {
    if (base_ != nullptr) munmap(base_, size_);
  }

  // An uninitialised float32 tensor in the arena (64-byte aligned); the arena lives as long
  // as any of its tensors. Falls back to the heap if the arena is full.
  at::Tensor Allocate(const std::vector<int64_t>& shape) {
    int64_t numel = 1;
    for (int64_t d : shape) numel *= d;
    const size_t bytes = SlotBytes(numel);
    if (used_ + bytes > size_) return at::empty(shape, at::TensorOptions().dtype(at::kFloat));
    uint8_t* data = base_ + used_;
    used_ += bytes;
    std::shared_ptr<WeightArena> keep = shared_from_this();
    return at::from_blob(data, shape, [keep](void*) {}, at::TensorOptions().dtype(at::kFloat));
  }

  // Bytes a set of float32 tensors needs in an arena.
  static size_t BytesFor(const std::vector<StoredTensor>& tensors) {
    size_t bytes = 0;
    for (const StoredTensor& t : tensors) bytes += SlotBytes(t.NumElements());
    return bytes;
  }

 private:
  // A float32 tensor's bytes, rounded up to keep the next one 64-byte aligned.
  static size_t SlotBytes(int64_t numel) {
    return (static_cast<size_t>(numel) * sizeof(float) + 63) / 64 * 64;
  }

  WeightArena(uint8_t* base, size_t size) : base_(base), size_(size) {}
  uint8_t* base_;
  size_t size_;
  size_t used_ = 0;
};

// A GGUF tensor as float32 in `out`: dequantized, or copied for F32 (the GGUF mapping is
// released once loading ends).
Status Dequantize(const StoredTensor& stored, at::Tensor& out) {
  if (stored.type == StoredType::kF32) {
    GLASSBOX_ASSIGN_OR_RETURN(at::Tensor view, ViewStoredTensor(stored));
    out.copy_(view);
    return Status::Ok();
  }
  return DequantizeToF32(stored, out.data_ptr<float>());
}

// Tells the kernel the mapped bytes of `stored` are no longer needed, so a GGUF file's pages
// leave resident memory as soon as each tensor is dequantized (keeps the loading peak low).
void ReleasePages(const StoredTensor& stored) {
  const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  const uintptr_t begin = reinterpret_cast<uintptr_t>(stored.data) & ~(page - 1);
  const uintptr_t end = reinterpret_cast<uintptr_t>(stored.data) + stored.nbytes;
  madvise(reinterpret_cast<void*>(begin), end - begin, MADV_DONTNEED);
}

StatusOr<nlohmann::json> ReadJson(const std::string& path) {
  std::ifstream in(path);
  if (!in) return NotFound("cannot open " + path);
  nlohmann::json j = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return InvalidArgument(path + ": not a JSON object");
  return j;
}


at::Tensor Place(const at::Tensor& t, at::Device device, at::ScalarType dtype) {
  if (t.device() == device && t.scalar_type() == dtype) return t;
  return t.to(device, dtype);
}

Status CheckShape(const std::string& file, const std::string& name, at::IntArrayRef shape,
                  const std::vector<int64_t>& expected) {
  if (shape.vec() == expected) return Status::Ok();
  return InvalidArgument(file + ": tensor '" + name + "' has shape " + ShapeText(shape.vec()) +
                         ", expected " + ShapeText(expected) + " from the model config");
}

// The bookkeeping both sources share: which stored tensors exist and which were taken.
class StoredTensors : public TensorSource {
 public:
  StoredTensors(std::string path, const std::vector<StoredTensor>& tensors, DevicePlan plan,
                at::ScalarType dtype)
      : path_(std::move(path)), plan_(std::move(plan)), device_(plan_.device(0)), dtype_(dtype) {
    for (const StoredTensor& t : tensors) by_name_[t.name] = &t;
  }

  void PlaceLayer(int64_t layer) override { device_ = plan_.layer_device(layer); }
  void PlaceHead(bool tied) override {
    if (tied) plan_.TieHead();
    device_ = plan_.device(plan_.head());
  }
  const DevicePlan& plan() const override { return plan_; }

  bool Has(const std::string& name) const override { return by_name_.count(name) > 0; }
  void Discard(const std::string& name) override {
    if (Has(name)) taken_.insert(name);
  }
  std::vector<std::string> Untaken() const override {
    std::vector<std::string> names;
    for (const auto& entry : by_name_) {
      if (!taken_.count(entry.first)) names.push_back(entry.first);
    }
    return names;
  }

  StatusOr<at::Tensor> Take(const std::string& name, const std::vector<int64_t>& shape,
                            const Reorder& reorder) override {
    auto it = by_name_.find(name);
    if (it == by_name_.end()) return NotFound(path_ + ": missing tensor '" + name + "'");
    if (!taken_.insert(name).second) return Internal(path_ + ": tensor '" + name + "' taken twice");
    GLASSBOX_RETURN_IF_ERROR(CheckShape(path_, name, it->second->shape, shape));
    GLASSBOX_ASSIGN_OR_RETURN(at::Tensor stored, Read(*it->second, reorder));
    at::Tensor placed = Place(stored, device_, dtype_);
    taken_bytes_ += placed.numel() * static_cast<int64_t>(placed.element_size());
    return placed;
  }
  int64_t TakenBytes() const override { return taken_bytes_; }

 protected:
  // The tensor as float32 (or its stored float dtype) on the CPU, reordered if asked.
  virtual StatusOr<at::Tensor> Read(const StoredTensor& stored, const Reorder& reorder) = 0;

  std::string path_;

 private:
  DevicePlan plan_;
  at::Device device_;  // of the part being read
  at::ScalarType dtype_;
  std::map<std::string, const StoredTensor*> by_name_;
  std::set<std::string> taken_;
  int64_t taken_bytes_ = 0;
};

class SafetensorsSource : public StoredTensors {
 public:
  using StoredTensors::StoredTensors;

 protected:
  StatusOr<at::Tensor> Read(const StoredTensor& stored, const Reorder& reorder) override {
    GLASSBOX_ASSIGN_OR_RETURN(at::Tensor view, ViewStoredTensor(stored));
    return reorder ? reorder(view.to(at::kFloat)) : view;
  }
};

class GgufSource : public StoredTensors {
 public:
  GgufSource(const GgufFile& file, std::shared_ptr<WeightArena> arena, DevicePlan plan,
             at::ScalarType dtype)
      : StoredTensors(file.path(), file.tensors(), std::move(plan), dtype), arena_(std::move(arena)) {}

 protected:
  StatusOr<at::Tensor> Read(const StoredTensor& stored, const Reorder& reorder) override {
    at::Tensor t = arena_->Allocate(stored.shape);
    if (reorder) {
      // Dequantized beside, then copied into place in the model's order.
      at::Tensor as_stored = at::empty(stored.shape, at::TensorOptions().dtype(at::kFloat));
      GLASSBOX_RETURN_IF_ERROR(Dequantize(stored, as_stored));
      t.copy_(reorder(as_stored));
    } else {
      GLASSBOX_RETURN_IF_ERROR(Dequantize(stored, t));
    }
    ReleasePages(stored);
    return t;
  }

 private:
  std::shared_ptr<WeightArena> arena_;
};

std::string KnownFamilies() {
  std::string text;
  for (const FamilyEntry& f : Families()) {
    text += (text.empty() ? "" : "; ") + f.name + " (model_type";
    for (const std::string& t : f.hf_model_types) text += " " + t;
    text += ", GGUF";
    for (const std::string& a : f.gguf_architectures) text += " " + a;
    text += ")";
  }
  return "supported: " + text;
}

const FamilyEntry* FamilyFor(const std::string& name, bool gguf) {
  for (const FamilyEntry& f : Families()) {
    const std::vector<std::string>& names = gguf ? f.gguf_architectures : f.hf_model_types;
    if (std::find(names.begin(), names.end(), name) != names.end()) return &f;
  }
  return nullptr;
}

Status CheckAllTaken(const std::string& path, const std::string& family, const TensorSource& tensors) {
  std::vector<std::string> extra = tensors.Untaken();
  if (extra.empty()) return Status::Ok();
  std::string names;
  for (size_t i = 0; i < extra.size() && i < 8; ++i) names += (i ? ", " : "") + extra[i];
  if (extra.size() > 8) names += ", ...";
  return Unimplemented(path + ": " + std::to_string(extra.size()) + " tensor(s) the " + family +
                       " family does not use (a model part it does not implement?): " + names);
}

StatusOr<std::unique_ptr<Transformer>> LoadFamily(const std::string& arch, bool gguf,
                                                  const CheckpointInfo& info, TensorSource& tensors) {
  const FamilyEntry* family = FamilyFor(arch, gguf);
  if (family == nullptr) {
    return Unimplemented(info.path + ": " + (gguf ? "architecture '" : "model_type '") + arch +
                         "' is not supported; " + KnownFamilies());
  }
  GLASSBOX_ASSIGN_OR_RETURN(std::unique_ptr<Transformer> model, family->load(info, tensors));
  GLASSBOX_RETURN_IF_ERROR(CheckAllTaken(info.path, family->name, tensors));
  const DevicePlan& plan = tensors.plan();
  if (plan.split() && plan.num_layers() != model->config().num_layers) {
    return Internal(info.path + ": the layer split found " + std::to_string(plan.num_layers()) +
                    " layers in the tensor names but the config has " +
                    std::to_string(model->config().num_layers));
  }
  model->set_weight_bytes(tensors.TakenBytes());
  model->set_plan(plan);
  return model;
}

// The file's tokenizer; none when the file has no tokenizer.ggml.* metadata at all (as a
// Hugging Face directory may lack tokenizer.json). A tokenizer.ggml.model key, or any other
// tokenizer.ggml.* key, means a tokenizer is meant: then it must load.
StatusOr<std::unique_ptr<Tokenizer>> GgufTokenizer(const GgufFile& file) {
  const std::string prefix = "tokenizer.ggml.";
  auto next = file.metadata().lower_bound(prefix);
  const bool any = next != file.metadata().end() && next->first.compare(0, prefix.size(), prefix) == 0;
  if (!any) return std::unique_ptr<Tokenizer>();
  if (file.metadata().count(prefix + "model") == 0) {
    return InvalidArgument(file.path() + ": tokenizer: " + next->first + " is present but " +
                           prefix + "model is not");
  }
  StatusOr<Tokenizer> tokenizer = Tokenizer::FromGguf(file);
  if (!tokenizer.ok()) return tokenizer.status().WithContext(file.path() + ": tokenizer");
  return std::make_unique<Tokenizer>(std::move(tokenizer).value());
}

// Refuses weights that would not fit: every stored tensor, held in `dtype`.
Status CheckFits(const std::string& path, const std::vector<StoredTensor>& tensors,
                 const Placement& placement) {
  if (placement.memory_budget < 0) return Status::Ok();
  int64_t needed = 0;
  for (const StoredTensor& t : tensors) needed += t.NumElements() * static_cast<int64_t>(c10::elementSize(placement.dtype));
  const int64_t available = placement.memory_budget > 0 ? placement.memory_budget
                                                        : DeviceFreeBytes(placement.device);
  if (available < 0 || needed <= available) return Status::Ok();
  auto mib = [](int64_t bytes) { return std::to_string((bytes + (1 << 20) - 1) >> 20) + " MiB"; };
  return ResourceExhausted(
      path + ": the weights need " + mib(needed) + " (" + std::to_string(needed) + " bytes) in " +
      DtypeName(placement.dtype) + " on " + placement.device.str() + ", but " +
      mib(available) + " (" + std::to_string(available) + " bytes) " +
      (placement.memory_budget > 0 ? "is the memory budget" : "is free there") +
      "; use a smaller dtype (--dtype bfloat16), another device, or more devices");
}

// One device: everything there (CheckFits has checked it). Several: the layers split by
// their sizes as they will be held, within each device's budget.
StatusOr<DevicePlan> PlanDevices(const std::string& path, const std::vector<StoredTensor>& stored,
                                 const Placement& placement) {
  if (placement.split.size() < 2) return DevicePlan(placement.device);
  std::vector<DeviceBudget> budgets;
  for (size_t i = 0; i < placement.split.size(); ++i) {
    const int64_t bytes = placement.memory_budget > 0 ? placement.memory_budget
                          : placement.memory_budget < 0 ? INT64_MAX / 4
                                                        : DeviceFreeBytes(placement.split[i]);
    if (bytes < 0) {
      return Unavailable(path + ": cannot tell how much memory " + placement.names[i] +
                         " has free; give a memory budget per device");
    }
    budgets.push_back({placement.names[i], bytes});
  }
  const SplitSizes sizes = SizesOfStored(stored, static_cast<int64_t>(c10::elementSize(placement.dtype)));
  StatusOr<SplitAssignment> assignment = PlanSplit(sizes, budgets);
  if (!assignment.ok()) return assignment.status().WithContext(path + ": cannot split the layers");
  return DevicePlan(placement.split, placement.names, *assignment);
}

StatusOr<LoadedModel> LoadGguf(const std::string& path, const Placement& placement) {
  const at::Device device = placement.device;
  const at::ScalarType dtype = placement.dtype;
  GLASSBOX_ASSIGN_OR_RETURN(GgufFile file, GgufFile::Open(path));
  GLASSBOX_ASSIGN_OR_RETURN(std::string arch, file.GetString("general.architecture"));
  GLASSBOX_ASSIGN_OR_RETURN(DevicePlan plan, PlanDevices(path, file.tensors(), placement));
  if (!plan.split()) GLASSBOX_RETURN_IF_ERROR(CheckFits(path, file.tensors(), placement));
  // The arena holds the weights themselves only when they stay float32 on the CPU; otherwise
  // each tensor is dequantized into a temporary and converted, so loading never holds a
  // float32 copy of the whole model.
  const bool in_place = device.is_cpu() && dtype == at::kFloat;
  GLASSBOX_ASSIGN_OR_RETURN(
      std::shared_ptr<WeightArena> arena,
      WeightArena::Create(path, in_place ? WeightArena::BytesFor(file.tensors()) : 0));
  LoadedModel loaded;
  {
    CheckpointInfo info{path, nullptr, &file, device, dtype};
    GgufSource tensors(file, std::move(arena), std::move(plan), dtype);
    GLASSBOX_ASSIGN_OR_RETURN(loaded.transformer, LoadFamily(arch, true, info, tensors));
  }
  GLASSBOX_ASSIGN_OR_RETURN(loaded.tokenizer, GgufTokenizer(file));
  GLASSBOX_ASSIGN_OR_RETURN(loaded.chat_template, ReadGgufChatTemplate(file));
  return loaded;
}

StatusOr<LoadedModel> LoadHfDirectory(const std::string& dir, const Placement& placement) {
  const at::Device device = placement.device;
  const at::ScalarType dtype = placement.dtype;
  GLASSBOX_ASSIGN_OR_RETURN(nlohmann::json config, ReadJson(dir + "/config.json"));
  const std::string model_type = config.contains("model_type") && config["model_type"].is_string()
                                     ? config["model_type"].get<std::string>() : "";
  if (FamilyFor(model_type, false) == nullptr) {
    return Unimplemented(dir + "/config.json: model_type '" + model_type + "' is not supported; " +
                         KnownFamilies());
  }
  GLASSBOX_ASSIGN_OR_RETURN(std::vector<StoredTensor> stored, LoadSafetensorsDirectory(dir));
  GLASSBOX_ASSIGN_OR_RETURN(DevicePlan plan, PlanDevices(dir, stored, placement));
  if (!plan.split()) GLASSBOX_RETURN_IF_ERROR(CheckFits(dir, stored, placement));
  LoadedModel loaded;
  SafetensorsSource tensors(dir, stored, std::move(plan), dtype);
  CheckpointInfo info{dir, &config, nullptr, device, dtype};
  try {
    GLASSBOX_ASSIGN_OR_RETURN(loaded.transformer, LoadFamily(model_type, false, info, tensors));
  } catch (const nlohmann::json::exception& e) {  // a value of the wrong JSON type
    return InvalidArgument(dir + "/config.json: " + e.what());
  }
  std::ifstream tokenizer_json(dir + "/tokenizer.json");
  if (tokenizer_json) {
    GLASSBOX_ASSIGN_OR_RETURN(Tokenizer t, Tokenizer::FromTokenizerJson(dir + "/tokenizer.json"));
    loaded.tokenizer = std::make_unique<Tokenizer>(std::move(t));
  }
  GLASSBOX_ASSIGN_OR_RETURN(loaded.chat_template, ReadHfChatTemplate(dir));
  return loaded;
}

bool IsDirectory(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

}  // namespace

std::string DtypeName(at::ScalarType dtype) {
  return dtype == at::kBFloat16 ? "bfloat16" : dtype == at::kHalf ? "float16" : "float32";
}

int64_t DeviceFreeBytes(at::Device device) {
  if (device.is_cpu()) {
    std::ifstream meminfo("/proc/meminfo");
    std::string key;
    int64_t kib = 0;
    std::string unit;
    while (meminfo >> key >> kib >> unit) {
      if (key == "MemAvailable:") return kib * 1024;
    }
    return -1;
  }
  if (device.is_cuda()) {
    // Asked of the CUDA runtime LibTorch has loaded (no CUDA headers or libraries are needed
    // to build this; a CPU-only LibTorch never gets here).
    using MemGetInfo = int (*)(size_t*, size_t*);
    using SetDevice = int (*)(int);
    for (const char* name : {"libcudart.so.13", "libcudart.so.12", "libcudart.so.11.0", "libcudart.so"}) {
      void* lib = dlopen(name, RTLD_NOW | RTLD_NOLOAD);
      if (lib == nullptr) lib = dlopen(name, RTLD_NOW);
      if (lib == nullptr) continue;
      auto set_device = reinterpret_cast<SetDevice>(dlsym(lib, "cudaSetDevice"));
      auto get_info = reinterpret_cast<MemGetInfo>(dlsym(lib, "cudaMemGetInfo"));
      size_t free_bytes = 0, total = 0;
      if (set_device && get_info && set_device(device.has_index() ? device.index() : 0) == 0 &&
          get_info(&free_bytes, &total) == 0) {
        return static_cast<int64_t>(free_bytes);
      }
      return -1;
    }
  }
  return -1;
}

StatusOr<LoadedModel> LoadModelFiles(const std::string& path, const Placement& placement) {
  if (IsDirectory(path)) return LoadHfDirectory(path, placement);
  if (path.size() > 5 && path.substr(path.size() - 5) == ".gguf") return LoadGguf(path, placement);
  struct stat st;
  if (stat(path.c_str(), &st) != 0) return NotFound("model path " + path + " does not exist");
  return InvalidArgument(path + ": expected a .gguf file or a Hugging Face model directory "
                         "(config.json + model.safetensors)");
}

}  // namespace glassbox
