// Registration and dispatch of per-run hook callbacks.
#include "engine/hooks.h"

#include <sstream>

namespace glassbox {
namespace {

std::string ShapeString(at::IntArrayRef sizes) {
  std::ostringstream out;
  out << "[";
  for (size_t i = 0; i < sizes.size(); ++i) out << (i ? ", " : "") << sizes[i];
  out << "]";
  return out.str();
}

std::string JoinNames(const std::vector<std::string>& names) {
  std::string out;
  for (const std::string& n : names) out += (out.empty() ? "" : ", ") + n;
  return out;
}

}  // namespace

HookSet::HookSet(const HookCatalogue& catalogue)
    : catalogue_(catalogue), callbacks_(catalogue.size()) {}

Status HookSet::Add(const std::string& name, HookCallback callback) {
  std::optional<int> id = catalogue_.Find(name);
  if (!id) {
    return NotFound("unknown hook point '" + name + "'; did you mean: " +
                    JoinNames(catalogue_.Suggest(name)) + "?");
  }
  callbacks_[*id].push_back(std::move(callback));
  ++count_;
  return Status::Ok();
}

Status HookSet::AddSkip(const std::string& name) {
  std::optional<int> id = catalogue_.Find(name);
  if (!id) return NotFound("unknown hook point '" + name + "'; did you mean: " + JoinNames(catalogue_.Suggest(name)) + "?");
  const HookPointInfo& info = catalogue_.point(*id);
  if (info.skip_from < 0) {
    std::string skippable;
    for (const HookPointInfo& p : catalogue_.points()) {
      if (p.skip_from >= 0 && p.layer <= 0) skippable += (skippable.empty() ? "" : ", ") + p.name;
    }
    return InvalidArgument("cannot skip at " + info.name + ": only a layer, its attention or its "
                           "MLP can be skipped (in layer 0: " + skippable + ")");
  }
  if (skips_.empty()) skips_.assign(catalogue_.size(), false);
  skips_[*id] = true;
  ++count_;
  return Status::Ok();
}

int HookSet::AddMatching(const std::string& filter, const HookCallback& callback) {
  int matched = 0;
  for (int id = 0; id < catalogue_.size(); ++id) {
    const HookPointInfo& info = catalogue_.point(id);
    bool match = info.name.find(filter) != std::string::npos;
    for (const std::string& alias : info.aliases) match |= alias.find(filter) != std::string::npos;
    if (!match) continue;
    callbacks_[id].push_back(callback);
    ++count_;
    ++matched;
  }
  return matched;
}

Status HookSet::Run(int point_id, int step, at::Tensor& value) const {
  const HookPointInfo& info = catalogue_.point(point_id);
  HookContext context{point_id, &info, step};
  for (const HookCallback& callback : callbacks_[point_id]) {
    at::Tensor candidate = value;
    Status status = callback(context, candidate);
    if (!status.ok()) return status.WithContext("at hook point " + info.name);
    if (candidate.unsafeGetTensorImpl() == value.unsafeGetTensorImpl()) continue;
    if (!candidate.defined() || candidate.sizes() != value.sizes()) {
      return InvalidArgument("replacement at hook point " + info.name + " has shape " +
                             (candidate.defined() ? ShapeString(candidate.sizes()) : "<none>") +
                             " but the point has shape " + ShapeString(value.sizes()));
    }
    value = candidate.to(value.device(), value.scalar_type());
  }
  return Status::Ok();
}

}  // namespace glassbox
