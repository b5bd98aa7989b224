// Real processes for the broker's end-to-end tests and benchmark: a redis-server on a free
// port in a temporary directory, the glassbox-broker binary and glassbox-test-worker
// children, each killable with any signal (as Redis's own test suite starts real servers).
#ifndef GLASSBOX_TESTS_BROKER_PROCESSES_H_
#define GLASSBOX_TESTS_BROKER_PROCESSES_H_

#include <sys/types.h>

#include <csignal>
#include <memory>
#include <string>
#include <vector>

namespace glassbox::broker::testing {

// Where glassbox-broker and glassbox-test-worker live (GLASSBOX_BIN_DIR at build time).
std::string BinDir();

// A fresh directory under $TMPDIR (or /tmp), removed by the destructor.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// A port nobody listens on right now (bind to 0, read it back, close).
int FreePort();
// True once something accepts TCP connections on 127.0.0.1:port, within timeout_ms.
bool WaitForPort(int port, int timeout_ms);

// TCP connections on this machine whose local port is `port` and that are still open on
// that side (ESTABLISHED or CLOSE_WAIT): how a test sees that a server has noticed its
// peers are gone, without timing it.
int OpenConnectionsOnPort(int port);
// Waits until the file at `path` exists (a process under test reached a point), within
// timeout_ms; false if it did not.
bool WaitForFile(const std::string& path, int timeout_ms = 10000);

// A child process; stdout and stderr go to `log_path`. The destructor SIGKILLs and reaps it.
class ChildProcess {
 public:
  ChildProcess(const std::vector<std::string>& argv, const std::string& log_path);
  ~ChildProcess();
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;

  pid_t pid() const { return pid_; }
  bool Running();
  void Signal(int sig);
  // Sends `sig` and waits for the exit (SIGKILL after timeout_ms). Returns the wait status.
  int Stop(int sig, int timeout_ms = 5000);

 private:
  pid_t pid_ = -1;
  bool reaped_ = false;
  int status_ = 0;
};

// redis-server on a free port with an append-only file in `dir`. `appendfsync` "always"
// (the tests: even a SIGKILLed Redis keeps everything acknowledged) or "everysec" (what
// production would use: up to a second lost on a crash, none on a clean restart).
class RedisServer {
 public:
  explicit RedisServer(const std::string& dir, const std::string& appendfsync = "always");
  // (Re)starts on the same port and files, with `extra` redis-server arguments; waits until
  // it accepts connections (it may still be loading its data).
  void Start(const std::vector<std::string>& extra = {});
  void Stop(int sig = SIGTERM);  // SIGTERM: a clean shutdown; SIGKILL: a crash
  void Signal(int sig);          // SIGSTOP / SIGCONT: a frozen Redis
  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }

 private:
  std::string dir_;
  std::string appendfsync_;
  int port_;
  std::unique_ptr<ChildProcess> process_;
};

}  // namespace glassbox::broker::testing

#endif  // GLASSBOX_TESTS_BROKER_PROCESSES_H_
