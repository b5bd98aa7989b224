"""Starting a local Glassbox service: redis-server, glassbox-broker and engine workers.

What ``glassbox up`` runs for a class or a lab, and what the tests start: real processes
on chosen ports (a worker per served model, several models at once if asked), each logging
to a file in the service's data directory, stopped in reverse order (SIGTERM, then SIGKILL
after a grace period). A worker that exits is started again after a back-off
(``LocalService.supervise``). One service per data directory: ``DataDirLock`` (an flock on
``DIR/lock``) keeps a second one, or a second Redis on the same files, out.

Binaries: ``glassbox-broker`` and ``glassbox-engine`` from ``$GLASSBOX_BIN_DIR`` (default:
``build/bin`` under the repository this package sits in); ``redis-server`` from
``$GLASSBOX_REDIS_SERVER`` or the PATH.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from typing import Iterator, List, Optional, Tuple

from .errors import GlassboxError

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
DEFAULT_MODEL = REPO_ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_DATA_DIR = pathlib.Path.home() / ".cache" / "glassbox"


def bin_dir() -> pathlib.Path:
    """Where glassbox-broker and glassbox-engine live."""
    return pathlib.Path(os.environ.get("GLASSBOX_BIN_DIR") or REPO_ROOT / "build" / "bin")


def find_binary(name: str) -> str:
    """The path of ``name`` (redis-server, glassbox-broker, glassbox-engine), or a
    NOT_FOUND GlassboxError saying where it was looked for."""
    if name == "redis-server":
        found = os.environ.get("GLASSBOX_REDIS_SERVER") or shutil.which(name)
        if found:
            return found
        raise GlassboxError("NOT_FOUND", "no redis-server on the PATH (apt-get install "
                            "redis-server, or set GLASSBOX_REDIS_SERVER)")
    path = bin_dir() / name
    if not path.is_file():
        raise GlassboxError("NOT_FOUND", f"no {name} at {path} (build the repository, or set "
                            "GLASSBOX_BIN_DIR to the directory holding it)")
    return str(path)


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float, process: Optional[subprocess.Popen] = None) -> bool:
    """True once 127.0.0.1:port accepts connections; False after ``timeout`` seconds or
    when ``process`` exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            return False
        if port_in_use(port):
            return True
        time.sleep(0.05)
    return False


def port_in_use(port: int) -> bool:
    """True when something accepts TCP connections on 127.0.0.1:port."""
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def public_host() -> str:
    """A name or address of this machine that other machines can reach: its host name when
    that resolves to a non-loopback address, else the address of the interface that routes
    outwards, else the host name (with nothing better to offer)."""
    for name in (socket.getfqdn(), socket.gethostname()):
        try:
            addresses = {info[4][0] for info in socket.getaddrinfo(name, None, socket.AF_INET)}
        except OSError:
            continue
        if addresses and not any(a.startswith("127.") for a in addresses):
            return name
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("198.51.100.1", 9))  # a UDP "connect" sends nothing; it picks a route
            address = s.getsockname()[0]
            if not address.startswith("127.") and address != "0.0.0.0":
                return address
        except OSError:
            pass
    return socket.gethostname()


@dataclass
class ServiceParams:
    """A local service: where it listens, what it serves, where it keeps its files."""

    model_path: str = str(DEFAULT_MODEL)
    model_name: str = "smollm2-135m"
    more_models: tuple = ()  # further (path, name) pairs served at once, one worker each
    port: int = 5555  # clients
    worker_port: int = 0  # 0: port + 1
    redis_port: int = 0  # 0: a free port
    data_dir: str = str(DEFAULT_DATA_DIR)
    dev: bool = False  # no API keys (binds 127.0.0.1 only)
    encrypt: bool = False  # CURVE on client connections (key pair kept in data_dir)
    bind: str = ""  # client interface; default "*" (127.0.0.1 with dev)
    # The workers' interface: this machine only unless workers on other machines must reach
    # the broker ("*"). Workers authenticate either way (CURVE keys kept in
    # data_dir/worker-keys, see LocalService.worker_keys_dir).
    worker_bind: str = "127.0.0.1"
    # A worker that exits is started again after restart_delay seconds, doubled for each
    # exit in a row up to max_restart_delay; one that ran max_restart_delay seconds or more
    # before exiting starts again after restart_delay.
    restart_delay: float = 1.0
    max_restart_delay: float = 60.0
    engine_args: tuple = ("--threads", "1")
    broker_args: tuple = ()

    @property
    def url(self) -> str:
        """Where this machine reaches the broker's client port."""
        return f"tcp://{self._local_host()}:{self.port}"

    @property
    def public_url(self) -> str:
        """The URL to give users: one other machines can use (the host's name when it
        resolves to a non-loopback address, else such an address); the local URL when the
        client port is bound to 127.0.0.1 (``dev``)."""
        wildcard = self.bind in ("", "*", "0.0.0.0")
        return f"tcp://{public_host()}:{self.port}" if wildcard and not self.dev else self.url

    def _local_host(self) -> str:
        return "127.0.0.1" if self.bind in ("", "*", "0.0.0.0") else self.bind

    @property
    def models(self) -> List[Tuple[str, str]]:
        """Every (path, name) served: model_path as model_name, then more_models."""
        return [(self.model_path, self.model_name), *map(tuple, self.more_models)]


class LocalService:
    """The processes of one local service. ``start()`` brings up Redis, the broker and one
    worker of each served model (``params.models``; each process waited for); ``stop()``
    stops them all; a context manager does both. Raises GlassboxError (naming the log) when
    a process fails."""

    def __init__(self, params: ServiceParams):
        self.params = params
        if not params.worker_port:
            params.worker_port = params.port + 1
        if not params.redis_port:
            params.redis_port = free_port()
        self.data_dir = pathlib.Path(params.data_dir)
        self.log_dir = self.data_dir / "logs"
        self.processes: List[subprocess.Popen] = []
        self.workers: List[SupervisedWorker] = []
        self.data_lock = DataDirLock(self.data_dir)

    @property
    def state_path(self) -> pathlib.Path:
        """``service.json``: what the service runs (URL, Redis, pids), for people and tests."""
        return self.data_dir / "service.json"

    @property
    def redis_address(self) -> str:
        return f"127.0.0.1:{self.params.redis_port}"

    def __enter__(self) -> "LocalService":
        self.start()
        return self

    def __exit__(self, *exc) -> bool:
        self.stop()
        return False

    def lock(self) -> None:
        """Takes the data directory (see DataDirLock); raises UNAVAILABLE naming the holder's
        pid and URL when another service (or `glassbox keys`) has it."""
        if not self.data_lock.held:
            self.data_lock.acquire({"role": "glassbox up", "pid": os.getpid(),
                                    "url": self.params.public_url, "redis": self.redis_address})

    def start(self) -> None:
        self.check()
        self.lock()
        try:
            for port in (self.params.port, self.params.worker_port, self.params.redis_port):
                if port_in_use(port):
                    raise GlassboxError("UNAVAILABLE", f"port {port} is in use (is a service "
                                        "already up? try `glassbox status`, or choose --port)")
            self.log_dir.mkdir(parents=True, exist_ok=True)
            self.make_worker_keys()
            self.start_redis()
            self.start_broker()
            for path, name in self.params.models:
                self.start_worker(path, name)
        except BaseException:
            self.stop()
            raise

    def check(self) -> None:
        """Raises (NOT_FOUND) before anything starts when a binary or a model is missing,
        (INVALID_ARGUMENT) when two models have the same name."""
        for name in ("redis-server", "glassbox-broker", "glassbox-engine"):
            find_binary(name)
        names = [name for _, name in self.params.models]
        if len(set(names)) != len(names):
            raise GlassboxError("INVALID_ARGUMENT", f"each model needs a name of its own "
                                f"(names: {', '.join(names)})")
        for path, _ in self.params.models:
            self._check_model(path)

    @staticmethod
    def _check_model(model_path: str) -> None:
        if not os.path.exists(model_path):
            raise GlassboxError("NOT_FOUND", f"no model at {model_path} (./setup.sh downloads "
                                "the default one; or pass --model PATH)")

    def start_redis(self) -> None:
        redis_dir = self.data_dir / "redis"
        redis_dir.mkdir(parents=True, exist_ok=True)
        argv = [find_binary("redis-server"), "--port", str(self.params.redis_port),
                "--bind", "127.0.0.1", "--dir", str(redis_dir), "--appendonly", "yes",
                "--appendfsync", "everysec", "--save", "",
                # Rewriting the append-only file forks Redis and rewrites every stored result;
                # after each 64 MB (Redis's default) that would slow fetches on a small machine.
                "--auto-aof-rewrite-min-size", "1gb"]
        self._spawn("redis", argv, self.params.redis_port)

    def start_broker(self) -> None:
        p = self.params
        bind = p.bind or ("127.0.0.1" if p.dev else "*")
        argv = [find_binary("glassbox-broker"), "serve", "--clients", f"tcp://{bind}:{p.port}",
                "--workers", f"tcp://{p.worker_bind or '127.0.0.1'}:{p.worker_port}",
                "--redis", self.redis_address,
                "--worker-curve-secret-key-file", str(self.worker_keys_dir / "broker.key"),
                "--worker-keys", str(self.worker_keys_dir / "authorised"),
                *(["--dev-no-auth"] if p.dev else []), *self._curve_args(), *p.broker_args]
        self._spawn("broker", argv, p.port)

    @property
    def worker_keys_dir(self) -> pathlib.Path:
        """The workers' CURVE keys (made by ``make_worker_keys`` on the first start): the
        broker's pair for the worker socket (``broker.key``, ``broker.pub``), one pair its
        workers share (``worker.key``, ``worker.pub``) and ``authorised``, the public keys of
        the workers the broker admits, one per line (add a remote worker's ``.pub`` there)."""
        return self.data_dir / "worker-keys"

    def make_worker_keys(self) -> None:
        """Makes the missing worker keys (secret files readable by their owner only)."""
        keys = self.worker_keys_dir
        keys.mkdir(mode=0o700, parents=True, exist_ok=True)
        for name in ("broker", "worker"):
            if not (keys / f"{name}.key").is_file():
                subprocess.run([find_binary("glassbox-broker"), "curve-keygen", "--out",
                                str(keys / name)], check=True, capture_output=True, timeout=30)
        authorised = keys / "authorised"
        if not authorised.is_file():
            authorised.write_text("# Public keys of the workers this broker admits, one per "
                                  "line (glassbox-broker curve-keygen makes pairs).\n"
                                  + (keys / "worker.pub").read_text())

    @property
    def server_key_path(self) -> pathlib.Path:
        """The broker's CURVE public key (for clients), when ``encrypt`` is on."""
        return self.data_dir / "curve.pub"

    def _curve_args(self) -> List[str]:
        if not self.params.encrypt:
            return []
        prefix = self.data_dir / "curve"
        if not self.server_key_path.is_file():
            subprocess.run([find_binary("glassbox-broker"), "curve-keygen", "--out", str(prefix)],
                           check=True, capture_output=True, timeout=30)
        return ["--curve-secret-key-file", f"{prefix}.key"]

    def start_worker(self, model_path: str, name: str) -> subprocess.Popen:
        """Starts a worker of ``name``, supervised from now on (see ``supervise``)."""
        self._check_model(model_path)
        process = self._spawn_worker(model_path, name)
        self.workers.append(SupervisedWorker(model_path, name, process, time.monotonic()))
        return process

    def _spawn_worker(self, model_path: str, name: str) -> subprocess.Popen:
        argv = [find_binary("glassbox-engine"), "serve", "--model", model_path, "--name", name,
                "--broker", f"tcp://127.0.0.1:{self.params.worker_port}",
                "--broker-key", str(self.worker_keys_dir / "broker.pub"),
                "--worker-key", str(self.worker_keys_dir / "worker.key"),
                *self.params.engine_args]
        return self._spawn(f"worker-{name}", argv, None)

    def supervise(self, now: float) -> List[str]:
        """One round of supervision at time ``now`` (time.monotonic()): each worker that
        exited is started again once its back-off (ServiceParams.restart_delay, doubled for
        each exit in a row, at most max_restart_delay) has passed. Returns lines for the log
        saying what happened. Raises UNAVAILABLE, naming the log, when Redis or the broker
        exited: the service cannot go on without them."""
        supervised = {id(w.process) for w in self.workers}
        for process in self.processes:
            if id(process) not in supervised and process.poll() is not None:
                raise GlassboxError("UNAVAILABLE", f"a process exited; see {process.log_path}:"
                                    f"\n{tail(process.log_path)}")
        lines = []
        for worker in self.workers:
            if worker.restart_at is None and worker.process.poll() is not None:
                lines.append(self._schedule_restart(worker, now))
            if worker.restart_at is not None and now >= worker.restart_at:
                lines.append(self._restart(worker, now))
        return lines

    def _schedule_restart(self, worker: "SupervisedWorker", now: float) -> str:
        p = self.params
        ran_long = now - worker.started >= p.max_restart_delay
        worker.exits_in_a_row = 1 if ran_long else worker.exits_in_a_row + 1
        delay = min(p.restart_delay * 2 ** (worker.exits_in_a_row - 1), p.max_restart_delay)
        worker.restart_at = now + delay
        return (f"glassbox: the worker of {worker.name} exited ({exit_text(worker.process)}; "
                f"see {worker.process.log_path}); restarting it in {delay:g} s "
                f"(exit {worker.exits_in_a_row} in a row)")

    def _restart(self, worker: "SupervisedWorker", now: float) -> str:
        self.processes.remove(worker.process)
        worker.process = self._spawn_worker(worker.model_path, worker.name)
        worker.started, worker.restart_at = now, None
        return f"glassbox: restarted the worker of {worker.name} (pid {worker.process.pid})"

    def wait_until_serving(self, backend, name: str, timeout: float = 120.0) -> None:
        """Returns once a worker serves ``name`` through ``backend`` (a ServiceBackend of this
        service); raises a GlassboxError naming the log when a process dies, or on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                models = backend.models()
            except GlassboxError as e:  # a broker still starting on a busy machine: ask again
                if e.code != "UNAVAILABLE":
                    raise
                models = []
            if any(m.name == name and m.workers for m in models):
                return
            dead = self.dead_process()
            if dead:
                raise GlassboxError("UNAVAILABLE", f"a process of the service exited; see {dead}:"
                                    f"\n{tail(dead)}")
            time.sleep(0.1)
        raise GlassboxError("UNAVAILABLE", f"no worker registered {name} within {timeout:.0f} s "
                            f"(logs in {self.log_dir})")

    def create_key(self, name: str) -> str:
        """A new API key for ``name`` (its secret: ``gbk_`` + 64 hex digits)."""
        return create_key(self.redis_address, name)

    def dead_process(self) -> Optional[str]:
        """The log file of a process that has exited, if any."""
        for process in self.processes:
            if process.poll() is not None:
                return process.log_path
        return None

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM to every process, newest first (SIGKILL after ``grace`` seconds); then
        removes service.json and releases the data directory (only when this service held
        it: a service refused by the lock touches nothing of the holder's)."""
        for process in reversed(self.processes):
            stop_process(process, grace)
        self.processes.clear()
        self.workers.clear()
        if self.data_lock.held:
            self.state_path.unlink(missing_ok=True)
            self.data_lock.release()

    def write_state(self, **extra) -> None:
        """Writes service.json: the URL, Redis, pids of this process and its children, and
        ``extra``."""
        info = {"url": self.params.public_url, "redis": self.redis_address,
                "pid": os.getpid(), "children": [p.pid for p in self.processes], **extra}
        self.state_path.write_text(json.dumps(info) + "\n")

    def _spawn(self, role: str, argv: List[str], port: Optional[int]) -> subprocess.Popen:
        log_path = self.log_dir / f"{role}.log"
        # Children hold the data directory's lock too: if this process dies without stopping
        # them, no other service starts on their files while they still run.
        with open(log_path, "ab") as log:
            process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, start_new_session=True,
                                       pass_fds=self.data_lock.fds())
        process.log_path = str(log_path)
        self.processes.append(process)
        if port is not None and not wait_for_port(port, 15, process):
            raise GlassboxError("UNAVAILABLE", f"{role} did not start listening on port "
                                f"{port}; see {log_path}:\n{tail(log_path)}")
        return process


@dataclass
class SupervisedWorker:
    """A worker process of a LocalService and its restart state."""

    model_path: str
    name: str
    process: subprocess.Popen
    started: float  # time.monotonic() of its start
    exits_in_a_row: int = 0  # exits without a run of max_restart_delay in between
    restart_at: Optional[float] = None  # set while it waits out its back-off


def exit_text(process: subprocess.Popen) -> str:
    """"exit code 3" or "killed by SIGKILL"."""
    code = process.returncode
    if code is not None and code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"


class DataDirLock:
    """One service per data directory: an exclusive flock on ``DIR/lock``, held while the
    service runs (the kernel drops it when the holder exits, however it exits). The holder
    writes its role, pid, URL and Redis address into the file for whoever finds it taken."""

    def __init__(self, data_dir: pathlib.Path):
        self.path = pathlib.Path(data_dir) / "lock"
        self._file = None

    @property
    def held(self) -> bool:
        return self._file is not None

    def try_acquire(self, info: dict) -> bool:
        """Takes the lock and writes ``info`` into it; False when someone else holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock_file = open(self.path, "a+")
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock_file.close()
            return False
        lock_file.truncate(0)
        lock_file.write(json.dumps(info) + "\n")
        lock_file.flush()
        self._file = lock_file
        return True

    def acquire(self, info: dict) -> None:
        """Takes the lock, or raises UNAVAILABLE naming the holder's pid and URL."""
        if self.try_acquire(info):
            return
        holder = self.holder()
        what = holder.get("role", "another service")
        url = f", serving {holder['url']}" if holder.get("url") else ""
        pid = holder.get("pid")
        orphans = "" if pid is None or pid_alive(pid) else (
            f"; pid {pid} has exited but processes it started still run: see "
            f"{self.path.parent / 'service.json'}")
        raise GlassboxError("UNAVAILABLE", f"the data directory {self.path.parent} is in use by "
                            f"{what} (pid {pid or 'unknown'}{url}){orphans}; stop it first, or "
                            "pass another --data")

    def holder(self) -> dict:
        """What the holder wrote ({} while it is still writing, or when nobody holds it)."""
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}

    def fds(self) -> Tuple[int, ...]:
        """The lock's file descriptor while held (for children to inherit), else ()."""
        return (self._file.fileno(),) if self._file is not None else ()

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # drops the flock; the file stays (deleting it would race)
            self._file = None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


@contextlib.contextmanager
def redis_of(data_dir: str, timeout: float = 30.0) -> Iterator[str]:
    """The address of the Redis that holds ``data_dir``'s keys and jobs: that of the
    `glassbox up` running on it, or, when none runs, of a redis-server started on the
    directory's files for as long as the context lasts (holding the directory's lock, so no
    service starts on the same files meanwhile). Raises UNAVAILABLE after ``timeout``
    seconds of another `glassbox keys` holding the directory."""
    service = LocalService(ServiceParams(data_dir=str(data_dir)))
    deadline = time.monotonic() + timeout
    info = {"role": "glassbox keys", "pid": os.getpid(), "redis": service.redis_address}
    while not service.data_lock.try_acquire(info):
        holder = service.data_lock.holder()
        if holder.get("role") == "glassbox up" and holder.get("redis"):
            if not wait_for_port(int(holder["redis"].rsplit(":", 1)[1]), timeout):
                raise GlassboxError("UNAVAILABLE", f"the service on {data_dir} (pid "
                                    f"{holder.get('pid')}) has no Redis at {holder['redis']}")
            yield holder["redis"]
            return
        if time.monotonic() > deadline:
            service.data_lock.acquire(info)  # raises, naming the holder
        time.sleep(0.05)
    try:
        service.log_dir.mkdir(parents=True, exist_ok=True)
        service.start_redis()
        yield service.redis_address
    finally:
        service.stop()


def stop_process(process: subprocess.Popen, grace: float) -> None:
    """SIGTERM, wait up to ``grace`` seconds, then SIGKILL; always reaps."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def create_key(redis_address: str, name: str, limits: tuple = ()) -> str:
    """Runs ``glassbox-broker keys create`` and returns the secret it prints."""
    argv = [find_binary("glassbox-broker"), "keys", "--redis", redis_address, "create",
            "--name", name, *limits]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    match = re.search(r"^secret:\s*(\S+)", done.stdout, re.M)
    if done.returncode != 0 or match is None:
        raise GlassboxError("INTERNAL", "glassbox-broker keys create failed: "
                            + (done.stderr.strip() or done.stdout.strip()))
    return match.group(1)


def tail(path: str, lines: int = 15) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return ""
