// HookCatalogue: every hook point of a loaded model, with its aliases, symbolic shape,
// dtype and meaning. Pure data (no LibTorch), built once per model from the description
// its family gives (a CatalogueSpec); thread-safe to read.
//
// Points are numbered densely in forward order: the points before the decoder layers, then
// the same list of points for every layer, then the points after them. The forward pass
// asks "does anyone want point 1234?" with one vector lookup, and everything downstream
// (validation, the shape pass, the client) learns order, shapes and skip ranges from here,
// never from a family's own enum.
#ifndef GLASSBOX_ENGINE_HOOK_CATALOGUE_H_
#define GLASSBOX_ENGINE_HOOK_CATALOGUE_H_

#include <cstdint>
#include <optional>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

namespace glassbox {

// One hook point as a family declares it.
struct PointSpec {
  std::string name;                // full name; for layer points the part after the layer prefix
  std::string alias;               // TransformerLens name (same rule), "a|b" for two, "" for none
  std::vector<std::string> shape;  // "batch", "seq", "k_seq" or a number
  std::string meaning;             // one line
  std::string dtype;               // "" = the model's dtype; "int64" for token ids
  // For a module whose output may be skipped (a layer, its attention, its MLP): the name of
  // the module's input point in the same list; points strictly between are then not reached.
  std::string skip_from;
  bool last_position = false;  // only the last position when generating (the logits)
};

// What a family declares: its points in forward order and how layers are named.
struct CatalogueSpec {
  std::vector<PointSpec> before, layer, after;
  std::string layer_prefix = "model.layers.";  // a layer point is prefix + N + "." + name
  std::string alias_prefix = "blocks.";        // its alias alias_prefix + N + "." + alias
  int64_t num_layers = 0;
  std::string dtype = "float32";
};

struct HookPointInfo {
  std::string name;                  // Hugging Face module path + .input/.output, or internal
  std::vector<std::string> aliases;  // TransformerLens names of the same point
  std::vector<std::string> shape;    // symbolic: "batch", "seq", "k_seq" or a number
  std::string dtype;                 // "float32" (model dtype) or "int64"
  std::string meaning;               // one line
  int layer = -1;                    // -1 outside the decoder layers
  int skip_from = -1;                // id of the module's input point when skippable, else -1
  bool last_position = false;        // seq is 1 when only the last position's logits are made
};

// Levenshtein distance, for suggesting the closest names to a misspelt one.
int EditDistance(const std::string& a, const std::string& b);

class HookCatalogue {
 public:
  // Every name and skip_from must be unique and resolvable; a spec that breaks this is a bug
  // in its family and aborts.
  explicit HookCatalogue(const CatalogueSpec& spec);

  int size() const { return static_cast<int>(points_.size()); }
  const std::vector<HookPointInfo>& points() const { return points_; }
  const HookPointInfo& point(int id) const { return points_[id]; }
  int num_layers() const { return num_layers_; }

  // Ids of the points a family declared, by their index in the spec's lists.
  int BeforeId(int index) const { return index; }
  int LayerId(int layer, int index) const { return before_ + layer * per_layer_ + index; }
  int AfterId(int index) const { return before_ + num_layers_ * per_layer_ + index; }

  // Whether a skip of `id` (a module output) leaves `other` out of the pass.
  bool SkipCovers(int id, int other) const {
    const int from = points_[id].skip_from;
    return from >= 0 && other > from && other < id;
  }

  // The id of a name or alias, or nullopt.
  std::optional<int> Find(const std::string& name) const;
  // Up to `max` known names closest to `name` (edit distance), for "did you mean" errors.
  std::vector<std::string> Suggest(const std::string& name, int max = 3) const;
  // {"hook_points": [{"name", "aliases", "shape", "dtype", "meaning", "layer",
  // "skippable"?, "last_position"?}, ...]} as JSON text.
  std::string ToJson() const;

 private:
  void AddList(const std::vector<PointSpec>& list, const std::string& prefix,
               const std::string& alias_prefix, int layer, const std::string& dtype);
  void Add(HookPointInfo info);

  int num_layers_ = 0, before_ = 0, per_layer_ = 0;
  std::vector<HookPointInfo> points_;
  std::unordered_map<std::string, int> by_name_;  // names and aliases
};

}  // namespace glassbox

#endif  // GLASSBOX_ENGINE_HOOK_CATALOGUE_H_
