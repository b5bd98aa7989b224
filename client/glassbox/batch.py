"""``run_all``: many experiments with bounded concurrency and one progress line.

    def patch(layer):
        with model.trace("The capital of Italy is"):
            model.model.layers[layer].output[:, 3] = clean[layer]
            return model.lm_head.output[0, -1].save()

    logits = glassbox.run_all([lambda l=l: patch(l) for l in range(30)], max_concurrency=8)

Each experiment is a callable (called without arguments on a worker thread, where its
traces block quietly; its return value is its result) or something already submitted — a
trace or session sent with ``blocking=False``, or a future — which is waited for (its
result: the trace itself, with values filled in, or the future's result). Results come
back in the order given.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from typing import Any, Iterable, List, Optional

from .progress import ProgressLine, elapsed, waiting_quietly

_scope = threading.local()  # .jobs: the BatchJobs of the run_all the thread works for


class BatchJobs:
    """The jobs a run_all's experiments submitted, so that all can be cancelled at once —
    also those whose submission was still in flight when the batch was interrupted."""

    def __init__(self):
        self._lock = threading.Lock()
        self._jobs: list = []
        self._cancelled = False

    def add(self, future) -> None:
        with self._lock:
            self._jobs.append(future)
            cancel_now = self._cancelled
        if cancel_now:
            future.cancel("the batch was interrupted")

    def cancel_all(self) -> None:
        with self._lock:
            self._cancelled = True
            jobs = list(self._jobs)
        for job in jobs:
            if not job.done():
                job.cancel("the batch was interrupted")


def note_job(future) -> None:
    """Called for every job future made: inside run_all, the batch will know to cancel it."""
    jobs = getattr(_scope, "jobs", None)
    if jobs is not None:
        jobs.add(future)


def run_all(experiments: Iterable[Any], max_concurrency: int = 8, *,
            timeout: Optional[float] = None, quiet: Optional[bool] = None,
            return_exceptions: bool = False) -> List[Any]:
    """Runs ``experiments`` (see the module docstring), at most ``max_concurrency`` at once,
    and returns their results in order.

    A failure raises its error once everything else has finished (with
    ``return_exceptions=True`` the error takes the experiment's place instead). Ctrl-C
    cancels every job still queued or running, on the service too, and raises
    KeyboardInterrupt; past ``timeout`` seconds the same happens with a TimeoutError.
    """
    items = list(experiments)
    if max_concurrency < 1:
        raise ValueError("max_concurrency must be at least 1")
    progress = ProgressLine(quiet)
    started = time.monotonic()
    jobs = BatchJobs()
    with concurrent.futures.ThreadPoolExecutor(max_concurrency,
                                               thread_name_prefix="glassbox-run") as pool:
        futures: list = []
        try:  # Ctrl-C while experiments are still being handed out cancels those already out
            for item in items:
                futures.append(pool.submit(_run_one, item, jobs))
            _wait_all(futures, progress, started, timeout)
        except BaseException:
            progress.close()
            _cancel_all(futures, items, jobs)
            raise
    # The summary stays on a terminal or in a log; a notebook's cell keeps no progress text.
    keep = progress.active and progress.mode != "notebook"
    progress.close(_summary(futures, started) if keep else "")
    return [_outcome(f, return_exceptions) for f in futures]


def _is_submitted(item) -> bool:
    return hasattr(item, "result") and hasattr(item, "cancel")


def _run_one(item, jobs: BatchJobs):
    _scope.jobs = jobs
    try:
        with waiting_quietly():
            return item.result() if _is_submitted(item) else item()
    finally:
        _scope.jobs = None


def _wait_all(futures, progress: ProgressLine, started: float,
              timeout: Optional[float]) -> None:
    deadline = None if timeout is None else started + timeout
    pending = set(futures)
    while pending:
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            done = len(futures) - len(pending)
            raise TimeoutError(f"run_all: {done} of {len(futures)} experiments finished within "
                               f"{timeout:g} s; the others were cancelled")
        progress.show(_summary(futures, started), key=None)
        _, pending = concurrent.futures.wait(pending, timeout=0.1,
                                             return_when=concurrent.futures.FIRST_COMPLETED)


def _summary(futures, started: float) -> str:
    done = sum(f.done() for f in futures)
    failed = sum(f.done() and not f.cancelled() and f.exception() is not None for f in futures)
    running = sum(f.running() for f in futures)
    text = f"glassbox: {done}/{len(futures)} done, {running} running"
    if failed:
        text += f", {failed} failed"
    spent = time.monotonic() - started
    return text + f" · {elapsed(spent)}" + eta(done, len(futures), spent)


def eta(done: int, total: int, spent: float) -> str:
    """`` · about 40 s left``: the time still needed at the pace so far (nothing before
    the first experiment finishes, or once all have)."""
    if done <= 0 or done >= total:
        return ""
    return f" · about {elapsed(spent / done * (total - done))} left"


def _cancel_all(futures, items, jobs: BatchJobs) -> None:
    """Stops what has not started and cancels every job still in flight on the service."""
    for f in futures:
        f.cancel()
    jobs.cancel_all()
    for item in items:
        if _is_submitted(item) and not item.done():
            item.cancel()


def _outcome(future: concurrent.futures.Future, return_exceptions: bool):
    error = future.exception()
    if error is None:
        return future.result()
    if return_exceptions:
        return error
    raise error
