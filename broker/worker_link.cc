// ServeJobs: the worker's connection to the broker. The calling thread owns the DEALER
// socket (ZeroMQ sockets are single-threaded): it sends READY and heartbeats, receives jobs
// and cancellations, and sends results (in chunks, waiting for room in the send queue rather
// than dropping any). The handler runs on a compute thread of its own,
// which signals a finished job over an inproc PAIR socket so the result leaves at once.
// `tokenize` requests are answered on the calling thread, so they never wait for a job.
// A signal (the SIGTERM that sets `stop`) makes ZeroMQ calls fail with EINTR; that is no
// error here: the loop looks at `stop` next, and the shutdown still stops the job and says
// goodbye.
#include "broker/worker_link.h"

#include <cerrno>
#include <condition_variable>
#include <cstdio>
#include <fstream>
#include <memory>
#include <optional>
#include <thread>
#include <zmq.hpp>

#include "base/random.h"
#include "protocol/broker_messages.h"
#include "protocol/codec.h"

namespace glassbox::broker {

using protocol::BrokerMessage;
using protocol::BrokerMessageType;

namespace {

std::string Seconds(int64_t ms) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g s", static_cast<double>(ms) / 1000.0);
  return buf;
}

void Log(const std::string& line) { std::fprintf(stderr, "glassbox worker: %s\n", line.c_str()); }

bool Interrupted(const zmq::error_t& e) { return e.num() == EINTR; }

StatusOr<std::string> ReadKey(const std::string& path) {
  std::ifstream in(path);
  if (!in) return NotFound("cannot read the CURVE key file " + path);
  std::string key;
  in >> key;
  uint8_t raw[32];
  if (key.size() != 40 || zmq_z85_decode(raw, key.c_str()) == nullptr) {
    return InvalidArgument("the file " + path +
                           " does not hold a 40-character Z85 CURVE key (glassbox-broker "
                           "curve-keygen makes them)");
  }
  return key;
}

// A blocking receive that a signal does not abort.
void ReceiveThroughSignals(zmq::socket_t& socket, zmq::message_t& message) {
  for (;;) {
    try {
      if (socket.recv(message, zmq::recv_flags::none)) return;
    } catch (const zmq::error_t& e) {
      if (!Interrupted(e)) throw;
    }
  }
}

int64_t NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// The handler's output checked: a result or an error report, else an INTERNAL error report.
struct Outcome {
  std::string bytes;
  std::string code;  // set when `bytes` is an error report
  std::string message;
};

Outcome Classify(std::string bytes) {
  auto envelope = protocol::PeekEnvelope(bytes);
  if (envelope.ok() && envelope->type == protocol::MessageType::kResult) {
    return {std::move(bytes), "", ""};
  }
  if (envelope.ok() && envelope->type == protocol::MessageType::kError) {
    auto report = protocol::DecodeErrorReport(bytes);
    if (report.ok()) return {std::move(bytes), report->code, report->message};
  }
  protocol::ErrorReport report;
  report.code = "INTERNAL";
  report.message =
      "the worker's handler returned neither a result nor an error report (" +
      (envelope.ok() ? std::string("a ") + protocol::MessageTypeName(envelope->type) + " message"
                     : envelope.status().message()) +
      ")";
  return {protocol::EncodeErrorReport(report), report.code, report.message};
}

// Runs handed-over jobs one at a time on its own thread.
class ComputeThread {
 public:
  ComputeThread(const JobHandler& handler, zmq::context_t& ctx, const std::string& signal)
      : handler_(handler), signal_(ctx, zmq::socket_type::pair) {
    signal_.connect(signal);
    thread_ = std::thread([this] { Loop(); });
  }
  ~ComputeThread() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      quit_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }

  void Start(std::shared_ptr<JobContext> job, std::string request) {
    std::lock_guard<std::mutex> lock(mu_);
    job_ = std::move(job);
    request_ = std::move(request);
    cv_.notify_all();
  }

  // The outcome of the job whose end was signalled.
  Outcome Take() {
    std::lock_guard<std::mutex> lock(mu_);
    return std::move(*outcome_);
  }

 private:
  void Loop() {
    for (;;) {
      std::shared_ptr<JobContext> job;
      std::string request;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [this] { return quit_ || job_; });
        if (quit_) return;
        job = std::move(job_);
        request = std::move(request_);
      }
      Outcome outcome = Run(*job, request);
      {
        std::lock_guard<std::mutex> lock(mu_);
        outcome_ = std::move(outcome);
      }
      signal_.send(zmq::str_buffer("done"), zmq::send_flags::none);
    }
  }

  Outcome Run(const JobContext& job, const std::string& request) {
    try {
      return Classify(handler_(job, request));
    } catch (const std::exception& e) {
      return Classify(protocol::EncodeErrorReport(protocol::ErrorReport::FromStatus(
          Internal(std::string("the worker's handler threw: ") + e.what()))));
    }
  }

  const JobHandler& handler_;
  zmq::socket_t signal_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool quit_ = false;
  std::shared_ptr<JobContext> job_;
  std::string request_;
  std::optional<Outcome> outcome_;
  std::thread thread_;
};

// The broker connection and its state; runs on the calling thread.
class Link {
 public:
  Link(const WorkerParams& params, const JobHandler& handler)
      : params_(params),
        signal_name_("inproc://glassbox-worker-" +
                     std::to_string(reinterpret_cast<uintptr_t>(this))),
        signal_(ctx_, zmq::socket_type::pair),
        identity_("worker-" + RandomHex(1)) {
    signal_.bind(signal_name_);
    compute_ = std::make_unique<ComputeThread>(handler, ctx_, signal_name_);
  }

  Status Serve(const std::atomic<bool>& stop) {
    GLASSBOX_RETURN_IF_ERROR(Connect());
    while (!stop.load()) {
      PollOnceThroughSignals();
      const int64_t now = NowMs();
      if (now >= next_heartbeat_ms_) {
        Send(Simple(BrokerMessageType::kHeartbeat));
        next_heartbeat_ms_ = now + params_.heartbeat_interval_ms;
      }
      if (now - last_heard_ms_ >
          int64_t{params_.heartbeat_interval_ms} * params_.heartbeat_liveness) {
        Log("broker silent for " + std::to_string(params_.heartbeat_liveness) +
            " heartbeats; reconnecting");
        GLASSBOX_RETURN_IF_ERROR(Connect());
      }
    }
    Shutdown();
    return Status::Ok();
  }

 private:
  static BrokerMessage Simple(BrokerMessageType type) {
    BrokerMessage m;
    m.type = type;
    return m;
  }

  Status Connect() {
    socket_ = std::make_unique<zmq::socket_t>(ctx_, zmq::socket_type::dealer);
    socket_->set(zmq::sockopt::linger, 0);
    socket_->set(zmq::sockopt::sndhwm, std::max(1, params_.send_queue_chunks));
    // The same identity on every reconnect: the broker knows it is this worker again.
    socket_->set(zmq::sockopt::routing_id, zmq::buffer(identity_));
    if (!params_.curve_server_key.empty()) {
      char public_key[41];
      if (zmq_curve_public(public_key, params_.curve_secret_key.c_str()) != 0) {
        return InvalidArgument("the worker's CURVE secret key is not a Z85 key");
      }
      socket_->set(zmq::sockopt::curve_serverkey, params_.curve_server_key);
      socket_->set(zmq::sockopt::curve_publickey, std::string(public_key));
      socket_->set(zmq::sockopt::curve_secretkey, params_.curve_secret_key);
    }
    try {
      socket_->connect(params_.broker_endpoint);
    } catch (const zmq::error_t& e) {
      return InvalidArgument("cannot connect to the broker at " + params_.broker_endpoint + ": " +
                             e.what());
    }
    BrokerMessage ready = Simple(BrokerMessageType::kReady);
    ready.model = params_.model_name;
    ready.catalogue = params_.catalogue_json;
    ready.heartbeat_ms = params_.heartbeat_interval_ms;
    ready.group = params_.group;
    if (job_) ready.job = job_->job_id();
    if (outgoing_) {  // chunks queued on the old connection are gone: start again
      ready.job = outgoing_->job_id;
      outgoing_->next = 0;
    }
    Send(ready);
    last_heard_ms_ = NowMs();
    connected_ms_ = last_heard_ms_;
    next_heartbeat_ms_ = last_heard_ms_ + params_.heartbeat_interval_ms;
    return Status::Ok();
  }

  void Send(const BrokerMessage& m) {
    const std::string bytes = protocol::EncodeBrokerMessage(m);
    try {
      socket_->send(zmq::buffer(bytes), zmq::send_flags::dontwait);  // dropped if unreachable
    } catch (const zmq::error_t& e) {
      if (!Interrupted(e)) throw;
    }
  }

  // A pass of PollOnce that a signal may cut short (EINTR); the next pass picks up the rest.
  void PollOnceThroughSignals() {
    try {
      PollOnce();
    } catch (const zmq::error_t& e) {
      if (!Interrupted(e)) throw;
    }
  }

  void PollOnce() {
    const int64_t wait = std::max<int64_t>(1, next_heartbeat_ms_ - NowMs());
    const short socket_events = outgoing_ ? ZMQ_POLLIN | ZMQ_POLLOUT : ZMQ_POLLIN;
    zmq::pollitem_t items[] = {{socket_->handle(), 0, socket_events, 0},
                               {signal_.handle(), 0, ZMQ_POLLIN, 0}};
    zmq::poll(items, 2, std::chrono::milliseconds(std::min<int64_t>(wait, 50)));
    if (job_) ReportBatch();  // before the job's result, which may have just come
    if (items[1].revents & ZMQ_POLLIN) FinishJob();
    if (outgoing_) SendResultChunks();
    zmq::message_t frame;
    while (socket_->recv(frame, zmq::recv_flags::dontwait)) {
      last_heard_ms_ = NowMs();
      if (frame.more()) {  // not ours: drain the rest of the message
        zmq::message_t rest;
        while (frame.more() && socket_->recv(rest, zmq::recv_flags::dontwait)) frame.swap(rest);
        continue;
      }
      Handle(frame.to_string_view());
    }
  }

  void Handle(std::string_view bytes) {
    auto m = protocol::DecodeBrokerMessage(bytes);
    if (!m.ok()) return Log("garbage from the broker: " + m.status().ToString());
    switch (m->type) {
      case BrokerMessageType::kJob:
        return StartJob(*m);
      case BrokerMessageType::kCancel:
        if (job_ && job_->job_id() == m->job) job_->RequestStop(m->reason);
        return;
      case BrokerMessageType::kTokenize:
        return Tokenize(*m);
      case BrokerMessageType::kDisconnect:
        // Answers to messages sent before our last READY arrive too: act on one only after
        // a heartbeat interval has passed since (the broker repeats it if it still applies).
        if (NowMs() - connected_ms_ < params_.heartbeat_interval_ms) return;
        Log("broker says: " + m->reason + "; registering again");
        // The endpoint and keys were good at the first Connect, so this cannot fail unless
        // ZeroMQ itself does; then the next silent interval tries again.
        if (Status status = Connect(); !status.ok()) {
          Log("cannot register again: " + status.ToString());
        }
        return;
      case BrokerMessageType::kError:
        return Log("broker says: " + m->code + ": " + m->message);
      default:
        return;  // heartbeats: being heard is enough
    }
  }

  void Tokenize(const BrokerMessage& m) {
    StatusOr<std::vector<int64_t>> ids = TokenizeText(m.text);
    if (!ids.ok()) return Send(protocol::MakeErrorMessage(ids.status(), "", m.ref));
    BrokerMessage answer = Simple(BrokerMessageType::kTokens);
    answer.ref = m.ref;
    answer.payload = protocol::EncodeTokenIds(*ids);
    Send(answer);
  }

  StatusOr<std::vector<int64_t>> TokenizeText(const std::string& text) const {
    if (!params_.tokenizer) {
      return Unimplemented("the worker of \"" + params_.model_name + "\" does not tokenize");
    }
    if (text.size() > params_.max_tokenize_bytes) {
      return InvalidArgument("a text of " + std::to_string(text.size()) +
                             " bytes is over the worker's limit of " +
                             std::to_string(params_.max_tokenize_bytes) + " bytes for tokenize");
    }
    try {
      return params_.tokenizer(text);
    } catch (const std::exception& e) {
      return Internal(std::string("tokenizing threw: ") + e.what());
    }
  }

  void StartJob(BrokerMessage& m) {
    if (job_ || outgoing_) return Log("broker sent job " + m.job + " while busy; ignored");
    job_ = std::make_shared<JobContext>(m.job, m.time_limit_ms, std::max<int64_t>(m.attempts, 0));
    compute_->Start(job_, std::move(m.payload));
  }

  void ReportBatch() {
    const int64_t jobs = job_->TakeBatchReport();
    if (jobs <= 0) return;
    BrokerMessage m = Simple(BrokerMessageType::kRunning);
    m.job = job_->job_id();
    m.batch = jobs;
    Send(m);
  }

  void FinishJob() {
    zmq::message_t done;
    (void)signal_.recv(done, zmq::recv_flags::dontwait);
    Outcome outcome = compute_->Take();
    const std::string job_id = job_->job_id();
    job_.reset();
    SendResult(job_id, std::move(outcome));
  }

  void SendResult(const std::string& job_id, Outcome outcome) {
    const size_t chunk = std::max<size_t>(1, params_.result_chunk_bytes);
    const size_t count = std::max<size_t>(1, (outcome.bytes.size() + chunk - 1) / chunk);
    outgoing_ = Outgoing{job_id, std::move(outcome), chunk, count, 0};
    SendResultChunks();
  }

  // Sends the pending result's chunks in order while the socket takes them; the rest wait
  // for room (POLLOUT), so no chunk is ever dropped at the send high-water mark.
  void SendResultChunks() {
    Outgoing& out = *outgoing_;
    while (out.next < out.count) {
      BrokerMessage m = Simple(BrokerMessageType::kJobResult);
      m.job = out.job_id;
      m.index = static_cast<int64_t>(out.next);
      m.count = static_cast<int64_t>(out.count);
      m.payload = out.outcome.bytes.substr(out.next * out.chunk, out.chunk);
      if (out.next + 1 == out.count) {
        m.code = out.outcome.code;
        m.message = out.outcome.message;
      }
      const std::string bytes = protocol::EncodeBrokerMessage(m);
      if (!socket_->send(zmq::buffer(bytes), zmq::send_flags::dontwait)) return;  // full
      ++out.next;
    }
    outgoing_.reset();
  }

  // Stops a running job, drops its outcome, and tells the broker to give it to another worker
  // (DISCONNECT: the broker queues the job again at once, counting no attempt).
  void Shutdown() {
    outgoing_.reset();  // the broker runs the job again elsewhere
    if (job_) {
      job_->RequestStop("the worker is shutting down");
      zmq::message_t done;
      ReceiveThroughSignals(signal_, done);
      compute_->Take();
      job_.reset();
    }
    compute_.reset();
    BrokerMessage bye = Simple(BrokerMessageType::kDisconnect);
    bye.reason = "worker shutting down";
    // Waits up to a second for room (a send queue full of result chunks) rather than dropping.
    socket_->set(zmq::sockopt::sndtimeo, 1000);
    const std::string bytes = protocol::EncodeBrokerMessage(bye);
    for (bool sent = false; !sent;) {
      try {
        (void)socket_->send(zmq::buffer(bytes), zmq::send_flags::none);
        sent = true;  // or timed out: the broker's heartbeat watch takes over
      } catch (const zmq::error_t& e) {
        if (!Interrupted(e)) throw;
      }
    }
    socket_->set(zmq::sockopt::linger, 1000);  // let DISCONNECT leave
    socket_.reset();
  }

  const WorkerParams& params_;
  zmq::context_t ctx_;
  std::string signal_name_;
  zmq::socket_t signal_;
  std::string identity_;  // ZeroMQ routing id, kept across reconnects
  std::unique_ptr<ComputeThread> compute_;
  std::unique_ptr<zmq::socket_t> socket_;
  std::shared_ptr<JobContext> job_;  // the running job, if any
  // A finished job's outcome while its chunks are being sent.
  struct Outgoing {
    std::string job_id;
    Outcome outcome;
    size_t chunk = 0;
    size_t count = 0;
    size_t next = 0;  // the first chunk not yet handed to the socket
  };
  std::optional<Outgoing> outgoing_;
  int64_t last_heard_ms_ = 0;
  int64_t connected_ms_ = 0;  // when READY was last sent
  int64_t next_heartbeat_ms_ = 0;
};

}  // namespace

JobContext::JobContext(std::string job_id, int64_t time_limit_ms, int64_t attempts)
    : job_id_(std::move(job_id)),
      time_limit_ms_(time_limit_ms),
      attempts_(attempts),
      deadline_(std::chrono::steady_clock::now() + std::chrono::milliseconds(time_limit_ms)) {}

int64_t JobContext::RemainingMs() const {
  const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline_ - std::chrono::steady_clock::now());
  return std::max<int64_t>(left.count(), 0);
}

bool JobContext::ShouldStop() const {
  return stopped_.load() || std::chrono::steady_clock::now() >= deadline_;
}

std::string JobContext::StopReason() const {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopped_.load()) return reason_;
  }
  if (std::chrono::steady_clock::now() >= deadline_) {
    return "time limit of " + Seconds(time_limit_ms_) + " exceeded";
  }
  return "";
}

void JobContext::RequestStop(const std::string& reason) {
  std::lock_guard<std::mutex> lock(mu_);
  if (stopped_.load()) return;
  reason_ = reason.empty() ? "stopped by the broker" : reason;
  stopped_.store(true);
}

Status ServeJobs(const WorkerParams& params, const JobHandler& handler,
                 const std::atomic<bool>& stop) {
  try {
    Link link(params, handler);
    return link.Serve(stop);
  } catch (const zmq::error_t& e) {
    return Internal(std::string("worker connection failed: ") + e.what());
  }
}

Status ReadWorkerCurveKeys(const std::string& broker_public_key_file,
                           const std::string& worker_secret_key_file, WorkerParams* params) {
  GLASSBOX_ASSIGN_OR_RETURN(params->curve_server_key, ReadKey(broker_public_key_file));
  GLASSBOX_ASSIGN_OR_RETURN(params->curve_secret_key, ReadKey(worker_secret_key_file));
  return Status::Ok();
}

}  // namespace glassbox::broker
