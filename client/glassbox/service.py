"""``ServiceBackend``: requests run on a Glassbox service (broker, Redis, engine workers).

    backend = ServiceBackend("tcp://127.0.0.1:5555", api_key="gbk_...")
    model = glassbox.Model("smollm2-135m", backend=backend)   # or just Model("smollm2-135m")

The backend speaks the broker messages of protocol/SPEC.md §9 over one ZeroMQ connection
(``_connection.BrokerConnection``), as broker/client.h does in C++: it lists the models (and
their hook catalogues), submits requests, follows the status changes the broker pushes,
fetches results in chunks (a window of them requested ahead), cancels and queries jobs.

Waiting (``run``, ``JobFuture.result``) shows the job's state on one line (see progress.py),
cancels the job on the service when Ctrl-C interrupts it (then raises KeyboardInterrupt)
and honours explicit time-outs. A failed job raises ``GlassboxError`` with the code, the
message, the failing node, the user's file:line that built it, and the job id.

``url`` defaults to ``$GLASSBOX_URL`` or ``tcp://127.0.0.1:5555``; ``api_key`` to
``$GLASSBOX_API_KEY`` (none: fine against a service in development mode).
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import secrets
import threading
import time
from typing import List, Optional

import numpy as np

from . import _broker as broker
from . import _wire as wire
from . import batch
from ._connection import BrokerConnection, JobStatus
from .backends import Backend, error_from_report
from .errors import GlassboxError
from .progress import ProgressLine, elapsed

DEFAULT_URL = "tcp://127.0.0.1:5555"
INLINE_RESULT_BYTES = 256 << 10  # results up to this size are fetched on the I/O thread


class JobTimeoutError(TimeoutError):
    """Waiting for a job took longer than the caller's ``timeout``; names the job and the
    state it was last seen in (``job`` and ``status`` attributes)."""

    def __init__(self, message: str, job: str, status: Optional[JobStatus]):
        super().__init__(message)
        self.job = job
        self.status = status


class ServiceBackend(Backend):
    """Runs requests on the service at ``url`` (see the module docstring).

    ``timeout`` (seconds, None: no limit) bounds each blocking ``run``; ``quiet`` chooses
    whether waits show progress (None: only on a terminal or in a notebook, and not when
    GLASSBOX_QUIET=1); ``call_timeout`` bounds each exchange with the broker;
    ``connect_timeout`` bounds the exchanges before the broker has first answered, so that
    a missing service is reported (UNAVAILABLE, saying how to start one) within it;
    ``fetch_window`` is how many result chunks
    are requested ahead; ``max_request_bytes`` is the broker's frame limit (its
    ``--max-message-bytes``): bigger requests are refused here, not dropped there.
    ``server_key`` (default ``$GLASSBOX_SERVER_KEY``): the broker's CURVE public key (40
    Z85 characters, or the path of its ``.pub`` file) when it encrypts client connections.
    A waiting job wakes the moment its outcome is in (the status the broker pushes, then
    the fetch); besides that, a wait redraws its progress line every ``progress_interval``
    seconds and asks the broker for the job's status after ``requery_interval`` seconds
    without news (a lost push, a restarted broker).
    """

    def __init__(self, url: Optional[str] = None, api_key: Optional[str] = None, *,
                 timeout: Optional[float] = None, quiet: Optional[bool] = None,
                 call_timeout: float = 15.0, connect_timeout: float = 2.0,
                 fetch_window: int = 4,
                 max_request_bytes: int = 80 << 20, server_key: Optional[str] = None,
                 progress_interval: float = 0.1, requery_interval: float = 2.0):
        self.url = url or os.environ.get("GLASSBOX_URL") or DEFAULT_URL
        key = os.environ.get("GLASSBOX_API_KEY", "") if api_key is None else api_key
        self.timeout = timeout
        self.quiet = quiet
        self.call_timeout = call_timeout
        self.connect_timeout = connect_timeout
        self._answered = False  # whether the broker has replied once
        self.fetch_window = max(1, fetch_window)
        self.max_request_bytes = max_request_bytes - 4096  # room for the submit's envelope
        self.progress_interval = progress_interval
        self.requery_interval = requery_interval
        self._connection = BrokerConnection(
            self.url, key, server_key=read_server_key(server_key or os.environ.get(
                "GLASSBOX_SERVER_KEY", "")))
        self._completer = concurrent.futures.ThreadPoolExecutor(
            max_workers=2, thread_name_prefix="glassbox-fetch")

    # The Backend interface ---------------------------------------------------------------

    def catalogue(self) -> dict:
        """The catalogue of the service's only model (several: name one, model_catalogue)."""
        models = self.models()
        if len(models) != 1:
            names = ", ".join(m.name for m in models) or "none"
            raise GlassboxError("INVALID_ARGUMENT", f"the service at {self.url} serves "
                                f"{len(models)} models ({names}); name the one you want")
        return json.loads(models[0].catalogue)

    def model_catalogue(self, name: str) -> dict:
        """The hook catalogue of the model the service calls ``name``."""
        models = self.models()
        for info in models:
            if info.name == name:
                return json.loads(info.catalogue)
        served = ", ".join(f'"{m.name}"' for m in models) or (
            "none yet; a worker that is still loading its model registers in a moment")
        raise GlassboxError("NOT_FOUND", f'the service at {self.url} has no model "{name}" '
                            f"(served: {served})")

    def run(self, request: wire.Request, timeout: Optional[float] = None,
            quiet: Optional[bool] = None) -> wire.Result:
        """Submits ``request`` and waits for its result. Past ``timeout`` the job is
        cancelled on the service and JobTimeoutError raised."""
        future = self.submit(request, quiet=quiet)
        return future.result(timeout if timeout is not None else self.timeout,
                             cancel_on_timeout=True)

    def submit(self, request: wire.Request, quiet: Optional[bool] = None) -> "JobFuture":
        """Sends ``request``; returns its future as soon as the broker has stored the job.
        A submission left unacknowledged is sent once more under the same ``ref`` (the
        broker's idempotency key, SPEC.md §9.1), so it never makes two jobs."""
        payload = wire.encode_request(request)
        if len(payload) > self.max_request_bytes:
            raise GlassboxError("RESOURCE_EXHAUSTED", f"the request is {len(payload)} bytes, "
                                f"over the service's limit of {self.max_request_bytes}; send "
                                "smaller tensors or split the experiment")
        ref = secrets.token_hex(16)
        try:
            ack = self._submit_once(payload, ref)
        except GlassboxError as e:
            if e.code != "UNAVAILABLE" or "no reply" not in e.message:
                raise self._explained(e) from None
            ack = self._submit_once(payload, ref)
        except KeyboardInterrupt as interrupt:
            interrupt.args = (self._cancel_unacknowledged(payload, ref),)
            raise
        self._connection.record(JobStatus(ack.job, "RECEIVED", ack.time_ms or 0))
        return JobFuture(self, ack.job, self.quiet if quiet is None else quiet)

    def _submit_once(self, payload: bytes, ref: str, timeout: Optional[float] = None):
        message = broker.BrokerMessage("submit", ref=ref, payload=payload)
        return self._connection.call(message, timeout or self.call_timeout)

    def _cancel_unacknowledged(self, payload: bytes, ref: str) -> str:
        """After Ctrl-C before the ack: the same submission again (idempotent, so it names
        the job if it was stored) and a cancel. Returns what happened, for the user."""
        try:
            job = self._submit_once(payload, ref, timeout=2.0).job
            self.cancel(job, "interrupted by the user (Ctrl-C)")
            return f"job {job} was cancelled on the service"
        except GlassboxError as e:
            return f"the submission may not have been cancelled: {e}"

    # The service -------------------------------------------------------------------------

    def models(self) -> List[broker.ModelInfo]:
        """The models the service serves now, with their workers and queues."""
        try:
            return self._call(broker.BrokerMessage("list_models")).models
        except GlassboxError as e:
            raise self._explained(e) from None

    def tokenize(self, model: str, text: str) -> List[int]:
        """The token ids a trace of ``text`` on ``model`` sees, asked of a worker of the model
        directly: answered at once, not queued behind jobs (SPEC.md §9.2 ``tokenize``)."""
        reply = self._call(broker.BrokerMessage("tokenize", model=model, text=text))
        if len(reply.payload) % 8:
            raise GlassboxError("DATA_LOSS", f"tokens of {len(reply.payload)} bytes from the "
                                "broker: ids take 8 bytes each")
        return [int(i) for i in np.frombuffer(reply.payload, dtype="<i8")]

    def status(self, job_id: str) -> JobStatus:
        """The job's current status, asked of the broker (later changes come here too)."""
        return JobStatus.from_message(self._call(broker.BrokerMessage("query", job=job_id)))

    def cancel(self, job_id: str, reason: str = "") -> JobStatus:
        """Cancels a queued or running job; returns its status (CANCELLED, or the terminal
        state it had already reached)."""
        reply = self._call(broker.BrokerMessage("cancel", job=job_id, reason=reason))
        return JobStatus.from_message(reply)

    def job(self, job_id: str, quiet: Optional[bool] = None) -> "JobFuture":
        """A future for a job submitted earlier (by this process or another one of the same
        API key), e.g. to collect results after a restart."""
        self.status(job_id)
        return JobFuture(self, job_id, self.quiet if quiet is None else quiet)

    def fetch_result(self, job_id: str) -> bytes:
        """The stored result (or error report) of a finished job, reassembled from chunks."""
        first = self._call(self._fetch_message(job_id, 0))
        parts, refs, requested = [first.payload], [], 1
        for index in range(1, first.count):
            while requested < first.count and requested < index + self.fetch_window:
                refs.append(self._connection.send(self._fetch_message(job_id, requested)))
                requested += 1
            parts.append(self._connection.wait_reply(refs[index - 1], self.call_timeout).payload)
        data = b"".join(parts)
        if len(data) != first.total_bytes:
            raise GlassboxError("DATA_LOSS", f"result reassembled to {len(data)} bytes, the "
                                f"broker announced {first.total_bytes}", job=job_id)
        return data

    def close(self) -> None:
        """Closes the connection; jobs keep running on the service."""
        self._completer.shutdown(wait=False)
        self._connection.close()

    # Internals ---------------------------------------------------------------------------

    def _call(self, message: broker.BrokerMessage) -> broker.BrokerMessage:
        if self._answered:
            return self._connection.call(message, self.call_timeout)
        timeout = min(self.call_timeout, self.connect_timeout)
        try:
            reply = self._connection.call(message, timeout)
        except GlassboxError as e:
            if e.code == "UNAVAILABLE" and "no reply" in e.message:
                raise GlassboxError("UNAVAILABLE", f"no Glassbox service answers at {self.url} "
                                    f"(waited {timeout:g} s): start one with `glassbox up`, point "
                                    "GLASSBOX_URL (or url=) at a running one, or give an "
                                    "encrypting one's key (GLASSBOX_SERVER_KEY); `glassbox "
                                    "status` checks") from None
            raise
        self._answered = True
        return reply

    @staticmethod
    def _fetch_message(job_id: str, index: int) -> broker.BrokerMessage:
        return broker.BrokerMessage("fetch", job=job_id, index=index)

    def _explained(self, error: GlassboxError) -> GlassboxError:
        if error.code != "UNAUTHENTICATED":
            return error
        hint = f" (connecting to {self.url}: pass api_key=... or set GLASSBOX_API_KEY)"
        return GlassboxError(error.code, error.message + hint, job=error.job)

    def _outcome(self, status: JobStatus):
        """The result of a job in a terminal state, or the GlassboxError it ends with."""
        job = status.job
        if status.state == "COMPLETED":
            return wire.decode_result(self.fetch_result(job))
        if status.state == "ERROR":
            return self._error_report(status)
        if status.state == "CANCELLED":
            return GlassboxError("CANCELLED", status.message or "the job was cancelled", job=job)
        return GlassboxError("NOT_FOUND", f"the result of job {job} has expired (results are "
                             "kept for an hour by default); run it again", job=job)

    def _error_report(self, status: JobStatus) -> GlassboxError:
        try:
            report = wire.decode_message(self.fetch_result(status.job))
        except (GlassboxError, wire.WireError):
            report = None
        if isinstance(report, wire.ErrorReport):
            return error_from_report(report, status.job)
        return GlassboxError(status.code or "INTERNAL", status.message, job=status.job)


def read_server_key(key_or_path: str) -> str:
    """A CURVE public key given as its 40 Z85 characters or as the file holding them."""
    if key_or_path and os.path.isfile(key_or_path):
        with open(key_or_path) as f:
            key_or_path = f.read()
    key = key_or_path.strip()
    if key and len(key) != 40:
        raise GlassboxError("INVALID_ARGUMENT", "a server key is 40 Z85 characters (the "
                            "broker's .pub file from glassbox-broker curve-keygen)")
    return key


class JobFuture(concurrent.futures.Future):
    """A job on the service, as a ``concurrent.futures.Future`` of its ``wire.Result``.

    ``result(timeout)`` waits (showing progress unless quiet; Ctrl-C cancels the job on the
    service and raises KeyboardInterrupt); ``cancel()`` cancels it on the service;
    ``status()`` is its latest ``JobStatus``; ``job_id`` names it. A failed job's
    ``result()`` raises its GlassboxError; a cancelled one's CancelledError.
    """

    def __init__(self, backend: ServiceBackend, job_id: str, quiet: Optional[bool]):
        super().__init__()
        self.job_id = job_id
        self._backend = backend
        self._quiet = quiet
        self._started = time.monotonic()
        self._finishing = threading.Lock()
        self._finished = False
        self._cancel_requested = False
        self._news = threading.Condition()  # notified on the outcome (and statuses, see below)
        self._wake_on_status = False  # whether a wait shows progress: it redraws on each
        self._heard_at = time.monotonic()  # when the last status arrived
        self._own_callbacks_only = True  # see add_done_callback
        self._last_status: Optional[JobStatus] = backend._connection.status(job_id)
        backend._connection.watch(job_id, self._on_status)
        super().add_done_callback(lambda _: self._notify())
        batch.note_job(self)

    # The Future interface ----------------------------------------------------------------

    def result(self, timeout: Optional[float] = None, cancel_on_timeout: bool = False):
        """The job's ``wire.Result``, waiting up to ``timeout`` seconds (None: as long as it
        takes). Past it: JobTimeoutError naming the job and its last state (the job is
        cancelled too with ``cancel_on_timeout``; otherwise it keeps running)."""
        self._wait(timeout, cancel_on_timeout)
        return super().result(0)

    def exception(self, timeout: Optional[float] = None):
        self._wait(timeout, False)
        return super().exception(0)

    def add_done_callback(self, fn) -> None:
        """As in concurrent.futures; ``fn`` is never called on the connection's I/O thread
        (it may wait for the service: submit and run other jobs)."""
        with self._finishing:
            self._own_callbacks_only = False
        super().add_done_callback(fn)

    def cancel(self, reason: str = "") -> bool:
        """Cancels the job on the service; True unless it had already finished."""
        if self.done():
            return self.cancelled()
        self._cancel_requested = True
        try:
            status = self._backend.cancel(self.job_id, reason)
        except GlassboxError:
            status = None
        if status is not None and status.done and status.state != "CANCELLED":
            return False  # it finished first
        super().cancel()
        return self.cancelled()

    def status(self, refresh: bool = False) -> Optional[JobStatus]:
        """The latest status received (``refresh``: asked of the broker now)."""
        if refresh:
            self._last_status = self._backend.status(self.job_id)
        return self._last_status

    def __repr__(self) -> str:
        status = self.status()
        return f"<JobFuture {self.job_id} {status.describe() if status else 'unknown'}>"

    # Waiting -----------------------------------------------------------------------------

    def _wait(self, timeout: Optional[float], cancel_on_timeout: bool) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        progress = ProgressLine(self._quiet)
        try:
            self._wait_until(deadline, progress)
        except KeyboardInterrupt as interrupt:
            progress.close()
            self.cancel("interrupted by the user (Ctrl-C)")
            interrupt.args = (f"job {self.job_id} was cancelled on the service",)
            raise
        except JobTimeoutError:
            progress.close()
            if cancel_on_timeout:
                self.cancel(f"the client's time-out of {timeout:g} s")
            raise
        progress.close()  # the line goes: the results (or the error) speak for the job

    def _wait_until(self, deadline: Optional[float], progress: ProgressLine) -> None:
        """Waits for the outcome, woken by each status the broker pushes and by the outcome
        itself (never a poll interval late). Redraws the progress line every
        ``progress_interval``; asks for the status when nothing was pushed for
        ``requery_interval`` (which also routes pushes to this connection again after a
        broker restart)."""
        backend = self._backend
        # A quiet wait is woken by the outcome only: a status in between would cost a
        # thread switch for nothing (many threads waiting at once contend for the GIL).
        self._wake_on_status = self._wake_on_status or progress.active
        last_asked = time.monotonic()
        while not self.done():
            now, last_heard = time.monotonic(), self._heard_at
            if deadline is not None and now >= deadline:
                raise self._timed_out(deadline)
            if now - max(last_heard, last_asked) >= backend.requery_interval:
                backend._connection.send(broker.BrokerMessage("query", job=self.job_id),
                                         want_reply=False)
                last_asked = now
            self._show(progress, silence=now - last_heard)
            wake_at = max(last_heard, last_asked) + backend.requery_interval
            if progress.active:
                wake_at = min(wake_at, now + backend.progress_interval)
            if deadline is not None:
                wake_at = min(wake_at, deadline)
            seen = self._last_status
            with self._news:
                self._news.wait_for(lambda: self.done() or (progress.active and
                                                             self._last_status is not seen),
                                    max(0.0, wake_at - now))

    def _show(self, progress: ProgressLine, silence: float) -> None:
        status = self.status()
        state = status.describe() if status else "submitted"
        silent = silence > 3 * self._backend.requery_interval
        note = f" (no word from the broker for {elapsed(silence)})" if silent else ""
        waited = elapsed(time.monotonic() - self._started)
        progress.show(f"glassbox: job {self.job_id[:8]} {state}{note} · {waited}",
                      key=state + (" silent" if silent else ""))

    def _timed_out(self, deadline: float) -> JobTimeoutError:
        status = self.status()
        waited = elapsed(time.monotonic() - self._started)
        state = status.describe() if status else "not yet acknowledged"
        return JobTimeoutError(f"job {self.job_id} still {state} after waiting {waited}",
                               self.job_id, status)

    # Completion (on the connection's I/O thread, then a fetch thread) ---------------------

    def _notify(self) -> None:
        with self._news:
            self._news.notify_all()

    def _on_status(self, status: JobStatus) -> None:
        self._last_status, self._heard_at = status, time.monotonic()
        if self._wake_on_status:
            self._notify()
        if not status.done or self._finished:
            return
        if (status.state == "COMPLETED" and status.result_chunks == 1
                and (status.result_bytes or 0) <= INLINE_RESULT_BYTES):
            self._fetch_inline(status)
        else:
            self._complete_later(status)

    def _complete_later(self, status: JobStatus) -> None:
        self._on_pool(self._complete, status)

    def _on_pool(self, fn, arg) -> bool:
        """``fn(arg)`` on the backend's fetch pool; False when the backend was closed."""
        try:
            self._backend._completer.submit(fn, arg)
            return True
        except RuntimeError:
            return False

    def _fetch_inline(self, status: JobStatus) -> None:
        """A small result in one chunk is fetched and decoded on the I/O thread, without a
        thread switch to the completer and back (a repeated status, e.g. after a lost
        reply, fetches again; the first reply settles the job)."""
        try:
            self._backend._connection.send(ServiceBackend._fetch_message(self.job_id, 0),
                                           on_reply=lambda r: self._on_fetched(status, r))
        except GlassboxError:  # the connection was closed
            pass

    def _on_fetched(self, status: JobStatus, reply: broker.BrokerMessage) -> None:
        whole = (reply.type == "result_chunk" and reply.count == 1
                 and len(reply.payload) == reply.total_bytes == status.result_bytes)
        if not whole:  # an error, or not the chunk announced: the general path says why
            self._complete_later(status)
            return
        with self._finishing:  # held until settled: add_done_callback waits for it
            if self._finished:
                return
            self._finished = True
            outcome = _decoded(reply.payload)
            # Settled here unless the caller added callbacks: they run on a pool thread,
            # where they may wait for the service (this thread is the one replies come in on).
            here = self._own_callbacks_only
            if here:
                self._set_outcome(outcome)
        if not here and not self._on_pool(self._set_outcome, outcome):
            self._set_outcome(outcome)  # the backend was closed
        self._backend._connection.forget(self.job_id)

    def _claim(self) -> bool:
        """True for the one caller that settles the job."""
        with self._finishing:
            if self._finished:
                return False
            self._finished = True
            return True

    def _complete(self, status: JobStatus) -> None:
        if not self._claim():
            return
        if status.state == "CANCELLED" and self._cancel_requested:
            super().cancel()
        else:
            self._settle(status)
        self._backend._connection.forget(self.job_id)

    def _settle(self, status: JobStatus) -> None:
        try:
            outcome = self._backend._outcome(status)
        except Exception as e:  # noqa: BLE001 - every failure belongs to the future
            outcome = e
        self._set_outcome(outcome)

    def _set_outcome(self, outcome) -> None:
        try:
            if isinstance(outcome, BaseException):
                self.set_exception(outcome)
            else:
                self.set_result(outcome)
        except concurrent.futures.InvalidStateError:
            pass  # cancelled meanwhile


def _decoded(payload: bytes):
    """A result's bytes decoded, or the error that says why they cannot be."""
    try:
        return wire.decode_result(payload)
    except Exception as e:  # noqa: BLE001 - every failure belongs to the future
        return e
