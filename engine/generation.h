// A generation that groups of rows join and leave between steps (continuous batching):
// several users' generations in one batch, each group with its own prompts, sampling,
// seeded generator, stop ids and max_new_tokens, so each generates what it would alone
// (within the batched-vs-solo tolerance of the logits).
//
//   Generation gen(*model);
//   int a = gen.Join(prompts_a, sampling_a).value();
//   while (!gen.Idle()) {
//     GLASSBOX_RETURN_IF_ERROR(gen.Step(&hooks));
//     for (int g : gen.Finished()) Use(gen.Take(g));
//     if (late) gen.Join(prompts_b, sampling_b);  // prefilled at the next Step, then decodes with a
//   }
//
// A step is one pass: either the prompts of every group that joined since the last step
// (their step 0, a pass of their own; then their keys and values are merged into the batch,
// everyone left-padded to one length), or one decode step of every running row. A group
// whose rows have all stopped leaves the batch before the next pass. Not thread-safe; the
// model may serve other passes meanwhile.
#ifndef GLASSBOX_ENGINE_GENERATION_H_
#define GLASSBOX_ENGINE_GENERATION_H_

#include <cstdint>
#include <memory>
#include <vector>

#include "base/status.h"
#include "engine/engine.h"

namespace glassbox {

class Generation {
 public:
  explicit Generation(const Model& model);
  ~Generation();
  Generation(const Generation&) = delete;
  Generation& operator=(const Generation&) = delete;

  // Queues a group of rows; the next Step prefills it. Invalid prompts (empty, outside the
  // vocabulary, too long for the context with max_new_tokens) are refused here. A group with
  // max_new_tokens 0 is finished at once.
  StatusOr<int> Join(const std::vector<std::vector<int64_t>>& prompts, const SamplingParams& sampling);

  // A group's place in a pass: its rows [row0, row0 + rows) of the pass's batch and the step
  // it is at (0: its prompt; i: the pass producing its new token i + 1).
  struct Slot {
    int group = 0;
    int64_t row0 = 0, rows = 0;
    int step = 0;
  };
  // The groups the next Step's pass runs, in batch order: the queued groups if any joined
  // (a prefill), else every running group (one decode step). Hooks of that pass see its
  // batch; HookContext::step is the first slot's step.
  std::vector<Slot> NextPass() const;

  // Runs NextPass()'s pass and picks each row's next token. Errors are those of the pass
  // (a hook's status, a LibTorch failure); after one, the groups of that pass can only Leave.
  Status Step(const HookSet* hooks);

  // Groups whose every row has stopped (stop token or max_new_tokens), not yet taken.
  std::vector<int> Finished() const;
  // A group's tokens and stop reasons; it leaves the generation (rows of a group that has
  // not finished stop where they are, and leave before the next pass).
  GenerateResult Take(int group);
  // Nothing queued or running.
  bool Idle() const;

 private:
  struct Group;
  struct Batch;
  Status Prefill(const std::vector<Group*>& queued, const HookSet* hooks);
  Status Decode(const std::vector<Group*>& running, const HookSet* hooks);
  at::Tensor Pick(const std::vector<Group*>& pass, const at::Tensor& logits);
  Status Compact();
  std::vector<Group*> Running() const;
  std::vector<Group*> Queued() const;

  const Model& model_;
  std::vector<std::unique_ptr<Group>> groups_;  // joined and not taken, in join order
  std::unique_ptr<Batch> batch_;                // the rows in the batch's tensors
  int next_id_ = 0;
};

}  // namespace glassbox

#endif  // GLASSBOX_ENGINE_GENERATION_H_
