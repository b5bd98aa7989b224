"""Recording intervention graphs: traces, invokes, generation steps, sessions and edits.

``with model.trace(...) as tr:`` pushes a ``Tracer`` on a per-thread stack; proxies and
module attributes append nodes to the current tracer's request. When the outermost block
ends (the trace, or the session around several traces) the request goes to the model's
backend in one round trip, and saved proxies, caches and generated tokens receive their
values.

Which invoke and generation step a hook-point access binds to is the tracer's current
context: inside ``with tr.invoke(...)`` reads see that prompt's rows; a trace given one
prompt has it as an implicit invoke; otherwise reads see the whole padded batch. Steps come
from ``tr.iter[...]``, ``tr.all()`` and ``tr.next()`` in ``model.generate(...)``.
"""

from __future__ import annotations

import difflib
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

import numpy as np

from . import _wire as wire
from . import signatures
from .errors import GlassboxError, TracingError, user_source
from .proxy import HookRef, Proxy
from .results import to_user_value

_state = threading.local()


def _stack() -> list:
    if not hasattr(_state, "stack"):
        _state.stack = []
    return _state.stack


def active_tracer() -> Optional["Tracer"]:
    """The innermost tracer, or None outside any trace."""
    stack = _stack()
    return stack[-1] if stack and isinstance(stack[-1], Tracer) else None


def current_tracer(what: str) -> "Tracer":
    """The innermost tracer; ``what`` names the operation in the error when there is none."""
    tracer = active_tracer()
    if tracer is not None:
        return tracer
    if _stack():
        raise TracingError(f"{what} needs a trace: inside a session, open "
                           "`with model.trace(...)` first")
    raise TracingError(f"{what} is only available inside `with model.trace(...)` "
                       "(or model.generate / model.session / model.edit)")


# --------------------------------------------------------------------------------------------
# The request being recorded.


@dataclass
class WaitOptions:
    """How a trace (or session) waits for its request: ``blocking=False`` returns at once
    with a future (``tr.result()`` waits); ``timeout`` in seconds; ``quiet`` for progress.
    Only options that were given reach the backend, so every backend takes the defaults."""

    blocking: bool = True
    timeout: Optional[float] = None
    quiet: Optional[bool] = None

    def backend_kwargs(self, names=("timeout", "quiet")) -> dict:
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}


class RequestBuilder:
    """The nodes of one request and the proxies, caches and tracers waiting for its result."""

    def __init__(self, model, state: str = "recording", options: Optional[WaitOptions] = None):
        self.model = model
        self.request = wire.Request(model=model.name)
        self.state = state  # recording, submitted, sent, failed, abandoned, edit
        self.options = options or WaitOptions()
        self.error: Optional[BaseException] = None
        self.future = None  # the job's future once submitted without blocking
        self.proxies: Dict[int, Proxy] = {}
        self.saved: Dict[int, Proxy] = {}
        self.caches: Dict[int, "Cache"] = {}
        self.cache_rewrites: Dict[int, tuple] = {}  # save node -> (cache, point): see Tracer
        self.tracers: List["Tracer"] = []
        self.lists: list = []  # glassbox.list()s and save({})s filled in this request
        self._next_id = 0
        self._delivery = threading.Lock()

    def new_id(self) -> int:
        self._next_id += 1
        return self._next_id - 1

    def add(self, trace: wire.Trace, op: str, args: list, kwargs: dict, source: str) -> int:
        node_id = self.new_id()
        trace.nodes.append(wire.Node(node_id, op, args, kwargs, source))
        return node_id

    def submit(self) -> None:
        """Sends the request: waits for its result, or (not blocking) keeps its future."""
        backend = self.model._backend
        if not self.options.blocking:
            self.future = backend.submit(self.request, **self.options.backend_kwargs(("quiet",)))
            self.state = "submitted"
            self.future.add_done_callback(self._collect)
            return
        try:
            result = backend.run(self.request, **self.options.backend_kwargs())
        except GlassboxError as e:
            self.state, self.error = "failed", e
            raise
        self._deliver_once(result)

    def wait(self, timeout: Optional[float] = None):
        """Waits for a request submitted without blocking; delivers its values (or raises
        its error). Returns the ``wire.Result``."""
        if self.future is None:
            raise TracingError("this request was not submitted with blocking=False (or has "
                               "not been sent yet)")
        result = self.future.result(timeout)
        self._deliver_once(result)
        return result

    def _collect(self, future) -> None:
        if future.cancelled():
            self.state, self.error = "failed", GlassboxError("CANCELLED", "cancelled by the user")
        elif future.exception() is not None:
            self.state, self.error = "failed", future.exception()
        else:
            self._deliver_once(future.result())

    def _deliver_once(self, result: wire.Result) -> None:
        with self._delivery:
            if self.state != "sent":
                self.state = "sent"
                self._deliver(result)

    def abandon(self) -> None:
        if self.state == "recording":
            self.state = "abandoned"

    def _deliver(self, result: wire.Result) -> None:
        convert = self.model._arrays
        for saved in result.saved:
            if saved.node in self.saved:
                self.saved[saved.node]._set_value(to_user_value(saved.value, convert))
            elif saved.node in self.caches:
                self.caches[saved.node]._add(saved.name, to_user_value(saved.value, convert))
        for saved in result.saved:  # after the cached values they replace
            if saved.node in self.cache_rewrites:
                cache, point = self.cache_rewrites[saved.node]
                cache._rewrite(point, to_user_value(saved.value, convert))
        for shape in getattr(result, "shapes", None) or ():
            _record_shape(self.proxies, shape)
        generated = iter(result.generated)
        for tracer in self.tracers:
            if tracer.trace.generate is not None:
                tracer.generated = [ids for _, ids in zip(tracer.trace.invokes, generated)]
                tracer._finish_generation()
        for saved_list in self.lists:
            saved_list._resolve()
        for tracer in self.tracers:
            tracer._print_logs()

    def why_no_value(self, proxy: Proxy) -> str:
        what = proxy._describe()
        if self.state == "recording":
            return f"{what} has no value yet: values exist once the `with` block (or the session) ends"
        if self.state == "edit":
            return f"{what} belongs to an edit; edits return no values"
        if self.state == "abandoned":
            return f"{what} has no value: its trace raised before the request was sent"
        if self.state == "failed":
            return f"{what} has no value: the request failed ({self.error})"
        if self.state == "submitted":
            return (f"{what} has no value yet: its job {getattr(self.future, 'job_id', '')} "
                    "has not finished; wait for it with tr.result()")
        if self.request.scan:
            return f"{what}: a scan reports shapes and dtypes (.shape, .dtype), not values"
        return f"{what} was not saved: call .save() on it inside the trace"


def _record_shape(proxies: Dict[int, Proxy], entry) -> None:
    get = entry.get if isinstance(entry, dict) else (lambda k: getattr(entry, k, None))
    proxy = proxies.get(get("node"))
    if proxy is not None:
        object.__setattr__(proxy, "_scan", (get("dtype"), tuple(get("shape") or ())))


class StopTracing(Exception):
    """Raised by ``tracer.stop()`` to leave the ``with`` block; its trace catches it."""

    def __init__(self, tracer):
        super().__init__("tracer.stop() outside its own `with` block")
        self.tracer = tracer


class SavedList(list):
    """``glassbox.list()`` (nnsight's ``nnsight.list()``): a list to append traced values to
    inside a trace; after the run it holds their values. Appending inside ``tracer.all()``
    or ``tracer.iter[...]`` adds one value per step. ``.save()`` returns the list itself."""

    def __init__(self, *args):
        super().__init__(*args)
        self._pending: List[tuple] = []  # (index, proxy, per_step)

    def save(self, name: Optional[str] = None) -> "SavedList":
        return self

    def save_items(self) -> "SavedList":
        """Saves the traced values already in the list (``glassbox.save([a, b])``)."""
        items = list(self)
        del self[:]
        for item in items:
            self.append(item)
        return self

    def append(self, value) -> None:
        tracer = _save_into(self, value)
        if tracer is not None:
            self._pending.append((len(self), value, not isinstance(tracer._step, int)))
        super().append(value)

    def _resolve(self) -> None:
        """Replaces traced values by their values (a per-step value by one per step)."""
        if not self._pending:
            return
        pending = {index: (proxy, per_step) for index, proxy, per_step in self._pending}
        values: list = []
        for index, item in enumerate(list(self)):
            if index not in pending:
                values.append(item)
                continue
            proxy, per_step = pending[index]
            value = proxy._value if proxy._resolved() else proxy
            if per_step and isinstance(value, list):
                values.extend(value)
            else:
                values.append(value)
        self._pending = []
        self[:] = values


class SavedDict(dict):
    """``glassbox.save({})`` (nnsight's ``nnsight.save({})``): a dict to put traced values
    in inside a trace (``norms[layer] = h.norm()``); after the run it holds their values."""

    def save(self, name: Optional[str] = None) -> "SavedDict":
        return self

    def __setitem__(self, key, value) -> None:
        _save_into(self, value)
        super().__setitem__(key, value)

    def _resolve(self) -> None:
        for key, value in list(self.items()):
            if isinstance(value, Proxy) and value._resolved():
                super().__setitem__(key, value._value)


def _save_into(container, value) -> Optional["Tracer"]:
    """A traced value put into a ``glassbox.list()`` or ``glassbox.save({})`` inside a
    trace: saved, and the container resolved with the request's results. Returns the
    tracer (None when ``value`` is not a traced value of an active trace)."""
    tracer = active_tracer()
    if not isinstance(value, Proxy) or value._resolved() or tracer is None:
        return None
    tracer.save(value, None)
    if not any(c is container for c in tracer.builder.lists):
        tracer.builder.lists.append(container)
    return tracer


# --------------------------------------------------------------------------------------------
# Values into the wire format.


def to_wire(value, builder: RequestBuilder):
    """``value`` as a wire value: proxies become refs (or their saved values), arrays tensors."""
    if isinstance(value, Proxy):
        return _proxy_ref(value, builder)
    if value is None or value is Ellipsis or isinstance(value, (bool, int, float, str, wire.Ref,
                                                                 wire.BFloat16Array)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return _wire_array(value)
    if type(value).__module__.startswith("torch") and hasattr(value, "detach"):
        return _wire_array(value.detach().cpu().numpy())
    if isinstance(value, (list, tuple)):
        return [to_wire(v, builder) for v in value]
    if isinstance(value, slice):
        return slice(*(_slice_bound(p) for p in (value.start, value.stop, value.step)))
    if hasattr(value, "_module_path"):
        raise TracingError(f"a module ({value._module_path}) is not a value; use its "
                           ".output or .input")
    raise TracingError(f"a {type(value).__name__} cannot travel in an intervention graph "
                       "(numbers, strings, lists, arrays and traced values can)")


def _proxy_ref(proxy: Proxy, builder: RequestBuilder):
    if proxy._builder is builder and builder.state in ("recording", "edit"):
        return wire.Ref(proxy._id)
    if proxy._resolved():
        return to_wire(proxy._value, builder)
    if proxy._builder.state == "recording":
        raise TracingError(f"{proxy._describe()} belongs to another request that has not run "
                           "yet; to use values across traces, put the traces in one "
                           "`with model.session():`")
    raise TracingError(proxy._builder.why_no_value(proxy))


def _slice_bound(part):
    if part is None or (isinstance(part, (int, np.integer)) and not isinstance(part, bool)):
        return None if part is None else int(part)
    raise TracingError("slice bounds must be Python ints while tracing (a traced value cannot "
                       "be a slice bound); index with an index tensor instead")


_WIRE_DTYPES = ("float32", "float16", "int64", "int32", "bool", "uint8")


def _wire_array(array: np.ndarray):
    if array.dtype.name in _WIRE_DTYPES:
        return array
    if array.dtype.kind == "f":
        return array.astype(np.float32)  # float64 (numpy's default) travels as float32
    if array.dtype.kind in "iu":
        return array.astype(np.int64)
    raise TracingError(f"arrays of dtype {array.dtype} cannot travel in a graph "
                       f"({', '.join(_WIRE_DTYPES)} can)")


def to_wire_index(index, builder: RequestBuilder):
    """An index as getitem/setitem/write take it: tuples become lists, lists index tensors."""
    if isinstance(index, tuple):
        return [_index_part(part, builder) for part in index]
    return _index_part(index, builder)


def _index_part(part, builder: RequestBuilder):
    if isinstance(part, list):
        if any(isinstance(x, Proxy) for x in part):
            raise TracingError("a list index cannot hold traced values; stack them first")
        return _wire_array(np.asarray(part))
    return to_wire(part, builder)


# --------------------------------------------------------------------------------------------
# Traces.


class JobHandle:
    """What a trace or session sent with ``blocking=False`` offers after its block:
    ``result(timeout)`` waits and fills the saved values (returns self), ``done()``,
    ``cancel()``, ``status()``, ``job_id`` and the underlying ``future``."""

    builder: Optional[RequestBuilder]

    @property
    def future(self):
        return None if self.builder is None else self.builder.future

    @property
    def job_id(self) -> str:
        return getattr(self.future, "job_id", "")

    def result(self, timeout: Optional[float] = None):
        if self.builder is None:
            raise TracingError("result() is for a trace or session after its `with` block")
        self.builder.wait(timeout)
        return self

    def done(self) -> bool:
        return self.future is not None and self.future.done()

    def cancel(self) -> bool:
        return self.future is not None and self.future.cancel()

    def status(self, refresh: bool = False):
        """The job's latest status (``JobStatus``), when the backend reports one
        (``refresh``: asked of the service now)."""
        status = getattr(self.future, "status", None)
        if not callable(status):
            return None
        return status(refresh=True) if refresh else status()


_RUNS_IN_A_BLOCK = (
    "model.trace(...) and model.generate(...) run as `with` blocks (nnsight's "
    "`ids = model.generate(prompt)` without one runs at once); write `with "
    "model.generate(prompt, max_new_tokens=3) as tracer:` and `ids = tracer.result.save()` "
    "inside, or read tracer.generated after the block")


class Tracer(JobHandle):
    """One trace: its invokes, its nodes, and the invoke and step new nodes bind to."""

    def __init__(self, model, inputs=(), generate: Optional[wire.GenerateOptions] = None,
                 scan: bool = False, options: Optional[WaitOptions] = None):
        self.model = model
        self._options = options
        self.generated: Optional[List[List[int]]] = None
        self._inputs = inputs
        self._generate = generate
        self._scan = scan
        self._invoke: Optional[int] = None
        self._step: Any = 0
        self._last_backward: Optional[Proxy] = None
        self._saves: List[tuple] = []
        self._logs: List[tuple] = []
        self._stopped = False
        self._generator_outputs: Dict[Optional[int], "GeneratorOutput"] = {}  # by invoke
        self._prompt_reads: Dict[int, Proxy] = {}
        self._stop_strings: List[str] = []
        self._reads: Dict[tuple, Proxy] = {}
        self._step_scopes = 0  # tracer.iter[...] / tracer.all() blocks open
        self._weights: Dict[str, Proxy] = {}  # weights an edit changed -> their new values
        self._caches: List[tuple] = []  # (cache, filters, invoke, step) of tr.cache(...)
        self._row_skips: Dict[tuple, tuple] = {}  # (module, step) -> (invokes, source)
        self._own_builder = True
        self.builder: Optional[RequestBuilder] = None
        self.trace: Optional[wire.Trace] = None

    # Context ---------------------------------------------------------------------------------

    def __enter__(self) -> "Tracer":
        self.builder = self._join_request()
        self.trace = wire.Trace(invokes=[], generate=self._generate)
        self.builder.request.traces.append(self.trace)
        self.builder.tracers.append(self)
        self.builder.request.scan |= self._scan
        prompts = invokes_from(self._inputs)
        self.trace.invokes.extend(prompts)
        self._invoke = 0 if len(prompts) == 1 else None
        for edit in self.model._edits:
            edit.apply_to(self)
        _stack().append(self)
        return self

    def _join_request(self) -> RequestBuilder:
        stack = _stack()
        if stack and isinstance(stack[-1], Session):
            session = stack[-1]
            if session.model.name != self.model.name:
                raise TracingError(f"a trace of {self.model.name} inside a session of "
                                   f"{session.model.name}")
            if self._options is not None:
                raise TracingError("inside a session, give blocking=, timeout= and quiet= to "
                                   "model.session(...), not to its traces")
            self._own_builder = False
            return session.builder
        if stack:
            raise TracingError("traces do not nest; use `with model.session():` to run several "
                               "traces in one request")
        return RequestBuilder(self.model, options=self._options)

    def __exit__(self, exc_type, exc, tb) -> bool:
        _stack().pop()
        stopped = exc_type is not None and issubclass(exc_type, StopTracing) and exc.tracer is self
        if exc_type is not None and not stopped:
            self.builder.abandon()
            return False
        try:
            self._check_row_skips()
        except TracingError:
            self.builder.abandon()
            raise
        if self._generator_outputs:
            self._read_prompt_ids()
        self._cache_after_writes()
        self._emit_saves()
        if not self.trace.invokes:
            raise TracingError("this trace has no prompts: pass one to model.trace(...) or use "
                               "tr.invoke(...)")
        if self._own_builder:
            self.builder.submit()
        return stopped

    # The generated sequences ---------------------------------------------------------------

    def generator_output(self) -> "GeneratorOutput":
        """``model.generator.output``: prompt and new tokens of every prompt, after the run;
        inside ``tracer.invoke(...)``, as in nnsight, that invoke's row only."""
        if self.trace.generate is None:
            raise TracingError("model.generator.output exists in model.generate(...) traces")
        if self._invoke not in self._generator_outputs:
            self._generator_outputs[self._invoke] = GeneratorOutput(self.builder, self)
        return self._generator_outputs[self._invoke]

    def _read_prompt_ids(self) -> None:
        """Prompts given as text: their ids as the service tokenized them (the embedding's
        input at step 0), saved for model.generator.output."""
        point = next(iter(self.model._catalogue.points.values()))
        for index, invoke in enumerate(self.trace.invokes):
            if invoke.ids is None:
                proxy = self.node("read", [], {"point": point.name,
                                               **_binding_kwargs(index, 0)})
                self.save(proxy, None)
                self._prompt_reads[index] = proxy

    def _finish_generation(self) -> None:
        """After the run: stop strings applied to ``generated``; generator.output filled."""
        if self._stop_strings:
            decode = self.model.tokenizer.decode
            self.generated = [_cut_at_stop(ids, self._stop_strings, decode)
                              for ids in self.generated]
        if not self._generator_outputs:
            return
        rows = []
        for index, (invoke, new) in enumerate(zip(self.trace.invokes, self.generated)):
            prompt = invoke.ids
            if prompt is None:
                prompt = np.asarray(self._prompt_reads[index].value).reshape(-1).tolist()
            rows.append(np.asarray(list(prompt) + list(new), dtype=np.int64))
        convert = self.model._arrays
        for invoke, output in self._generator_outputs.items():
            chosen = rows if invoke is None else rows[invoke:invoke + 1]
            same = len({len(r) for r in chosen}) == 1
            value = to_user_value(np.stack(chosen), convert) if same else [
                to_user_value(r, convert) for r in chosen]
            output._set_value(value)

    def _emit_saves(self) -> None:
        for proxy, name, source in self._saves:
            kwargs = {} if name is None else {"name": name}
            save_id = self.builder.add(self.trace, "save", [to_wire(proxy, self.builder)],
                                       kwargs, source)
            self.builder.saved[save_id] = proxy

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        raise AttributeError(f"a {type(self).__name__} has no attribute {name!r}: "
                             f"{_RUNS_IN_A_BLOCK}")

    def __getitem__(self, index):
        raise TracingError(f"a {type(self).__name__} is not indexable: {_RUNS_IN_A_BLOCK}")

    __iter__ = None  # not a sequence, although it has __getitem__

    def invoke(self, *inputs) -> "Invoker":
        """A prompt (text or token ids) added to this trace's batch; inside the block, hook
        points read and write that prompt's rows. With no input: the whole batch."""
        return Invoker(self, inputs)

    def scan(self) -> None:
        """Makes this request a dry run: shapes and dtypes of every node, no values."""
        self.builder.request.scan = True

    # nnsight's tracer methods ----------------------------------------------------------------

    def barrier(self, participants: int = 0) -> "Barrier":
        """Accepted for nnsight code (``barrier = tracer.barrier(n)``, then ``barrier()`` in
        each invoke): the invokes of a trace already share one graph, so a value of one
        invoke can be used in another without it; the barrier returned does nothing."""
        return Barrier(participants)

    def stop(self) -> None:
        """Ends the trace here (nnsight's ``tracer.stop()``): the lines after it in the
        ``with`` block do not run and the request is sent with what was recorded so far."""
        self._tracer_is_current("tracer.stop()")
        raise StopTracing(self)

    def log(self, *values) -> None:
        """Prints ``values`` once the request has run (traced values as their values), like
        nnsight's ``tracer.log``."""
        self._tracer_is_current("tracer.log()")
        for value in values:
            if isinstance(value, Proxy) and not value._resolved():
                self.save(value, None)
        self._logs.append(values)

    def _print_logs(self) -> None:
        for values in self._logs:
            print(*(v.value if isinstance(v, Proxy) and v._resolved() else v for v in values))

    def _tracer_is_current(self, what: str) -> None:
        if active_tracer() is not self:
            raise TracingError(f"{what} works inside its own trace's `with` block")

    # Generation steps ------------------------------------------------------------------------

    @property
    def iter(self) -> "StepIndexer":
        """``with tr.iter[1:3]:`` binds new nodes to generation steps 1 and 2 (once each);
        ``for step in tr.iter[0:3]:`` unrolls the body per step."""
        return StepIndexer(self)

    def all(self) -> "StepScope":
        """``with tr.all():`` binds new nodes to every generation step."""
        return StepScope(self, self.step_spec(slice(None)))

    def next(self, step: int = 1) -> "Tracer":
        """Moves hook-point access ``step`` generation steps on (nnsight's
        ``tracer.next(step=1)``)."""
        if not isinstance(self._step, int):
            raise TracingError("next() works from a single step, not inside tr.all() or a range")
        self._step = self.step_spec(self._step + step)
        return self

    @property
    def result(self):
        """Inside the ``with`` block, nnsight's ``tracer.result``: what the traced call
        returns, known after the run (``.save()`` it): in a generation the whole sequences
        (as ``model.generator.output``), in a trace the model's output (``.logits``).
        Anywhere else, the job handle's ``result(timeout=None)`` (wait for the job)."""
        if active_tracer() is not self:
            return JobHandle.result.__get__(self)
        if self.trace is not None and self.trace.generate is not None:
            return self.generator_output()
        return self.model.output

    def step_spec(self, key):
        """A step index or slice as the wire's ``step``: an int, [start, stop) or "all"."""
        if self.trace is None or self.trace.generate is None:
            raise TracingError("generation steps exist only in model.generate(...) traces")
        steps = self.trace.generate.max_new_tokens
        if isinstance(key, slice):
            if key.start is None and isinstance(self._step, int):
                key = slice(self._step, key.stop, key.step)  # as nnsight: from the current step
            return _step_range(key, steps)
        if isinstance(key, (list, tuple, range)):
            return _step_list(key, steps, self.step_spec)
        index = key + steps if key < 0 else key
        if not 0 <= index < steps:
            raise TracingError(f"step {key} is outside this generation's {steps} steps")
        return index

    # Hook points -----------------------------------------------------------------------------

    def static_shape(self, proxy: Proxy) -> tuple:
        """``.shape`` of a hook-point value while tracing: the sizes the catalogue and the
        prompts fix as Python ints (the hidden size, heads, a token-id prompt's length), the
        others as traced sizes."""
        hook = proxy._hook
        point = self.model._catalogue.points.get(hook.point)
        if point is None:
            return proxy._apply("size")
        prompt = self.trace.invokes[hook.invoke].ids if hook.invoke is not None else None
        step = hook.step if isinstance(hook.step, int) else None
        generating = self.trace.generate is not None
        dims = []
        for index, dim in enumerate(point.shape):
            size = None
            if dim.isdigit():
                size = int(dim)
            elif dim == "batch" and hook.invoke is not None:
                size = 1
            elif dim in ("seq", "k_seq") and prompt is not None and step is not None:
                if dim == "seq":
                    last_only = generating and (step > 0 or point.last_position)
                    size = 1 if last_only else len(prompt)
                else:
                    size = len(prompt) + step
            dims.append(size if size is not None else proxy._apply("size", dim=index))
        return tuple(dims)

    def hook_kwargs(self, hook: HookRef) -> dict:
        return {"point": hook.point, **_binding_kwargs(hook.invoke, hook.step)}

    def here(self, point: str) -> HookRef:
        return HookRef(point, self._invoke, self._step, self)

    def read(self, point: str) -> Proxy:
        """The value at a hook point. Repeated reads of the same point, invoke and step give
        the same proxy, so that assigning into one is seen through all (as in PyTorch)."""
        hook = self.here(point)
        key = (point, hook.invoke, repr(hook.step))
        if key not in self._reads:
            self._reads[key] = self._fresh_read(hook)
        return self._reads[key]

    def _fresh_read(self, hook: HookRef) -> Proxy:
        return self.node("read", [], self.hook_kwargs(hook), hook=hook)

    def write(self, point: str, value) -> None:
        """``module.output = value``: replaces the value; earlier reads keep the old one."""
        hook = self.here(point)
        if isinstance(value, Proxy) and value._hook == hook:
            return  # `module.output += v` already wrote; writing the point's own value is a no-op
        self.node("write", [value], self.hook_kwargs(hook))
        self._forget_reads(point)

    def _forget_reads(self, point: str, keep: Optional[Proxy] = None) -> None:
        """After a write at ``point``: later reads of it (in any invoke or step) read anew."""
        for key in [k for k, p in self._reads.items() if k[0] == point and p is not keep]:
            del self._reads[key]

    def skip(self, module_path: str, value) -> None:
        if self.trace.generate is not None and self._step != "all":
            raise TracingError(
                f"in a generation, {module_path}.skip(...) goes inside `with tracer.all():` (or "
                "tracer.iter[:]), where its value is computed at every step: a module skipped "
                "at some steps only would leave its keys and values missing from the cache")
        if self._invoke is not None and not self._inputs:
            self._skip_rows(module_path, value)
            return
        self.node("skip", [value], {"module": module_path,
                                    **_binding_kwargs(None, self._step)})

    def _skip_rows(self, module_path: str, value) -> None:
        """A skip inside ``tracer.invoke(...)``: as in nnsight, ``value`` is the module's
        output for that invoke's rows, and every invoke must skip it (checked when the trace
        ends). The engine skips a module for the whole batch, so the first invoke's skip
        skips it with its input in place of the output, and each invoke writes its rows."""
        key = (module_path, repr(self._step))
        if key not in self._row_skips:
            point = f"{module_path}.input"
            if point not in self.model._catalogue.points:
                raise TracingError(f"{module_path}.skip(...) inside an invoke needs the "
                                   f"module's input point; skip it outside the invokes")
            whole = self.node("read", [], {"point": point, **_binding_kwargs(None, self._step)})
            self.node("skip", [whole], {"module": module_path,
                                        **_binding_kwargs(None, self._step)})
            self._row_skips[key] = (set(), user_source())
        self._row_skips[key][0].add(self._invoke)
        self.write(f"{module_path}.output", value)

    def _check_row_skips(self) -> None:
        every = set(range(len(self.trace.invokes)))
        for (module, _), (invokes, source) in self._row_skips.items():
            if invokes != every:
                raise TracingError(
                    f"{module}.skip(...) ({source}) covers the rows of invokes "
                    f"{sorted(invokes)} of {len(every)} only: as in nnsight, a batched skip "
                    "has to cover every row: skip it in every invoke, or once outside them "
                    "with a value for the whole batch")

    def call_module(self, module_path: str, value) -> Proxy:
        if f"{module_path}.weight" in self._weights or f"{module_path}.bias" in self._weights:
            return self._linear(module_path, value)  # with the edited weights
        return self.node("module", [value], {"name": module_path})

    # Weights ---------------------------------------------------------------------------------

    def weight(self, name: str) -> Proxy:
        """A weight's value (``weight`` op), or its edited value in an edited model."""
        if name in self._weights:
            return self._weights[name]
        spec = self.model._catalogue.weights[name]
        if self._weights and spec.transformer_lens:
            raise TracingError(f"{name} is computed on the service from the served weights and "
                               f"does not see this model's weight edits "
                               f"({', '.join(self._weights)}); read the Hugging Face weights "
                               "(module.weight) instead")
        proxy = self.node("weight", [], {"name": name})
        object.__setattr__(proxy, "_weight", name)
        return proxy

    def write_weight(self, name: str, value) -> None:
        """``module.weight = value``: only inside ``model.edit()``, only for linear layers;
        later traces of the edited model see the new weight in their forward pass (the
        module's output is computed from its input with it) and when they read it."""
        spec = self.model._catalogue.weights[name]
        if not isinstance(self, EditRecorder):
            raise TracingError(f"weights are changed only inside `with model.edit() as edited:` "
                               f"(traces of `edited` then use the new {name}; the served model "
                               "is never changed)")
        if spec.linear is None:
            linear = [w for w, s in self.model._catalogue.weights.items() if s.linear][:2]
            raise TracingError(f"{name} cannot be edited: only the weights and biases of linear "
                               f"layers can (e.g. {', '.join(linear)}); norms, embeddings, a tied "
                               "unembedding and TransformerLens-named weights cannot. Write the "
                               "module's output instead")
        new = value if isinstance(value, Proxy) else self.call("clone", (value,), {})
        object.__setattr__(new, "_weight", name)
        self._weights[name] = new
        module = spec.module
        with StepScope(self, "all"):  # the new weight holds at every step
            self.write(f"{module}.output", self._linear(module, self.read(f"{module}.input")))

    def _linear(self, module: str, x) -> Proxy:
        """The linear module ``module`` applied to ``x`` with its current (edited) weights."""
        weights = self.model._catalogue.weights
        w = self.weight(f"{module}.weight")
        layout = weights[f"{module}.weight"].linear
        y = x @ (w if layout == "in_out" else w.transpose(0, 1))
        return y + self.weight(f"{module}.bias") if f"{module}.bias" in weights else y

    def cache(self, filter: Any = "", modules: Optional[list] = None, device=None, dtype=None,
              detach: bool = True, include_output: bool = True,
              include_inputs: bool = False, non_blocking: bool = False) -> "Cache":
        """Saves every hook point whose name or alias contains ``filter`` (a string or a
        list of them), keyed by point name; or, as nnsight's ``tracer.cache(modules=[...])``
        (also positional), the points of those modules (modules, their nnsight paths
        ``"model.model.layers.2"`` or Hugging Face paths). Inputs are always included;
        values arrive detached on the CPU (``dtype`` converts them). In a generation,
        outside ``tracer.iter[...]`` / ``tracer.all()``, every step from the current one on
        is cached, as nnsight's cache hooks stay for the whole generation."""
        filters = self._cache_filters(filter, modules)
        step = self._step
        if self.trace.generate is not None and isinstance(step, int) and not self._step_scopes:
            step = self.step_spec(slice(step, None))
        cache = Cache(self.model._catalogue, dtype)
        self._caches.append((cache, filters, self._invoke, step))
        for text in filters:
            kwargs = {"filter": text, **_binding_kwargs(self._invoke, step)}
            proxy = self.node("cache", [], kwargs)
            self.builder.caches[proxy._id] = cache
        return cache

    def _cache_after_writes(self) -> None:
        """nnsight's cache observes values after the interventions; the engine caches a
        point's value before the writes there. So every cached point this trace writes is
        read again after its writes, and that value replaces the cached one."""
        written = sorted({n.kwargs["point"] for n in self.trace.nodes if n.op == "write"})
        points = self.model._catalogue.points
        for cache, filters, invoke, step in self._caches:
            for name in written:
                names = (name, *(points[name].aliases if name in points else ()))
                if not any(f in n for f in filters for n in names):
                    continue
                read = self.node("read", [], {"point": name, **_binding_kwargs(invoke, step)})
                save_id = self.builder.add(self.trace, "save", [wire.Ref(read._id)], {},
                                           read._source)
                self.builder.cache_rewrites[save_id] = (cache, name)

    def _cache_filters(self, filter, modules) -> List[str]:
        """The engine's substring filters for ``tracer.cache(filter, modules)``."""
        given = filter if isinstance(filter, (list, tuple)) else [filter]
        if modules is None and not any(hasattr(f, "_module_path") for f in given):
            return [self._module_filter(f, exact=False) for f in given]
        # A module is itself and what is inside it: "model.layers.2." (not layers 20-29).
        return [self._module_filter(m, exact=True) for m in (modules if modules is not None
                                                              else given)]

    def _module_filter(self, module, exact: bool) -> str:
        """A module (or its path) as a filter; nnsight's paths start at the root, "model"."""
        path = getattr(module, "_module_path", None)
        if path is None:
            path = str(module)
            rooted = path[len("model."):] if path.startswith("model.") else None
            if rooted is not None and self.model._catalogue.module_spec(rooted) is not None:
                path, exact = rooted, True
            elif path == "model" and exact:
                path = ""
        if not exact:
            return path
        return path.rstrip(".") + "." if path else ""

    # Nodes -----------------------------------------------------------------------------------

    def node(self, op: str, args: list, kwargs: Optional[dict] = None, hook=None, view=None) -> Proxy:
        source = user_source()
        wire_args = [to_wire(a, self.builder) for a in args]
        wire_kwargs = {k: to_wire(v, self.builder) for k, v in (kwargs or {}).items()}
        node_id = self.builder.add(self.trace, op, wire_args, wire_kwargs, source)
        proxy = Proxy(self.builder, node_id, hook, view, op, source)
        self.builder.proxies[node_id] = proxy
        return proxy

    def call(self, op: str, args: tuple, kwargs: dict) -> Proxy:
        positional, keywords = signatures.bind(op, tuple(args), kwargs)
        return self.node(op, positional, keywords)

    def getitem(self, proxy: Proxy, index) -> Proxy:
        hooked = proxy._hook is not None or proxy._view is not None
        return self.node("getitem", [proxy, to_wire_index(index, self.builder)],
                         view=(proxy, index) if hooked else None)

    def setitem(self, proxy: Proxy, index, value) -> None:
        """``x[index] = value``: a write into the model when x was read at a hook point of
        this trace; otherwise a copy of x with the assignment (values are immutable)."""
        if proxy._view is not None:
            self._write_through_view(proxy, index, value)
            return
        key = to_wire_index(index, self.builder)
        if proxy._weight is not None:  # module.weight[index] = value
            self.write_weight(proxy._weight, self.node("setitem", [proxy, key, value]))
            proxy._rebind(self._weights[proxy._weight]._id, None)
            return
        hook = proxy._hook
        if hook is not None and hook.owner is self:
            self.node("write", [value], {**self.hook_kwargs(hook), "index": key})
            proxy._rebind(self._fresh_read(hook)._id, hook)
            self._forget_reads(hook.point, keep=proxy)
            return
        proxy._rebind(self.node("setitem", [proxy, key, value])._id, None)

    def _write_through_view(self, proxy: Proxy, index, value) -> None:
        """``h = layer.output[0]; h[:, 3] = 0`` (nnsight's ``layer.output[0][:] = 0``): a
        write at the hook point with the indexes joined, ``output[0, :, 3] = 0``. Joining is
        exact when the hook value was indexed by ints only (each drops its dim) and the last
        index holds no index tensors; other views are refused."""
        outer, base = (), proxy
        while base._view is not None:
            base, part = base._view
            parts = part if isinstance(part, tuple) else (part,)
            if not all(_is_int(p) for p in parts):
                base = None
                break
            outer = parts + outer
        inner = index if isinstance(index, tuple) else (index,)
        if base is None or base._hook is None or base._hook.owner is not self or not all(
                p is None or p is Ellipsis or isinstance(p, slice) or _is_int(p) for p in inner):
            raise TracingError("assigning into an index of an indexed hook-point value would "
                               "change the model through a view; index the hook point once "
                               "instead, e.g. layer.output[0, :, 3] = 0")
        self.setitem(base, outer + inner, value)
        object.__setattr__(proxy, "_id", self.getitem(base, outer)._id)

    def update_in_place(self, proxy: Proxy, op: str, other) -> Proxy:
        """``x op= other``: writes the result back when x was read at a hook point."""
        result = self.call(op, (proxy, other), {})
        if proxy._weight is not None:  # module.weight += value
            self.write_weight(proxy._weight, result)
            return result
        hook = proxy._hook
        if hook is None or hook.owner is not self:
            return result
        self.node("write", [result], self.hook_kwargs(hook))
        proxy._rebind(self._fresh_read(hook)._id, hook)
        self._forget_reads(hook.point, keep=proxy)
        return proxy

    def save(self, proxy: Proxy, name: Optional[str]) -> None:
        # Emitted when the trace ends, so that the value saved is the variable's last one
        # (as with in-place changes in PyTorch).
        if not any(p is proxy for p, _, _ in self._saves):
            self._saves.append((proxy, name, user_source()))

    def backward(self, loss: Proxy) -> "BackwardScope":
        if self._last_backward is not None:
            raise TracingError(
                "a second .backward() in one trace: the service frees the graph after the "
                "first (nnsight's retain_graph=True has no equivalent here); run the second "
                "loss in another trace, both inside `with model.session():`")
        self._last_backward = self.node("backward", [loss])
        return BackwardScope()

    def grad(self, proxy: Proxy) -> Proxy:
        if self._last_backward is None:
            raise TracingError(".grad needs a .backward() on a scalar earlier in this trace "
                               "(call loss.backward(), then read h.grad)")
        if proxy._view is not None:
            base, index = proxy._view
            return self.getitem(self.grad(base), index)
        if proxy._hook is None or proxy._hook.owner is not self:
            raise TracingError(".grad exists for values read at a hook point of this trace "
                               "(model.layers[N].output, ...) and indexes of them")
        return self.node("grad", [self._last_backward], self.hook_kwargs(proxy._hook))


class GeneratorOutput(Proxy):
    """``model.generator.output``: the whole sequences ([batch, prompt + new] token ids; a
    list of rows when their lengths differ), known after the run: ``.save()`` it inside
    the block (it returns itself) and use it after."""

    def __init__(self, builder, tracer):
        super().__init__(builder, -1, op="model.generator.output", source=user_source())

    def save(self, name=None) -> "GeneratorOutput":
        return self

    def _tracer(self, what: str):
        if not self._resolved() and self._builder.state in ("recording", "submitted"):
            raise TracingError(f"{what} on model.generator.output: the generated sequence "
                               "exists after the run; .save() it and use it after the block")
        return super()._tracer(what)


def _cut_at_stop(ids: List[int], stops: List[str], decode) -> List[int]:
    """``ids`` up to and including the token that completes the first stop string."""
    for end in range(1, len(ids) + 1):
        if any(stop in decode(ids[:end]) for stop in stops):
            return list(ids[:end])
    return list(ids)


def _is_int(part) -> bool:
    return isinstance(part, (int, np.integer)) and not isinstance(part, bool)


def _binding_kwargs(invoke: Optional[int], step) -> dict:
    """The invoke and step kwargs of a hook-bound node, left out when they are the defaults."""
    kwargs: Dict[str, Any] = {}
    if invoke is not None:
        kwargs["invoke"] = invoke
    if step != 0:
        kwargs["step"] = step
    return kwargs


def _step_range(key: slice, steps: int):
    if key.step not in (None, 1):
        raise TracingError("generation steps go one by one; a step slice cannot have a stride")
    start = 0 if key.start is None else (key.start + steps if key.start < 0 else key.start)
    stop = steps if key.stop is None else (key.stop + steps if key.stop < 0 else key.stop)
    stop = min(stop, steps)
    if not 0 <= start < stop:
        raise TracingError(f"steps [{key.start}:{key.stop}] select nothing of this "
                           f"generation's {steps} steps")
    if (start, stop) == (0, steps) and steps > 1:
        return "all"
    return start if stop - start == 1 else [start, stop]


def _step_list(key, steps: int, one):
    """``tracer.iter[[0, 2]]``: the steps in order, each checked; a contiguous run is the
    range [first, last + 1) (a `with` body binds to it); others are unrolled by `for`."""
    indices = sorted(one(k) for k in key)  # nnsight runs the steps in order
    if not indices:
        raise TracingError("tracer.iter[[]] selects no step")
    if indices == list(range(indices[0], indices[-1] + 1)):
        return _step_range(slice(indices[0], indices[-1] + 1), steps)
    return StepList(indices)


class StepList(tuple):
    """Steps that are not one contiguous run (``tracer.iter[[0, 2]]``): ``for step in
    tracer.iter[[0, 2]]:`` runs the body once per step; a `with` body cannot bind to them."""


def invokes_from(inputs) -> List[wire.Invoke]:
    """Invokes for ``model.trace(*inputs)``: prompts (str), token-id lists, or lists of them
    (numpy arrays and torch tensors of ids too)."""
    inputs = tuple(_ids_array(x) for x in inputs)
    if len(inputs) == 1 and isinstance(inputs[0], (list, tuple)) and inputs[0] and \
            not _is_ids(inputs[0]):
        inputs = tuple(inputs[0])
    if len(inputs) == 1 and isinstance(inputs[0], np.ndarray) and inputs[0].ndim == 2:
        inputs = tuple(inputs[0])
    return [_invoke(x) for x in inputs]


def _ids_array(value):
    """A torch tensor of token ids as a numpy array (other inputs as they are)."""
    if type(value).__module__.startswith("torch") and hasattr(value, "detach"):
        return value.detach().cpu().numpy()
    return value


def _is_ids(value) -> bool:
    items = list(value)
    return bool(items) and all(isinstance(i, (int, np.integer)) and not isinstance(i, bool)
                               for i in items)


def _invoke(prompt) -> wire.Invoke:
    if isinstance(prompt, str):
        return wire.Invoke(prompt=prompt)
    if isinstance(prompt, np.ndarray) and prompt.ndim == 1:
        prompt = prompt.tolist()
    if isinstance(prompt, (list, tuple)) and _is_ids(prompt):
        return wire.Invoke(ids=[int(i) for i in prompt])
    raise TracingError(f"a prompt is a string or a list of token ids, not {type(prompt).__name__}")


class Invoker:
    """``with tr.invoke(prompt):`` (see Tracer.invoke)."""

    def __init__(self, tracer: Tracer, inputs: tuple):
        self._tracer = tracer
        self._inputs = inputs
        self._previous: tuple = (None, 0)  # the tracer's invoke and step outside the block

    def __enter__(self) -> "Invoker":
        tracer = self._tracer
        prompts = invokes_from(self._inputs)
        if len(prompts) > 1:
            raise TracingError("one invoke holds one prompt; use one tr.invoke(...) per prompt")
        self._previous = tracer._invoke, tracer._step
        tracer._invoke, tracer._step = None, 0  # as in nnsight, each invoke counts its steps
        if prompts:
            tracer._invoke = len(tracer.trace.invokes)
            tracer.trace.invokes.extend(prompts)
        return self

    def __exit__(self, *exc) -> bool:
        self._tracer._invoke, self._tracer._step = self._previous
        return False


class StepIndexer:
    def __init__(self, tracer: Tracer):
        self._tracer = tracer

    def __getitem__(self, key) -> "StepScope":
        return StepScope(self._tracer, self._tracer.step_spec(key))


class StepScope:
    """Binds new hook-point accesses to generation steps while active."""

    def __init__(self, tracer: Tracer, step):
        self._tracer = tracer
        self._step = step
        self._previous = None

    def __enter__(self) -> "StepScope":
        if isinstance(self._step, StepList):
            raise TracingError(f"`with tracer.iter[{list(self._step)}]:` binds to one run of "
                               f"steps; for steps that are not contiguous, write `for step in "
                               f"tracer.iter[{list(self._step)}]:` (the body runs once per step)")
        self._previous, self._tracer._step = self._tracer._step, self._step
        self._tracer._step_scopes += 1
        return self

    def __exit__(self, *exc) -> bool:
        self._tracer._step = self._previous
        self._tracer._step_scopes -= 1
        return False

    def __iter__(self):
        steps = self._expand()
        previous = self._tracer._step
        self._tracer._step_scopes += 1
        try:
            for step in steps:
                self._tracer._step = step
                yield step
        finally:
            self._tracer._step = previous
            self._tracer._step_scopes -= 1

    def _expand(self) -> List[int]:
        if isinstance(self._step, StepList):
            return list(self._step)
        if isinstance(self._step, int):
            return [self._step]
        if self._step == "all":
            generate = self._tracer.trace.generate
            if generate is None:  # in model.edit(): the body is recorded once, for every step
                return ["all"]
            return list(range(generate.max_new_tokens))
        return list(range(*self._step))


class Barrier:
    """What ``tracer.barrier(n)`` returns: calling it (``barrier()``) does nothing, since
    the invokes of a trace share one graph."""

    def __init__(self, participants: int):
        self.participants = participants

    def __call__(self) -> None:
        return None


class BackwardScope:
    """What ``loss.backward()`` returns: usable as ``with loss.backward():`` (nnsight 0.5)."""

    def __enter__(self) -> "BackwardScope":
        return self

    def __exit__(self, *exc) -> bool:
        return False


class Cache(Mapping):
    """``tr.cache(...)``'s values after the request ran, keyed by hook point name (aliases
    work as keys too); in a generation with per-step caching, ``name.stepN``. As in nnsight,
    a module is a key too: ``cache["model.model.layers.5"].output`` (nnsight's root is
    called ``model``), and so is attribute access, ``cache.model.model.layers[5].output``;
    a module cached at several generation steps is, as in nnsight, a list of one entry per
    step: ``cache["model.model.layers.5"][2].output``."""

    def __init__(self, catalogue, dtype=None):
        self._catalogue = catalogue
        self._dtype = dtype
        self._values: Dict[str, Any] = {}

    def _add(self, name: str, value) -> None:
        if self._dtype is not None and hasattr(value, "to"):
            value = value.to(self._dtype)
        elif self._dtype is not None and hasattr(value, "astype"):
            value = value.astype(self._dtype)
        self._values[name] = value

    def _rewrite(self, point: str, value) -> None:
        """Replaces the cached value of ``point`` by its value after the trace's writes (one
        value, or a list of one per cached step)."""
        steps = self._point_steps(point)
        if point in self._values:
            self._add(point, value)
        elif len(steps) == 1 and not isinstance(value, list):
            self._add(f"{point}.step{steps[0]}", value)
        elif isinstance(value, list) and len(value) == len(steps):
            for step, one in zip(steps, value):
                self._add(f"{point}.step{step}", one)

    def _point_steps(self, point: str) -> List[int]:
        prefix = point + ".step"
        return sorted(int(k[len(prefix):]) for k in self._values
                      if k.startswith(prefix) and k[len(prefix):].isdigit())

    def __getitem__(self, name: str):
        if name in self._values:
            return self._values[name]
        base, dot, step = name.rpartition(".step")
        point = self._catalogue.find(base if dot and step.isdigit() else name)
        if point is not None:
            key = point.name + (dot + step if dot and step.isdigit() else "")
            if key in self._values:
                return self._values[key]
            steps = [] if dot and step.isdigit() else self._point_steps(point.name)
            if steps:  # cached at several generation steps: one value per step, as nnsight
                return [self._values[f"{point.name}.step{n}"] for n in steps]
        module = self._module(name)
        if module is not None:
            return module
        raise KeyError(self._missing(name))

    @property
    def model(self) -> "CachedModule":
        """The root module, as nnsight's cache spells it (``cache.model.model.layers[5]``)."""
        return CachedModule(self, self._catalogue.tree)

    def __getattr__(self, name: str):
        """nnsight 0.8's short form: the root's modules, ``cache.lm_head.output``."""
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.model, name)

    def _module(self, key: str):
        """The module ``key`` names (nnsight's path from the root "model", or its own) as
        a CachedModule, or a list of one per generation step; None if none is cached."""
        paths = [key[len("model."):], key] if key.startswith("model.") else [key]
        for path in paths:
            spec = self._catalogue.module_spec(path)
            if spec is None:
                continue
            if any(p in self._values for p in spec.points.values()):
                return CachedModule(self, spec)
            steps = self._steps_of(spec)
            if steps:
                return CachedSteps(CachedModule(self, spec, f".step{n}") for n in steps)
        return None

    def _steps_of(self, spec) -> List[int]:
        """The generation steps at which points of module ``spec`` were cached."""
        return sorted({n for point in spec.points.values() for n in self._point_steps(point)})

    def _missing(self, name: str) -> str:
        points = {k.rpartition(".step")[0] if ".step" in k else k for k in self._values}
        modules = {"model." + p.rsplit(".", 1)[0] for p in points if "." in p}
        close = difflib.get_close_matches(name, list(self._values) + sorted(modules), n=3)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        return f"{name!r} was not cached (cached: {len(self._values)} points){hint}"

    def __iter__(self):
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"<glassbox.Cache of {len(self._values)} points>"


class CachedSteps(list):
    """A module cached at several generation steps: one ``CachedModule`` per step
    (``cache["model.lm_head"][2].output``) and, as nnsight 0.8's cache view, ``.output`` /
    ``.input`` / ``.inputs`` as lists of one value per step (``len()`` counts the steps)."""

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        values = [getattr(entry, name) for entry in self]
        if values and all(isinstance(v, CachedModule) for v in values):
            return CachedSteps(values)
        return values


class CachedModule:
    """One module of a cache, nnsight-style: ``.output``, ``.input``, ``.inputs`` (args,
    kwargs), its submodules by attribute and, for a layer list, by index."""

    def __init__(self, cache: Cache, spec, step: str = ""):
        self._cache = cache
        self._spec = spec
        self._step = step  # ".stepN" for one generation step's entry

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        spec = self._spec
        if name in spec.points:
            return self._cache[spec.points[name] + self._step]
        if name == "inputs" and "input" in spec.points:
            return (self.input,), {}
        if name in spec.children:
            return CachedModule(self._cache, spec.children[name], self._step)
        known = list(spec.children) + list(spec.points)
        close = difflib.get_close_matches(name, known, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise AttributeError(f"{spec.path or 'the model'} has no module or cached point "
                             f"{name!r}{hint}")

    def __getitem__(self, index: int) -> "CachedModule":
        if not self._spec.is_list():
            raise TypeError(f"{self._spec.path} is not a list of modules")
        keys = sorted(self._spec.children, key=int)
        return CachedModule(self._cache, self._spec.children[keys[index]], self._step)

    def __repr__(self) -> str:
        return f"<glassbox cached module {self._spec.path or 'model'}{self._step}>"


# --------------------------------------------------------------------------------------------
# Sessions and edits.


class Session(JobHandle):
    """``with model.session():`` records several traces and runs them as one request; later
    traces may use earlier traces' values directly."""

    def __init__(self, model, options: Optional[WaitOptions] = None):
        self.model = model
        self._options = options
        self.builder: Optional[RequestBuilder] = None

    def __enter__(self) -> "Session":
        if _stack():
            raise TracingError("a session cannot start inside a trace or another session")
        self.builder = RequestBuilder(self.model, options=self._options)
        _stack().append(self)
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        _stack().pop()
        if exc_type is not None:
            self.builder.abandon()
            return False
        if self.builder.request.traces:
            self.builder.submit()
        return False


class Edit:
    """Nodes recorded by ``model.edit()``, prepended to every later trace of the model."""

    _HOOK_OPS = ("read", "write", "skip", "cache")

    def __init__(self, nodes: List[wire.Node], weights: Dict[str, int]):
        self.nodes = nodes
        self.weights = weights  # weight name -> the node holding its new value

    def apply_to(self, tracer: Tracer) -> None:
        """As in nnsight 0.8, an edit's hook-point access applies at a generation's first
        step (the prompt's pass) unless the edit put it under ``tracer.iter[:]`` or
        ``tracer.all()`` (its step is then "all"); a trace has one pass, so there every
        access applies to it."""
        ids: Dict[int, int] = {}
        generating = tracer.trace.generate is not None
        for node in self.nodes:
            ids[node.id] = tracer.builder.new_id()
            kwargs = {k: _renumber(v, ids) for k, v in node.kwargs.items()}
            if node.op in self._HOOK_OPS and not generating:
                kwargs.pop("step", None)
            if node.op == "skip" and generating and kwargs.get("step") != "all":
                raise TracingError(
                    f"this model's edit skips {kwargs.get('module')} at the generation's first "
                    "step only (a plain edit applies there, as in nnsight), which would leave "
                    "its keys and values missing from the cache: in the edit, put the skip "
                    "under `for _ in tracer.iter[:]:` or `with tracer.all():`")
            args = [_renumber(a, ids) for a in node.args]
            tracer.trace.nodes.append(wire.Node(ids[node.id], node.op, args, kwargs, node.source))
        for name, node_id in self.weights.items():
            proxy = Proxy(tracer.builder, ids[node_id], op="weight")
            object.__setattr__(proxy, "_weight", name)
            tracer.builder.proxies[proxy._id] = proxy
            tracer._weights[name] = proxy


def _renumber(value, ids: Dict[int, int]):
    if isinstance(value, wire.Ref):
        return wire.Ref(ids[value.id])
    if isinstance(value, list):
        return [_renumber(v, ids) for v in value]
    return value


class EditRecorder(Tracer):
    """``with model.edit() as edited:`` (or ``as (tracer, edited)``) records interventions
    without running anything; ``edited`` (with ``inplace=True``, bound ``as tracer``: the
    model itself) carries them into later traces. In a generation they apply at the first
    step, or at every step under ``tracer.iter[:]`` / ``tracer.all()`` (nnsight 0.8's rule)."""

    def __init__(self, model, target):
        super().__init__(model)
        self._target = target

    def __enter__(self):
        if _stack():
            raise TracingError("model.edit() cannot start inside a trace or a session")
        self.builder = RequestBuilder(self.model, state="edit")
        self.trace = wire.Trace()
        self.builder.tracers.append(self)
        _stack().append(self)
        object.__setattr__(self._target, "_edit_pair", (self, self._target))
        # nnsight 0.8: `with model.edit() as (tracer, edited):` (the copy, which also
        # unpacks as that pair) and `with model.edit(inplace=True) as tracer:`.
        return self if self._target is self.model else self._target

    def step_spec(self, key):
        """Inside an edit, steps of the generations that will carry it: every step
        (``tracer.iter[:]``, ``tracer.all()``) or, for a plain edit, the first."""
        if key == slice(None):
            return "all"
        raise TracingError(
            "inside model.edit(), `tracer.iter[:]` or `tracer.all()` makes the edit apply at "
            "every step of a later generation (a plain edit applies at its first step, the "
            "prompt's pass, as in nnsight); other steps are chosen in the generation itself")

    def __exit__(self, exc_type, exc, tb) -> bool:
        _stack().pop()
        self._target.__dict__.pop("_edit_pair", None)
        if exc_type is None:
            weights = {name: proxy._id for name, proxy in self._weights.items()}
            self._target._edits.append(Edit(self.trace.nodes, weights))
        return False

    def save(self, proxy: Proxy, name: Optional[str]) -> None:
        raise TracingError("an edit returns no values: save inside a trace instead")

    def cache(self, *args, **kwargs):
        raise TracingError("an edit returns no values: cache inside a trace instead")
