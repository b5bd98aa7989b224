// The C++ broker client (broker/client.h): one DEALER socket, replies matched to requests by
// `ref`, pushed statuses recorded as they arrive.
#include "broker/client.h"

#include <chrono>
#include <zmq.hpp>

#include "base/random.h"

namespace glassbox::broker {

using protocol::BrokerMessage;
using protocol::BrokerMessageType;

namespace {

StatusCode CodeFromName(const std::string& name) {
  for (StatusCode c :
       {StatusCode::kInvalidArgument, StatusCode::kNotFound, StatusCode::kDataLoss,
        StatusCode::kUnimplemented, StatusCode::kResourceExhausted, StatusCode::kUnavailable,
        StatusCode::kInternal, StatusCode::kCancelled, StatusCode::kUnauthenticated}) {
    if (name == StatusCodeName(c)) return c;
  }
  return StatusCode::kInternal;
}

JobStatus StatusFrom(const BrokerMessage& m) {
  JobStatus s;
  s.job_id = m.job;
  s.state = m.state.value_or(protocol::JobState::kReceived);
  s.time_ms = m.time_ms;
  s.position = m.position;
  s.code = m.code;
  s.message = m.message;
  s.result_bytes = m.total_bytes;
  s.result_chunks = m.count;
  return s;
}

int64_t NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

}  // namespace

class Client::Impl {
 public:
  explicit Impl(const ClientParams& params)
      : params_(params), socket_(ctx_, zmq::socket_type::dealer), prefix_(RandomHex(2)) {
    socket_.set(zmq::sockopt::linger, 0);
    socket_.set(zmq::sockopt::maxmsgsize, params.max_message_bytes);
    if (!params.curve_server_key.empty()) {  // an ephemeral key pair for this connection
      char public_key[41];
      char secret_key[41];
      zmq_curve_keypair(public_key, secret_key);
      socket_.set(zmq::sockopt::curve_serverkey, params.curve_server_key);
      socket_.set(zmq::sockopt::curve_publickey, std::string(public_key));
      socket_.set(zmq::sockopt::curve_secretkey, std::string(secret_key));
    }
    socket_.connect(params.endpoint);
  }

  // Sends `m` with a fresh ref (unless it has one) and returns the ref.
  std::string Send(BrokerMessage m) {
    if (m.ref.empty()) m.ref = prefix_ + "-" + std::to_string(++counter_);
    m.api_key = params_.api_key;
    SendBytes(protocol::EncodeBrokerMessage(m));
    return m.ref;
  }

  void SendBytes(const std::string& bytes) {
    socket_.send(zmq::buffer(bytes), zmq::send_flags::none);
  }

  // The reply carrying `ref`; an error reply becomes its Status.
  StatusOr<BrokerMessage> Wait(const std::string& ref) {
    const int64_t deadline = NowMs() + params_.timeout_ms;
    for (;;) {
      auto it = replies_.find(ref);
      if (it != replies_.end()) {
        BrokerMessage m = std::move(it->second);
        replies_.erase(it);
        if (m.type == BrokerMessageType::kError) return Status(CodeFromName(m.code), m.message);
        return m;
      }
      GLASSBOX_RETURN_IF_ERROR(ReceiveOne(deadline));
    }
  }

  StatusOr<BrokerMessage> Call(BrokerMessage m) { return Wait(Send(std::move(m))); }

  // Receives one message before `deadline` and files it: replies by ref, statuses by job.
  Status ReceiveOne(int64_t deadline) {
    const int64_t wait = deadline - NowMs();
    if (wait <= 0) {
      return Unavailable("no reply from the broker at " + params_.endpoint + " within " +
                         std::to_string(params_.timeout_ms) + " ms");
    }
    zmq::pollitem_t item{socket_.handle(), 0, ZMQ_POLLIN, 0};
    zmq::poll(&item, 1, std::chrono::milliseconds(wait));
    if (!(item.revents & ZMQ_POLLIN)) return Status::Ok();
    zmq::message_t frame;
    if (!socket_.recv(frame, zmq::recv_flags::dontwait)) return Status::Ok();
    auto m = protocol::DecodeBrokerMessage(frame.to_string_view());
    if (!m.ok()) return m.status().WithContext("malformed message from the broker");
    File(std::move(*m));
    return Status::Ok();
  }

  void File(BrokerMessage m) {
    if (m.type == BrokerMessageType::kStatus) {
      JobStatus s = StatusFrom(m);
      statuses_[s.job_id] = s;
      if (callback_) callback_(s);
    }
    if (!m.ref.empty()) replies_[m.ref] = std::move(m);
  }

  StatusOr<JobStatus> WaitFor(const std::string& job_id,
                              const std::function<bool(const JobStatus&)>& done, int timeout_ms) {
    auto finished = [&](const JobStatus& s) {
      return done ? done(s) : protocol::IsTerminal(s.state);
    };
    if (statuses_.count(job_id) == 0) {
      GLASSBOX_RETURN_IF_ERROR(Call(JobMessage(BrokerMessageType::kQuery, job_id)).status());
    }
    const int64_t deadline = NowMs() + (timeout_ms < 0 ? params_.timeout_ms : timeout_ms);
    while (!finished(statuses_[job_id])) {
      if (NowMs() >= deadline) {
        return Unavailable("job " + job_id + " still " +
                           protocol::JobStateName(statuses_[job_id].state) + " after waiting");
      }
      GLASSBOX_RETURN_IF_ERROR(ReceiveOne(deadline));
    }
    return statuses_[job_id];
  }

  StatusOr<std::string> Fetch(const std::string& job_id) {
    GLASSBOX_ASSIGN_OR_RETURN(BrokerMessage first, Call(FetchMessage(job_id, 0)));
    std::string out;
    out.reserve(static_cast<size_t>(first.total_bytes));
    out += first.payload;
    std::vector<std::string> refs;
    int64_t next = 1;
    for (int64_t i = 1; i < first.count; ++i) {
      while (next < first.count && next < i + params_.fetch_window) {
        refs.push_back(Send(FetchMessage(job_id, next++)));
      }
      GLASSBOX_ASSIGN_OR_RETURN(BrokerMessage chunk, Wait(refs[i - 1]));
      out += chunk.payload;
    }
    if (static_cast<int64_t>(out.size()) != first.total_bytes) {
      return DataLoss("result of job " + job_id + " reassembled to " + std::to_string(out.size()) +
                      " bytes, the broker announced " + std::to_string(first.total_bytes));
    }
    return out;
  }

  // A message of `type` about one job (query, cancel, fetch).
  static BrokerMessage JobMessage(BrokerMessageType type, const std::string& job_id) {
    BrokerMessage m;
    m.type = type;
    m.job = job_id;
    return m;
  }

  static BrokerMessage FetchMessage(const std::string& job_id, int64_t index) {
    BrokerMessage m = JobMessage(BrokerMessageType::kFetch, job_id);
    m.index = index;
    return m;
  }

  // Asks about one job; the reply is its status.
  StatusOr<JobStatus> AskStatus(BrokerMessageType type, const std::string& job_id) {
    GLASSBOX_ASSIGN_OR_RETURN(BrokerMessage reply, Call(JobMessage(type, job_id)));
    return StatusFrom(reply);
  }

  ClientParams params_;
  zmq::context_t ctx_;
  zmq::socket_t socket_;
  std::string prefix_;
  uint64_t counter_ = 0;
  std::map<std::string, BrokerMessage> replies_;
  std::map<std::string, JobStatus> statuses_;
  std::function<void(const JobStatus&)> callback_;
};

StatusOr<std::unique_ptr<Client>> Client::Connect(const ClientParams& params) {
  try {
    return std::unique_ptr<Client>(new Client(std::make_unique<Impl>(params)));
  } catch (const zmq::error_t& e) {
    return InvalidArgument("cannot connect to the broker at " + params.endpoint + ": " + e.what());
  }
}

Client::Client(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Client::~Client() = default;

StatusOr<std::string> Client::Submit(const std::string& request,
                                     const std::string& client_request_id) {
  BrokerMessage m;
  m.type = BrokerMessageType::kSubmit;
  m.payload = request;
  m.ref = client_request_id;
  GLASSBOX_ASSIGN_OR_RETURN(BrokerMessage ack, impl_->Call(std::move(m)));
  JobStatus received;
  received.job_id = ack.job;
  received.state = protocol::JobState::kReceived;
  received.time_ms = ack.time_ms;
  if (impl_->statuses_.count(ack.job) == 0) impl_->statuses_[ack.job] = received;
  return ack.job;
}

StatusOr<JobStatus> Client::QueryStatus(const std::string& job_id) {
  return impl_->AskStatus(BrokerMessageType::kQuery, job_id);
}

StatusOr<JobStatus> Client::WaitForStatus(const std::string& job_id,
                                          const std::function<bool(const JobStatus&)>& done,
                                          int timeout_ms) {
  return impl_->WaitFor(job_id, done, timeout_ms);
}

void Client::OnStatus(std::function<void(const JobStatus&)> callback) {
  impl_->callback_ = std::move(callback);
}

StatusOr<std::string> Client::FetchResult(const std::string& job_id) {
  return impl_->Fetch(job_id);
}

StatusOr<JobStatus> Client::Cancel(const std::string& job_id) {
  return impl_->AskStatus(BrokerMessageType::kCancel, job_id);
}

StatusOr<std::vector<protocol::ModelInfo>> Client::ListModels() {
  BrokerMessage m;
  m.type = BrokerMessageType::kListModels;
  GLASSBOX_ASSIGN_OR_RETURN(BrokerMessage reply, impl_->Call(std::move(m)));
  return reply.models;
}

StatusOr<std::vector<int64_t>> Client::Tokenize(const std::string& model,
                                                const std::string& text) {
  BrokerMessage m;
  m.type = BrokerMessageType::kTokenize;
  m.model = model;
  m.text = text;
  GLASSBOX_ASSIGN_OR_RETURN(BrokerMessage reply, impl_->Call(std::move(m)));
  return protocol::DecodeTokenIds(reply.payload);
}

StatusOr<BrokerMessage> Client::SendRawForTest(const std::string& bytes) {
  impl_->SendBytes(bytes);
  const int64_t deadline = NowMs() + impl_->params_.timeout_ms;
  for (;;) {
    zmq::pollitem_t item{impl_->socket_.handle(), 0, ZMQ_POLLIN, 0};
    const int64_t wait = deadline - NowMs();
    if (wait <= 0) return Unavailable("no reply from the broker");
    zmq::poll(&item, 1, std::chrono::milliseconds(wait));
    zmq::message_t frame;
    if (!(item.revents & ZMQ_POLLIN) || !impl_->socket_.recv(frame, zmq::recv_flags::dontwait)) {
      continue;
    }
    return protocol::DecodeBrokerMessage(frame.to_string_view());
  }
}

}  // namespace glassbox::broker
