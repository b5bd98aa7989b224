// RunBroker: the broker's ZeroMQ side. Two ROUTER sockets (clients, workers) with
// ZMQ_ROUTER_MANDATORY, so a send to a vanished peer fails loudly instead of vanishing, and
// ZMQ_MAXMSGSIZE on the public one; frames are checked and handed to BrokerCore. Also the
// API-key management behind `glassbox-broker keys`, and the ZAP handler that admits only
// authorised workers (CURVE) to the worker socket.
#include "broker/broker.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <fstream>
#include <iterator>
#include <memory>
#include <set>
#include <thread>
#include <unordered_map>
#include <zmq.hpp>

#include "broker/broker_core_impl.h"

namespace glassbox::broker {
namespace {

using internal::LogLine;

// The ZAP domain of the worker socket: its CURVE handshakes are checked against the
// authorised worker keys. Other sockets (the client one, whose users authenticate by API key
// in every message) have another domain and are admitted.
constexpr char kWorkerZapDomain[] = "glassbox-workers";

// Sends [routing id, message]; remembers workers it could not reach for the core, and counts
// the bytes each client connection has not taken yet (ZeroMQ frees a message once it is
// written to the connection, or dropped) so a client that never reads costs bounded memory.
class ZmqOutbox : public internal::Outbox {
 public:
  using Counter = std::shared_ptr<std::atomic<int64_t>>;

  ZmqOutbox(zmq::socket_t* clients, zmq::socket_t* workers, int64_t client_unread_bytes,
            int64_t client_unread_total_bytes)
      : clients_(clients),
        workers_(workers),
        client_unread_bytes_(client_unread_bytes),
        client_unread_total_bytes_(client_unread_total_bytes) {}

  void ToClient(const std::string& peer, const protocol::BrokerMessage& message) override {
    Counter& unread = unread_[peer];
    if (!unread) unread = std::make_shared<std::atomic<int64_t>>(0);
    const char* dropped = nullptr;
    if (unread->load() >= client_unread_bytes_ || total_unread_->load() >= client_unread_total_bytes_) {
      dropped = "that has too many bytes unread";
    } else if (!Send(*clients_, peer, protocol::EncodeBrokerMessage(message), unread, total_unread_)) {
      dropped = "that is gone or not reading";
    }
    if (dropped != nullptr && dropping_.insert(peer).second) {
      LogLine("dropping " + std::string(protocol::BrokerMessageTypeName(message.type)) +
              " messages to a client " + dropped);
    }
  }

  bool ToWorker(const std::string& peer, const protocol::BrokerMessage& message) override {
    if (Send(*workers_, peer, protocol::EncodeBrokerMessage(message), nullptr, nullptr)) {
      return true;
    }
    unreachable_.push_back(peer);
    return false;
  }

  int64_t ClientUnreadBytes(const std::string& peer) const override {
    auto it = unread_.find(peer);
    return it == unread_.end() ? 0 : it->second->load();
  }
  int64_t AllClientsUnreadBytes() const override { return total_unread_->load(); }

  std::vector<std::string> TakeUnreachable() { return std::move(unreachable_); }

  // Forgets connections with nothing unread (they are counted afresh if they come back).
  void ForgetIdleClients() {
    for (auto it = unread_.begin(); it != unread_.end();) {
      it = it->second->load() == 0 ? unread_.erase(it) : std::next(it);
    }
    dropping_.clear();
  }

 private:
  // A message body handed to ZeroMQ without a copy (result chunks are 1 MiB); ZeroMQ frees
  // it once sent or dropped, which uncounts it.
  struct Owned {
    std::string bytes;
    Counter peer_unread;
    Counter total_unread;
  };

  static void Free(void*, void* hint) {
    auto* owned = static_cast<Owned*>(hint);
    const auto size = static_cast<int64_t>(owned->bytes.size());
    if (owned->peer_unread) owned->peer_unread->fetch_sub(size);
    if (owned->total_unread) owned->total_unread->fetch_sub(size);
    delete owned;
  }

  static bool Send(zmq::socket_t& socket, const std::string& peer, std::string bytes,
                   const Counter& peer_unread, const Counter& total_unread) {
    try {
      if (!socket.send(zmq::buffer(peer), zmq::send_flags::sndmore | zmq::send_flags::dontwait)) {
        return false;  // high-water mark: the peer is not reading
      }
      const auto size = static_cast<int64_t>(bytes.size());
      auto* owned = new Owned{std::move(bytes), peer_unread, total_unread};
      if (peer_unread) peer_unread->fetch_add(size);
      if (total_unread) total_unread->fetch_add(size);
      zmq::message_t frame(owned->bytes.data(), owned->bytes.size(), &ZmqOutbox::Free, owned);
      return socket.send(frame, zmq::send_flags::dontwait).has_value();
    } catch (const zmq::error_t& e) {
      if (e.num() != EHOSTUNREACH) LogLine(std::string("send failed: ") + e.what());
      return false;
    }
  }

  zmq::socket_t* clients_;
  zmq::socket_t* workers_;
  const int64_t client_unread_bytes_;
  const int64_t client_unread_total_bytes_;
  std::unordered_map<std::string, Counter> unread_;  // by client connection
  Counter total_unread_ = std::make_shared<std::atomic<int64_t>>(0);
  std::set<std::string> dropping_;  // connections whose dropped messages were logged
  std::vector<std::string> unreachable_;
};

StatusOr<zmq::socket_t> BindRouter(zmq::context_t& ctx, const std::string& endpoint,
                                   int64_t max_message_bytes, const std::string& curve_secret,
                                   bool workers) {
  zmq::socket_t socket(ctx, zmq::socket_type::router);
  if (!curve_secret.empty()) {
    socket.set(zmq::sockopt::curve_server, 1);
    socket.set(zmq::sockopt::curve_secretkey, curve_secret);
    if (workers) socket.set(zmq::sockopt::zap_domain, kWorkerZapDomain);
  }
  // A worker reconnecting keeps its identity.
  if (workers) socket.set(zmq::sockopt::router_handover, 1);
  socket.set(zmq::sockopt::router_mandatory, 1);
  socket.set(zmq::sockopt::linger, 0);
  socket.set(zmq::sockopt::sndhwm, 100000);
  socket.set(zmq::sockopt::rcvhwm, 100000);
  if (max_message_bytes > 0) socket.set(zmq::sockopt::maxmsgsize, max_message_bytes);
  try {
    socket.bind(endpoint);
  } catch (const zmq::error_t& e) {
    return Unavailable("cannot listen on " + endpoint + ": " + e.what());
  }
  return socket;
}

// Reads one routed message: [routing id, frame]. Returns false when nothing is waiting.
// A message of another shape is answered (when it has a routing id) and dropped.
template <typename Handle>
bool ReceiveOne(zmq::socket_t& socket, Handle handle, internal::Outbox* outbox, bool workers) {
  std::vector<zmq::message_t> frames;
  zmq::message_t frame;
  if (!socket.recv(frame, zmq::recv_flags::dontwait)) return false;
  frames.push_back(std::move(frame));
  while (frames.back().more()) {
    zmq::message_t next;
    if (!socket.recv(next, zmq::recv_flags::none)) break;
    if (frames.size() < 3)
      frames.push_back(std::move(next));
    else
      frames.back() = std::move(next);  // keep only the count's worth
  }
  const std::string peer = frames[0].to_string();
  if (frames.size() != 2) {
    auto error = protocol::MakeErrorMessage(
        InvalidArgument("expected exactly one frame per message (a Glassbox message), got " +
                        std::to_string(frames.size() - 1) + " or more"));
    if (workers) {
      outbox->ToWorker(peer, error);
    } else {
      outbox->ToClient(peer, error);
    }
    return true;
  }
  handle(peer, std::string_view(static_cast<const char*>(frames[1].data()), frames[1].size()));
  return true;
}

int64_t SteadyMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

std::string Z85Decoded(const std::string& key) {
  uint8_t raw[32];
  if (key.size() != 40 || zmq_z85_decode(raw, key.c_str()) == nullptr) return {};
  return std::string(reinterpret_cast<const char*>(raw), sizeof raw);
}

// Guards the worker socket when workers authenticate (CURVE). On a thread of its own, so a
// broker stalled on Redis does not stall handshakes, it answers ZeroMQ's authentication
// requests (ZAP, ZeroMQ RFC 27) at inproc://zeromq.zap.01 (one handler per context): a
// worker connection is admitted only with an authorised public key; any other domain (the
// client socket, whose users authenticate by API key in every message) is admitted. It also
// watches the worker socket for handshakes that fail before ZAP (a worker without CURVE) and
// logs every refusal, at most one line per kind per 10 s.
class WorkerGate {
 public:
  WorkerGate(zmq::context_t& ctx, std::set<std::string> worker_keys)
      : ctx_(ctx), zap_(ctx, zmq::socket_type::rep), worker_keys_(std::move(worker_keys)) {
    zap_.set(zmq::sockopt::linger, 0);
    zap_.bind("inproc://zeromq.zap.01");
  }
  ~WorkerGate() {
    stop_.store(true);
    if (thread_.joinable()) thread_.join();
  }

  // Starts answering; `workers` (the bound worker socket) is watched when `watch`.
  void Start(zmq::socket_t& workers, bool watch) {
    if (watch) {
      const char* endpoint = "inproc://glassbox-worker-monitor";
      zmq_socket_monitor(
          workers.handle(), endpoint,
          ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL | ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL);
      monitor_ = std::make_unique<zmq::socket_t>(ctx_, zmq::socket_type::pair);
      monitor_->set(zmq::sockopt::linger, 0);
      monitor_->connect(endpoint);
    }
    thread_ = std::thread([this] { Run(); });
  }

 private:
  void Run() {
    while (!stop_.load()) {
      zmq::pollitem_t items[] = {{zap_.handle(), 0, ZMQ_POLLIN, 0},
                                 {monitor_ ? monitor_->handle() : nullptr, 0, ZMQ_POLLIN, 0}};
      try {
        zmq::poll(items, monitor_ ? 2 : 1, std::chrono::milliseconds(50));
        if (items[0].revents & ZMQ_POLLIN) Answer();
        if (monitor_ && (items[1].revents & ZMQ_POLLIN)) Watch();
      } catch (const zmq::error_t& e) {
        if (e.num() != EINTR) LogLine(std::string("worker authentication: ") + e.what());
      }
    }
  }

  // All frames of one message on `socket`, at most 16 kept.
  static std::vector<zmq::message_t> Receive(zmq::socket_t& socket) {
    std::vector<zmq::message_t> frames;
    do {
      frames.emplace_back();
      if (!socket.recv(frames.back(), zmq::recv_flags::none)) return {};
    } while (frames.back().more() && frames.size() < 16);
    while (frames.back().more()) (void)socket.recv(frames.back(), zmq::recv_flags::none);
    return frames;
  }

  // Request: version, request id, domain, address, routing id, mechanism, credentials.
  void Answer() {
    std::vector<zmq::message_t> frames = Receive(zap_);
    if (frames.size() < 2) return;
    bool admit = true;
    if (frames.size() >= 7 && frames[2].to_string() == kWorkerZapDomain) {
      admit = frames[5].to_string() == "CURVE" && worker_keys_.count(frames[6].to_string()) > 0;
      if (!admit) {
        Refused(0, "refused a worker connection from " + frames[3].to_string() +
                       ": its CURVE key is not among the authorised worker keys");
      }
    }
    const std::string reply[] = {"1.0", frames[1].to_string(), admit ? "200" : "400",
                                 admit ? "OK" : "not an authorised worker", "", ""};
    for (size_t i = 0; i < std::size(reply); ++i) {
      (void)zap_.send(zmq::buffer(reply[i]), i + 1 < std::size(reply) ? zmq::send_flags::sndmore
                                                                      : zmq::send_flags::none);
    }
  }

  // Monitor event: [uint16 event, uint32 value], then the endpoint.
  void Watch() {
    std::vector<zmq::message_t> frames = Receive(*monitor_);
    if (frames.empty() || frames[0].size() < 2) return;
    uint16_t event = 0;
    std::memcpy(&event, frames[0].data(), sizeof event);
    if (event & (ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL | ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL)) {
      Refused(1, "refused a worker connection: its handshake was not CURVE with the broker's "
                 "worker key (a worker started without --broker-key/--worker-key?)");
    }
  }

  void Refused(int kind, const std::string& line) {
    const int64_t now = SteadyMs();
    if (now - last_logged_ms_[kind] < 10000 && last_logged_ms_[kind] != 0) {
      ++suppressed_[kind];
      return;
    }
    LogLine(line + (suppressed_[kind] ? " (and " + std::to_string(suppressed_[kind]) +
                                            " more like it since the last such line)"
                                      : ""));
    last_logged_ms_[kind] = now;
    suppressed_[kind] = 0;
  }

  zmq::context_t& ctx_;
  zmq::socket_t zap_;
  std::unique_ptr<zmq::socket_t> monitor_;
  const std::set<std::string> worker_keys_;  // raw 32-byte public keys
  int64_t last_logged_ms_[2] = {0, 0};
  int64_t suppressed_[2] = {0, 0};
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

// The worker socket's CURVE secret and the authorised worker keys (raw), from the files
// BrokerParams names; both empty when worker authentication is off.
Status ReadWorkerAuth(const BrokerParams& params, std::string* secret,
                      std::set<std::string>* keys) {
  const bool has_secret = !params.worker_curve_secret_key_file.empty();
  if (has_secret != !params.worker_public_keys_file.empty()) {
    return InvalidArgument(
        "worker authentication needs both the broker's worker secret key file and the file "
        "of authorised worker public keys");
  }
  if (!has_secret) return Status::Ok();
  GLASSBOX_ASSIGN_OR_RETURN(*secret, ReadCurveKeyFile(params.worker_curve_secret_key_file));
  GLASSBOX_ASSIGN_OR_RETURN(std::vector<std::string> z85,
                            ReadCurveKeyListFile(params.worker_public_keys_file));
  for (const std::string& key : z85) keys->insert(Z85Decoded(key));
  return Status::Ok();
}

internal::StoreTtls TtlsOf(const BrokerParams& params) {
  internal::StoreTtls ttls;
  ttls.result_ms = params.result_ttl_ms;
  ttls.record_ms = params.record_ttl_ms;
  return ttls;
}

}  // namespace

Status RunBroker(const BrokerParams& params, const std::atomic<bool>& stop) {
  zmq::context_t ctx(1);
  std::string curve_secret;
  if (!params.curve_secret_key_file.empty()) {
    GLASSBOX_ASSIGN_OR_RETURN(curve_secret, ReadCurveKeyFile(params.curve_secret_key_file));
  }
  std::string worker_secret;
  std::set<std::string> worker_keys;
  GLASSBOX_RETURN_IF_ERROR(ReadWorkerAuth(params, &worker_secret, &worker_keys));
  // Before any socket binds: ZeroMQ asks the handler about every CURVE handshake.
  WorkerGate gate(ctx, std::move(worker_keys));
  GLASSBOX_ASSIGN_OR_RETURN(
      zmq::socket_t clients,
      BindRouter(ctx, params.client_endpoint, params.max_client_message_bytes, curve_secret,
                 /*workers=*/false));
  GLASSBOX_ASSIGN_OR_RETURN(
      zmq::socket_t workers,
      BindRouter(ctx, params.worker_endpoint, params.max_worker_message_bytes, worker_secret,
                 /*workers=*/true));
  gate.Start(workers, /*watch=*/!worker_secret.empty());
  std::unique_ptr<internal::JobStore> store =
      internal::NewRedisJobStore(params.redis_address, TtlsOf(params),
                                 {params.redis_timeout_ms, params.redis_retry_ms});
  internal::SystemClock clock;
  ZmqOutbox outbox(&clients, &workers, params.client_unread_bytes,
                   params.client_unread_total_bytes);
  internal::BrokerCore core(params, store.get(), &clock, &outbox);
  Status recovered = core.Recover();
  if (!recovered.ok()) LogLine("cannot reload queues yet (will retry): " + recovered.ToString());
  LogLine("serving clients on " + params.client_endpoint +
          (curve_secret.empty() ? "" : " (CURVE encrypted)") + ", workers on " +
          params.worker_endpoint +
          (worker_secret.empty()
               ? " (UNAUTHENTICATED: any process that reaches it can register as a worker)"
               : " (CURVE, authorised worker keys only)") +
          ", redis at " + params.redis_address);

  auto on_client = [&](const std::string& peer, std::string_view b) {
    core.OnClientMessage(peer, b);
  };
  auto on_worker = [&](const std::string& peer, std::string_view b) {
    core.OnWorkerMessage(peer, b);
  };
  int64_t last_tick = 0;
  int64_t ticks = 0;
  while (!stop.load()) {
    zmq::pollitem_t items[] = {{clients.handle(), 0, ZMQ_POLLIN, 0},
                               {workers.handle(), 0, ZMQ_POLLIN, 0}};
    try {
      zmq::poll(items, 2, std::chrono::milliseconds(10));
    } catch (const zmq::error_t& e) {
      if (e.num() != EINTR) return Internal(std::string("zmq_poll failed: ") + e.what());
    }
    // Every worker with a message waiting at `read_from` is read from below (the ROUTER reads
    // its connections in turn, and the cap leaves room for two messages each), so each
    // one's silence can be judged up to then, however long the broker stalls afterwards.
    const int64_t read_from = clock.NowMs();
    const size_t cap = std::max<size_t>(256, 2 * core.Workers());
    for (size_t i = 0; i < cap && ReceiveOne(workers, on_worker, &outbox, true); ++i) {
    }
    for (int i = 0; i < 256 && ReceiveOne(clients, on_client, &outbox, false); ++i) {
    }
    for (const std::string& peer : outbox.TakeUnreachable()) core.OnWorkerUnreachable(peer);
    if (SteadyMs() - last_tick >= 10) {
      core.Tick(read_from);
      if (++ticks % 100 == 0) outbox.ForgetIdleClients();
      last_tick = SteadyMs();
      for (const std::string& peer : outbox.TakeUnreachable()) core.OnWorkerUnreachable(peer);
    }
  }
  LogLine("stopping");
  return Status::Ok();
}

// ---------------------------------------------------------------------------------------
// API keys.

StatusOr<NewApiKey> CreateApiKey(const std::string& redis_address, const std::string& name,
                                 const KeyLimits& limits) {
  auto store = internal::NewRedisJobStore(redis_address, {});
  NewApiKey key;
  key.secret = "gbk_" + internal::RandomHex(32);
  key.info.id = internal::RandomHex(8);
  key.info.name = name;
  key.info.limits = limits;
  key.info.created_ms = internal::SystemClock().NowMs();
  internal::ApiKeyRecord record{key.info.id, name, limits, key.info.created_ms, false};
  GLASSBOX_RETURN_IF_ERROR(store->PutApiKey(internal::Sha256Hex(key.secret), record));
  return key;
}

StatusOr<std::vector<ApiKeyInfo>> ListApiKeys(const std::string& redis_address) {
  auto store = internal::NewRedisJobStore(redis_address, {});
  GLASSBOX_ASSIGN_OR_RETURN(std::vector<internal::ApiKeyRecord> records, store->ListApiKeys());
  std::vector<ApiKeyInfo> out;
  for (const internal::ApiKeyRecord& r : records) {
    ApiKeyInfo info{r.id, r.name, r.limits, r.created_ms, r.revoked, {}};
    GLASSBOX_ASSIGN_OR_RETURN(info.usage, store->GetUsage(r.id));
    out.push_back(std::move(info));
  }
  return out;
}

Status RevokeApiKey(const std::string& redis_address, const std::string& key_id) {
  return internal::NewRedisJobStore(redis_address, {})->RevokeApiKey(key_id);
}

// ---------------------------------------------------------------------------------------
// CURVE keys.

StatusOr<CurveKeyPair> MakeCurveKeyPair() {
  char public_key[41];
  char secret_key[41];
  if (zmq_curve_keypair(public_key, secret_key) != 0) {
    return Unimplemented(std::string("this libzmq cannot make CURVE keys: ") +
                         zmq_strerror(zmq_errno()));
  }
  return CurveKeyPair{public_key, secret_key};
}

StatusOr<std::string> ReadCurveKeyFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return NotFound("cannot read CURVE key file " + path);
  std::string key;
  in >> key;
  if (key.size() != 40) {
    return InvalidArgument("CURVE key file " + path +
                           " does not hold a 40-character Z85 key (glassbox-broker curve-keygen "
                           "makes one)");
  }
  return key;
}

StatusOr<std::vector<std::string>> ReadCurveKeyListFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return NotFound("cannot read the CURVE key list " + path);
  std::vector<std::string> keys;
  std::string line;
  for (int number = 1; std::getline(in, line); ++number) {
    const size_t begin = line.find_first_not_of(" \t\r");
    if (begin == std::string::npos || line[begin] == '#') continue;
    const std::string key = line.substr(begin, line.find_last_not_of(" \t\r") + 1 - begin);
    if (Z85Decoded(key).empty()) {
      return InvalidArgument("line " + std::to_string(number) + " of " + path +
                             " is not a 40-character Z85 CURVE public key");
    }
    keys.push_back(key);
  }
  if (keys.empty()) return InvalidArgument("the CURVE key list " + path + " holds no key");
  return keys;
}

}  // namespace glassbox::broker
