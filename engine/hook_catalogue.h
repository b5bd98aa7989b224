// HookCatalogue: every hook point of a loaded model, with its aliases, symbolic shape,
// dtype and meaning. Pure data (no LibTorch), built once per model; thread-safe to read.
//
// Points are numbered densely so the forward pass can ask "does anyone want point 1234?"
// with one vector lookup: global points first, then the same `LayerPoint` list per layer.
#ifndef GLASSBOX_ENGINE_HOOK_CATALOGUE_H_
#define GLASSBOX_ENGINE_HOOK_CATALOGUE_H_

#include <cstdint>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

namespace glassbox {

// Hook points outside the decoder layers, in forward order.
enum class GlobalPoint : int {
  kEmbedInput,   // model.embed_tokens.input (token ids)
  kEmbedOutput,  // model.embed_tokens.output
  kNormInput,    // model.norm.input
  kNormOutput,   // model.norm.output
  kLmHeadInput,  // lm_head.input
  kLmHeadOutput, // lm_head.output (logits)
  kCount
};

// Hook points inside decoder layer N, in forward order.
enum class LayerPoint : int {
  kInput, kLn1Input, kLn1Output, kAttnInput,
  kQProjInput, kQProjOutput, kKProjInput, kKProjOutput, kVProjInput, kVProjOutput,
  kQ, kK, kV, kQRot, kKRot, kAttnScores, kAttnPattern, kZ,
  kOProjInput, kOProjOutput, kAttnOutput,
  kLn2Input, kLn2Output, kMlpInput,
  kGateProjInput, kGateProjOutput, kUpProjInput, kUpProjOutput, kDownProjInput, kDownProjOutput,
  kMlpOutput, kOutput,
  kCount
};

struct HookPointInfo {
  std::string name;                  // Hugging Face module path + .input/.output, or internal
  std::vector<std::string> aliases;  // TransformerLens names of the same point
  std::vector<std::string> shape;    // symbolic: "batch", "seq", "k_seq" or a number
  std::string dtype;                 // "float32" (model dtype) or "int64"
  std::string meaning;               // one line
  int layer = -1;                    // -1 outside the decoder layers
};

// Sizes the catalogue needs from the model config.
struct CatalogueDims {
  int64_t num_layers = 0, hidden = 0, intermediate = 0, heads = 0, kv_heads = 0,
          head_dim = 0, vocab = 0;
  std::string dtype = "float32";
};

class HookCatalogue {
 public:
  explicit HookCatalogue(const CatalogueDims& dims);

  int size() const { return static_cast<int>(points_.size()); }
  const std::vector<HookPointInfo>& points() const { return points_; }
  const HookPointInfo& point(int id) const { return points_[id]; }
  int num_layers() const { return num_layers_; }

  static int GlobalId(GlobalPoint p) { return static_cast<int>(p); }
  static int LayerId(int layer, LayerPoint p) {
    return static_cast<int>(GlobalPoint::kCount) +
           layer * static_cast<int>(LayerPoint::kCount) + static_cast<int>(p);
  }

  // The id of a name or alias, or nullopt.
  std::optional<int> Find(const std::string& name) const;
  // Up to `max` known names closest to `name` (edit distance), for "did you mean" errors.
  std::vector<std::string> Suggest(const std::string& name, int max = 3) const;
  // {"hook_points": [{"name", "aliases", "shape", "dtype", "meaning"}, ...]} as JSON text.
  std::string ToJson() const;

 private:
  void AddGlobalPoints(const CatalogueDims& d);
  void AddLayerPoints(const CatalogueDims& d, int layer);
  void Add(HookPointInfo info);

  int num_layers_;
  std::vector<HookPointInfo> points_;
  std::unordered_map<std::string, int> by_name_;  // names and aliases
};

}  // namespace glassbox

#endif  // GLASSBOX_ENGINE_HOOK_CATALOGUE_H_
