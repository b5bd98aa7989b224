// What a model family is to the engine: a Transformer (weights on a device, a forward pass
// written with hook calls, callable modules, a hook catalogue) and a registry entry that
// loads one from a checkpoint (config keys it understands, tensor names it consumes).
//
// Adding a family: one file under engine/families/ defining a Transformer subclass and a
// FamilyEntry, and one line in engine/families/registry.cc. Shared pieces (norms, rotary
// embeddings, attention with its internals) are in engine/layers.h. Internal to engine/.
#ifndef GLASSBOX_ENGINE_FAMILY_H_
#define GLASSBOX_ENGINE_FAMILY_H_

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <nlohmann/json.hpp>

#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "base/status.h"
#include "engine/device_plan.h"
#include "engine/engine.h"
#include "engine/hook_catalogue.h"
#include "engine/hooks.h"
#include "engine/tl_weights.h"

namespace glassbox {

class GgufFile;

// Keys and values after the position embedding for every layer, preallocated to a capacity.
struct KvCache {
  // per layer [batch, kv_heads, capacity, head_dim], on the layer's device
  std::vector<at::Tensor> keys, values;
  int64_t length = 0;                    // positions filled
};

// Prompts as a batch: ValidatePrompts refuses empty prompts, ids outside the vocabulary and
// prompts that with `extra_positions` more would not fit the context; PadLeft left-pads them
// into ids [batch, seq] and a mask (0 at padding), positions counting only real tokens.
struct PaddedBatch {
  at::Tensor ids, mask, positions;
};
Status ValidatePrompts(const std::vector<std::vector<int64_t>>& prompts, const ModelConfig& c,
                       int64_t extra_positions);
PaddedBatch PadLeft(const std::vector<std::vector<int64_t>>& prompts, int64_t pad_id, at::Device device);

// What one forward pass works on.
struct PassInputs {
  at::Tensor ids;             // [batch, seq] int64 on the model's device
  at::Tensor positions;       // [batch, seq] int64
  at::Tensor attention_mask;  // [batch, cache length + seq] int64, 0 at padding
  KvCache* cache = nullptr;   // null: no cache (keys/values of this pass only)
  const HookSet* hooks = nullptr;
  int step = 0;
  bool all_logits = true;
};

// Thrown inside a pass when a hook callback fails; Model turns it back into the Status.
struct HookFailure {
  Status status;
};

// A loaded model of one family. Immutable after construction; Forward may run on several
// threads at once.
class Transformer {
 public:
  // The catalogue's dtype is set from `dtype`.
  Transformer(const ModelConfig& config, CatalogueSpec catalogue, at::Device device,
              at::ScalarType dtype);
  virtual ~Transformer() = default;

  // Logits [batch, seq or 1, vocab] in the model dtype. Throws HookFailure or c10::Error;
  // Model catches both at the engine boundary.
  virtual at::Tensor Forward(const PassInputs& in) const = 0;
  // Runs one module (by its Hugging Face path) on any tensor already on the model's device
  // and in its dtype (token ids for the embedding). Throws c10::Error on shape mismatches;
  // kNotFound for names that are not callable modules.
  virtual StatusOr<at::Tensor> ApplyModule(const std::string& name, const at::Tensor& x) const = 0;
  // Names ApplyModule accepts, in forward order.
  virtual std::vector<std::string> ModuleNames() const = 0;
  // The callable modules that are plain matrix products (projections and the unembedding):
  // with the attention products, the work of a pass (benchmarks' lower bound).
  virtual std::vector<std::string> MatmulModules() const = 0;

  // Bytes of the weights as held (run dtype, on the device; tied tensors once).
  int64_t weight_bytes() const { return weight_bytes_; }
  void set_weight_bytes(int64_t bytes) { weight_bytes_ = bytes; }
  // Where the embedding, each layer and the head live (set once, after loading).
  const DevicePlan& plan() const { return plan_; }
  void set_plan(DevicePlan plan) { plan_ = std::move(plan); }

  // The weights under their Hugging Face parameter names ("model.norm.weight",
  // "model.layers.0.self_attn.o_proj.weight"), in the shapes transformers gives its parameters
  // (GPT-2's Conv1D [in, out]), holding what the forward uses: dequantized, reordered to
  // transformers' layout, in the run dtype on the device. A tied unembedding is listed under
  // both names. In the family's forward order. The tensors are (views of) the held weights:
  // callers never modify them in place.
  const std::vector<std::pair<std::string, at::Tensor>>& named_weights() const { return named_weights_; }
  WeightRole weight_role(const std::string& name) const;
  // The held Hugging Face weight of that name, undefined when there is none.
  at::Tensor NamedWeight(const std::string& name) const;
  // TransformerLens' names for the weights with their shapes (engine/tl_weights.h).
  const std::vector<std::pair<std::string, std::vector<int64_t>>>& tl_weights() const { return tl_weights_; }
  // A TransformerLens-named weight, computed from the held weights (a new tensor).
  StatusOr<at::Tensor> TlWeight(const std::string& name) const;

  KvCache NewCache(int64_t batch, int64_t capacity) const;
  const ModelConfig& config() const { return config_; }
  const HookCatalogue& catalogue() const { return catalogue_; }
  at::Device device() const { return device_; }  // the embedding's (placement 0)
  at::ScalarType dtype() const { return dtype_; }

 protected:
  ModelConfig config_;
  HookCatalogue catalogue_;
  at::Device device_;
  at::ScalarType dtype_;
  DevicePlan plan_;
  int64_t weight_bytes_ = 0;

  // For a family's constructor: lists `weight` under `name` (skipped when undefined, as an
  // absent bias is), saying whether it is a linear layer's weight or bias (see WeightRole).
  void AddWeight(const std::string& name, const at::Tensor& weight, WeightRole role = WeightRole::kOther);
  // For a family's constructor, after its AddWeight calls: where TransformerLens' weights are.
  void SetTlLayout(const TlWeightLayout& layout);

 private:
  std::vector<std::pair<std::string, at::Tensor>> named_weights_;
  std::vector<WeightRole> weight_roles_;  // parallel to named_weights_
  TlWeightLayout tl_layout_;
  std::vector<std::pair<std::string, std::vector<int64_t>>> tl_weights_;
};

// The checkpoint's tensors, each taken once: placed in the run's dtype on the device of the
// model part being read (the embedding's until a family says otherwise: PlaceLayer,
// PlaceHead) and checked against the shape the config implies. Tensors nobody takes are an
// error.
class TensorSource {
 public:
  // Rewrites a tensor as stored (float32, CPU) into the model's layout, e.g. llama.cpp's
  // interleaved Q/K rows back into Hugging Face's order. Returns the same shape.
  using Reorder = std::function<at::Tensor(const at::Tensor& stored)>;

  virtual ~TensorSource() = default;
  // kNotFound names the tensor; kInvalidArgument names it with both shapes.
  virtual StatusOr<at::Tensor> Take(const std::string& name, const std::vector<int64_t>& shape,
                                    const Reorder& reorder = nullptr) = 0;
  virtual bool Has(const std::string& name) const = 0;
  // Marks a stored buffer that is not a weight (a saved causal mask) as consumed, if present.
  virtual void Discard(const std::string& name) = 0;
  // Names of tensors in the checkpoint that were never taken.
  virtual std::vector<std::string> Untaken() const = 0;
  // Bytes of every tensor taken so far, as placed.
  virtual int64_t TakenBytes() const = 0;
  // Tensors taken from now on belong to layer `layer` / to the head (the final norm and
  // unembedding; with `tied`, the head uses the embedding and goes where it is).
  virtual void PlaceLayer(int64_t layer) = 0;
  virtual void PlaceHead(bool tied) = 0;
  // Where the parts went (the plan the model keeps).
  virtual const DevicePlan& plan() const = 0;
};

// Reads a Hugging Face config.json for one family. Every key the family reads is marked;
// Finish() refuses every key that is neither read nor known to leave the computation
// unchanged (metadata, dropout, generation defaults), naming the key and its value, so a
// checkpoint asking for something the family does not do is refused, never run wrong.
class HfConfig {
 public:
  HfConfig(const nlohmann::json& json, std::string path, std::string family);

  bool Has(const std::string& key) const;  // present and not null
  int64_t Int(const std::string& key);     // required
  int64_t Int(const std::string& key, int64_t fallback);
  double Float(const std::string& key, double fallback);
  bool Bool(const std::string& key, bool fallback);
  std::string String(const std::string& key, const std::string& fallback);
  const nlohmann::json& Json(const std::string& key);  // null when absent
  // The key may be absent, null or `allowed`; anything else is refused.
  void Expect(const std::string& key, const nlohmann::json& allowed);
  // Keys read without effect for this family (their value cannot change the computation).
  void Ignore(std::initializer_list<const char*> keys);
  // Records a refusal of `key` with `why`.
  void Refuse(const std::string& key, const std::string& why);

  Status Finish() const;
  const std::string& path() const { return path_; }

 private:
  const nlohmann::json& json_;
  std::string path_, family_;
  std::vector<std::string> used_;
  std::vector<std::string> errors_;
};

// The symbolic shapes of the points in a family's tables, sized from its config.
enum class Dims { kResid, kQProj, kKvProj, kQkv, kQHeads, kKvHeads, kScores, kMlp };
std::vector<std::string> ShapeOf(Dims dims, const ModelConfig& c);

// One row of a family's per-layer point table (in forward order).
struct PointRow {
  int point;          // the family's own enum
  const char* name;   // after the layer prefix
  const char* alias;  // TransformerLens name after "blocks.N."; "a|b" for two; "" for none
  Dims dims;
  const char* meaning;
  const char* skip_from = "";  // see PointSpec
};

// The catalogue entries of the rows `keep` accepts (all when null); index[point] becomes the
// point's position in the layer list, or -1 when left out.
std::vector<PointSpec> LayerPoints(const PointRow* rows, size_t count, const ModelConfig& c,
                                   const std::function<bool(int point)>& keep,
                                   std::vector<int>& index);
// The points before and after the layers every family has: the embedding's ids and output,
// the final norm's input and output, the unembedding's input and output (the logits).
std::vector<PointSpec> EmbeddingPoints(const std::string& embedding, const ModelConfig& c);
std::vector<PointSpec> HeadPoints(const std::string& norm, const std::string& unembedding,
                                  const ModelConfig& c, const std::string& logits_note = "");

// Reads a family's tensors by their Hugging Face names, translated (for GGUF files, or a
// checkpoint's own spelling) by `rename`.
class WeightReader {
 public:
  using Rename = std::function<std::string(const std::string& hf_name)>;
  explicit WeightReader(TensorSource& tensors, Rename rename = nullptr)
      : tensors_(tensors), rename_(std::move(rename)) {}

  Status Get(const std::string& name, const std::vector<int64_t>& shape, at::Tensor& out,
             const TensorSource::Reorder& reorder = nullptr);
  // A tensor the config says is there (a bias): read when `present`, else left undefined.
  Status Optional(bool present, const std::string& name, const std::vector<int64_t>& shape,
                  at::Tensor& out);
  // `name`.weight and `name`.bias of a LayerNorm of size `d`.
  Status Norm(const std::string& name, int64_t d, at::Tensor& weight, at::Tensor& bias);
  bool Has(const std::string& name) const { return tensors_.Has(Stored(name)); }
  // Buffers some checkpoints saved that are not weights (causal masks, rotary frequencies).
  void Discard(const std::string& name) { tensors_.Discard(Stored(name)); }

 private:
  std::string Stored(const std::string& name) const { return rename_ ? rename_(name) : name; }
  TensorSource& tensors_;
  Rename rename_;
};

// Sizes every family checks: positive, heads dividing the width where the family derives
// head_dim from it, key/value heads dividing the heads, an even head_dim for rotary families.
Status ValidateSizes(const std::string& path, const ModelConfig& c, bool rotary);

// GGUF metadata under `arch.`: every key not in `known` is refused by name (it may change
// the computation); the sizes every family has are read into `c` (vocab from token_embd,
// tied when there is no output.weight, token ids from tokenizer.ggml.*).
Status CheckGgufKeys(const GgufFile& file, const std::string& arch,
                     const std::vector<std::string>& known);
Status ReadGgufSizes(const GgufFile& file, const std::string& arch, ModelConfig& c);

// Everything a family's loader is given.
struct CheckpointInfo {
  std::string path;
  const nlohmann::json* hf_config = nullptr;  // config.json for a Hugging Face directory
  const GgufFile* gguf = nullptr;             // the file, for GGUF
  at::Device device = at::kCPU;  // the embedding's (tensors.plan() has the layers')
  at::ScalarType dtype = at::kFloat;
};

struct FamilyEntry {
  std::string name;                             // "llama"
  std::vector<std::string> hf_model_types;      // config.json model_type values
  std::vector<std::string> gguf_architectures;  // general.architecture values
  std::function<StatusOr<std::unique_ptr<Transformer>>(const CheckpointInfo&, TensorSource&)> load;
};

// Every family the engine knows (engine/families/registry.cc).
const std::vector<FamilyEntry>& Families();

}  // namespace glassbox

#endif  // GLASSBOX_ENGINE_FAMILY_H_
