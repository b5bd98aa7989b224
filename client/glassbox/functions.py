"""Graph operations as functions, for code written against torch: ``glassbox.cat([a, b])``
where PyTorch code says ``torch.cat``. Each records one whitelisted op (intervention/OPS.md)
in the current trace, with the same argument names; factories (zeros, arange, randn, ...)
make values inside the graph. Also used for torch functions called on traced values.
"""

from __future__ import annotations

from . import signatures
from .tracing import current_tracer


def _op(name: str):
    def function(*args, **kwargs):
        return current_tracer(f"glassbox.{name}").call(name, args, kwargs)

    function.__name__ = name
    function.__doc__ = f"Records {signatures.signature_text(name)} in the current trace."
    return function


_NAMES = (
    "cat", "stack", "where", "zeros", "ones", "full", "zeros_like", "ones_like", "full_like",
    "randn", "softmax", "log_softmax", "exp", "log", "sqrt", "relu", "gelu", "silu", "tanh",
    "sigmoid", "matmul", "clamp", "topk", "argmax", "argmin", "mean", "norm", "sum", "max",
    "min", "abs", "neg", "add", "sub", "mul", "div", "pow", "eq", "ne", "lt", "le", "gt", "ge",
    "logical_and", "logical_or", "logical_not", "reshape", "transpose", "permute", "squeeze",
    "unsqueeze", "flatten", "split", "clone", "detach",
)
globals().update({name: _op(name) for name in _NAMES})
multiply, subtract, divide = _op("mul"), _op("sub"), _op("div")  # torch's long names


def einsum(equation: str, *tensors):
    """Records einsum(equation, *tensors)."""
    if len(tensors) == 1 and isinstance(tensors[0], (list, tuple)):
        tensors = tuple(tensors[0])
    return current_tracer("glassbox.einsum").node("einsum", [equation, *tensors])


def arange(start, end=None, step=1):
    """Records arange(start_or_end, end=None, step=1): integers in [start, end)."""
    args = [start] if end is None and step == 1 else [start, end, step]
    return current_tracer("glassbox.arange").node("arange", args)


__all__ = list(_NAMES) + ["einsum", "arange", "multiply", "subtract", "divide"]
