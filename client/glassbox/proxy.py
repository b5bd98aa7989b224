"""Proxies: stand-ins for values inside the model while a trace is being recorded.

Every operation on a proxy inside a ``with model.trace(...)`` block appends a node to the
request instead of computing anything: Python operators, indexing, slice assignment and the
whitelisted tensor methods (``signatures.SIGNATURES``). Whatever a graph cannot express
(``len()``, ``bool()``, numpy on a traced value, unknown methods) raises ``TracingError`` at
once, naming the operation and the user's line.

After the request has run, a saved proxy holds its value: ``proxy.value`` is the array, and
the proxy itself behaves like it (operators, indexing, ``np.asarray``, attributes), as
nnsight's saved proxies do.

A proxy that reads a hook point remembers it (``hook``), so that ``h[:, -1] = v`` and
``h += v`` write back into the model and ``h.grad`` knows which gradient to ask for.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any, Optional, Tuple

import numpy as np

from . import signatures
from .errors import TracingError

_PENDING = object()
_AFTER_THE_BLOCK = ".save() the value and use it after the `with` block, where it is an array"


@dataclass(frozen=True)
class HookRef:
    """Where a read proxy's value comes from: a hook point, an invoke and a step."""

    point: str
    invoke: Optional[int]
    step: Any
    owner: Any  # the Tracer that read it; writes go only into that trace


def _current_tracer(what: str):
    from .tracing import current_tracer  # tracing imports this module

    return current_tracer(what)


class Proxy:
    """A value of a recorded graph (see the module docstring)."""

    def __init__(self, builder, node_id: int, hook: Optional[HookRef] = None,
                 view: Optional[Tuple["Proxy", Any]] = None, op: str = "", source: str = ""):
        object.__setattr__(self, "_builder", builder)
        object.__setattr__(self, "_id", node_id)
        object.__setattr__(self, "_hook", hook)  # set for reads of a hook point
        object.__setattr__(self, "_view", view)  # (hook-bound base, index) for base[index]
        object.__setattr__(self, "_op", op)
        object.__setattr__(self, "_source", source)
        object.__setattr__(self, "_value", _PENDING)
        object.__setattr__(self, "_scan", None)  # (dtype, shape) reported by a scan
        object.__setattr__(self, "_weight", None)  # set for reads of a weight (its name)

    # State ---------------------------------------------------------------------------------

    def _resolved(self) -> bool:
        """True once the value came back (then operations compute on it directly)."""
        return self._value is not _PENDING

    def _tracer(self, what: str):
        """The trace to record ``what`` in; a value left over from a finished request (not
        saved, or failed) says why it has no value instead."""
        from .tracing import active_tracer

        if active_tracer() is None and not self._resolved() and self._builder.state != "recording":
            raise TracingError(self._builder.why_no_value(self))
        return _current_tracer(what)

    def _set_value(self, value) -> None:
        object.__setattr__(self, "_value", value)

    def _rebind(self, node_id: int, hook: Optional[HookRef]) -> None:
        """Points this proxy at a newer node (after the value was assigned into)."""
        object.__setattr__(self, "_id", node_id)
        object.__setattr__(self, "_hook", hook)
        object.__setattr__(self, "_view", None)

    @property
    def value(self):
        """The saved value (a numpy array, or a torch tensor when torch is installed)."""
        if self._resolved():
            return self._value
        raise TracingError(self._builder.why_no_value(self))

    def save(self, name: Optional[str] = None) -> "Proxy":
        """Marks this value to come back; after the block, ``.value`` holds it."""
        self._tracer("save()").save(self, name)
        return self

    # Graph operations ----------------------------------------------------------------------

    def _apply(self, op: str, *args, **kwargs) -> "Proxy":
        """The node ``op(self, *args, **kwargs)`` when tracing; the value itself otherwise."""
        if self._resolved() and not _any_pending((args, kwargs)):
            return _eager_method(self._value, op, args, kwargs)
        return self._tracer(op).call(op, (self, *args), kwargs)

    def __getitem__(self, index):
        if self._resolved():
            return self._value[_values_of(index)]
        return self._tracer("indexing").getitem(self, index)

    def __setitem__(self, index, value):
        if self._resolved():
            self._value[_values_of(index)] = _values_of(value)
            return
        self._tracer("slice assignment").setitem(self, index, value)

    def __call__(self, *args, **kwargs):
        raise TracingError(f"a traced value is not callable ({self._describe()})")

    @property
    def grad(self) -> "Proxy":
        """The gradient at this hook-point value, after a ``.backward()`` in the same trace."""
        return self._tracer(".grad").grad(self)

    def backward(self, gradient=None, retain_graph=None, create_graph: bool = False):
        """Backpropagates from this scalar; ``.grad`` of hook values then holds gradients.

        Usable as a plain call or, as in nnsight, as ``with loss.backward(): ...``. One
        backward per trace (the service frees the graph after it, so ``retain_graph`` is
        accepted and changes nothing); ``gradient`` and ``create_graph`` are refused.
        """
        if gradient is not None or create_graph:
            raise TracingError("backward() here starts from a scalar with gradient 1 and "
                               "builds no graph of the gradients: gradient= and "
                               "create_graph=True are refused; scale the loss instead")
        return self._tracer(".backward()").backward(self)

    @property
    def shape(self):
        if self._resolved():
            return getattr(self._value, "shape", None)
        if self._scan is not None:
            return self._scan[1]
        if self._builder.state == "recording":
            if self._hook is not None and self._hook.owner is not None:
                return self._hook.owner.static_shape(self)
            return self._apply("size")
        raise TracingError(self._builder.why_no_value(self))

    @property
    def dtype(self):
        if self._resolved():
            return getattr(self._value, "dtype", None)
        if self._scan is not None:
            return self._scan[0]
        raise TracingError("the dtype of a traced value is known after a scan "
                           "(`with model.scan(...)`) or once the value is saved")

    # Tensor methods (each maps to one whitelisted op) ---------------------------------------

    def reshape(self, *shape):
        return self._apply("reshape", _shape_arg(shape))

    def view(self, *shape):
        return self._apply("view", _shape_arg(shape))

    def permute(self, *dims):
        return self._apply("permute", _shape_arg(dims))

    def topk(self, k, dim=-1):
        pair = self._apply("topk", k, dim=dim)
        if isinstance(pair, Proxy):
            return pair[0], pair[1]
        return pair

    def size(self, dim=None):
        return self._apply("size") if dim is None else self._apply("size", dim=dim)

    def to(self, target, *args, **kwargs):
        dtype = _dtype_name(target)
        if dtype is None:  # a device: values come back to the client anyway
            return self
        return self._apply("to", dtype)

    def cpu(self):
        return self

    def cuda(self, *args, **kwargs):
        return self  # values come back to the client's CPU whatever the model's device

    @property
    def device(self):
        """Where the value is as the client sees it: the CPU (saved values arrive there);
        usable in ``.to(x.device)``."""
        if self._resolved():
            return getattr(self._value, "device", "cpu")
        return client_device()

    def requires_grad_(self, requires_grad: bool = True) -> "Proxy":
        """Accepted for nnsight code: every hook point already has gradients (``.grad``
        after a ``.backward()``)."""
        if not requires_grad:
            raise TracingError("requires_grad_(False) is not an operation graphs can express; "
                               "use .detach() for a value without gradient history")
        return self

    def float(self):
        return self._apply("to", "float32")

    def half(self):
        return self._apply("to", "float16")

    def long(self):
        return self._apply("to", "int64")

    def int(self):
        return self._apply("to", "int32")

    def bool(self):
        return self._apply("to", "bool")

    # Python protocols a graph cannot express -------------------------------------------------

    def __bool__(self):
        if not self._resolved():
            raise TracingError(f"bool() of a traced value ({self._describe()}): Python `if`, "
                               "`while`, `and`, `or` cannot depend on values inside the model; "
                               "use glassbox.where(condition, a, b)")
        return bool(self._value)

    def __len__(self):
        if not self._resolved():
            raise TracingError(f"len() of a traced value ({self._describe()}): its size is not "
                               "known while tracing; use .size(dim) or a scan")
        return len(self._value)

    def __iter__(self):
        if not self._resolved():
            raise TracingError(f"iterating over a traced value ({self._describe()}): its length "
                               "is not known while tracing; index it instead (x[0], x[1])")
        return iter(self._value)

    def __array__(self, dtype=None, copy=None):
        if not self._resolved():
            raise TracingError(f"numpy cannot look inside a traced value ({self._describe()}); "
                               "use the whitelisted tensor methods, or .save() it and use the "
                               "value after the block")
        return np.asarray(self._value, dtype=dtype)

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        if not _any_pending(inputs):
            return getattr(ufunc, method)(*_values_of(inputs), **_values_of(kwargs))
        op = _UFUNC_OPS.get(ufunc.__name__)
        if method != "__call__" or op is None or kwargs:
            raise TracingError(f"numpy.{ufunc.__name__} is not an operation intervention graphs "
                               "can express; use the whitelisted methods (intervention/OPS.md)")
        return _current_tracer(f"numpy.{ufunc.__name__}").call(op, inputs, {})

    def __array_function__(self, func, types, args, kwargs):
        if _any_pending(args):
            raise TracingError(f"numpy.{func.__name__} cannot run inside a traced graph; use the "
                               "glassbox functions (glassbox.cat, glassbox.where, ...) or tensor "
                               "methods instead")
        return func(*_values_of(args), **_values_of(kwargs))

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        from . import functions

        kwargs = kwargs or {}
        if not _any_pending(args):
            return func(*_values_of(args), **_values_of(kwargs))
        name, reflected = torch_op_name(func)
        target = getattr(functions, name, None)
        if target is None:
            raise TracingError(f"torch.{name} is not an operation intervention graphs can "
                               "express (see intervention/OPS.md)")
        if reflected:
            args = (args[1], args[0], *args[2:])
        return target(*args, **_torch_kwargs(name, kwargs))

    def __int__(self):
        return int(self._concrete("int()"))

    def __float__(self):
        return float(self._concrete("float()"))

    def __index__(self):
        return operator.index(self._concrete("using a traced value as a Python int"))

    def _concrete(self, what: str):
        if not self._resolved():
            raise TracingError(f"{what} of a traced value ({self._describe()}): Python numbers "
                               "cannot come from inside the model while tracing; keep it a "
                               "traced value (.item() gives one)")
        return self._value

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        if self._resolved():
            return getattr(self._value, name)
        hint = _AFTER_THE_BLOCK if name in ("numpy", "tolist") else (
            "the whitelisted methods are listed in intervention/OPS.md")
        raise TracingError(f"`.{name}` is not an operation intervention graphs can express "
                           f"({self._describe()}); {hint}")

    def __setattr__(self, name, value):
        if name == "grad":
            raise TracingError("overwriting gradients is not an operation graphs can express yet")
        raise TracingError(f"cannot set attribute `{name}` on a traced value")

    __hash__ = object.__hash__

    def __repr__(self) -> str:
        if self._resolved():
            return repr(self._value)
        return f"<glassbox.Proxy {self._describe()}>"

    def __str__(self) -> str:
        if self._resolved():
            return str(self._value)
        if self._builder.state == "recording":
            return (f"<glassbox.Proxy {self._describe()}: a traced value, computed on the "
                    "service once the `with` block ends; to see it, .save() it and print it "
                    "after the block, or tracer.log(x) to print it after the run>")
        return f"<glassbox.Proxy {self._builder.why_no_value(self)}>"

    def __format__(self, spec: str) -> str:
        return format(self._value, spec) if self._resolved() else str(self)

    def __reduce_ex__(self, protocol):
        """A saved value pickles (pickle, torch.save, copy) as the value itself, so files
        written from a proxy load without glassbox and pass torch.load(weights_only=True)."""
        if self._resolved():
            return self._value.__reduce_ex__(protocol)
        raise TracingError(f"cannot pickle {self._builder.why_no_value(self)}")

    def _describe(self) -> str:
        where = f" at {self._source}" if self._source else ""
        what = self._hook.point if self._hook else self._op
        return f"node {self._id}: {what}{where}"


def client_device():
    """The device values have on the client: ``torch.device("cpu")`` when torch is installed
    (usable in ``.to(...)``), else the string "cpu"."""
    from .results import torch_available

    if torch_available():
        import torch

        return torch.device("cpu")
    return "cpu"


def _binary(op: str, eager, reflected: bool = False):
    def method(self, other):
        if self._resolved() and not _any_pending(other):
            return eager(other, self._value) if reflected else eager(self._value, _values_of(other))
        args = (other, self) if reflected else (self, other)
        return self._tracer(op).call(op, args, {})

    return method


def _unary(op: str, eager):
    def method(self):
        if self._resolved():
            return eager(self._value)
        return self._tracer(op).call(op, (self,), {})

    return method


def _in_place(op: str, eager):
    """``h += v``: on a hook-point value, a write into the model (as in-place in PyTorch)."""

    def method(self, other):
        if self._resolved():
            return eager(self._value, _values_of(other))
        return self._tracer(f"{op} in place").update_in_place(self, op, other)

    return method


_OPERATORS = {
    "add": operator.add, "sub": operator.sub, "mul": operator.mul, "div": operator.truediv,
    "pow": operator.pow, "matmul": operator.matmul, "logical_and": operator.and_,
    "logical_or": operator.or_,
}
_DUNDER = {"add": "add", "sub": "sub", "mul": "mul", "div": "truediv", "pow": "pow",
           "matmul": "matmul", "logical_and": "and", "logical_or": "or"}
for _op, _name in _DUNDER.items():
    setattr(Proxy, f"__{_name}__", _binary(_op, _OPERATORS[_op]))
    setattr(Proxy, f"__r{_name}__", _binary(_op, _OPERATORS[_op], reflected=True))
    setattr(Proxy, f"__i{_name}__", _in_place(_op, _OPERATORS[_op]))
for _op, _fn in {"eq": operator.eq, "ne": operator.ne, "lt": operator.lt, "le": operator.le,
                 "gt": operator.gt, "ge": operator.ge}.items():
    setattr(Proxy, f"__{_op}__", _binary(_op, _fn))
Proxy.__neg__ = _unary("neg", operator.neg)
Proxy.__abs__ = _unary("abs", operator.abs)
Proxy.__invert__ = _unary("logical_not", operator.invert)
Proxy.__pos__ = lambda self: self


def _unsupported_operator(symbol: str):
    def method(self, *args):
        if self._resolved():
            return getattr(self._value, f"__{symbol}__")(*_values_of(args))
        raise TracingError(f"the operator `{symbol}` is not an operation intervention graphs "
                           f"can express ({self._describe()})")

    return method


for _symbol in ("floordiv", "rfloordiv", "mod", "rmod", "divmod", "lshift", "rshift", "xor",
                "rxor", "round", "contains"):
    setattr(Proxy, f"__{_symbol}__", _unsupported_operator(_symbol))


def _tensor_method(op: str):
    def method(self, *args, **kwargs):
        return self._apply(op, *args, **kwargs)

    method.__name__ = op
    method.__doc__ = f"The graph op {signatures.signature_text(op)} (intervention/OPS.md)."
    return method


_METHOD_OPS = (
    "sum", "mean", "max", "min", "argmax", "argmin", "norm", "softmax", "log_softmax",
    "transpose", "squeeze", "unsqueeze", "flatten", "split", "exp", "log", "sqrt", "abs",
    "relu", "gelu", "silu", "tanh", "sigmoid", "clone", "detach", "item", "clamp", "matmul",
)
for _op in _METHOD_OPS:
    setattr(Proxy, _op, _tensor_method(_op))
Proxy.neg = Proxy.__neg__
TENSOR_METHODS = sorted(set(_METHOD_OPS) | {
    "reshape", "view", "permute", "topk", "size", "to", "cpu", "float", "half", "long", "int",
    "bool", "save", "backward", "grad", "shape", "value", "device", "requires_grad_",
    "cuda"})

_UFUNC_OPS = {
    "add": "add", "subtract": "sub", "multiply": "mul", "true_divide": "div", "divide": "div",
    "power": "pow", "matmul": "matmul", "negative": "neg", "absolute": "abs", "exp": "exp",
    "log": "log", "sqrt": "sqrt", "tanh": "tanh", "equal": "eq", "not_equal": "ne",
    "less": "lt", "less_equal": "le", "greater": "gt", "greater_equal": "ge",
    "logical_and": "logical_and", "logical_or": "logical_or", "logical_not": "logical_not",
}
_DTYPE_NAMES = {"float32", "float", "float16", "half", "bfloat16", "float64", "int64", "long",
                "int32", "int", "bool", "uint8"}


_TORCH_REFLECTED = {"radd": "add", "rsub": "sub", "rmul": "mul", "rtruediv": "div",
                    "rdiv": "div", "rpow": "pow", "rmatmul": "matmul"}
_TORCH_ALIASES = {"truediv": "div", "true_divide": "div", "subtract": "sub",
                  "multiply": "mul", "and": "logical_and", "or": "logical_or", "invert":
                  "logical_not", "negative": "neg", "concat": "cat", "concatenate": "cat"}


# Keyword arguments torch's Python functions pass on with their defaults (F.softmax's
# _stacklevel and dtype=None, F.relu's inplace=False, ...): dropped when they are defaults.
_TORCH_DEFAULT_KWARGS = {"dtype": None, "out": None, "inplace": False, "approximate": "none"}


def _torch_kwargs(name: str, kwargs: dict) -> dict:
    kept = {}
    for key, value in kwargs.items():
        if key.startswith("_"):
            continue
        if key in _TORCH_DEFAULT_KWARGS and value == _TORCH_DEFAULT_KWARGS[key]:
            continue
        kept[key] = value
    return kept


def torch_op_name(func) -> Tuple[str, bool]:
    """(glassbox function name, whether its first two arguments come reversed) for a torch
    function or Tensor method (``torch.softmax``, ``Tensor.__radd__``)."""
    name = getattr(func, "__name__", str(func)).strip("_")
    if name in _TORCH_REFLECTED:
        return _TORCH_REFLECTED[name], True
    return _TORCH_ALIASES.get(name, name), False


def _dtype_name(target) -> Optional[str]:
    """The dtype name ``.to(target)`` asks for; None when target is a device."""
    text = str(getattr(target, "name", None) or target)
    text = text.replace("torch.", "").replace("numpy.", "")
    if text in _DTYPE_NAMES:
        return text
    if text.split(":")[0] in ("cpu", "cuda", "mps", "meta"):
        return None
    raise TracingError(f".to({target!r}): not a dtype (float32, float16, bfloat16, int64, "
                       "int32, bool, uint8) or a device")


def _shape_arg(dims: tuple):
    """``x.reshape(2, -1)`` and ``x.reshape((2, -1))`` both give ``[2, -1]``."""
    if len(dims) == 1 and isinstance(dims[0], (list, tuple, Proxy)):
        return dims[0]
    return list(dims)


def _any_pending(value) -> bool:
    """Whether ``value`` holds a proxy that has no value yet (so the operation is traced)."""
    return any(isinstance(x, Proxy) and not x._resolved() for x in _flatten((value,)))


def _flatten(values):
    for v in values:
        if isinstance(v, dict):
            yield from _flatten(v.values())
        elif isinstance(v, (list, tuple)):
            yield from _flatten(v)
        else:
            yield v


def _values_of(obj):
    """``obj`` with every resolved proxy replaced by its value (for computing eagerly)."""
    if isinstance(obj, Proxy):
        return obj.value
    if isinstance(obj, tuple):
        return tuple(_values_of(x) for x in obj)
    if isinstance(obj, list):
        return [_values_of(x) for x in obj]
    if isinstance(obj, dict):
        return {k: _values_of(v) for k, v in obj.items()}
    return obj


_NUMPY_METHOD_NAMES = {"transpose": "swapaxes", "permute": "transpose", "unsqueeze": None}


def _eager_method(value, op: str, args: tuple, kwargs: dict):
    """A tensor method called on a saved value after its trace: run it on the value itself.

    Torch tensors take the call as is; numpy arrays get numpy's names (axis, keepdims).
    """
    args, kwargs = _values_of(args), _values_of(kwargs)
    if not isinstance(value, np.ndarray):
        return getattr(value, op)(*args, **kwargs)
    if op == "unsqueeze":
        return np.expand_dims(value, *args, **kwargs)
    renamed = {{"dim": "axis", "keepdim": "keepdims"}.get(k, k): v for k, v in kwargs.items()}
    name = _NUMPY_METHOD_NAMES.get(op, op)
    method = getattr(value, name, None)
    if method is None:
        raise TracingError(f"`.{op}` on a saved numpy array: numpy has no such method; "
                           "compute it inside the trace, or use numpy on `.value`")
    return method(*args, **renamed)
