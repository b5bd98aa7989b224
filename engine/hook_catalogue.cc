// Builds a model's hook catalogue from its family's CatalogueSpec: names, TransformerLens
// aliases, symbolic shapes, meanings and skip ranges, in forward order.
#include "engine/hook_catalogue.h"

#include <algorithm>
#include <nlohmann/json.hpp>

#include "base/check.h"

namespace glassbox {

int EditDistance(const std::string& a, const std::string& b) {
  std::vector<int> prev(b.size() + 1), cur(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) prev[j] = static_cast<int>(j);
  for (size_t i = 1; i <= a.size(); ++i) {
    cur[0] = static_cast<int>(i);
    for (size_t j = 1; j <= b.size(); ++j) {
      int sub = prev[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1);
      cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, sub});
    }
    std::swap(prev, cur);
  }
  return prev[b.size()];
}

HookCatalogue::HookCatalogue(const CatalogueSpec& spec)
    : num_layers_(static_cast<int>(spec.num_layers)),
      before_(static_cast<int>(spec.before.size())),
      per_layer_(static_cast<int>(spec.layer.size())) {
  AddList(spec.before, "", "", -1, spec.dtype);
  for (int layer = 0; layer < num_layers_; ++layer) {
    AddList(spec.layer, spec.layer_prefix + std::to_string(layer) + ".",
            spec.alias_prefix + std::to_string(layer) + ".", layer, spec.dtype);
  }
  AddList(spec.after, "", "", -1, spec.dtype);
}

void HookCatalogue::AddList(const std::vector<PointSpec>& list, const std::string& prefix,
                            const std::string& alias_prefix, int layer, const std::string& dtype) {
  const int first = size();
  for (const PointSpec& spec : list) {
    HookPointInfo info{prefix + spec.name, {}, spec.shape, spec.dtype.empty() ? dtype : spec.dtype,
                       spec.meaning, layer};
    for (size_t start = 0; start < spec.alias.size();) {  // "a|b": several aliases
      const size_t bar = std::min(spec.alias.find('|', start), spec.alias.size());
      info.aliases.push_back(alias_prefix + spec.alias.substr(start, bar - start));
      start = bar + 1;
    }
    info.last_position = spec.last_position;
    if (!spec.skip_from.empty()) {
      std::optional<int> from = Find(prefix + spec.skip_from);
      GLASSBOX_CHECK(from && *from >= first, "skip_from of " + info.name + " is not an earlier point of its list");
      info.skip_from = *from;
    }
    Add(std::move(info));
  }
}

void HookCatalogue::Add(HookPointInfo info) {
  const int id = size();
  GLASSBOX_CHECK(!by_name_.count(info.name), "hook point " + info.name + " declared twice");
  by_name_[info.name] = id;
  for (const std::string& alias : info.aliases) {
    GLASSBOX_CHECK(!by_name_.count(alias), "hook point alias " + alias + " declared twice");
    by_name_[alias] = id;
  }
  points_.push_back(std::move(info));
}

std::optional<int> HookCatalogue::Find(const std::string& name) const {
  auto it = by_name_.find(name);
  if (it == by_name_.end()) return std::nullopt;
  return it->second;
}

std::vector<std::string> HookCatalogue::Suggest(const std::string& name, int max) const {
  std::vector<std::pair<int, std::string>> scored;
  scored.reserve(by_name_.size());
  for (const auto& entry : by_name_) scored.emplace_back(EditDistance(name, entry.first), entry.first);
  std::sort(scored.begin(), scored.end());
  std::vector<std::string> out;
  for (int i = 0; i < max && i < static_cast<int>(scored.size()); ++i) out.push_back(scored[i].second);
  return out;
}

std::string HookCatalogue::ToJson() const {
  nlohmann::json points = nlohmann::json::array();
  for (const HookPointInfo& p : points_) {
    nlohmann::json entry = {{"name", p.name}, {"aliases", p.aliases}, {"shape", p.shape},
                            {"dtype", p.dtype}, {"meaning", p.meaning}, {"layer", p.layer}};
    if (p.skip_from >= 0) entry["skippable"] = true;
    if (p.last_position) entry["last_position"] = true;
    points.push_back(std::move(entry));
  }
  return nlohmann::json{{"hook_points", points}}.dump();
}

}  // namespace glassbox
