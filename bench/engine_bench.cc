// Engine benchmark on SmolLM2 (or any model of any family given with --model): forward passes with no
// hooks and with a callback reading every hook point, against the time of the same model's
// matrix products alone (the lower bound); peak memory against the weights in the run's dtype;
// generation tokens/s. --synthetic-1b DIR writes (once) and runs a random 1.1B-parameter Llama
// in bfloat16 safetensors: a large model on a small machine. Prints ratios; asserts nothing.
#include <ATen/Parallel.h>
#include <ATen/TensorOperators.h>
#include <ATen/ops/bmm.h>
#include <ATen/ops/randint.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/randn.h>
#include <nlohmann/json.hpp>
#include <CLI/CLI.hpp>
#include <torch/version.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <sys/wait.h>
#include <unistd.h>
#include <fstream>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "bench/bench_util.h"
#include "engine/engine.h"

namespace glassbox {
namespace {

using bench::ResetPeakRss;
using bench::Seconds;
using bench::StatusBytes;



// The trailing size a module takes: the last dimension of its .input point.
int64_t InputSize(const Model& model, const std::string& module) {
  std::optional<int> id = model.catalogue().Find(module + ".input");
  return id ? std::stoll(model.catalogue().point(*id).shape.back()) : 0;
}

// The matrix products of one forward pass, alone: every projection and the unembedding on
// the model's own weights (through ApplyModule, whose lookup costs microseconds; the family
// names them), and each layer's two attention products (queries x keys, pattern x values)
// on stand-in inputs.
std::function<void()> MatmulsOnly(const Model& model, int64_t batch, int64_t seq) {
  const ModelConfig& c = model.config();
  const int64_t kv = c.num_kv_heads;
  const int64_t rows = c.num_heads / kv * seq;  // query heads grouped under their key head
  const auto options = at::TensorOptions().device(model.torch_device()).dtype(
      model.dtype() == "bfloat16" ? at::kBFloat16 : model.dtype() == "float16" ? at::kHalf : at::kFloat);
  at::Tensor queries = at::randn({batch * kv, rows, c.head_dim}, options);
  at::Tensor keys = at::randn({batch * kv, c.head_dim, seq}, options);
  at::Tensor pattern = at::randn({batch * kv, rows, seq}, options);
  at::Tensor values = at::randn({batch * kv, seq, c.head_dim}, options);
  std::map<int64_t, at::Tensor> inputs;  // by size
  std::vector<std::pair<std::string, at::Tensor>> products;
  for (const std::string& module : model.MatmulModules()) {
    const int64_t size = InputSize(model, module);
    if (!inputs.count(size)) inputs[size] = at::randn({batch, seq, size}, options);
    products.emplace_back(module, inputs[size]);
  }
  return [&model, products, queries, keys, pattern, values, layers = c.num_layers]() {
    for (const auto& [name, input] : products) (void)model.ApplyModule(name, input);
    for (int64_t l = 0; l < layers; ++l) {
      at::bmm(queries, keys);
      at::bmm(pattern, values);
    }
  };
}

// Peak resident memory above `baseline` (bytes) while `fn` runs.
double PeakDuring(const std::function<void()>& fn, double baseline) {
  ResetPeakRss();
  fn();
  return StatusBytes("VmHWM:") - baseline;
}

struct ShapePeaks {
  double plain = 0, hooked = 0;  // bytes above the baseline
};

// Times the shape's forward passes, interleaved with the matmul bound (ratios are medians of
// per-round ratios), and returns their peak resident memory.
ShapePeaks BenchShape(const Model& model, int64_t batch, int64_t seq, int repeats, double baseline) {
  std::vector<std::vector<int64_t>> prompts(batch);
  for (auto& p : prompts) {
    for (int64_t i = 0; i < seq; ++i) p.push_back((i * 7919 + 13) % model.config().vocab_size);
  }
  HookSet none(model.catalogue());
  HookSet all(model.catalogue());
  double touched = 0;
  all.AddMatching("", [&touched](const HookContext&, at::Tensor& v) {
    touched += static_cast<double>(v.numel());  // read the tensor's metadata, keep it alive
    return Status::Ok();
  });
  // As the interpreter runs passes: the logits stay on the device.
  auto plain = [&] { (void)model.Forward({prompts, true, /*return_logits=*/false}, &none); };
  auto hooked = [&] { (void)model.Forward({prompts, true, /*return_logits=*/false}, &all); };
  const auto times = bench::InterleavedSeconds({MatmulsOnly(model, batch, seq), plain, hooked}, repeats);
  ShapePeaks peaks;
  peaks.plain = PeakDuring(plain, baseline);
  peaks.hooked = PeakDuring(hooked, baseline);
  std::printf("forward %3lldx%-4lld  matmul bound %8.2f ms  no hooks %8.2f ms (%.2fx)  "
              "all %d hooks read %8.2f ms (%.2fx)  peak RSS %.0f / %.0f MB\n",
              static_cast<long long>(batch), static_cast<long long>(seq), bench::Median(times[0]) * 1e3,
              bench::Median(times[1]) * 1e3, bench::MedianRatio(times[1], times[0]),
              model.catalogue().size(), bench::Median(times[2]) * 1e3,
              bench::MedianRatio(times[2], times[0]), peaks.plain / 1e6, peaks.hooked / 1e6);
  return peaks;
}

void BenchGenerate(const Model& model, int new_tokens) {
  std::vector<int64_t> prompt = model.tokenizer()
                                    ? model.tokenizer()->Encode("The capital of France is", false)
                                    : std::vector<int64_t>{1, 2, 3, 4, 5};
  SamplingParams s;
  s.max_new_tokens = new_tokens;
  s.stop_ids = {-1};
  const double seconds = Seconds([&] { (void)model.Generate({prompt}, s); }, 3);
  std::printf("generate 1x%d greedy: %.1f tokens/s\n", new_tokens, new_tokens / seconds);
}

// The tokenizer's encoding speed on 1 MiB of ordinary English (a target of >= 1 MB/s, which
// the tokenizer tests asserted until tests stopped timing things).
void BenchTokenizer(const Model& model) {
  if (model.tokenizer() == nullptr) return;
  const std::string sentence = "The quick brown fox jumps over the lazy dog, and the capital of "
                               "France is Paris; 1,234 people counted 56.7% of it. ";
  std::string text;
  while (text.size() < (1u << 20)) text += sentence;
  size_t count = 0;
  const double seconds = Seconds([&] { count = model.tokenizer()->Encode(text, false).size(); }, 3);
  std::printf("tokenizer: %zu bytes into %zu tokens, %.1f MB/s (target >= 1 MB/s)\n", text.size(), count,
              text.size() / 1e6 / seconds);
}

// Writes DIR/config.json and DIR/model.safetensors: TinyLlama-1.1B's shapes (22 layers, width
// 2048, 32 heads over 4 key/value heads, vocabulary 32000) with random bfloat16 weights
// (normal, std 0.02; norms 1). Kept when already there. Returns false on a write error.
bool WriteSyntheticLlama(const std::string& dir) {
  if (std::ifstream(dir + "/model.safetensors").good()) return true;
  const int64_t width = 2048, mlp = 5632, layers = 22, heads = 32, kv_heads = 4, vocab = 32000;
  const int64_t head_dim = width / heads;
  std::vector<std::pair<std::string, std::vector<int64_t>>> tensors = {
      {"model.embed_tokens.weight", {vocab, width}}};
  for (int64_t l = 0; l < layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    tensors.push_back({p + "input_layernorm.weight", {width}});
    tensors.push_back({p + "self_attn.q_proj.weight", {heads * head_dim, width}});
    tensors.push_back({p + "self_attn.k_proj.weight", {kv_heads * head_dim, width}});
    tensors.push_back({p + "self_attn.v_proj.weight", {kv_heads * head_dim, width}});
    tensors.push_back({p + "self_attn.o_proj.weight", {width, heads * head_dim}});
    tensors.push_back({p + "post_attention_layernorm.weight", {width}});
    tensors.push_back({p + "mlp.gate_proj.weight", {mlp, width}});
    tensors.push_back({p + "mlp.up_proj.weight", {mlp, width}});
    tensors.push_back({p + "mlp.down_proj.weight", {width, mlp}});
  }
  tensors.push_back({"model.norm.weight", {width}});
  tensors.push_back({"lm_head.weight", {vocab, width}});
  nlohmann::json header = nlohmann::json::object();
  int64_t offset = 0;
  for (const auto& [name, shape] : tensors) {
    int64_t numel = 1;
    for (int64_t d : shape) numel *= d;
    header[name] = {{"dtype", "BF16"}, {"shape", shape}, {"data_offsets", {offset, offset + 2 * numel}}};
    offset += 2 * numel;
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  std::fprintf(stderr, "writing a random 1.1B-parameter Llama (%.1f GB, bfloat16) to %s ...\n",
               offset / 1e9, dir.c_str());
  if (std::system(("mkdir -p '" + dir + "'").c_str()) != 0) return false;
  const nlohmann::json config = {
      {"model_type", "llama"}, {"architectures", {"LlamaForCausalLM"}}, {"hidden_size", width},
      {"intermediate_size", mlp}, {"num_hidden_layers", layers}, {"num_attention_heads", heads},
      {"num_key_value_heads", kv_heads}, {"vocab_size", vocab}, {"max_position_embeddings", 2048},
      {"rms_norm_eps", 1e-5}, {"rope_theta", 10000.0}, {"hidden_act", "silu"},
      {"tie_word_embeddings", false}, {"bos_token_id", 1}, {"eos_token_id", 2},
      {"torch_dtype", "bfloat16"}};
  std::ofstream(dir + "/config.json") << config.dump(2);
  const std::string partial = dir + "/model.safetensors.partial";
  std::ofstream out(partial, std::ios::binary);
  const uint64_t header_size = text.size();
  out.write(reinterpret_cast<const char*>(&header_size), 8);
  out.write(text.data(), static_cast<std::streamsize>(text.size()));
  for (const auto& [name, shape] : tensors) {
    const bool norm = shape.size() == 1;
    at::Tensor t = norm ? at::ones(shape, at::kBFloat16) : (at::randn(shape) * 0.02).to(at::kBFloat16);
    out.write(static_cast<const char*>(t.data_ptr()), static_cast<std::streamsize>(t.numel() * 2));
  }
  out.close();
  if (!out) return false;
  return std::rename(partial.c_str(), (dir + "/model.safetensors").c_str()) == 0;
}

}  // namespace
}  // namespace glassbox

int main(int argc, char** argv) {
  using namespace glassbox;
  using bench::ResetPeakRss;
  using bench::Seconds;
  using bench::StatusBytes;
  CLI::App app{"Glassbox engine benchmark"};
  std::string path = "models/SmolLM2-135M-Instruct.Q4_1.gguf";
  EngineParams params;
  int repeats = 5;
  std::vector<std::string> shapes = {"1x16", "1x128", "8x64"};
  bool generate = true;
  app.add_option("--model", path)->capture_default_str();
  std::string synthetic;
  app.add_option("--synthetic-1b", synthetic,
                 "write (once) a random 1.1B-parameter bfloat16 Llama to this directory and "
                 "run it (sets --model and --dtype bfloat16)");
  app.add_option("--device", params.device, "cpu, cuda, cuda:N or auto")->capture_default_str();
  app.add_option("--dtype", params.dtype, "float32, bfloat16 or float16")->capture_default_str();
  app.add_option("--threads", params.intra_op_threads)->capture_default_str();
  app.add_option("--mmap-threshold", params.malloc_mmap_threshold,
                 "glibc: allocations this large are mmapped (0: leave malloc alone)")
      ->capture_default_str();
  app.add_option("--repeats", repeats)->capture_default_str();
  app.add_option("--shapes", shapes, "forward shapes, BATCHxSEQ")->delimiter(',')->capture_default_str();
  app.add_flag("!--no-generate", generate, "skip the generation benchmark");
  CLI11_PARSE(app, argc, argv);
  if (!synthetic.empty()) {
    // Written by a child process, so its temporaries never count in this one's memory.
    const pid_t child = fork();
    if (child == 0) _exit(WriteSyntheticLlama(synthetic) ? 0 : 1);
    int status = 0;
    if (child < 0 || waitpid(child, &status, 0) != child || !WIFEXITED(status) ||
        WEXITSTATUS(status) != 0) {
      std::fprintf(stderr, "error: cannot write the synthetic model to %s\n", synthetic.c_str());
      return 1;
    }
    path = synthetic;
    params.dtype = "bfloat16";
  }

  const double rss_before_load = StatusBytes("VmRSS:");  // LibTorch's own pages
  auto loaded = Model::Load(path, params);
  if (!loaded.ok()) {
    std::fprintf(stderr, "error: %s\n", loaded.status().ToString().c_str());
    return 1;
  }
  const Model& model = **loaded;
  const ModelConfig& c = model.config();
  const double weight_bytes = static_cast<double>(model.WeightBytes());
  const double peak_after_load = StatusBytes("VmHWM:") - rss_before_load;
  std::printf("resident after load %.1f MB\n", (StatusBytes("VmRSS:") - rss_before_load) / 1e6);
  std::printf("model %s (%s): %s weights %.1f MB on %s, %zu matrix-product modules, LibTorch %s, "
              "threads %d\n",
              path.c_str(), c.architecture.c_str(), model.dtype().c_str(), weight_bytes / 1e6,
              model.device().c_str(), model.MatmulModules().size(), TORCH_VERSION,
              at::get_num_threads());
  double peak_plain = 0, peak_hooked = 0;
  for (const std::string& shape : shapes) {
    long long batch = 0, seq = 0;
    if (std::sscanf(shape.c_str(), "%lldx%lld", &batch, &seq) != 2 || batch < 1 || seq < 1) {
      std::fprintf(stderr, "error: --shapes wants BATCHxSEQ like 8x64, got '%s'\n", shape.c_str());
      return 1;
    }
    const ShapePeaks peaks = BenchShape(model, batch, seq, repeats, rss_before_load);
    peak_plain = std::max(peak_plain, peaks.plain);
    peak_hooked = std::max(peak_hooked, peaks.hooked);
  }
  const double peak_generate =
      generate ? PeakDuring([&] { BenchGenerate(model, 32); }, rss_before_load) : 0;
  BenchTokenizer(model);
  std::printf("process RSS before loading (LibTorch itself) %.1f MB\n", rss_before_load / 1e6);
  std::printf("peak RSS above that, as a ratio to the %s weights (target after loading <= "
              "1.15x; passes add their activations):\n"
              "  after loading %.1f MB (%.2fx); forward passes %.1f MB (%.2fx); with every hook "
              "read %.1f MB (%.2fx)",
              model.dtype().c_str(), peak_after_load / 1e6, peak_after_load / weight_bytes,
              peak_plain / 1e6, peak_plain / weight_bytes, peak_hooked / 1e6,
              peak_hooked / weight_bytes);
  if (generate) {
    std::printf("; generation %.1f MB (%.2fx)", peak_generate / 1e6, peak_generate / weight_bytes);
  }
  std::printf("\n");
  return 0;
}
