"""One ZeroMQ DEALER connection to the Glassbox broker, shared by every thread of a backend.

The Python twin of broker/client.cc's Impl. A daemon thread owns the socket (ZeroMQ sockets
must stay on one thread): it sends the messages callers queue and files what arrives —
replies by their ``ref`` for the caller waiting on it, pushed ``status`` messages by job
(the latest one per job, and the listeners watching that job are called on the I/O
thread). Every public method is thread-safe.
"""

from __future__ import annotations

import itertools
import os
import queue
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

import zmq

from . import _broker as broker
from ._wire import WireError
from .errors import GlassboxError


@dataclass(frozen=True)
class JobStatus:
    """A job's state as the broker last reported it (SPEC.md §9.3)."""

    job: str
    state: str
    time_ms: int = 0  # when it entered `state` (ms since the Unix epoch)
    position: Optional[int] = None  # QUEUED: jobs that will run before it
    code: str = ""  # ERROR / CANCELLED: the status code name
    message: str = ""  # why; while QUEUED, a note such as "no worker serves ..."
    result_chunks: Optional[int] = None
    result_bytes: Optional[int] = None
    batch: Optional[int] = None  # RUNNING or finished: jobs in its engine pass (with others)

    @classmethod
    def from_message(cls, m: broker.BrokerMessage) -> "JobStatus":
        return cls(m.job, m.state or "RECEIVED", m.time_ms or 0, m.position, m.code, m.message,
                   m.count, m.total_bytes, m.batch)

    @property
    def done(self) -> bool:
        return broker.is_terminal(self.state)

    def describe(self) -> str:
        """``queued (position 2)``, ``running``, ``running, batched with 3 other jobs``,
        ``error: INVALID_ARGUMENT``, ..."""
        text = self.state.lower()
        if self.state == "QUEUED" and self.position is not None:
            text += f" (position {self.position})"
        if self.state == "RUNNING" and self.batch and self.batch > 1:
            others = self.batch - 1
            text += f", batched with {others} other job{'s' if others > 1 else ''}"
        if self.code and self.state != "COMPLETED":
            text += f": {self.code}"
        if self.message and self.state == "QUEUED":
            text += f"; {self.message}"
        return text


StatusListener = Callable[[JobStatus], None]


ReplyHandler = Callable[[broker.BrokerMessage], None]


class _Reply:
    """The reply a caller of ``BrokerConnection.call`` waits for, or that ``handler`` takes
    on the I/O thread (``send(..., on_reply=)``: nobody waits)."""

    __slots__ = ("arrived", "message", "handler")

    def __init__(self, handler: Optional[ReplyHandler] = None):
        self.arrived = threading.Event()
        self.message: Optional[broker.BrokerMessage] = None
        self.handler = handler


class BrokerConnection:
    """A DEALER connection to ``url``; ``api_key`` goes into every client request.
    ``server_key`` (the broker's CURVE public key, Z85): encrypt, with a fresh key pair."""

    def __init__(self, url: str, api_key: str = "", max_message_bytes: int = 320 << 20,
                 server_key: str = ""):
        self.url = url
        self.api_key = api_key
        self._server_key = server_key
        self._max_message_bytes = max_message_bytes
        self._prefix = secrets.token_hex(8)
        self._counter = itertools.count(1)
        self._outbox: "queue.SimpleQueue[bytes]" = queue.SimpleQueue()
        self._wake_read, self._wake_write = os.pipe()
        self._lock = threading.Lock()
        self._awaited: Dict[str, "_Reply"] = {}  # refs whose reply a caller waits for
        self._statuses: Dict[str, JobStatus] = {}
        self._listeners: Dict[str, List[StatusListener]] = {}
        self._closed = False
        self._context = zmq.Context()
        self._thread = threading.Thread(target=self._serve, name="glassbox-broker-io",
                                        daemon=True)
        self._thread.start()

    # Sending and replies ---------------------------------------------------------------------

    def send(self, message: broker.BrokerMessage, want_reply: bool = True,
             on_reply: Optional[ReplyHandler] = None) -> str:
        """Queues ``message`` (with a fresh ``ref`` unless it has one, and the API key);
        returns the ref. With ``want_reply`` the reply is kept for ``wait_reply``; with
        ``on_reply`` it is handed to that instead, on the I/O thread (which must not block
        on the connection: no ``call`` or ``wait_reply`` there)."""
        if self._closed:
            raise GlassboxError("UNAVAILABLE", f"the connection to {self.url} is closed")
        message.ref = message.ref or f"{self._prefix}-{next(self._counter)}"
        message.api_key = self.api_key
        data = broker.encode_broker_message(message)
        if want_reply or on_reply is not None:
            with self._lock:
                self._awaited[message.ref] = _Reply(on_reply)
        self._outbox.put(data)
        os.write(self._wake_write, b"x")
        return message.ref

    def wait_reply(self, ref: str, timeout: float) -> broker.BrokerMessage:
        """The reply carrying ``ref``; an ``error`` reply raises GlassboxError (with its job),
        no reply within ``timeout`` seconds raises UNAVAILABLE."""
        deadline = time.monotonic() + timeout
        with self._lock:
            waiter = self._awaited[ref]
        # Only this ref's reply wakes this caller (not every message the I/O thread files).
        while not waiter.arrived.wait(min(max(deadline - time.monotonic(), 0.0), 0.25)):
            if time.monotonic() >= deadline:
                with self._lock:
                    self._awaited.pop(ref, None)
                raise GlassboxError("UNAVAILABLE", f"no reply from the broker at {self.url} "
                                    f"within {timeout:g} s (is the service up? try "
                                    "`glassbox status`)")
        with self._lock:
            self._awaited.pop(ref, None)
        reply = waiter.message
        if reply.type == "error":
            raise GlassboxError(reply.code, reply.message, job=reply.job)
        return reply

    def call(self, message: broker.BrokerMessage, timeout: float) -> broker.BrokerMessage:
        """Sends ``message`` and returns its reply (see wait_reply)."""
        return self.wait_reply(self.send(message), timeout)

    # Job statuses ----------------------------------------------------------------------------

    def status(self, job: str) -> Optional[JobStatus]:
        """The latest status received for ``job``, or None."""
        with self._lock:
            return self._statuses.get(job)

    def watch(self, job: str, listener: StatusListener) -> None:
        """Calls ``listener`` (on the I/O thread) with every later status of ``job``, and at
        once with the latest known one."""
        with self._lock:
            self._listeners.setdefault(job, []).append(listener)
            latest = self._statuses.get(job)
        if latest is not None:
            listener(latest)

    def record(self, status: JobStatus) -> None:
        """Files a status learnt another way (the ack's RECEIVED) unless a newer one is known."""
        with self._lock:
            self._statuses.setdefault(status.job, status)

    def forget(self, job: str) -> None:
        """Drops what is kept about ``job`` (its statuses and listeners)."""
        with self._lock:
            self._statuses.pop(job, None)
            self._listeners.pop(job, None)

    def close(self) -> None:
        """Stops the I/O thread and closes the socket; pending waits time out."""
        if not self._closed:
            self._closed = True
            os.write(self._wake_write, b"x")
            self._thread.join(timeout=2)
            os.close(self._wake_read)
            os.close(self._wake_write)

    # The I/O thread --------------------------------------------------------------------------

    def _serve(self) -> None:
        socket = self._context.socket(zmq.DEALER)
        socket.setsockopt(zmq.LINGER, 0)
        socket.setsockopt(zmq.MAXMSGSIZE, self._max_message_bytes)
        if self._server_key:
            public, secret = zmq.curve_keypair()
            socket.curve_secretkey, socket.curve_publickey = secret, public
            socket.curve_serverkey = self._server_key.encode()
        socket.connect(self.url)
        poller = zmq.Poller()
        poller.register(socket, zmq.POLLIN)
        poller.register(self._wake_read, zmq.POLLIN)
        try:
            while not self._closed:
                events = dict(poller.poll(1000))
                if self._wake_read in events:
                    os.read(self._wake_read, 4096)
                self._flush_outbox(socket)
                if socket in events:
                    self._receive_all(socket)
        finally:
            socket.close(0)
            self._context.term()

    def _flush_outbox(self, socket) -> None:
        while True:
            try:
                data = self._outbox.get_nowait()
            except queue.Empty:
                return
            socket.send(data)

    def _receive_all(self, socket) -> None:
        while True:
            try:
                data = socket.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                self._file(broker.decode_broker_message(data))
            except WireError:
                continue  # garbage from the peer: nobody can be told, nothing to file

    def _file(self, message: broker.BrokerMessage) -> None:
        listeners: List[StatusListener] = []
        status = JobStatus.from_message(message) if message.type == "status" else None
        with self._lock:
            if status is not None:
                self._statuses[status.job] = status
                listeners = list(self._listeners.get(status.job, ()))
            waiter = self._awaited.get(message.ref) if message.ref else None
            if waiter is not None and waiter.handler is not None:
                del self._awaited[message.ref]
        if waiter is not None and waiter.handler is not None:
            waiter.handler(message)
        elif waiter is not None and waiter.message is None:
            waiter.message = message
            waiter.arrived.set()
        for listener in listeners:
            listener(status)
