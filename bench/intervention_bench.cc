// Intervention-graph benchmark on SmolLM2: an empty graph and a 30-layer logit lens against
// a plain forward pass, the interpreter's overhead per scalar node, and caching the
// residual stream at every layer for 8x64 tokens (time and memory). Prints ratios.
#include <ATen/TensorOperators.h>
#include <ATen/ops/ones.h>
#include <CLI/CLI.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "bench/bench_util.h"
#include "engine/engine.h"
#include "intervention/intervention.h"

namespace glassbox {
namespace {

using bench::ResetPeakRss;
using bench::Seconds;
using bench::StatusBytes;

using protocol::Value;




std::vector<int64_t> Prompt(int64_t n) {
  std::vector<int64_t> ids;
  for (int64_t i = 0; i < n; ++i) ids.push_back((i * 7919 + 13) % 49152);
  return ids;
}

protocol::Request OneTrace(std::vector<std::vector<int64_t>> prompts) {
  protocol::Request r;
  r.traces.emplace_back();
  for (auto& p : prompts) r.traces[0].invokes.push_back({std::nullopt, p});
  return r;
}

protocol::Node MakeNode(int64_t id, const std::string& op, std::vector<Value> args,
                        std::map<std::string, Value> kwargs = {}) {
  protocol::Node n;
  n.id = id;
  n.op = op;
  n.args = std::move(args);
  n.kwargs = std::move(kwargs);
  return n;
}

void RunOrDie(const Model& model, const protocol::Request& r) {
  auto result = intervention::Run(model, r);
  if (!result.ok()) {
    std::fprintf(stderr, "error: %s\n", result.status().ToString().c_str());
    std::exit(1);
  }
}

protocol::Request LogitLens(const Model& model, const std::vector<int64_t>& prompt) {
  protocol::Request r = OneTrace({prompt});
  auto& nodes = r.traces[0].nodes;
  for (int64_t layer = 0; layer < model.config().num_layers; ++layer) {
    const int64_t base = layer * 5;
    nodes.push_back(MakeNode(base, "read", {}, {{"point", Value::String("model.layers." + std::to_string(layer) + ".output")}, {"invoke", Value::Int(0)}}));
    nodes.push_back(MakeNode(base + 1, "getitem", {Value::Ref(base), Value::List({Value::MakeSlice({}), Value::Int(-1)})}));
    nodes.push_back(MakeNode(base + 2, "module", {Value::Ref(base + 1)}, {{"name", Value::String("model.norm")}}));
    nodes.push_back(MakeNode(base + 3, "module", {Value::Ref(base + 2)}, {{"name", Value::String("lm_head")}}));
    nodes.push_back(MakeNode(base + 4, "save", {Value::Ref(base + 3)}));
  }
  return r;
}

}  // namespace
}  // namespace glassbox

int main(int argc, char** argv) {
  using namespace glassbox;
  using bench::ResetPeakRss;
  using bench::Seconds;
  using bench::StatusBytes;
  CLI::App app{"Glassbox intervention benchmark"};
  std::string path = "models/SmolLM2-135M-Instruct.Q4_1.gguf";
  int repeats = 5;
  int chain = 10000;
  app.add_option("--model", path)->capture_default_str();
  app.add_option("--repeats", repeats)->capture_default_str();
  app.add_option("--chain", chain, "scalar nodes in the overhead test")->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  auto loaded = Model::Load(path);
  if (!loaded.ok()) {
    std::fprintf(stderr, "error: %s\n", loaded.status().ToString().c_str());
    return 1;
  }
  const Model& model = **loaded;
  intervention::InterventionLimits limits;
  const std::vector<int64_t> prompt = Prompt(16);

  const double plain = Seconds([&] { (void)model.Forward({{prompt}}); }, repeats);
  const double empty = Seconds([&] { RunOrDie(model, OneTrace({prompt})); }, repeats);
  std::printf("1x16 plain forward %.2f ms; empty graph %.2f ms (%.3fx, target <= 1.05x)\n",
              plain * 1e3, empty * 1e3, empty / plain);
  protocol::Request lens = LogitLens(model, prompt);
  const double lens_time = Seconds([&] { RunOrDie(model, lens); }, repeats);
  std::printf("logit lens over all %lld layers (last position): %.2f ms (%.3fx a plain forward)\n",
              static_cast<long long>(model.config().num_layers), lens_time * 1e3, lens_time / plain);

  // A chain of scalar additions, all constants: pure interpreter cost plus a tiny op each.
  protocol::Request scalars = OneTrace({{1}});
  auto& nodes = scalars.traces[0].nodes;
  nodes.push_back(MakeNode(0, "ones", {Value::List({Value::Int(1)})}));
  for (int i = 1; i < chain; ++i) nodes.push_back(MakeNode(i, "add", {Value::Ref(i - 1), Value::Float(1.0)}));
  nodes.push_back(MakeNode(chain, "save", {Value::Ref(chain - 1)}));
  at::Tensor x = at::ones({1});
  const double raw = Seconds([&] { at::Tensor y = x; for (int i = 1; i < chain; ++i) y = y + 1.0; }, repeats);
  const double graph = Seconds([&] { RunOrDie(model, scalars); }, repeats) - Seconds([&] { (void)model.Forward({{{1}}}); }, repeats);
  std::printf("scalar nodes: %.2f us per node in a graph, %.2f us per raw LibTorch add: "
              "overhead %.2f us per node (target <= 5 us)\n",
              graph / chain * 1e6, raw / chain * 1e6, (graph - raw) / chain * 1e6);

  // Residual stream at every layer for 8 x 64 tokens.
  std::vector<std::vector<int64_t>> batch(8, Prompt(64));
  protocol::Request cache = OneTrace(batch);
  cache.traces[0].nodes.push_back(MakeNode(0, "cache", {}, {{"filter", Value::String("hook_resid_post")}}));
  const double plain8 = Seconds([&] { (void)model.Forward({batch}); }, 3);
  ResetPeakRss();
  const double before = StatusBytes("VmRSS:");
  const double cached = Seconds([&] { RunOrDie(model, cache); }, 3);
  const double peak = StatusBytes("VmHWM:") - before;
  const double saved = 8.0 * 64 * model.config().hidden_size * 4 * model.config().num_layers;
  std::printf("8x64 plain forward %.1f ms; caching the residual stream of all layers %.1f ms "
              "(%.3fx); saved %.1f MB, peak memory above the loaded model %.1f MB (%.2fx saved)\n",
              plain8 * 1e3, cached * 1e3, cached / plain8, saved / 1e6, peak / 1e6, peak / saved);
  return 0;
}
