"""Where requests run: the backend interface and a local development backend.

A ``Backend`` gives a model's hook catalogue and runs requests. ``ServiceBackend``
(service.py, over the broker) and ``LocalBackend`` implement the same methods, so tracing
code never knows which one it talks to:

- ``catalogue() -> dict``: the JSON ``glassbox-engine info`` prints (hook points + config);
  ``model_catalogue(name)`` the same for a named model (single-model backends ignore it);
- ``run(request: wire.Request) -> wire.Result``: runs one request; a failure raises
  ``GlassboxError`` carrying the error report's code, message, node and source;
- ``submit(request) -> Future``: the same without waiting (by default ``run`` on a thread).

``LocalBackend`` is for development and tests only: it shells out to a locally built
``glassbox-engine`` (``info`` once, ``run --graph`` per request), loading the model from disk
every time. It has no queue, no auth and no limits beyond the engine's own.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import subprocess
import tempfile
import threading
from typing import Optional, Sequence

from . import _wire as wire
from .errors import GlassboxError

DEFAULT_ENGINE = os.path.join("build", "bin", "glassbox-engine")


class Backend:
    """The interface every backend implements (see the module docstring)."""

    def catalogue(self) -> dict:
        raise NotImplementedError

    def model_catalogue(self, name: str) -> dict:
        """The catalogue of the model called ``name``; a backend of one model serves it
        under any name."""
        return self.catalogue()

    def run(self, request: wire.Request) -> wire.Result:
        raise NotImplementedError

    def submit(self, request: wire.Request, **options) -> concurrent.futures.Future:
        """Runs ``request`` on a new thread; the future holds its result (or its error).
        ``options`` (e.g. quiet) are for backends that show progress; ignored here."""
        future: concurrent.futures.Future = concurrent.futures.Future()

        def run() -> None:
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(self.run(request))
                except Exception as e:  # noqa: BLE001 - the future carries it
                    future.set_exception(e)

        threading.Thread(target=run, name="glassbox-submit", daemon=True).start()
        return future


class LocalBackend(Backend):
    """Runs requests with a local ``glassbox-engine`` binary (development and tests).

    ``model_path`` is a .gguf file or a Hugging Face directory; ``engine`` the binary
    (default: ``$GLASSBOX_ENGINE`` or ``build/bin/glassbox-engine`` under the current
    directory); ``extra_args`` go to both subcommands (e.g. ``["--threads", "2"]``);
    ``timeout`` (seconds) bounds each engine call.
    """

    def __init__(self, model_path: str, engine: Optional[str] = None,
                 extra_args: Sequence[str] = (), timeout: Optional[float] = 600.0):
        self.model_path = str(model_path)
        self.engine = str(engine or os.environ.get("GLASSBOX_ENGINE") or DEFAULT_ENGINE)
        self.extra_args = list(extra_args)
        self.timeout = timeout
        self._catalogue: Optional[dict] = None
        if not os.path.isfile(self.engine):
            raise GlassboxError("NOT_FOUND", f"no glassbox-engine binary at {self.engine} "
                                "(build it, or pass engine=... or set GLASSBOX_ENGINE)")

    def catalogue(self) -> dict:
        if self._catalogue is None:
            out = self._engine("info", [])
            self._catalogue = json.loads(out)
        return self._catalogue

    def run(self, request: wire.Request, timeout: Optional[float] = None,
            quiet: Optional[bool] = None) -> wire.Result:
        """Runs ``request``; ``timeout`` (seconds) replaces the backend's own for this call;
        ``quiet`` has nothing to silence (no queue to show)."""
        with tempfile.TemporaryDirectory(prefix="glassbox-") as tmp:
            graph, out = os.path.join(tmp, "request.json"), os.path.join(tmp, "result.msgpack")
            with open(graph, "w") as f:
                json.dump(wire.request_to_json(request), f)
            self._engine("run", ["--graph", graph, "--out", out], timeout)
            with open(out, "rb") as f:
                return wire.decode_result(f.read())

    def _engine(self, command: str, args: list, timeout: Optional[float] = None) -> str:
        argv = [self.engine, command, "--model", self.model_path, *self.extra_args, *args]
        limit = self.timeout if timeout is None else timeout
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=limit)
        except subprocess.TimeoutExpired:
            raise GlassboxError("CANCELLED", f"glassbox-engine {command} ran past the time "
                                f"limit of {limit} s") from None
        if done.returncode != 0:
            raise error_from_engine_stderr(done.stderr)
        return done.stdout


_STATUS_LINE = re.compile(r"^error: ([A-Z_]+): (.*)", re.S | re.M)
_NODE_MENTION = re.compile(r"node (\d+)(?: \(([^)]*)\))?")


def error_from_engine_stderr(stderr: str) -> GlassboxError:
    """A GlassboxError from the ``error: CODE: message`` the engine CLI prints on failure.

    When the message names exactly one graph node (``node 7 (exp.py:12)``), that node and
    its source become the error's ``node`` and ``source``.
    """
    match = _STATUS_LINE.search(stderr)
    if match is None:
        return GlassboxError("INTERNAL", "glassbox-engine failed: " + (stderr.strip() or "no output"))
    code, message = match.group(1), match.group(2).strip()
    node, source = _the_node_named(message)
    return GlassboxError(code, message, node, source)


def error_from_report(report: wire.ErrorReport, job: str = "") -> GlassboxError:
    """A GlassboxError from an error report; when the report names no node but its message
    names exactly one (``node 7 (exp.py:12)``), that node and source."""
    node, source = report.node, report.source
    if node is None:
        node, source = _the_node_named(report.message)
    return GlassboxError(report.code, report.message, node, source or report.source, job)


def _the_node_named(message: str):
    """(node, source) when ``message`` mentions exactly one graph node, else (None, "")."""
    nodes = {(int(n), src or "") for n, src in _NODE_MENTION.findall(message)}
    if len(nodes) == 1:
        (node, source), = nodes
        return node, source
    return None, ""
