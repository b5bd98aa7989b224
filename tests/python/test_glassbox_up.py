"""`glassbox up` as an operator runs it: its workers supervised (a killed worker comes back,
after a back-off that is a parameter), one service per data directory (a second `up` is
refused, naming the first), a URL other machines can use, `glassbox keys` whether or not a
service runs, and the worker port on 127.0.0.1 unless opened. Real processes throughout
(redis-server, glassbox-broker, `glassbox-engine serve` on the tiny random Llama), except
the back-off schedule, which is checked with stand-in processes and given times.

Skipped, saying why, when redis-server or the binaries ($GLASSBOX_BIN_DIR) are missing.
"""

import json
import os
import pathlib
import queue
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import pytest

import glassbox
from glassbox import launcher

from conftest import ROOT, TINY_LLAMA, bin_dir
from glassbox.service import ServiceBackend
from test_service import glassbox_cli, missing_binaries, wait_for_model

NAME = "tiny-llama"
PROMPT = [1, 5, 9, 3]


@pytest.fixture(scope="module", autouse=True)
def binaries():
    if missing_binaries():
        pytest.skip(f"needs {missing_binaries()} (build the repository or set GLASSBOX_BIN_DIR)")


@pytest.fixture
def data_dir():
    with tempfile.TemporaryDirectory(prefix="glassbox-up-test-") as path:
        yield pathlib.Path(path)


def env() -> dict:
    return {**os.environ, "GLASSBOX_BIN_DIR": str(bin_dir())}


class Up:
    """A `glassbox up` subprocess; its output (stdout and stderr) read line by line."""

    def __init__(self, data: pathlib.Path, *flags: str):
        self.port = launcher.free_port()
        self.worker_port = launcher.free_port()
        self.data = data
        self.process = subprocess.Popen(
            [sys.executable, "-u", "-m", "glassbox.cli", "up", "--model", str(TINY_LLAMA),
             "--name", NAME, "--port", str(self.port), "--worker-port", str(self.worker_port),
             "--data", str(data), *flags], cwd=ROOT / "client", env=env(),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: "queue.Queue[str]" = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.printed = self.read_until("Ctrl-C stops")

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.put(line)
        self.lines.put("")

    def read_until(self, start: str, timeout: float = 120) -> str:
        """The output up to and including the first line starting with ``start``."""
        seen = []
        while True:
            line = self.lines.get(timeout=timeout)
            seen.append(line)
            if line.startswith(start) or line == "":
                assert line, "".join(seen)
                return "".join(seen)

    def state(self) -> dict:
        return json.loads((self.data / "service.json").read_text())

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            assert self.process.wait(60) == 0


def listening_hosts(port: int) -> set:
    """The local addresses (IPv4, as "a.b.c.d") listening on TCP ``port``."""
    hosts = set()
    with open("/proc/net/tcp") as table:
        next(table)
        for line in table:
            _, local, _, state = line.split()[:4]
            address, local_port = local.split(":")
            if int(local_port, 16) == port and state == "0A":  # LISTEN
                hosts.add(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
    return hosts


def traced_logits(url: str, api_key: str = "") -> tuple:
    model = glassbox.Model(NAME, url=url, api_key=api_key, arrays="numpy", quiet=True)
    try:
        with model.trace(PROMPT):
            logits = model.lm_head.output.save()
        return logits.value.shape
    finally:
        model._backend.close()


def test_a_killed_worker_is_restarted_after_its_back_off_and_serves(data_dir):
    up = Up(data_dir, "--dev", "--restart-delay", "0")
    try:
        url = f"tcp://127.0.0.1:{up.port}"
        assert f"serving {NAME} at {url}" in up.printed, up.printed  # --dev: this machine
        assert listening_hosts(up.worker_port) == {"127.0.0.1"}
        killed = up.state()["workers"][NAME]
        os.kill(killed, signal.SIGKILL)
        logged = up.read_until(f"glassbox: restarted the worker of {NAME}")
        assert re.search(rf"the worker of {NAME} exited \(killed by SIGKILL; see \S+"
                         r"worker-tiny-llama.log\); restarting it in 0 s \(exit 1 in a row\)",
                         logged), logged
        restarted = int(re.search(r"\(pid (\d+)\)", logged.splitlines()[-1]).group(1))
        assert restarted != killed and not launcher.pid_alive(killed)
        assert traced_logits(url)[:2] == (1, 4)
        assert up.state()["workers"][NAME] == restarted
        children = up.state()["children"]
        assert restarted in children and killed not in children
    finally:
        up.stop()
    for pid in children:
        assert not launcher.pid_alive(pid)


def wait_for_text(path: pathlib.Path, text: str, timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.is_file() and text in path.read_text():
            return True
        time.sleep(0.02)
    return False


def test_workers_need_the_keys_up_keeps_and_gives_its_own_workers(data_dir):
    up = Up(data_dir, "--dev")
    engine = str(bin_dir() / "glassbox-engine")
    broker = f"tcp://127.0.0.1:{up.worker_port}"
    keys = data_dir / "worker-keys"
    started = []
    backend = ServiceBackend(f"tcp://127.0.0.1:{up.port}", quiet=True)
    try:
        assert keys.stat().st_mode & 0o077 == 0
        for name in ("broker.key", "worker.key"):
            assert (keys / name).stat().st_mode & 0o077 == 0, name
        assert (keys / "worker.pub").read_text().strip() in (keys / "authorised").read_text()
        log = data_dir / "logs" / "broker.log"
        assert "(CURVE, authorised worker keys only)" in log.read_text()
        wait_for_model(backend, NAME)  # up's own worker got the keys
        # A worker without keys is refused at the handshake: it never registers.
        with open(data_dir / "rogue.log", "w") as rogue_log:
            started.append(subprocess.Popen(
                [engine, "serve", "--model", str(TINY_LLAMA), "--name", "rogue", "--broker",
                 broker], stdout=rogue_log, stderr=subprocess.STDOUT))
        assert wait_for_text(log, "refused a worker connection"), log.read_text()
        # One given up's keys, as a worker on another machine would be, registers.
        with open(data_dir / "extra.log", "w") as extra_log:
            started.append(subprocess.Popen(
                [engine, "serve", "--model", str(TINY_LLAMA), "--name", "extra", "--broker",
                 broker, "--broker-key", str(keys / "broker.pub"), "--worker-key",
                 str(keys / "worker.key")], stdout=extra_log, stderr=subprocess.STDOUT))
        wait_for_model(backend, "extra")
        assert sorted(m.name for m in backend.models()) == ["extra", NAME]
    finally:
        for process in started:
            process.kill()
            process.wait()
        backend.close()
        up.stop()


def test_a_second_up_on_the_same_data_is_refused_naming_the_first(data_dir):
    first = Up(data_dir, "--dev")
    try:
        state = first.state()
        second = glassbox_cli("up", "--dev", "--port", str(launcher.free_port()), "--worker-port",
                              str(launcher.free_port()), "--model", str(TINY_LLAMA), "--name",
                              NAME, "--data", str(data_dir), env=env())
        assert second.returncode == 1
        assert (f"the data directory {data_dir} is in use by glassbox up (pid "
                f"{first.process.pid}, serving tcp://127.0.0.1:{first.port})") in second.stderr
        assert first.state() == state  # its service.json untouched, its processes running
        redis_servers = [pid for pid in state["children"]
                         if "redis-server" in pathlib.Path(f"/proc/{pid}/cmdline").read_text()]
        assert len(redis_servers) == 1
        assert traced_logits(f"tcp://127.0.0.1:{first.port}")[:2] == (1, 4)
    finally:
        first.stop()


def test_processes_left_by_a_killed_up_still_hold_the_data_directory(data_dir):
    first = Up(data_dir, "--dev")
    orphans = first.state()["children"]
    first.process.kill()  # no clean-up: Redis, the broker and the worker run on
    first.process.wait()
    try:
        second = glassbox_cli("up", "--dev", "--port", str(launcher.free_port()), "--worker-port",
                              str(launcher.free_port()), "--model", str(TINY_LLAMA), "--name",
                              NAME, "--data", str(data_dir), env=env())
        assert second.returncode == 1
        assert (f"pid {first.process.pid} has exited but processes it started still run: see "
                f"{data_dir / 'service.json'}") in second.stderr, second.stderr
    finally:
        for pid in orphans:
            os.kill(pid, signal.SIGKILL)
    while any(launcher.pid_alive(pid) for pid in orphans):
        time.sleep(0.01)  # until init has reaped them: then the lock is free
    done = glassbox_cli("keys", "--data", str(data_dir), "list", env=env())
    assert done.returncode == 0, done.stderr


def test_keys_work_on_a_data_directory_before_during_and_after_up(data_dir):
    def create(name):
        done = glassbox_cli("keys", "--data", str(data_dir), "create", "--name", name, env=env())
        assert done.returncode == 0, done.stdout + done.stderr
        return re.search(r"secret: (gbk_[0-9a-f]{64})", done.stdout).group(1)

    before = create("before")
    assert not (data_dir / "service.json").exists()  # that Redis was only the command's
    up = Up(data_dir, "--worker-bind", "*")
    try:
        url = re.search(r"serving tiny-llama at (tcp://\S+)", up.printed).group(1)
        host = url[len("tcp://"):].rsplit(":", 1)[0]
        assert not socket.gethostbyname(host).startswith("127."), up.printed
        assert f"export GLASSBOX_URL={url} " in up.printed
        assert listening_hosts(up.worker_port) == {"0.0.0.0"}  # opened, as asked
        during = create("during")
        for key in (before, during):
            assert traced_logits(url, key)[:2] == (1, 4)  # through the address others use
    finally:
        up.stop()
    create("after")
    listed = glassbox_cli("keys", "--data", str(data_dir), "list", env=env())
    assert listed.returncode == 0
    for name in ("before", "during", "after", "glassbox-up"):
        assert name in listed.stdout


class StandIn:
    """A process that exits when told to."""

    def __init__(self):
        self.returncode = None
        self.pid = 0
        self.log_path = "worker.log"

    def poll(self):
        return self.returncode


def test_the_back_off_doubles_for_each_exit_in_a_row_and_resets_after_a_long_run(monkeypatch):
    params = launcher.ServiceParams(data_dir="/nonexistent", restart_delay=1.0,
                                    max_restart_delay=8.0)
    service = launcher.LocalService(params)
    spawned = []
    monkeypatch.setattr(service, "_spawn_worker", lambda path, name: spawned.append(StandIn())
                        or service.processes.append(spawned[-1]) or spawned[-1])
    service.processes.append(StandIn())  # the broker
    service.workers.append(launcher.SupervisedWorker("m", "w", service._spawn_worker("m", "w"),
                                                     started=0.0))
    now = 0.0
    delays = []
    for exits in range(6):  # each run shorter than max_restart_delay
        spawned[-1].returncode = -9
        line = service.supervise(now)[0]
        delays.append(float(re.search(r"restarting it in (\S+) s", line).group(1)))
        assert service.supervise(now + delays[-1] - 0.5) == []  # still waiting
        now += delays[-1]
        assert service.supervise(now)[0].startswith("glassbox: restarted the worker of w")
    assert delays == [1, 2, 4, 8, 8, 8]
    spawned[-1].returncode = 3  # after a long run: back to the first delay
    assert "exited (exit code 3; see worker.log); restarting it in 1 s (exit 1 in a row)" in \
        service.supervise(now + 8.0)[0]
    service.processes[0].returncode = 1  # the broker: the service cannot go on
    with pytest.raises(glassbox.GlassboxError, match="a process exited"):
        service.supervise(now + 9.0)
