// The worker room's front door: `glassbox-engine serve` keeps one model resident and runs
// the jobs a broker hands it until told to stop: with --batch-slots N, up to N jobs at once
// (N links to the broker, one batch at a time; worker/batcher.h).
#ifndef GLASSBOX_WORKER_SERVE_H_
#define GLASSBOX_WORKER_SERVE_H_

#include <atomic>
#include <cstdint>
#include <string>

#include "base/status.h"
#include "engine/engine.h"
#include "intervention/intervention.h"

namespace glassbox::worker {

struct ServeParams {
  std::string model_path;
  std::string name;  // what clients call the model, e.g. "smollm2-135m"
  std::string broker_endpoint = "tcp://127.0.0.1:5556";
  EngineParams engine;
  intervention::InterventionLimits limits;  // max_job_bytes 0: DefaultMaxJobBytes at start
  int heartbeat_interval_ms = 1000;
  // Jobs this worker takes at once (each slot is a link to the broker, which hands it one
  // job at a time); the jobs a batch holds share engine passes where they can.
  int batch_slots = 1;
  // Worker authentication (CURVE, broker/worker_link.h): the broker's worker public key and
  // this worker's secret key, as files. Both or neither.
  std::string broker_key_file;
  std::string worker_key_file;
  // Tests only: while this file exists, jobs wait before they run (until the file goes, or
  // a job is cancelled or out of time), so a test controls when jobs can finish and which
  // jobs gather into one batch.
  std::string hold_file;
};

// The per-job memory budget a worker takes when given none: half of the MemAvailable line of
// `meminfo` (the text of /proc/meminfo), in bytes; 0 (no budget) when the line is missing.
int64_t DefaultMaxJobBytes(const std::string& meminfo);

// Loads the model, registers with the broker and serves jobs until `stop` becomes true
// (e.g. from a signal handler). Returns an error if the key files cannot be read (before
// loading anything), the model cannot be loaded or the broker endpoint is unusable; job
// failures go back to their users and never end the loop.
Status Serve(const ServeParams& params, const std::atomic<bool>& stop);

// The catalogue the worker announces: the engine's hook catalogue JSON with the model's
// config under "model" and, when the model has one, its tokenizer's vocabulary under
// "tokenizer" (so clients decode ids exactly as the server does). What `glassbox-engine
// info` prints.
std::string CatalogueJson(const Model& model);

}  // namespace glassbox::worker

#endif  // GLASSBOX_WORKER_SERVE_H_
