// Model files to LlamaWeights: GGUF (dequantized, Q/K rows un-permuted into Hugging Face's
// layout) and Hugging Face safetensors directories (memory-mapped, not copied when the
// stored dtype is float32).
#include "engine/weights.h"

#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <nlohmann/json.hpp>

#include <fstream>
#include <functional>
#include <map>
#include <sstream>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engine/gguf.h"
#include "engine/safetensors.h"

namespace glassbox {
namespace {

const char kSupported[] = "supported: llama (LlamaForCausalLM, MistralForCausalLM)";

// Looks up tensors by their Hugging Face name and converts them to float32 tensors.
using TensorLookup = std::function<StatusOr<at::Tensor>(const std::string& hf_name)>;

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
  ~WeightArena() { munmap(base_, size_); }

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

Status CheckShape(const std::string& file, const std::string& name, const at::Tensor& t,
                  const std::vector<int64_t>& expected) {
  if (t.sizes().vec() == expected) return Status::Ok();
  return InvalidArgument(file + ": tensor '" + name + "' has shape " + ShapeText(t.sizes().vec()) +
                         ", expected " + ShapeText(expected) + " from the model config");
}

// Tells the kernel the mapped bytes of `stored` are no longer needed, so a GGUF file's pages
// leave resident memory as soon as each tensor is dequantized (keeps the loading peak low).
void ReleasePages(const StoredTensor& stored) {
  const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  const uintptr_t begin = reinterpret_cast<uintptr_t>(stored.data) & ~(page - 1);
  const uintptr_t end = reinterpret_cast<uintptr_t>(stored.data) + stored.nbytes;
  madvise(reinterpret_cast<void*>(begin), end - begin, MADV_DONTNEED);
}

// Undoes llama.cpp's interleaving of Q/K rows (the inverse of convert_hf_to_gguf's permute):
// the rows of `w` in Hugging Face's order, as a view.
at::Tensor ReversePermuted(const at::Tensor& w, int64_t heads) {
  const int64_t rows = w.size(0);
  return w.view({heads, rows / heads / 2, 2, w.size(1)}).transpose(1, 2);
}

Status FillWeights(const ModelConfig& c, const std::string& file, const TensorLookup& lookup,
                   LlamaWeights& w) {
  auto get = [&](const std::string& name, std::vector<int64_t> shape, at::Tensor& out) -> Status {
    StatusOr<at::Tensor> t = lookup(name);
    if (!t.ok()) return t.status();
    GLASSBOX_RETURN_IF_ERROR(CheckShape(file, name, *t, shape));
    out = *t;
    return Status::Ok();
  };
  const int64_t d = c.hidden_size, q = c.num_heads * c.head_dim, kv = c.num_kv_heads * c.head_dim;
  GLASSBOX_RETURN_IF_ERROR(get("model.embed_tokens.weight", {c.vocab_size, d}, w.embed_tokens));
  GLASSBOX_RETURN_IF_ERROR(get("model.norm.weight", {d}, w.norm));
  if (c.tie_word_embeddings) {
    w.lm_head = w.embed_tokens;
  } else {
    GLASSBOX_RETURN_IF_ERROR(get("lm_head.weight", {c.vocab_size, d}, w.lm_head));
  }
  w.layers.resize(c.num_layers);
  for (int64_t i = 0; i < c.num_layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    LayerWeights& l = w.layers[i];
    GLASSBOX_RETURN_IF_ERROR(get(p + "input_layernorm.weight", {d}, l.input_layernorm));
    GLASSBOX_RETURN_IF_ERROR(get(p + "self_attn.q_proj.weight", {q, d}, l.q_proj));
    GLASSBOX_RETURN_IF_ERROR(get(p + "self_attn.k_proj.weight", {kv, d}, l.k_proj));
    GLASSBOX_RETURN_IF_ERROR(get(p + "self_attn.v_proj.weight", {kv, d}, l.v_proj));
    GLASSBOX_RETURN_IF_ERROR(get(p + "self_attn.o_proj.weight", {d, q}, l.o_proj));
    GLASSBOX_RETURN_IF_ERROR(get(p + "post_attention_layernorm.weight", {d}, l.post_attention_layernorm));
    GLASSBOX_RETURN_IF_ERROR(get(p + "mlp.gate_proj.weight", {c.intermediate_size, d}, l.gate_proj));
    GLASSBOX_RETURN_IF_ERROR(get(p + "mlp.up_proj.weight", {c.intermediate_size, d}, l.up_proj));
    GLASSBOX_RETURN_IF_ERROR(get(p + "mlp.down_proj.weight", {d, c.intermediate_size}, l.down_proj));
  }
  return Status::Ok();
}

Status ValidateConfig(const std::string& file, const ModelConfig& c) {
  if (c.num_layers <= 0 || c.hidden_size <= 0 || c.num_heads <= 0 || c.num_kv_heads <= 0 ||
      c.vocab_size <= 0 || c.intermediate_size <= 0 || c.head_dim <= 0 || c.head_dim % 2 != 0) {
    return InvalidArgument(file + ": model config has a non-positive size (layers, hidden, "
                           "heads, kv heads, vocab, intermediate) or an odd head_dim");
  }
  if (c.num_heads % c.num_kv_heads != 0) {
    return InvalidArgument(file + ": attention heads (" + std::to_string(c.num_heads) +
                           ") are not a multiple of key/value heads (" +
                           std::to_string(c.num_kv_heads) + ")");
  }
  return Status::Ok();
}

// ---- GGUF ----

StatusOr<ModelConfig> GgufConfig(const GgufFile& f) {
  ModelConfig c;
  GLASSBOX_ASSIGN_OR_RETURN(std::string arch, f.GetString("general.architecture"));
  if (arch != "llama") {
    return Unimplemented(f.path() + ": architecture '" + arch + "' is not supported; " + kSupported);
  }
  auto get_int = [&](const std::string& key, int64_t& out) -> Status {
    StatusOr<int64_t> v = f.GetInt("llama." + key);
    if (!v.ok()) return v.status().WithContext(f.path());
    out = *v;
    return Status::Ok();
  };
  GLASSBOX_RETURN_IF_ERROR(get_int("block_count", c.num_layers));
  GLASSBOX_RETURN_IF_ERROR(get_int("embedding_length", c.hidden_size));
  GLASSBOX_RETURN_IF_ERROR(get_int("feed_forward_length", c.intermediate_size));
  GLASSBOX_RETURN_IF_ERROR(get_int("attention.head_count", c.num_heads));
  c.num_kv_heads = f.GetInt("llama.attention.head_count_kv").ok()
                       ? *f.GetInt("llama.attention.head_count_kv") : c.num_heads;
  c.head_dim = f.GetInt("llama.rope.dimension_count").ok()
                   ? *f.GetInt("llama.rope.dimension_count") : c.hidden_size / c.num_heads;
  c.rope_theta = f.GetFloat("llama.rope.freq_base").ok() ? *f.GetFloat("llama.rope.freq_base") : 10000.0;
  c.rms_norm_eps = f.GetFloat("llama.attention.layer_norm_rms_epsilon").ok()
                       ? *f.GetFloat("llama.attention.layer_norm_rms_epsilon") : 1e-5;
  c.max_position_embeddings = f.GetInt("llama.context_length").ok() ? *f.GetInt("llama.context_length") : 2048;
  const StoredTensor* embed = f.FindTensor("token_embd.weight");
  if (embed == nullptr || embed->shape.size() != 2) {
    return InvalidArgument(f.path() + ": no 2-D tensor 'token_embd.weight'");
  }
  c.vocab_size = embed->shape[0];
  c.tie_word_embeddings = f.FindTensor("output.weight") == nullptr;
  c.bos_id = f.GetInt("tokenizer.ggml.bos_token_id").ok() ? *f.GetInt("tokenizer.ggml.bos_token_id") : -1;
  c.eos_id = f.GetInt("tokenizer.ggml.eos_token_id").ok() ? *f.GetInt("tokenizer.ggml.eos_token_id") : -1;
  GLASSBOX_RETURN_IF_ERROR(ValidateConfig(f.path(), c));
  return c;
}

// Hugging Face name -> GGUF name, e.g. model.layers.3.mlp.up_proj.weight -> blk.3.ffn_up.weight.
std::string GgufName(const std::string& hf) {
  static const std::map<std::string, std::string> kGlobal = {
      {"model.embed_tokens.weight", "token_embd.weight"},
      {"model.norm.weight", "output_norm.weight"},
      {"lm_head.weight", "output.weight"}};
  static const std::map<std::string, std::string> kLayer = {
      {"input_layernorm.weight", "attn_norm.weight"}, {"self_attn.q_proj.weight", "attn_q.weight"},
      {"self_attn.k_proj.weight", "attn_k.weight"},   {"self_attn.v_proj.weight", "attn_v.weight"},
      {"self_attn.o_proj.weight", "attn_output.weight"},
      {"post_attention_layernorm.weight", "ffn_norm.weight"},
      {"mlp.gate_proj.weight", "ffn_gate.weight"},    {"mlp.up_proj.weight", "ffn_up.weight"},
      {"mlp.down_proj.weight", "ffn_down.weight"}};
  auto global = kGlobal.find(hf);
  if (global != kGlobal.end()) return global->second;
  const std::string prefix = "model.layers.";
  const size_t dot = hf.find('.', prefix.size());
  const std::string layer = hf.substr(prefix.size(), dot - prefix.size());
  auto local = kLayer.find(hf.substr(dot + 1));
  return local == kLayer.end() ? hf : "blk." + layer + "." + local->second;
}

StatusOr<LoadedModel> LoadGguf(const std::string& path) {
  GLASSBOX_ASSIGN_OR_RETURN(GgufFile file, GgufFile::Open(path));
  LoadedModel loaded;
  GLASSBOX_ASSIGN_OR_RETURN(loaded.config, GgufConfig(file));
  const ModelConfig& c = loaded.config;
  GLASSBOX_ASSIGN_OR_RETURN(std::shared_ptr<WeightArena> arena,
                            WeightArena::Create(path, WeightArena::BytesFor(file.tensors())));
  TensorLookup lookup = [&](const std::string& hf) -> StatusOr<at::Tensor> {
    const std::string name = GgufName(hf);
    const StoredTensor* stored = file.FindTensor(name);
    if (stored == nullptr) return NotFound(path + ": missing tensor '" + name + "' (" + hf + ")");
    at::Tensor t = arena->Allocate(stored->shape);
    const bool q = hf.find("q_proj") != std::string::npos, k = hf.find("k_proj") != std::string::npos;
    const int64_t heads = q ? c.num_heads : c.num_kv_heads;
    // Q/K rows are dequantized beside, then copied into place in Hugging Face's order (a
    // misshapen tensor is left as it is for FillWeights to report).
    if ((q || k) && stored->shape.size() == 2 && stored->shape[0] % (2 * heads) == 0) {
      at::Tensor gguf_order = at::empty(stored->shape, at::TensorOptions().dtype(at::kFloat));
      GLASSBOX_RETURN_IF_ERROR(Dequantize(*stored, gguf_order));
      t.view({heads, 2, stored->shape[0] / heads / 2, stored->shape[1]})
          .copy_(ReversePermuted(gguf_order, heads));
    } else {
      GLASSBOX_RETURN_IF_ERROR(Dequantize(*stored, t));
    }
    ReleasePages(*stored);
    return t;
  };
  GLASSBOX_RETURN_IF_ERROR(FillWeights(c, path, lookup, loaded.weights));
  StatusOr<Tokenizer> tokenizer = Tokenizer::FromGguf(file);
  if (!tokenizer.ok()) return tokenizer.status().WithContext(path + ": tokenizer");
  loaded.tokenizer = std::make_unique<Tokenizer>(std::move(tokenizer).value());
  return loaded;
}

// ---- Hugging Face directory ----

StatusOr<nlohmann::json> ReadJson(const std::string& path) {
  std::ifstream in(path);
  if (!in) return NotFound("cannot open " + path);
  nlohmann::json j = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return InvalidArgument(path + ": not a JSON object");
  return j;
}

StatusOr<ModelConfig> HfConfig(const std::string& path) {
  GLASSBOX_ASSIGN_OR_RETURN(nlohmann::json j, ReadJson(path));
  const std::string model_type = j.value("model_type", "");
  if (model_type != "llama" && model_type != "mistral") {
    return Unimplemented(path + ": model_type '" + model_type + "' is not supported; " + kSupported);
  }
  if (j.contains("rope_scaling") && !j["rope_scaling"].is_null()) {
    return Unimplemented(path + ": rope_scaling is not supported yet");
  }
  ModelConfig c;
  try {
    c.vocab_size = j.at("vocab_size").get<int64_t>();
    c.hidden_size = j.at("hidden_size").get<int64_t>();
    c.intermediate_size = j.at("intermediate_size").get<int64_t>();
    c.num_layers = j.at("num_hidden_layers").get<int64_t>();
    c.num_heads = j.at("num_attention_heads").get<int64_t>();
    c.num_kv_heads = j.value("num_key_value_heads", c.num_heads);
    c.head_dim = j.contains("head_dim") && !j["head_dim"].is_null() ? j["head_dim"].get<int64_t>()
                                                                  : c.hidden_size / c.num_heads;
    // transformers 5 writes rope_parameters.rope_theta; earlier versions a top-level key.
    c.rope_theta = j.value("rope_theta", 10000.0);
    if (j.contains("rope_parameters") && j["rope_parameters"].is_object()) {
      const nlohmann::json& rope = j["rope_parameters"];
      c.rope_theta = rope.value("rope_theta", c.rope_theta);
      const std::string type = rope.value("rope_type", "default");
      if (type != "default") {
        return Unimplemented(path + ": rope_type '" + type + "' is not supported yet (only default)");
      }
    }
    c.rms_norm_eps = j.value("rms_norm_eps", 1e-6);
    c.max_position_embeddings = j.value("max_position_embeddings", int64_t{2048});
    c.tie_word_embeddings = j.value("tie_word_embeddings", false);
    c.bos_id = j.contains("bos_token_id") && j["bos_token_id"].is_number() ? j["bos_token_id"].get<int64_t>() : -1;
    c.eos_id = j.contains("eos_token_id") && j["eos_token_id"].is_number() ? j["eos_token_id"].get<int64_t>() : -1;
  } catch (const nlohmann::json::exception& e) {
    return InvalidArgument(path + ": " + e.what());
  }
  GLASSBOX_RETURN_IF_ERROR(ValidateConfig(path, c));
  return c;
}

StatusOr<LoadedModel> LoadHfDirectory(const std::string& dir) {
  LoadedModel loaded;
  GLASSBOX_ASSIGN_OR_RETURN(loaded.config, HfConfig(dir + "/config.json"));
  GLASSBOX_ASSIGN_OR_RETURN(std::vector<StoredTensor> stored, LoadSafetensorsDirectory(dir));
  std::map<std::string, const StoredTensor*> by_name;
  for (const StoredTensor& t : stored) by_name[t.name] = &t;
  TensorLookup lookup = [&](const std::string& hf) -> StatusOr<at::Tensor> {
    auto it = by_name.find(hf);
    if (it == by_name.end()) return NotFound(dir + ": missing tensor '" + hf + "'");
    return ViewStoredTensor(*it->second);
  };
  GLASSBOX_RETURN_IF_ERROR(FillWeights(loaded.config, dir, lookup, loaded.weights));
  std::ifstream tokenizer_json(dir + "/tokenizer.json");
  if (tokenizer_json) {
    GLASSBOX_ASSIGN_OR_RETURN(Tokenizer t, Tokenizer::FromTokenizerJson(dir + "/tokenizer.json"));
    loaded.tokenizer = std::make_unique<Tokenizer>(std::move(t));
  }
  return loaded;
}

bool IsDirectory(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

}  // namespace

StatusOr<LoadedModel> LoadModelFiles(const std::string& path) {
  if (IsDirectory(path)) return LoadHfDirectory(path);
  if (path.size() > 5 && path.substr(path.size() - 5) == ".gguf") return LoadGguf(path);
  struct stat st;
  if (stat(path.c_str(), &st) != 0) return NotFound("model path " + path + " does not exist");
  return InvalidArgument(path + ": expected a .gguf file or a Hugging Face model directory "
                         "(config.json + model.safetensors)");
}

}  // namespace glassbox
