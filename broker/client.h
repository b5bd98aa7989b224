// A small C++ client of the Glassbox broker (no LibTorch), used by tests and benchmarks; the
// Python client mirrors it. One DEALER connection; every call sends one message of
// protocol/SPEC.md §9 and waits for the reply carrying the same `ref`, while status changes
// the broker pushes meanwhile are recorded (and handed to the OnStatus callback).
//
// Not thread-safe: use one Client per thread. Errors the broker reports come back as the
// Status it named (UNAUTHENTICATED, NOT_FOUND, RESOURCE_EXHAUSTED, UNAVAILABLE...); no reply
// within ClientParams::timeout_ms is UNAVAILABLE.
#ifndef GLASSBOX_BROKER_CLIENT_H_
#define GLASSBOX_BROKER_CLIENT_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "base/status.h"
#include "protocol/broker_messages.h"

namespace glassbox::broker {

struct ClientParams {
  std::string endpoint = "tcp://127.0.0.1:5555";
  std::string api_key;     // may stay empty against a broker in development mode
  int timeout_ms = 30000;  // per call, waiting for the broker
  int64_t max_message_bytes = int64_t{320} << 20;  // ZMQ_MAXMSGSIZE for what the broker sends
  int fetch_window = 4;                            // result chunks requested ahead
  // The broker's CURVE public key (Z85, 40 characters) when it encrypts client connections;
  // empty: plain TCP.
  std::string curve_server_key;
};

// A job's state as the broker reported it.
struct JobStatus {
  std::string job_id;
  protocol::JobState state = protocol::JobState::kReceived;
  int64_t time_ms = 0;        // when it entered `state` (ms since the Unix epoch)
  int64_t position = -1;      // QUEUED: jobs ahead of it
  std::string code;           // ERROR / CANCELLED / EXPIRED: status code name
  std::string message;        // why (or, while QUEUED, a note such as "no worker serves...")
  int64_t result_bytes = -1;  // COMPLETED / ERROR: size of the stored result
  int64_t result_chunks = -1;
};

class Client {
 public:
  // Connects (ZeroMQ connects lazily: an absent broker shows up as a timeout on first call).
  static StatusOr<std::unique_ptr<Client>> Connect(const ClientParams& params);
  ~Client();

  // Submits an encoded protocol request; returns the job id once the broker has stored it.
  // A retry with the same non-empty `client_request_id` returns the same job (idempotent);
  // empty: a fresh id is made up.
  StatusOr<std::string> Submit(const std::string& request,
                               const std::string& client_request_id = "");
  // Asks the broker for the job's status (and routes its later changes to this connection).
  StatusOr<JobStatus> QueryStatus(const std::string& job_id);
  // Waits until `done(status)` holds (by default: a terminal state), up to timeout_ms
  // (-1: ClientParams::timeout_ms). Asks the broker first if nothing is known about the job.
  StatusOr<JobStatus> WaitForStatus(const std::string& job_id,
                                    const std::function<bool(const JobStatus&)>& done = {},
                                    int timeout_ms = -1);
  // Called, on the calling thread during any Client call, for every status received.
  void OnStatus(std::function<void(const JobStatus&)> callback);
  // The stored result of a COMPLETED (or ERROR) job: the encoded result message (or error
  // report), reassembled from its chunks.
  StatusOr<std::string> FetchResult(const std::string& job_id);
  // Cancels a queued or running job; returns its status (CANCELLED, or the terminal state it
  // had already reached).
  StatusOr<JobStatus> Cancel(const std::string& job_id);
  // The models served now, with their hook catalogues.
  StatusOr<std::vector<protocol::ModelInfo>> ListModels();
  // The token ids a trace of `text` on `model` would see, answered by a worker of the model
  // at once (not queued behind jobs).
  StatusOr<std::vector<int64_t>> Tokenize(const std::string& model, const std::string& text);

  // Sends raw bytes as one message (tests of malformed input) and returns the next reply.
  StatusOr<protocol::BrokerMessage> SendRawForTest(const std::string& bytes);

 private:
  class Impl;
  explicit Client(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace glassbox::broker

#endif  // GLASSBOX_BROKER_CLIENT_H_
