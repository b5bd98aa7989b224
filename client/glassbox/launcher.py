"""Starting a local Glassbox service: redis-server, glassbox-broker and engine workers.

What ``glassbox up`` runs for a class or a lab, and what the tests start: real processes
on chosen ports (a worker per served model, several models at once if asked), each logging
to a file in the service's data directory, stopped in reverse order (SIGTERM, then SIGKILL
after a grace period).

Binaries: ``glassbox-broker`` and ``glassbox-engine`` from ``$GLASSBOX_BIN_DIR`` (default:
``build/bin`` under the repository this package sits in); ``redis-server`` from
``$GLASSBOX_REDIS_SERVER`` or the PATH.
"""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from typing import List, Optional, Tuple

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
    engine_args: tuple = ("--threads", "1")
    broker_args: tuple = ()

    @property
    def url(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

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

    @property
    def redis_address(self) -> str:
        return f"127.0.0.1:{self.params.redis_port}"

    def __enter__(self) -> "LocalService":
        self.start()
        return self

    def __exit__(self, *exc) -> bool:
        self.stop()
        return False

    def start(self) -> None:
        self.check()
        for port in (self.params.port, self.params.worker_port, self.params.redis_port):
            if port_in_use(port):
                raise GlassboxError("UNAVAILABLE", f"port {port} is in use (is a service already "
                                    "up? try `glassbox status`, or choose --port)")
        self.log_dir.mkdir(parents=True, exist_ok=True)
        try:
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
                "--workers", f"tcp://127.0.0.1:{p.worker_port}", "--redis", self.redis_address,
                *(["--dev-no-auth"] if p.dev else []), *self._curve_args(), *p.broker_args]
        self._spawn("broker", argv, p.port)

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
        self._check_model(model_path)
        argv = [find_binary("glassbox-engine"), "serve", "--model", model_path, "--name", name,
                "--broker", f"tcp://127.0.0.1:{self.params.worker_port}",
                *self.params.engine_args]
        return self._spawn(f"worker-{name}", argv, None)

    def wait_until_serving(self, backend, name: str, timeout: float = 120.0) -> None:
        """Returns once a worker serves ``name`` through ``backend`` (a ServiceBackend of this
        service); raises a GlassboxError naming the log when a process dies, or on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(m.name == name and m.workers for m in backend.models()):
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
        """SIGTERM to every process, newest first (SIGKILL after ``grace`` seconds)."""
        for process in reversed(self.processes):
            stop_process(process, grace)
        self.processes.clear()

    def _spawn(self, role: str, argv: List[str], port: Optional[int]) -> subprocess.Popen:
        log_path = self.log_dir / f"{role}.log"
        with open(log_path, "ab") as log:
            process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, start_new_session=True)
        process.log_path = str(log_path)
        self.processes.append(process)
        if port is not None and not wait_for_port(port, 15, process):
            raise GlassboxError("UNAVAILABLE", f"{role} did not start listening on port "
                                f"{port}; see {log_path}:\n{tail(log_path)}")
        return process


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
