"""client_bench: the Python client against a raw ZeroMQ client on the same service, side by
side in one run (issue 14, item 1: the client is as fast as the wire).

Starts a private service — redis-server, glassbox-broker, one `glassbox-engine serve` worker
on the tiny checkpoint (as service_bench does), development mode — and runs the same trivial
job (read the embedding output of a 4-token prompt, save it) two ways:

- raw: a bare DEALER socket and the broker messages of protocol/SPEC.md §9 (submit, read
  pushed statuses until COMPLETED, fetch the chunks), nothing else: no threads, no futures,
  no result decoding;
- client: `glassbox.ServiceBackend` as users get it — `run` (blocking), futures, `run_all`.

Each load pattern alternates raw and client in rounds and prints p50 / p90 latency (submit
to result in hand) and jobs/s for both, and the ratio client p50 / raw p50 (target ≤ 1.5):

- 1 client, one job at a time (`run`);
- 8 clients, one job at a time each: 8 processes (so that neither side shares a GIL);
- one process with 8 jobs in flight: raw keeps 8 submitted on one socket; client runs
  `glassbox.run_all(..., max_concurrency=8)` and, separately, futures (`submit`) 8 at a time.

Usage: .venv/bin/python bench/client_bench.py [--model DIR] [--jobs N] [--rounds N]
(binaries from $GLASSBOX_BIN_DIR or build/bin).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import pathlib
import signal
import sys
import tempfile
import time
import uuid
from typing import Callable, List

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "client"))

import zmq  # noqa: E402

import glassbox  # noqa: E402
from glassbox import _broker as broker  # noqa: E402
from glassbox import launcher, wire  # noqa: E402
from glassbox.service import ServiceBackend  # noqa: E402

MODEL_NAME = "bench-model"


def trivial_request() -> wire.Request:
    read = wire.Node(0, "read", [], {"point": "model.embed_tokens.output"})
    save = wire.Node(1, "save", [wire.Ref(0)], {})
    trace = wire.Trace(invokes=[wire.Invoke(ids=[1, 17, 42, 99])], nodes=[read, save])
    return wire.Request(MODEL_NAME, [trace])


# --------------------------------------------------------------------------------------------
# The raw client: one DEALER socket, one thread, the broker messages and nothing else.


class RawClient:
    def __init__(self, url: str):
        self._context = zmq.Context()
        self._socket = self._context.socket(zmq.DEALER)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.connect(url)
        # A submit's ref is its idempotency key (SPEC §9.1) for the user, here every process
        # and round: refs of one client only ("r1", "r2" from each would be the same jobs).
        self._ref_prefix = uuid.uuid4().hex[:12]
        self._refs = 0
        self._payload = wire.encode_request(trivial_request())

    def close(self) -> None:
        self._socket.close(0)
        self._context.term()

    def _send(self, message: broker.BrokerMessage) -> None:
        self._refs += 1
        message.ref = f"{self._ref_prefix}-{self._refs}"
        self._socket.send(broker.encode_broker_message(message))

    def _receive(self) -> broker.BrokerMessage:
        message = broker.decode_broker_message(self._socket.recv())
        if message.type == "error":
            raise RuntimeError(f"{message.code}: {message.message}")
        return message

    def submit(self) -> None:
        self._send(broker.BrokerMessage("submit", payload=self._payload))

    def fetch(self, job: str, count: int) -> bytes:
        parts = []
        for index in range(count):
            self._send(broker.BrokerMessage("fetch", job=job, index=index))
            while True:
                reply = self._receive()
                if reply.type == "result_chunk" and reply.job == job:
                    parts.append(reply.payload)
                    break
        return b"".join(parts)

    def one_job(self) -> None:
        self.submit()
        while True:
            m = self._receive()
            if m.type == "status" and broker.is_terminal(m.state):
                if m.state != "COMPLETED":
                    raise RuntimeError(f"job {m.job}: {m.state} {m.message}")
                self.fetch(m.job, m.count)
                return

    def windowed(self, jobs: int, window: int) -> List[float]:
        """Keeps `window` jobs in flight; latencies from submit to result fetched."""
        latencies, pending_submits, started = [], [], {}
        submitted = finished = 0
        while finished < jobs:
            while submitted < jobs and submitted - finished < window:
                self.submit()
                pending_submits.append(time.perf_counter())
                submitted += 1
            m = self._receive()
            if m.type == "ack":
                started[m.job] = pending_submits.pop(0)
            elif m.type == "status" and broker.is_terminal(m.state):
                self._send(broker.BrokerMessage("fetch", job=m.job, index=0))  # one chunk
            elif m.type == "result_chunk":
                latencies.append(time.perf_counter() - started.pop(m.job))
                finished += 1
        return latencies


# --------------------------------------------------------------------------------------------
# Load patterns.


def timed(one: Callable[[], None], jobs: int) -> List[float]:
    out = []
    for _ in range(jobs):
        start = time.perf_counter()
        one()
        out.append(time.perf_counter() - start)
    return out


def sequential(kind: str, url: str, jobs: int) -> List[float]:
    if kind == "raw":
        client = RawClient(url)
        try:
            return timed(client.one_job, jobs)
        finally:
            client.close()
    backend = ServiceBackend(url, quiet=True)
    request = trivial_request()
    try:
        return timed(lambda: backend.run(request), jobs)
    finally:
        backend.close()


def _process_main(args):
    kind, url, jobs = args
    return sequential(kind, url, jobs)


def concurrent_processes(kind: str, url: str, jobs: int, clients: int, pool) -> List[float]:
    per_client = max(1, jobs // clients)
    results = pool.map(_process_main, [(kind, url, per_client)] * clients)
    return [latency for r in results for latency in r]


def in_flight(kind: str, url: str, jobs: int, window: int) -> List[float]:
    if kind == "raw":
        client = RawClient(url)
        try:
            return client.windowed(jobs, window)
        finally:
            client.close()
    backend = ServiceBackend(url, quiet=True)
    request = trivial_request()
    try:
        if kind == "run_all":
            def one():
                start = time.perf_counter()
                backend.run(request)
                return time.perf_counter() - start
            return glassbox.run_all([one] * jobs, max_concurrency=window, quiet=True)
        latencies, flying = [], []  # futures, `window` at a time in flight
        for _ in range(jobs):
            if len(flying) == window:
                future, start = flying.pop(0)
                future.result()
                latencies.append(time.perf_counter() - start)
            flying.append((backend.submit(request), time.perf_counter()))
        for future, start in flying:
            future.result()
            latencies.append(time.perf_counter() - start)
        return latencies
    finally:
        backend.close()


# --------------------------------------------------------------------------------------------
# Reporting.


class Side:
    def __init__(self):
        self.latencies: List[float] = []
        self.seconds = 0.0

    def add(self, run: Callable[[], List[float]]) -> None:
        start = time.perf_counter()
        self.latencies += run()
        self.seconds += time.perf_counter() - start

    def p(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return 1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    def rate(self) -> float:
        return len(self.latencies) / self.seconds


def compare(label: str, raw_run, client_runs: dict, rounds: int) -> None:
    raw = Side()
    clients = {name: Side() for name in client_runs}
    for _ in range(rounds):  # interleaved, so that load on the machine hits both alike
        raw.add(raw_run)
        for name, run in client_runs.items():
            clients[name].add(run)
    print(f"\n{label}", flush=True)
    print(f"  {'raw ZeroMQ':<22} p50 {raw.p(0.5):7.2f} ms  p90 {raw.p(0.9):7.2f} ms  "
          f"{raw.rate():7.0f} jobs/s")
    for name, side in clients.items():
        print(f"  {name:<22} p50 {side.p(0.5):7.2f} ms  p90 {side.p(0.9):7.2f} ms  "
              f"{side.rate():7.0f} jobs/s   p50 ratio client/raw {side.p(0.5) / raw.p(0.5):5.2f}x"
              f"   jobs/s ratio {side.rate() / raw.rate():5.2f}x", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=str(ROOT / "tests" / "fixtures" / "tiny_llama"))
    parser.add_argument("--jobs", type=int, default=200, help="jobs per side per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args()
    # SIGTERM (a time-out's) unwinds like Ctrl-C, so the service's processes are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    os.environ.setdefault("GLASSBOX_BIN_DIR", str(ROOT / "build" / "bin"))
    with tempfile.TemporaryDirectory(prefix="glassbox-client-bench-") as data_dir:
        params = launcher.ServiceParams(
            model_path=args.model, model_name=MODEL_NAME, port=launcher.free_port(),
            worker_port=launcher.free_port(), data_dir=data_dir, dev=True)
        with launcher.LocalService(params) as service:
            url = params.url
            probe = ServiceBackend(url, quiet=True)
            service.wait_until_serving(probe, MODEL_NAME)
            probe.run(trivial_request())  # warm
            probe.close()
            print(f"client_bench: {args.model}, 1 engine worker, {os.cpu_count()} CPUs, "
                  f"{args.jobs} jobs per side per round, {args.rounds} rounds")
            jobs, n = args.jobs, args.clients
            compare("1 client, one job at a time (blocking run)",
                    lambda: sequential("raw", url, jobs),
                    {"client run": lambda: sequential("client", url, jobs)}, args.rounds)
            with multiprocessing.get_context("spawn").Pool(n) as pool:
                compare(f"{n} clients (processes), one job at a time each",
                        lambda: concurrent_processes("raw", url, jobs, n, pool),
                        {"client run": lambda: concurrent_processes("client", url, jobs, n,
                                                                    pool)}, args.rounds)
            compare(f"one process, {n} jobs in flight",
                    lambda: in_flight("raw", url, jobs, n),
                    {"client run_all": lambda: in_flight("run_all", url, jobs, n),
                     "client futures": lambda: in_flight("futures", url, jobs, n)},
                    args.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
