// The engine's front door: load a model, run forward passes and generation with hooks.
//
//   auto model = Model::Load("models/SmolLM2-135M-Instruct.Q4_1.gguf", EngineParams{});
//   HookSet hooks(model->catalogue());
//   hooks.Add("model.layers.5.output", [](const HookContext&, at::Tensor& x) { ...; });
//   auto result = model->Forward({{model->tokenizer()->Encode("Hello")}}, &hooks);
//
// A Model is immutable after Load; Forward and Generate may be called from several threads
// at once (each call brings its own HookSet). Errors are returned as Status values; the
// engine never lets a c10::Error escape.
#ifndef GLASSBOX_ENGINE_ENGINE_H_
#define GLASSBOX_ENGINE_ENGINE_H_

#include <ATen/core/Tensor.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "base/status.h"
#include "engine/chat_template.h"
#include "engine/hook_catalogue.h"
#include "engine/hooks.h"
#include "engine/tokenizer.h"

namespace glassbox {

struct EngineParams {
  // "cpu", "cuda", "cuda:N", "auto" (CUDA when present), or a list "cuda:0,cuda:1,..." to
  // split the layers across those GPUs by memory (each GPU's free memory, or memory_budget).
  std::string device = "auto";
  std::string dtype = "float32";  // "float32", "bfloat16" or "float16"
  int intra_op_threads = 1;       // LibTorch threads; 1 is fastest on small CPUs (see bench/)
  // glibc only, process-wide: allocations of at least this many bytes are mmapped and go back
  // to the OS when freed, so activations do not pile up in the heap between passes (glibc's
  // own threshold drifts up to 32 MB); the heap keeps up to twice this much free memory at
  // its top (fewer page faults). A smaller threshold lowers the peak a little but makes
  // passes slower (8x64 tokens at 1 MiB: ~1.5x, page faults on every activation). 0 leaves
  // malloc alone. GGUF weights live outside the heap in any case (one mapping, huge pages
  // where the kernel allows).
  size_t malloc_mmap_threshold = size_t{4} << 20;
  // Bytes the weights may take on the device: 0 what it has free when loading starts, > 0 a
  // fixed budget (a share of a node), < 0 no check. A model that does not fit is refused
  // before any weight is read, with the bytes needed and available.
  int64_t memory_budget = 0;
  // Tests only: > 1 splits the layers across this many CPU "devices" (placements on the
  // CPU) through the code a multi-GPU split runs, with unlimited budgets. Needs the CPU.
  int testing_cpu_placements = 0;
};

// The sizes every family has (what clients, validation and the benchmarks read); a family
// keeps its own further settings (norms, biases, rotary variant) to itself.
struct ModelConfig {
  std::string architecture;  // the config's model_type or the GGUF architecture
  int64_t vocab_size = 0, hidden_size = 0, intermediate_size = 0, num_layers = 0;
  int64_t num_heads = 0, num_kv_heads = 0, head_dim = 0, max_position_embeddings = 0;
  double rope_theta = 10000.0, rms_norm_eps = 1e-5;
  bool tie_word_embeddings = false;
  int64_t bos_id = -1, eos_id = -1;
};

struct ForwardRequest {
  // Token ids, one prompt per row; rows of different lengths are left-padded into one batch
  // with an attention mask, so each row's activations equal those of running it alone.
  std::vector<std::vector<int64_t>> prompts;
  bool all_logits = true;  // false: lm_head runs only at each row's last position
  // false: the logits are not copied out (callers that read them through hooks, as the
  // interpreter does, save a copy of batch x seq x vocab values off the device)
  bool return_logits = true;
};

struct ForwardResult {
  at::Tensor logits;          // [batch, seq, vocab] (or [batch, 1, vocab]), float32, CPU;
                              // undefined unless return_logits
  at::Tensor attention_mask;  // [batch, seq] int64: 0 at left padding, CPU
};

struct SamplingParams {
  int max_new_tokens = 32;
  double temperature = 0.0;  // 0: greedy
  int top_k = 0;             // 0: off
  double top_p = 1.0;        // 1: off
  uint64_t seed = 0;
  std::vector<int64_t> stop_ids;  // empty: the model's eos token
};

struct GenerateResult {
  std::vector<std::vector<int64_t>> new_tokens;  // per prompt, stop token included if hit
  std::vector<std::string> stop_reasons;         // "stop_token" or "max_new_tokens"
};

class Transformer;

// What a weight is to the module it belongs to (the module's path is the name without its
// last part): a linear layer's weight, [out, in] as nn.Linear holds it or [in, out] as
// GPT-2's Conv1D does (output = input·Wᵀ + b, or input·W + b), its bias, or anything else
// (norms, embeddings, a tied unembedding); or a TransformerLens name, computed from those.
enum class WeightRole { kOther, kLinearOutIn, kLinearInOut, kLinearBias, kTransformerLens };

class Model {
 public:
  // Loads a GGUF file or a Hugging Face directory (config.json + safetensors) of any family
  // in engine/families/. Errors name the file and the problem; unsupported architectures
  // list the supported ones; config keys and tensors the family does not implement are
  // refused by name.
  static StatusOr<std::unique_ptr<Model>> Load(const std::string& path,
                                               const EngineParams& params = EngineParams());
  ~Model();

  const ModelConfig& config() const;
  const HookCatalogue& catalogue() const;
  // The model's tokenizer, or nullptr when the model directory has none.
  const Tokenizer* tokenizer() const;
  // The chat template the files carry (source empty when they carry none), for clients to
  // render; the engine never renders it.
  const ChatTemplate& chat_template() const;
  std::string device() const;  // "cpu", "cuda:0"; a split's list "cuda:0,cuda:1"
  // Which device holds what: "cuda:0: embedding, layers 0-11; cuda:1: layers 12-23, head".
  std::string placement() const;
  std::string dtype() const;   // "float32", "bfloat16", "float16"
  // Where the weights live and every tensor of a pass is made (a split's first device, which
  // holds the embedding).
  at::Device torch_device() const;

  StatusOr<ForwardResult> Forward(const ForwardRequest& request,
                                  const HookSet* hooks = nullptr) const;
  // Runs a module (the family's Hugging Face path: "lm_head", "model.norm",
  // "model.layers.3.mlp", "transformer.h.3.mlp", ...) on any tensor: the logit lens is ApplyModule("lm_head", ApplyModule("model.norm", h)).
  // Shape mismatches and unknown modules come back as errors naming the module.
  StatusOr<at::Tensor> ApplyModule(const std::string& name, const at::Tensor& input) const;
  // Names ApplyModule accepts.
  std::vector<std::string> ModuleNames() const;
  // The modules that are plain matrix products (projections, the unembedding), in forward
  // order: with each layer's two attention products, the matrix work of a pass.
  std::vector<std::string> MatmulModules() const;
  // Names of the model's weights: Hugging Face parameter names ("lm_head.weight",
  // "model.layers.3.self_attn.o_proj.weight", "transformer.h.0.attn.c_attn.bias") in forward
  // order, a tied unembedding under both of its names; then TransformerLens' names in its
  // shapes ("W_U", "blocks.3.attn.W_Q", see engine/tl_weights.h).
  std::vector<std::string> WeightNames() const;
  // A weight's shape without computing it. kNotFound names it and the closest names.
  StatusOr<std::vector<int64_t>> WeightShape(const std::string& name) const;
  // A weight as the forward uses it (dequantized, in transformers' layout and shape), in the
  // run dtype on the model's device. A Hugging Face name gives the resident tensor itself:
  // never modify it in place (clone first); a TransformerLens name gives a new tensor.
  // kNotFound names the weight and the closest names.
  StatusOr<at::Tensor> Weight(const std::string& name) const;
  // kOther for names the model does not have.
  WeightRole WeightRoleOf(const std::string& name) const;
  // Bytes of the resident weights in the run's dtype (tied tensors counted once).
  int64_t WeightBytes() const;

  // Greedy or seeded sampling with a KV cache. Hooks run at every step (HookContext::step).
  // Several users' generations that join and leave one batch: engine/generation.h.
  StatusOr<GenerateResult> Generate(const std::vector<std::vector<int64_t>>& prompts,
                                    const SamplingParams& sampling,
                                    const HookSet* hooks = nullptr) const;
 private:
  Model();
  std::unique_ptr<Transformer> transformer_;
  std::unique_ptr<Tokenizer> tokenizer_;
  ChatTemplate chat_template_;
  friend class ModelLoader;
  friend class Generation;
};

}  // namespace glassbox

#endif  // GLASSBOX_ENGINE_ENGINE_H_
