// The generation loop: groups of rows join (prefilled in a pass of their own, then merged
// into the batch's KV cache with left padding) and leave (their rows dropped, padding every
// remaining row shares trimmed) between steps; greedy picks on the device, seeded sampling
// per group on the CPU.
#include "engine/generation.h"

#include <ATen/TensorOperators.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/tensor.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <string>

#include "engine/family.h"

namespace glassbox {
namespace {

// Picks the next token from one row of logits (float32, CPU, contiguous).
int64_t SampleToken(const float* logits, int64_t vocab, const SamplingParams& s,
                    std::mt19937_64& rng) {
  if (s.temperature <= 0.0) return std::max_element(logits, logits + vocab) - logits;
  std::vector<int64_t> order(vocab);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return logits[a] > logits[b]; });
  const int64_t keep_k = s.top_k > 0 ? std::min<int64_t>(s.top_k, vocab) : vocab;
  std::vector<double> probs;
  const double max_logit = logits[order[0]];
  double total = 0;
  for (int64_t i = 0; i < keep_k; ++i) {
    probs.push_back(std::exp((logits[order[i]] - max_logit) / s.temperature));
    total += probs.back();
  }
  double cumulative = 0;
  size_t keep = probs.size();
  for (size_t i = 0; i < probs.size(); ++i) {
    cumulative += probs[i] / total;
    if (cumulative >= s.top_p) { keep = i + 1; break; }
  }
  std::discrete_distribution<size_t> pick(probs.begin(), probs.begin() + keep);
  return order[pick(rng)];
}

}  // namespace

struct Generation::Group {
  int id = 0;
  std::vector<std::vector<int64_t>> prompts;  // until its prefill
  SamplingParams sampling;
  std::vector<int64_t> stops;
  std::mt19937_64 rng;  // one per group, drawn in row order: it samples as it would alone
  int64_t rows = 0;
  int step = 0;          // the step of its next pass
  bool in_batch = false;  // its rows are in the batch's tensors
  bool finished = false;  // every row has stopped
  std::vector<bool> done;
  GenerateResult result;

  // Decode passes it may still need (each writes one position of the KV cache).
  int64_t Remaining() const { return finished ? 0 : std::max<int64_t>(sampling.max_new_tokens - std::max(step, 1), 0); }
};

// The rows of the running groups, in join order, all left-padded to the cache's length.
struct Generation::Batch {
  KvCache cache;                // per layer [rows, kv_heads, capacity, head_dim]
  at::Tensor mask;              // [rows, cache.length] int64, 0 at padding
  at::Tensor next_ids;          // [rows, 1]: what the next decode step feeds
  at::Tensor next_positions;    // [rows, 1]
  std::vector<int> row_group;   // each row's group
  std::vector<int64_t> row_length;  // each row's real (unpadded) positions in the cache

  int64_t rows() const { return static_cast<int64_t>(row_group.size()); }
  int64_t capacity() const { return cache.keys.empty() ? 0 : cache.keys[0].size(2); }
};

Generation::Generation(const Model& model) : model_(model) {}
Generation::~Generation() = default;

StatusOr<int> Generation::Join(const std::vector<std::vector<int64_t>>& prompts, const SamplingParams& sampling) {
  if (sampling.max_new_tokens < 0) return InvalidArgument("max_new_tokens must be >= 0");
  GLASSBOX_RETURN_IF_ERROR(ValidatePrompts(prompts, model_.config(), sampling.max_new_tokens));
  auto g = std::make_unique<Group>();
  g->id = next_id_++;
  g->prompts = prompts;
  g->sampling = sampling;
  g->stops = sampling.stop_ids;
  if (g->stops.empty() && model_.config().eos_id >= 0) g->stops.push_back(model_.config().eos_id);
  g->rng.seed(sampling.seed);
  g->rows = static_cast<int64_t>(prompts.size());
  g->done.assign(g->rows, sampling.max_new_tokens == 0);
  g->finished = sampling.max_new_tokens == 0;
  g->result.new_tokens.resize(g->rows);
  g->result.stop_reasons.assign(g->rows, "max_new_tokens");
  groups_.push_back(std::move(g));
  return groups_.back()->id;
}

std::vector<Generation::Group*> Generation::Running() const {
  std::vector<Group*> out;
  for (const auto& g : groups_) {
    if (g->in_batch && !g->finished) out.push_back(g.get());
  }
  return out;
}

std::vector<Generation::Group*> Generation::Queued() const {
  std::vector<Group*> out;
  for (const auto& g : groups_) {
    if (!g->in_batch && !g->finished) out.push_back(g.get());
  }
  return out;
}

std::vector<Generation::Slot> Generation::NextPass() const {
  std::vector<Group*> pass = Queued();
  const bool prefill = !pass.empty();
  if (!prefill) pass = Running();
  std::vector<Slot> slots;
  int64_t row = 0;
  for (const Group* g : pass) {
    slots.push_back({g->id, row, g->rows, prefill ? 0 : g->step});
    row += g->rows;
  }
  return slots;
}

bool Generation::Idle() const { return Queued().empty() && Running().empty(); }

std::vector<int> Generation::Finished() const {
  std::vector<int> out;
  for (const auto& g : groups_) {
    if (g->finished) out.push_back(g->id);
  }
  return out;
}

GenerateResult Generation::Take(int group) {
  auto it = std::find_if(groups_.begin(), groups_.end(), [group](const auto& g) { return g->id == group; });
  if (it == groups_.end()) return {};
  GenerateResult result = std::move((*it)->result);
  groups_.erase(it);  // its rows, if any, go at the next Compact
  return result;
}

Status Generation::Step(const HookSet* hooks) {
  try {
    GLASSBOX_RETURN_IF_ERROR(Compact());
    const std::vector<Group*> queued = Queued();
    if (!queued.empty()) return Prefill(queued, hooks);
    const std::vector<Group*> running = Running();
    if (running.empty()) return Status::Ok();
    return Decode(running, hooks);
  } catch (const HookFailure& failure) {
    return failure.status;
  } catch (const c10::Error& e) {
    return Internal("generation failed: " + FirstLine(e.what()));
  }
}

Status Generation::Prefill(const std::vector<Group*>& queued, const HookSet* hooks) {
  const Transformer& t = *model_.transformer_;
  std::vector<std::vector<int64_t>> prompts;
  int64_t remaining = 0;
  for (Group* g : queued) {
    prompts.insert(prompts.end(), g->prompts.begin(), g->prompts.end());
    remaining = std::max<int64_t>(remaining, g->sampling.max_new_tokens - 1);
  }
  PaddedBatch padded = PadLeft(prompts, std::max<int64_t>(model_.config().eos_id, 0), t.device());
  const int64_t rows = padded.ids.size(0), seq = padded.ids.size(1);
  // The first groups of a generation fill the batch's own cache (room for every step);
  // later ones a cache of their prompts, merged into the batch's after the pass.
  const bool first = batch_ == nullptr;
  KvCache cache = t.NewCache(rows, first ? seq + remaining : seq);
  PassInputs in{padded.ids, padded.positions, padded.mask, &cache, hooks, 0, /*all_logits=*/false};
  at::Tensor logits = t.Forward(in);
  cache.length = seq;
  at::Tensor picked = Pick(queued, logits);
  Batch joining;
  joining.cache = std::move(cache);
  joining.mask = padded.mask;
  joining.next_ids = picked.to(t.device());  // (a split's logits are on the head's device)
  joining.next_positions = padded.positions.narrow(1, seq - 1, 1) + 1;
  for (Group* g : queued) {
    g->in_batch = true;
    g->step = 1;
    g->prompts.clear();
    for (int64_t r = 0; r < g->rows; ++r) joining.row_group.push_back(g->id);
  }
  for (const std::vector<int64_t>& p : prompts) joining.row_length.push_back(static_cast<int64_t>(p.size()));
  if (first) {
    batch_ = std::make_unique<Batch>(std::move(joining));
    return Status::Ok();
  }
  // Merge: every row right-aligned at the longer of the two lengths, with room for the
  // steps every running row may still take.
  Batch& b = *batch_;
  const int64_t old_rows = b.rows(), old_length = b.cache.length, length = std::max(old_length, seq);
  int64_t capacity = length;
  for (const Group* g : Running()) capacity = std::max(capacity, length + g->Remaining());
  for (size_t layer = 0; layer < b.cache.keys.size(); ++layer) {
    for (std::vector<at::Tensor>* part : {&b.cache.keys, &b.cache.values}) {
      const at::Tensor& old = (*part)[layer];
      const at::Tensor& joined = (part == &b.cache.keys ? joining.cache.keys : joining.cache.values)[layer];
      at::Tensor merged = at::zeros({old_rows + rows, old.size(1), capacity, old.size(3)}, old.options());
      merged.narrow(0, 0, old_rows).narrow(2, length - old_length, old_length).copy_(old.narrow(2, 0, old_length));
      merged.narrow(0, old_rows, rows).narrow(2, length - seq, seq).copy_(joined.narrow(2, 0, seq));
      (*part)[layer] = merged;
    }
  }
  at::Tensor mask = at::zeros({old_rows + rows, length}, b.mask.options());
  mask.narrow(0, 0, old_rows).narrow(1, length - old_length, old_length).copy_(b.mask);
  mask.narrow(0, old_rows, rows).narrow(1, length - seq, seq).copy_(joining.mask);
  b.mask = mask;
  b.cache.length = length;
  b.next_ids = at::cat({b.next_ids, joining.next_ids});
  b.next_positions = at::cat({b.next_positions, joining.next_positions});
  b.row_group.insert(b.row_group.end(), joining.row_group.begin(), joining.row_group.end());
  b.row_length.insert(b.row_length.end(), joining.row_length.begin(), joining.row_length.end());
  return Status::Ok();
}

Status Generation::Decode(const std::vector<Group*>& running, const HookSet* hooks) {
  const Transformer& t = *model_.transformer_;
  Batch& b = *batch_;
  if (b.cache.length >= b.capacity()) {
    return Internal("generation: the KV cache is full (" + std::to_string(b.capacity()) +
                    " positions) with a step still to take");
  }
  at::Tensor mask = at::cat({b.mask, at::ones({b.rows(), 1}, b.mask.options())}, 1);
  PassInputs in{b.next_ids, b.next_positions, mask, &b.cache, hooks, running.front()->step, /*all_logits=*/false};
  at::Tensor logits = t.Forward(in);
  b.cache.length += 1;
  b.mask = mask;
  for (int64_t& length : b.row_length) ++length;
  b.next_ids = Pick(running, logits).to(t.device());
  b.next_positions = b.next_positions + 1;
  for (Group* g : running) ++g->step;
  return Status::Ok();
}

// Each row's next token from the pass's last-position logits [rows, 1, vocab]; records it
// for the rows that have not stopped. Returns the picked ids [rows, 1].
at::Tensor Generation::Pick(const std::vector<Group*>& pass, const at::Tensor& logits) {
  const int64_t rows = logits.size(0), vocab = model_.config().vocab_size;
  bool sampled = false, greedy = false;  // some rows sample; some pick the largest logit
  for (const Group* g : pass) {
    sampled |= g->sampling.temperature > 0.0;
    greedy |= g->sampling.temperature <= 0.0;
  }
  // Greedy picks on the device and brings back one id per row; sampling brings the last
  // position's logits to the CPU, where each group's seeded generator lives.
  at::Tensor picked;
  std::vector<int64_t> next(rows);
  if (greedy) {
    picked = logits.argmax(-1).view({rows, 1});
    at::Tensor host = picked.to(at::kCPU);
    std::copy(host.data_ptr<int64_t>(), host.data_ptr<int64_t>() + rows, next.begin());
  }
  if (sampled) {
    at::Tensor host = logits.to(at::kCPU, at::kFloat).contiguous();
    int64_t row = 0;
    for (Group* g : pass) {
      for (int64_t r = 0; r < g->rows; ++r, ++row) {
        // Stopped rows draw too, as they would alone in a batch of their own group.
        if (g->sampling.temperature > 0.0) {
          next[row] = SampleToken(host.data_ptr<float>() + row * vocab, vocab, g->sampling, g->rng);
        }
      }
    }
    picked = at::tensor(next, at::kLong).view({rows, 1});
  }
  int64_t row = 0;
  for (Group* g : pass) {
    for (int64_t r = 0; r < g->rows; ++r, ++row) {
      if (g->done[r]) continue;
      std::vector<int64_t>& tokens = g->result.new_tokens[r];
      tokens.push_back(next[row]);
      if (std::find(g->stops.begin(), g->stops.end(), next[row]) != g->stops.end()) {
        g->done[r] = true;
        g->result.stop_reasons[r] = "stop_token";
      } else if (static_cast<int64_t>(tokens.size()) >= g->sampling.max_new_tokens) {
        g->done[r] = true;
      }
    }
    g->finished = std::all_of(g->done.begin(), g->done.end(), [](bool d) { return d; });
  }
  return picked;
}

// Drops the rows of groups that finished or were taken, and the padding every row left has.
Status Generation::Compact() {
  if (batch_ == nullptr) return Status::Ok();
  Batch& b = *batch_;
  std::vector<int64_t> keep;
  std::vector<int> row_group;
  std::vector<int64_t> row_length;
  const std::vector<Group*> running = Running();
  for (int64_t row = 0; row < b.rows(); ++row) {
    const int id = b.row_group[row];
    if (std::none_of(running.begin(), running.end(), [id](const Group* g) { return g->id == id; })) continue;
    keep.push_back(row);
    row_group.push_back(id);
    row_length.push_back(b.row_length[row]);
  }
  if (keep.empty()) {
    batch_.reset();
    return Status::Ok();
  }
  // Invariant: the batch's rows are the running groups' rows, in join order.
  int64_t expected = 0;
  for (const Group* g : running) expected += g->rows;
  if (expected != static_cast<int64_t>(keep.size())) {
    return Internal("generation: the batch holds " + std::to_string(keep.size()) + " rows of running groups, which have " +
                    std::to_string(expected));
  }
  if (static_cast<int64_t>(keep.size()) == b.rows()) return Status::Ok();
  const int64_t length = *std::max_element(row_length.begin(), row_length.end());
  const int64_t trim = b.cache.length - length;
  const at::Tensor rows = at::tensor(keep, at::kLong);
  for (std::vector<at::Tensor>* part : {&b.cache.keys, &b.cache.values}) {
    for (at::Tensor& t : *part) {
      t = t.index_select(0, rows.to(t.device())).narrow(2, trim, t.size(2) - trim);
    }
  }
  b.cache.length = length;
  b.mask = b.mask.index_select(0, rows.to(b.mask.device())).narrow(1, trim, length);
  b.next_ids = b.next_ids.index_select(0, rows.to(b.next_ids.device()));
  b.next_positions = b.next_positions.index_select(0, rows.to(b.next_positions.device()));
  b.row_group = std::move(row_group);
  b.row_length = std::move(row_length);
  return Status::Ok();
}

}  // namespace glassbox
