"""The Python client against a real service: redis-server, glassbox-broker and
`glassbox-engine serve` on the tiny random Llama checkpoint, each a real process on free
ports (started with glassbox.launcher, as `glassbox up` does). Also `glassbox up` itself,
run as a subprocess, then `glassbox status` / `models` / `keys` against it.

Skipped, saying why, when redis-server or the binaries ($GLASSBOX_BIN_DIR, default
build/bin) are missing.
"""

import concurrent.futures
import contextlib
import inspect
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import pytest

import glassbox
from glassbox import launcher, wire
from glassbox.errors import GlassboxError
from glassbox.service import JobTimeoutError, ServiceBackend

from conftest import ROOT, SMOLLM2, TINY_LLAMA, bin_dir
from test_client_readme import README

PROMPT = [1, 5, 9, 3]
OTHER = [1, 7, 2, 3]
NAME = "tiny-llama"
HELD_STEPS = 5
NEVER_REQUERY = 3600.0  # no test outwaits it: only the outcome ends such a wait


def missing_binaries() -> str:
    needed = [bin_dir() / "glassbox-broker", bin_dir() / "glassbox-engine"]
    missing = [str(p) for p in needed if not p.is_file()]
    if shutil.which("redis-server") is None:
        missing.append("redis-server")
    return ", ".join(missing)


@pytest.fixture(scope="module", autouse=True)
def binaries(monkeypatch_module):
    if missing_binaries():
        pytest.skip(f"needs {missing_binaries()} (build the repository or set GLASSBOX_BIN_DIR)")
    monkeypatch_module.setenv("GLASSBOX_BIN_DIR", str(bin_dir()))


@pytest.fixture(scope="module")
def monkeypatch_module():
    patch = pytest.MonkeyPatch()
    yield patch
    patch.undo()


def wait_for_model(backend: ServiceBackend, name: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(m.name == name and m.workers for m in backend.models()):
            return
        time.sleep(0.05)
    raise AssertionError(f"no worker registered {name}")


@pytest.fixture(scope="module")
def data_dir():
    """A directory of this module's own (not pytest's numbered ones, which a concurrent
    pytest session may rotate away while the services still write there)."""
    with tempfile.TemporaryDirectory(prefix="glassbox-test-") as path:
        yield pathlib.Path(path)


@pytest.fixture(scope="module")
def running_service(binaries, data_dir):
    """A development-mode service (no API keys) serving the tiny model as "tiny-llama"."""
    params = launcher.ServiceParams(
        model_path=str(TINY_LLAMA), model_name=NAME, port=launcher.free_port(),
        worker_port=launcher.free_port(), data_dir=str(data_dir / "service"), dev=True,
        engine_args=("--threads", "1", "--hold-file", str(data_dir / "hold")))
    with launcher.LocalService(params) as running:
        yield running


@pytest.fixture
def held(data_dir):
    """While this fixture is active, jobs wait at the worker before running (the worker's
    --hold-file), until cancelled or out of time: no timer in a test can race them."""
    hold = data_dir / "hold"
    hold.touch()
    try:
        yield
    finally:
        hold.unlink(missing_ok=True)  # a test may release its job itself


@pytest.fixture(scope="module")
def service(running_service):
    backend = ServiceBackend(running_service.params.url, quiet=True)
    wait_for_model(backend, NAME)
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def remote(service):
    return glassbox.Model(NAME, backend=service, arrays="numpy")


@pytest.fixture(scope="module")
def local(binaries):
    engine = str(bin_dir() / "glassbox-engine")
    return glassbox.Model(NAME, backend=glassbox.LocalBackend(TINY_LLAMA, engine=engine),
                          arrays="numpy")


def experiment(model, **wait):
    """Invokes, a write, a module call and a session's cross-trace patch."""
    with model.session(**wait):
        with model.trace() as tr:
            with tr.invoke(PROMPT):
                clean = model.model.layers[1].output
                first = model.lm_head.output.save()
            with tr.invoke(OTHER):
                model.model.layers[0].mlp.output[:, 1] = 0
                lens = model.lm_head(model.model.norm(model.model.layers[1].output)).save()
        with model.trace(OTHER):
            model.model.layers[1].output[:, 2] = clean[:, 2]
            patched = model.lm_head.output.save()
    return first, lens, patched


def slow_generation(model, **wait):
    """A generation for cancelling; under the ``held`` fixture it cannot finish."""
    with model.generate(PROMPT, max_new_tokens=HELD_STEPS, **wait) as tr:
        with tr.all():
            work = glassbox.randn([512, 512], 0) * model.lm_head.output[0, -1, :1]
            for _ in range(3):
                work = work @ work
            work.sum().save()
    return tr


def wait_for_state(backend, job, states, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = backend.status(job)
        if status.state in states:
            return status
        time.sleep(0.05)
    raise AssertionError(f"job {job} is {status.state} ({status.code}: {status.message}), not in {states}")


# --------------------------------------------------------------------------------------------
# Tracing through the service.


def ctrl_c():
    """Ctrl-C as Python sees it: SIGINT, raised as KeyboardInterrupt in the main thread. Sent
    to the main thread itself, so a wait there wakes at once (a signal to the process may
    land on another thread, and the main thread acts on it only when it next runs)."""
    signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)


@pytest.fixture
def ctrl_c_raises():
    """SIGINT raises KeyboardInterrupt, as in a Python started from a terminal (one started
    in the background of a non-interactive shell inherits SIGINT ignored)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@contextlib.contextmanager
def ctrl_c_once(ready):
    """Within the block, Ctrl-C is pressed once ``ready()`` is true, checked on a thread of
    its own. A failure on that thread is raised when the block ends (not only warned of),
    after what the block raised, if anything."""
    done, failed = threading.Event(), []

    def press():
        try:
            while not ready():
                if done.wait(0.01):
                    return
            ctrl_c()
        except BaseException as e:  # noqa: BLE001 - raised in the test's thread below
            failed.append(e)

    presser = threading.Thread(target=press)
    presser.start()
    try:
        yield
    finally:
        done.set()
        presser.join()
        if failed:
            raise failed[0]


def test_service_gives_the_same_values_as_the_local_engine(remote, local):
    for through_service, locally in zip(experiment(remote), experiment(local)):
        assert np.array_equal(through_service.value, locally.value)


def test_generation_through_the_service(remote, local):
    runs = []
    for model in (remote, local):
        with model.generate(PROMPT, max_new_tokens=3) as tr:
            with tr.all():
                logits = model.lm_head.output.save()
        runs.append((tr.generated, logits.value))
    assert runs[0][0] == runs[1][0] and len(runs[0][0][0]) == 3
    assert all(np.array_equal(a, b) for a, b in zip(runs[0][1], runs[1][1]))


def test_errors_carry_code_node_source_and_job(remote):
    line = inspect.currentframe().f_lineno + 4
    with pytest.raises(GlassboxError) as caught:
        with remote.trace(PROMPT):
            h = remote.model.layers[0].output
            (h @ h).save()
    error = caught.value
    assert error.code == "INVALID_ARGUMENT"
    assert error.source == f"test_service.py:{line}" and isinstance(error.node, int)
    assert re.fullmatch(r"[0-9a-f]{32}", error.job)
    assert f"test_service.py:{line}" in str(error) and error.job in str(error)


def test_unknown_model_names_what_is_served(service):
    with pytest.raises(GlassboxError, match=f'no model "tiny-lama" \\(served: "{NAME}"\\)'):
        glassbox.Model("tiny-lama", backend=service)


def test_model_connects_to_glassbox_url_by_default(service, monkeypatch):
    monkeypatch.setenv("GLASSBOX_URL", service.url)
    model = glassbox.Model(NAME, arrays="numpy", quiet=True)
    assert model._backend.url == service.url
    with model.trace(PROMPT):
        logits = model.lm_head.output.save()
    assert logits.value.shape == (1, 4, model.config["vocab_size"])
    model._backend.close()


def test_big_results_come_in_chunks_and_match(remote, local, service):
    outcomes, traces = [], []
    for model in (remote, local):
        with model.trace(PROMPT, blocking=False) as tr:
            big = glassbox.randn([700, 1000], 7).save()  # 2.8 MB: 3 chunks of 1 MiB
        traces.append(tr.result(timeout=60))
        outcomes.append(big.value)
    assert service.status(traces[0].job_id).result_chunks == 3
    assert np.array_equal(*outcomes)


def test_a_job_can_be_collected_by_id_from_another_connection(remote, service):
    with remote.trace(PROMPT, blocking=False) as tr:
        remote.lm_head.output.save()
    tr.result(timeout=30)
    other = ServiceBackend(service.url, quiet=True)
    try:
        assert other.status(tr.job_id).state == "COMPLETED"
        result = other.job(tr.job_id).result(timeout=30)
        assert np.array_equal(result.saved[0].value, tr.future.result().saved[0].value)
        with pytest.raises(GlassboxError, match="no job") as caught:
            other.status("0" * 32)
        assert caught.value.code == "NOT_FOUND"
    finally:
        other.close()


class FetchFailingBroker:
    """A stand-in broker for the fetch's failures (what the real one does not do on cue):
    it acknowledges a submit and pushes COMPLETED with one chunk at once, answers queries
    with COMPLETED, and answers the fetches with ``answers`` in turn: "error" (the result
    expired), "drop" (the reply is lost) or "chunk" (the result)."""

    def __init__(self, answers):
        import zmq
        from glassbox import _broker as broker
        self._zmq, self._broker, self.answers, self.fetches = zmq, broker, list(answers), 0
        self.result = wire.encode_result(wire.Result(saved=[
            wire.SavedValue("x", 1, np.arange(6, dtype=np.float32).reshape(2, 3))]))
        self._context = zmq.Context()
        self._socket = self._context.socket(zmq.ROUTER)
        self.url = f"tcp://127.0.0.1:{self._socket.bind_to_random_port('tcp://127.0.0.1')}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _status(self, ref=""):
        return self._broker.BrokerMessage("status", ref=ref, job="j1", state="COMPLETED",
                                          time_ms=1, count=1, total_bytes=len(self.result))

    def _serve(self):
        broker, socket = self._broker, self._socket
        while not self._stop.is_set():
            if not socket.poll(50):
                continue
            peer, data = socket.recv_multipart()
            m = broker.decode_broker_message(data)
            replies = []
            if m.type == "submit":
                replies = [broker.BrokerMessage("ack", ref=m.ref, job="j1", time_ms=1),
                           self._status()]
            elif m.type == "query":
                replies = [self._status(m.ref)]
            elif m.type == "fetch":
                self.fetches += 1
                answer = self.answers.pop(0) if self.answers else "chunk"
                if answer == "error":
                    replies = [broker.BrokerMessage("error", code="NOT_FOUND", ref=m.ref,
                                                    job="j1", message="the result of job j1 "
                                                    "expired (results are kept 1 h)")]
                elif answer == "chunk":
                    replies = [broker.BrokerMessage("result_chunk", ref=m.ref, job="j1",
                                                    index=0, count=1,
                                                    total_bytes=len(self.result),
                                                    payload=self.result)]
            for reply in replies:
                socket.send_multipart([peer, broker.encode_broker_message(reply)])

    def close(self):
        self._stop.set()
        self._thread.join()
        self._socket.close(0)
        self._context.term()


def test_a_refused_result_fetch_ends_the_job_with_the_brokers_reason():
    # A small result is fetched on the connection's I/O thread the moment its job completes;
    # when that fetch is refused, the job ends with the broker's reason (the general path
    # fetches once more and raises it), not a wait for ever.
    fake = FetchFailingBroker(["error", "error"])
    backend = ServiceBackend(fake.url, quiet=True, requery_interval=NEVER_REQUERY)
    try:
        with pytest.raises(GlassboxError, match="expired") as caught:
            backend.run(wire.Request(NAME, []), timeout=30)
        assert caught.value.code == "NOT_FOUND" and fake.fetches == 2
    finally:
        backend.close()
        fake.close()


def test_a_lost_fetch_reply_is_fetched_again_when_the_status_is_asked():
    # The reply to the I/O thread's fetch is lost: the wait asks for the job's status after
    # requery_interval without news, the answer (COMPLETED) fetches again, and that settles it.
    fake = FetchFailingBroker(["drop"])
    backend = ServiceBackend(fake.url, quiet=True, requery_interval=0.2)
    try:
        result = backend.run(wire.Request(NAME, []), timeout=30)
        assert np.array_equal(result.saved[0].value, np.arange(6).reshape(2, 3))
        assert fake.fetches == 2
    finally:
        backend.close()
        fake.close()


def test_requests_over_the_size_limit_are_refused_before_sending(service):
    small = ServiceBackend(service.url, max_request_bytes=8192)
    model = glassbox.Model(NAME, backend=small)
    with pytest.raises(GlassboxError, match="over the service's limit") as caught:
        with model.trace(PROMPT):
            (model.lm_head.output[..., :1] + np.zeros((1, 1, 4096), np.float32)).save()
    assert caught.value.code == "RESOURCE_EXHAUSTED"
    small.close()


def test_no_service_is_a_quick_clear_error():
    url = f"tcp://127.0.0.1:{launcher.free_port()}"
    assert ServiceBackend(url).connect_timeout <= 2  # the default: reported within 2 s
    backend = ServiceBackend(url, connect_timeout=0.3)  # call_timeout stays 15 s
    with pytest.raises(GlassboxError, match=r"no Glassbox service answers at .* \(waited 0.3 s\)"
                       r": start one with `glassbox up`") as e:
        backend.models()
    assert e.value.code == "UNAVAILABLE"
    backend.close()
    with pytest.raises(GlassboxError, match="no Glassbox service answers"):
        glassbox.Model("smollm2-135m", url=url, timeout=None)


# --------------------------------------------------------------------------------------------
# Waiting: progress, futures, cancel, Ctrl-C, time-outs.


def test_progress_shows_states_unless_quiet(remote, data_dir, capsys, monkeypatch):
    """The job is held at the worker until its line has said "running" (a job this small
    can otherwise finish before any state but the last is drawn)."""
    from glassbox.progress import ProgressLine
    drawn_running = threading.Event()
    show = ProgressLine.show

    def recording_show(self, text, *args, **kwargs):
        show(self, text, *args, **kwargs)
        if " running" in text:
            drawn_running.set()

    monkeypatch.setattr(ProgressLine, "show", recording_show)
    hold = data_dir / "hold"
    hold.touch()
    releaser = threading.Thread(target=lambda: (drawn_running.wait(60), hold.unlink()))
    releaser.start()
    try:
        with remote.trace(PROMPT, quiet=False):
            remote.lm_head.output.save()
    finally:
        releaser.join()
    shown = capsys.readouterr().err
    assert re.search(r"glassbox: job [0-9a-f]{8} running", shown), shown
    with remote.trace(PROMPT, quiet=True):
        remote.lm_head.output.save()
    assert capsys.readouterr().err == ""


def test_non_blocking_trace_is_a_future(remote):
    with remote.trace(PROMPT, blocking=False) as tr:
        logits = remote.lm_head.output.save()
    assert re.fullmatch(r"[0-9a-f]{32}", tr.job_id)
    assert isinstance(tr.future, concurrent.futures.Future)
    assert tr.result(timeout=30) is tr and tr.done()
    assert tr.status().state == "COMPLETED"
    assert logits.value.shape[:2] == (1, 4)


def test_a_done_callback_may_wait_for_the_service(remote, service, data_dir, held):
    # The job is held at the worker until the callback is in place, so the callback runs
    # on the thread that completes the future (not on this one, as for a finished future);
    # it submits a job and waits for it, which on the connection's I/O thread would hang
    # (that thread delivers the replies).
    with remote.trace(PROMPT, blocking=False) as first:
        remote.lm_head.output.save()
    outcomes, called = [], threading.Event()

    def then(future):
        try:
            with remote.trace(OTHER, timeout=60):
                outcomes.append(remote.lm_head.output.save())
        except BaseException as e:  # noqa: BLE001 - reported below, not swallowed
            outcomes.append(e)
        called.set()

    first.future.add_done_callback(then)
    (data_dir / "hold").unlink()  # release the job
    assert first.result(timeout=60) is first
    assert called.wait(120), "the callback was never called"
    assert len(outcomes) == 1 and not isinstance(outcomes[0], BaseException), outcomes
    assert outcomes[0].value.shape[:2] == (1, 4)


def test_cancel_through_the_future(remote, service, held):
    tr = slow_generation(remote, blocking=False)
    wait_for_state(service, tr.job_id, ("RUNNING",))
    assert tr.cancel()
    with pytest.raises(concurrent.futures.CancelledError):
        tr.result(timeout=10)
    assert service.status(tr.job_id).state == "CANCELLED"


def test_ctrl_c_while_waiting_cancels_the_job(remote, service, monkeypatch, held, ctrl_c_raises):
    # A real SIGINT to this process while the trace waits for its (held) running job: Python
    # raises KeyboardInterrupt in the main thread, inside the wait loop.
    acknowledged = []
    real_wait = service._connection.wait_reply

    def recording(ref, timeout):
        reply = real_wait(ref, timeout)
        acknowledged.append(reply.job)
        return reply

    monkeypatch.setattr(service._connection, "wait_reply", recording)
    with ctrl_c_once(lambda: acknowledged and wait_for_state(service, acknowledged[0], ("RUNNING",))):
        with pytest.raises(KeyboardInterrupt) as caught:
            slow_generation(remote)
    monkeypatch.undo()
    job = re.search(r"job ([0-9a-f]{32}) was cancelled", str(caught.value)).group(1)
    assert wait_for_state(service, job, ("CANCELLED",)).code == "CANCELLED"


def test_ctrl_c_before_the_ack_still_cancels_the_job(remote, service, monkeypatch, held):
    acknowledged = []
    real_wait = service._connection.wait_reply

    def interrupted_once(ref, timeout):
        reply = real_wait(ref, timeout)
        acknowledged.append(reply.job)
        if len(acknowledged) == 1:
            raise KeyboardInterrupt  # the job is stored, the caller never sees its ack
        return reply

    monkeypatch.setattr(service._connection, "wait_reply", interrupted_once)
    with pytest.raises(KeyboardInterrupt) as caught:
        slow_generation(remote)
    monkeypatch.undo()
    # the second submission (same ref) was acknowledged with the same job: idempotent
    assert len(acknowledged) >= 2 and acknowledged[0] == acknowledged[1]  # then the cancel
    assert f"job {acknowledged[0]} was cancelled" in str(caught.value)
    assert wait_for_state(service, acknowledged[0], ("CANCELLED",)).state == "CANCELLED"


def test_timeout_names_the_job_and_its_state_and_cancels_it(remote, service, held):
    with pytest.raises(JobTimeoutError) as caught:
        slow_generation(remote, timeout=0.5)
    error = caught.value
    assert isinstance(error, TimeoutError)
    assert re.match(rf"job {error.job} still (received|queued|running)", str(error)), str(error)
    assert wait_for_state(service, error.job, ("CANCELLED",)).state == "CANCELLED"


def test_future_timeout_leaves_the_job_running(remote, held):
    tr = slow_generation(remote, blocking=False)
    with pytest.raises(JobTimeoutError, match=tr.job_id):
        tr.future.result(timeout=0.2)
    assert not tr.done() and tr.cancel()


# --------------------------------------------------------------------------------------------
# Many experiments at once.


def test_run_all_bounds_concurrency_and_keeps_order(remote):
    lock, running, peak = threading.Lock(), [0], [0]

    def final_logits(token):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        try:
            with remote.trace([1, token, 3]):
                out = remote.lm_head.output[0, -1].save()
            return out.value
        finally:
            with lock:
                running[0] -= 1

    tokens = list(range(4, 16))
    results = glassbox.run_all([lambda t=t: final_logits(t) for t in tokens],
                               max_concurrency=3, quiet=True)
    assert 1 < peak[0] <= 3
    with remote.trace() as tr:
        batch = []
        for t in tokens:
            with tr.invoke([1, t, 3]):
                batch.append(remote.lm_head.output[0, -1].save())
    assert all(np.allclose(r, b.value, atol=1e-5) for r, b in zip(results, batch))


def test_run_all_waits_for_submitted_traces_and_collects_errors(remote):
    traces = []
    for token in (4, 5):
        with remote.trace([1, token], blocking=False) as tr:
            remote.lm_head.output.save()
        traces.append(tr)
    with remote.trace(PROMPT, blocking=False) as failing:
        h = remote.model.layers[0].output
        (h @ h).save()
    results = glassbox.run_all(traces + [failing], quiet=True, return_exceptions=True)
    assert results[:2] == traces
    assert isinstance(results[2], GlassboxError) and results[2].code == "INVALID_ARGUMENT"
    with pytest.raises(GlassboxError):
        glassbox.run_all([failing], quiet=True)


def slow_experiment(model, submitted: list):
    """An experiment for run_all that submits a slow job (into ``submitted``) and waits."""

    def run():
        tr = slow_generation(model, blocking=False)
        submitted.append(tr)
        return tr.result()

    return run


def test_ctrl_c_during_run_all_cancels_every_job(remote, service, held, ctrl_c_raises):
    submitted = []
    slow = slow_experiment(remote, submitted)
    with ctrl_c_once(lambda: len(submitted) >= 2):  # held, neither can finish: a third never starts
        with pytest.raises(KeyboardInterrupt):
            glassbox.run_all([slow, slow, slow], max_concurrency=2, quiet=True)
    assert len(submitted) == 2
    for tr in submitted:
        assert wait_for_state(service, tr.job_id, ("CANCELLED",)).state == "CANCELLED"


def test_ctrl_c_while_run_all_hands_out_experiments_cancels_those_out(remote, service, held, monkeypatch,
                                                                     ctrl_c_raises):
    # Ctrl-C at the moment the third experiment is handed to the pool, the first two jobs
    # submitted (held: they cannot finish). A busy machine can delay run_all's own thread so.
    submitted = []
    slow = slow_experiment(remote, submitted)
    handed = []
    submit = concurrent.futures.ThreadPoolExecutor.submit

    def submit_then_ctrl_c_on_the_third(pool, *args, **kwargs):
        if pool._thread_name_prefix != "glassbox-run":  # not run_all's (the client's own)
            return submit(pool, *args, **kwargs)
        handed.append(args)
        if len(handed) == 3:
            deadline = time.monotonic() + 30
            while len(submitted) < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
            ctrl_c()  # KeyboardInterrupt, here (this is the main thread)
        return submit(pool, *args, **kwargs)

    monkeypatch.setattr(concurrent.futures.ThreadPoolExecutor, "submit",
                        submit_then_ctrl_c_on_the_third)
    with pytest.raises(KeyboardInterrupt):
        glassbox.run_all([slow, slow, slow], max_concurrency=2, quiet=True)
    assert len(handed) == 3 and len(submitted) == 2
    for tr in submitted:
        assert wait_for_state(service, tr.job_id, ("CANCELLED",)).state == "CANCELLED"


def test_run_all_time_out_cancels_what_is_in_flight(remote, service, held):
    # held: neither job can finish, however fast the machine, before run_all's timeout.
    started = []
    slow = slow_experiment(remote, started)
    with pytest.raises(TimeoutError, match="0 of 2 experiments finished"):
        glassbox.run_all([slow, slow], max_concurrency=2, timeout=1.0, quiet=True)
    for tr in started:
        assert wait_for_state(service, tr.job_id, ("CANCELLED",)).state == "CANCELLED"


def run_service_snippets(readme, namespace):
    """Runs the `python service` snippets of `readme` in order, in `namespace`, compiled under
    the file's name and line numbers (so node sources point into it)."""
    text = readme.read_text()
    for match in re.finditer(r"^```python service\n(.*?)^```", text, re.S | re.M):
        first_line = text.count("\n", 0, match.start(1))
        exec(compile("\n" * first_line + match.group(1), readme.name, "exec"), namespace)


def test_readme_service_snippets_run(running_service, service, monkeypatch, capsys):
    """The `python service` snippets of client/README.md and of the top README.md, in order,
    against SmolLM2 served as "smollm2-135m" by the same service."""
    if not SMOLLM2.is_file():
        pytest.skip(f"needs {SMOLLM2} (./setup.sh downloads it)")
    running_service.start_worker(str(SMOLLM2), "smollm2-135m")
    wait_for_model(service, "smollm2-135m")
    monkeypatch.setenv("GLASSBOX_URL", service.url)
    run_service_snippets(README, {})
    assert re.search(r"job [0-9a-f]{32} still (received|queued|running)", capsys.readouterr().out)
    top = ROOT / "README.md"
    assert "```python service" in top.read_text()
    run_service_snippets(top, {})


# --------------------------------------------------------------------------------------------
# `glassbox up` for a class: a subprocess with API keys, then the other commands.


def glassbox_cli(*args, env=None, timeout=30):
    return subprocess.run([sys.executable, "-m", "glassbox.cli", *args], capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=ROOT / "client")


@pytest.fixture(scope="module")
def up(binaries, data_dir):
    """`glassbox up --encrypt` on free ports with the tiny model; yields (url, API key,
    server key, data dir, process)."""
    data = data_dir / "up"
    port = launcher.free_port()
    process = subprocess.Popen(
        [sys.executable, "-u", "-m", "glassbox.cli", "up", "--model", str(TINY_LLAMA),
         "--name", NAME, "--port", str(port), "--worker-port", str(launcher.free_port()),
         "--data", str(data), "--encrypt"], cwd=ROOT / "client", stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in process.stdout:
        lines.append(line)
        if line.startswith("Ctrl-C stops"):
            break
    printed = "".join(lines)
    key = re.search(r"API key: (gbk_[0-9a-f]{64})", printed)
    server_key = re.search(r"server key \(connections are encrypted\): (\S{40})\n", printed)
    assert key and server_key and re.search(rf"serving {NAME} at tcp://\S+:{port}\n", printed), \
        printed
    yield f"tcp://127.0.0.1:{port}", key.group(1), server_key.group(1), data, process
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        process.wait(30)


def test_glassbox_up_serves_with_keys_and_refuses_without(up):
    url, key, server_key, data, _ = up
    model = glassbox.Model(NAME, url=url, api_key=key, server_key=server_key, arrays="numpy",
                           quiet=True)
    with model.trace(PROMPT):
        logits = model.lm_head.output.save()
    assert logits.value.shape[:2] == (1, 4)
    model._backend.close()
    for wrong in ("", "gbk_" + "0" * 64):
        with pytest.raises(GlassboxError, match="API key.*GLASSBOX_API_KEY") as caught:
            glassbox.Model(NAME, url=url, api_key=wrong, server_key=str(data / "curve.pub"))
        assert caught.value.code == "UNAUTHENTICATED"
    plain = ServiceBackend(url, key, call_timeout=0.5)  # no server key: no answer at all
    with pytest.raises(GlassboxError, match="no Glassbox service answers.*GLASSBOX_SERVER_KEY"):
        plain.models()
    plain.close()


def test_glassbox_status_models_and_keys(up):
    url, key, server_key, data, _ = up
    env = {**os.environ, "GLASSBOX_URL": url, "GLASSBOX_API_KEY": key,
           "GLASSBOX_SERVER_KEY": server_key}
    status = glassbox_cli("status", env=env)
    assert status.returncode == 0 and f"broker at {url}: up; 1 model(s), 1 worker(s)" in status.stdout
    # `up` starts its worker with 4 batch slots (--batch-slots), all free now.
    assert re.search(rf"{NAME}\s+1 worker\(s\)\s+0/4 batch slots busy\s+0 queued", status.stdout)
    models = glassbox_cli("models", "--json", env=env)
    assert json.loads(models.stdout)[0] == {"name": NAME, "workers": 1, "queued": 0,
                                            "layers": 3, "hook_points": 102}
    keyless = glassbox_cli("status", "--api-key", "", env=env)
    assert keyless.returncode == 1 and "up, but" in keyless.stdout
    created = glassbox_cli("keys", "--data", str(data), "create", "--name", "student", env=env)
    student = re.search(r"secret: (gbk_[0-9a-f]{64})", created.stdout).group(1)
    assert glassbox_cli("status", "--api-key", student, env=env).returncode == 0
    down = glassbox_cli("status", "--url", f"tcp://127.0.0.1:{launcher.free_port()}",
                        "--timeout", "0.3")
    assert down.returncode == 1 and "not reachable" in down.stdout


def test_glassbox_up_stops_everything_on_ctrl_c(up):
    *_, data, process = up
    children = json.loads((data / "service.json").read_text())["children"]
    assert len(children) == 3
    process.send_signal(signal.SIGINT)
    assert process.wait(30) == 0
    assert "glassbox: stopped" in process.stdout.read()
    for pid in children:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert not (data / "service.json").exists()


def test_glassbox_up_refuses_a_port_in_use(running_service):
    taken = running_service.params.port
    done = glassbox_cli("up", "--dev", "--port", str(taken), "--model", str(TINY_LLAMA),
                        "--data", str(running_service.data_dir / "second"))
    assert done.returncode == 1 and f"port {taken} is in use" in done.stderr
