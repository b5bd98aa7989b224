// glassbox-broker: the command line of the broker.
//   glassbox-broker serve --clients tcp://*:5555 --workers tcp://*:5556 --redis 127.0.0.1:6379
//   glassbox-broker keys create --name NAME [--max-queued N --max-running N --max-request-bytes N]
//   glassbox-broker keys list
//   glassbox-broker keys revoke ID
//   glassbox-broker curve-keygen --out PREFIX      (PREFIX.key secret, PREFIX.pub public)
#include <sys/stat.h>

#include <CLI/CLI.hpp>
#include <atomic>
#include <csignal>
#if defined(__GLIBC__)
#include <malloc.h>
#endif
#include <cstdio>
#include <ctime>

#include "broker/broker.h"

namespace {

std::atomic<bool> g_stop{false};

void OnSignal(int) { g_stop.store(true); }

void AddServeFlags(CLI::App* serve, glassbox::broker::BrokerParams* p) {
  serve->add_option("--clients", p->client_endpoint, "ZeroMQ endpoint for clients")
      ->capture_default_str();
  serve->add_option("--workers", p->worker_endpoint, "ZeroMQ endpoint for engine workers")
      ->capture_default_str();
  serve->add_option("--redis", p->redis_address, "Redis host:port")->capture_default_str();
  serve->add_flag("--dev-no-auth", p->dev_no_auth,
                  "development only: accept clients without API keys");
  serve->add_option("--time-limit-ms", p->time_limit_ms, "per-job time limit")
      ->capture_default_str();
  serve
      ->add_option("--time-limit-grace-ms", p->time_limit_grace_ms,
                   "after the limit, how long a worker has to stop before the broker fails the job")
      ->capture_default_str();
  serve->add_option("--heartbeat-ms", p->heartbeat_interval_ms, "broker -> worker heartbeats")
      ->capture_default_str();
  serve
      ->add_option("--heartbeat-liveness", p->heartbeat_liveness,
                   "missed worker heartbeats before the worker is presumed dead")
      ->capture_default_str();
  serve
      ->add_option("--max-attempts", p->max_attempts,
                   "worker deaths while running one job before it is failed as poison")
      ->capture_default_str();
  serve
      ->add_option("--redis-timeout-ms", p->redis_timeout_ms,
                   "longest wait for one Redis call before it counts as unavailable")
      ->capture_default_str();
  serve
      ->add_option("--redis-retry-ms", p->redis_retry_ms,
                   "pause after a failed Redis call before reconnecting")
      ->capture_default_str();
  serve
      ->add_option("--key-cache-ms", p->key_cache_ms,
                   "API keys are re-read from Redis after this long (revocation delay)")
      ->capture_default_str();
  serve->add_option("--result-ttl-ms", p->result_ttl_ms, "how long results stay fetchable")
      ->capture_default_str();
  serve->add_option("--max-result-bytes", p->max_result_bytes, "larger results fail their job")
      ->capture_default_str();
  serve
      ->add_option("--result-cache-bytes", p->result_cache_bytes,
                   "recent results also kept in memory for fast fetches (0: off)")
      ->capture_default_str();
  serve
      ->add_option("--client-unread-bytes", p->client_unread_bytes,
                   "bytes held for one client connection that does not read; then fetches are "
                   "refused")
      ->capture_default_str();
  serve
      ->add_option("--client-unread-total-bytes", p->client_unread_total_bytes,
                   "the same for all client connections together")
      ->capture_default_str();
  serve
      ->add_option("--max-ref-bytes", p->max_ref_bytes,
                   "longest ref (client request id) a client may give")
      ->capture_default_str();
  serve
      ->add_option("--max-message-bytes", p->max_client_message_bytes,
                   "largest frame a client may send (ZMQ_MAXMSGSIZE)")
      ->capture_default_str();
  serve->add_option("--curve-secret-key-file", p->curve_secret_key_file,
                    "encrypt client connections (CURVE) with the secret key in this file");
  serve->add_option("--worker-curve-secret-key-file", p->worker_curve_secret_key_file,
                    "authenticate workers (CURVE): the broker's secret key for the worker "
                    "socket (with --worker-keys)");
  serve->add_option("--worker-keys", p->worker_public_keys_file,
                    "file of the public keys of the workers that may connect, one per line");
  serve->add_option("--max-workers", p->max_workers, "workers registered at once")
      ->capture_default_str();
  serve->add_option("--max-models", p->max_models, "models (catalogues) remembered")
      ->capture_default_str();
  serve
      ->add_option("--max-worker-message-bytes", p->max_worker_message_bytes,
                   "largest frame a worker may send")
      ->capture_default_str();
  serve
      ->add_option("--dev-max-request-bytes", p->default_limits.max_request_bytes,
                   "development mode: request size limit")
      ->capture_default_str();
}

int Serve(const glassbox::broker::BrokerParams& params) {
  if (params.dev_no_auth) {
    std::fprintf(stderr,
                 "\n*** WARNING: --dev-no-auth: API KEYS ARE OFF. Anyone who reaches %s can run "
                 "jobs and read every job's results. Never use this outside development. ***\n\n",
                 params.client_endpoint.c_str());
  }
  std::signal(SIGINT, OnSignal);
  std::signal(SIGTERM, OnSignal);
#if defined(__GLIBC__)
  // Result chunks (1 MiB) pass through several buffers each: keep them in the heap instead
  // of glibc mmapping, or trimming and faulting in, fresh pages for every chunk (a 200 MB
  // fetch spent a fifth of the broker's time in page faults).
  mallopt(M_MMAP_THRESHOLD, 32 << 20);
  mallopt(M_TRIM_THRESHOLD, 64 << 20);
#endif
  glassbox::Status status = glassbox::broker::RunBroker(params, g_stop);
  if (!status.ok()) {
    std::fprintf(stderr, "glassbox-broker: %s\n", status.ToString().c_str());
    return 1;
  }
  return 0;
}

std::string FormatTime(int64_t ms) {
  const std::time_t t = ms / 1000;
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&t));
  return buf;
}

int Fail(const glassbox::Status& status) {
  std::fprintf(stderr, "glassbox-broker: %s\n", status.ToString().c_str());
  return 1;
}

int ListKeys(const std::string& redis) {
  auto keys = glassbox::broker::ListApiKeys(redis);
  if (!keys.ok()) return Fail(keys.status());
  std::printf("%-16s  %-20s  %-20s  %-7s  %10s %11s %17s  %8s %10s %14s %14s\n", "ID", "NAME",
              "CREATED", "STATE", "MAX_QUEUED", "MAX_RUNNING", "MAX_REQUEST_BYTES", "JOBS",
              "COMPUTE_S", "BYTES_RETURNED", "BYTES_STORED");
  for (const auto& k : *keys) {
    std::printf(
        "%-16s  %-20s  %-20s  %-7s  %10lld %11lld %17lld  %8lld %10.1f %14lld %14lld\n",
        k.id.c_str(), k.name.c_str(), FormatTime(k.created_ms).c_str(),
        k.revoked ? "revoked" : "active",
        static_cast<long long>(k.limits.max_queued), static_cast<long long>(k.limits.max_running),
        static_cast<long long>(k.limits.max_request_bytes), static_cast<long long>(k.usage.jobs),
        k.usage.compute_ms / 1000.0, static_cast<long long>(k.usage.bytes_returned),
        static_cast<long long>(k.usage.bytes_stored));
  }
  return 0;
}

int WriteCurveKeys(const std::string& prefix) {
  auto pair = glassbox::broker::MakeCurveKeyPair();
  if (!pair.ok()) return Fail(pair.status());
  const std::string secret_path = prefix + ".key";
  const std::string public_path = prefix + ".pub";
  FILE* secret = std::fopen(secret_path.c_str(), "w");
  FILE* pub = std::fopen(public_path.c_str(), "w");
  if (secret == nullptr || pub == nullptr) {
    return Fail(glassbox::InvalidArgument("cannot write " + secret_path + " / " + public_path));
  }
  chmod(secret_path.c_str(), 0600);
  std::fprintf(secret, "%s\n", pair->secret_key.c_str());
  std::fprintf(pub, "%s\n", pair->public_key.c_str());
  std::fclose(secret);
  std::fclose(pub);
  std::printf(
      "wrote %s (secret: give it to `serve --curve-secret-key-file`) and %s (public: for "
      "clients)\n",
      secret_path.c_str(), public_path.c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"glassbox-broker: the Glassbox job broker (ZeroMQ + Redis)"};
  app.require_subcommand(1);
  glassbox::broker::BrokerParams params;
  CLI::App* serve = app.add_subcommand("serve", "serve clients and workers until SIGINT/SIGTERM");
  AddServeFlags(serve, &params);

  CLI::App* keys = app.add_subcommand("keys", "manage API keys (stored hashed in Redis)");
  keys->require_subcommand(1);
  std::string redis = "127.0.0.1:6379";
  keys->add_option("--redis", redis, "Redis host:port")->capture_default_str();
  std::string name;
  glassbox::broker::KeyLimits limits;
  CLI::App* create = keys->add_subcommand("create", "make a key; prints its secret once");
  create->add_option("--name", name, "who the key is for")->required();
  create->add_option("--max-queued", limits.max_queued)->capture_default_str();
  create->add_option("--max-running", limits.max_running)->capture_default_str();
  create->add_option("--max-request-bytes", limits.max_request_bytes)->capture_default_str();
  CLI::App* list = keys->add_subcommand("list", "keys with their limits and usage");
  std::string revoke_id;
  CLI::App* revoke = keys->add_subcommand("revoke", "revoke a key by id");
  revoke->add_option("id", revoke_id, "the key's id (from keys list)")->required();
  std::string curve_prefix;
  CLI::App* keygen = app.add_subcommand(
      "curve-keygen", "write a CURVE key pair: PREFIX.key (secret, for serve) and PREFIX.pub");
  keygen->add_option("--out", curve_prefix, "path prefix of the two files")->required();
  CLI11_PARSE(app, argc, argv);

  if (serve->parsed()) return Serve(params);
  if (keygen->parsed()) return WriteCurveKeys(curve_prefix);
  if (create->parsed()) {
    auto key = glassbox::broker::CreateApiKey(redis, name, limits);
    if (!key.ok()) return Fail(key.status());
    std::printf("id:     %s\nsecret: %s\n(the secret is shown only now; Redis keeps its SHA-256)\n",
                key->info.id.c_str(), key->secret.c_str());
    return 0;
  }
  if (list->parsed()) return ListKeys(redis);
  if (revoke->parsed()) {
    glassbox::Status status = glassbox::broker::RevokeApiKey(redis, revoke_id);
    if (!status.ok()) return Fail(status);
    std::printf("revoked %s\n", revoke_id.c_str());
  }
  return 0;
}
