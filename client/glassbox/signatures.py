"""The whitelisted graph operations (intervention/OPS.md) as Python signatures.

Each op lists its required parameters, sent positionally, and its optional ones with their
defaults, sent by keyword and only when the user gives them. ``bind`` turns a Python call
(``x.sum(-1)``, ``x.topk(5, dim=-1)``) into the node's args and kwargs, and rejects
arguments the op does not take, naming the op and its signature.
"""

from __future__ import annotations

from typing import Dict, List, Tuple

from .errors import TracingError

_NONE = None

# op -> (required parameters, optional parameters with defaults)
SIGNATURES: Dict[str, Tuple[Tuple[str, ...], Dict[str, object]]] = {
    # elementwise, one tensor
    **{op: (("x",), {}) for op in (
        "neg", "abs", "exp", "log", "sqrt", "logical_not", "relu", "gelu", "silu", "tanh",
        "sigmoid", "clone", "detach", "item", "zeros_like", "ones_like")},
    # elementwise, two tensors
    **{op: (("a", "b"), {}) for op in (
        "add", "sub", "mul", "div", "pow", "matmul", "eq", "ne", "lt", "le", "gt", "ge",
        "logical_and", "logical_or")},
    # reductions
    **{op: (("x",), {"dim": _NONE, "keepdim": False}) for op in (
        "sum", "mean", "max", "min", "argmax", "argmin")},
    "norm": (("x",), {"p": 2, "dim": _NONE, "keepdim": False}),
    "topk": (("x", "k"), {"dim": -1}),
    "softmax": (("x", "dim"), {}),
    "log_softmax": (("x", "dim"), {}),
    # shapes
    "reshape": (("x", "shape"), {}),
    "view": (("x", "shape"), {}),
    "transpose": (("x", "dim0", "dim1"), {}),
    "permute": (("x", "dims"), {}),
    "squeeze": (("x",), {"dim": _NONE}),
    "unsqueeze": (("x", "dim"), {}),
    "flatten": (("x",), {"start_dim": 0, "end_dim": -1}),
    "cat": (("tensors",), {"dim": 0}),
    "stack": (("tensors",), {"dim": 0}),
    "split": (("x", "size"), {"dim": 0}),
    "size": (("x",), {"dim": _NONE}),
    "getitem": (("x", "index"), {}),
    "setitem": (("x", "index", "value"), {}),
    # others
    "where": (("condition", "a", "b"), {}),
    "clamp": (("x",), {"min": _NONE, "max": _NONE}),
    "to": (("x", "dtype"), {}),
    "full_like": (("x", "value"), {}),
    "zeros": (("shape",), {"dtype": "float32"}),
    "ones": (("shape",), {"dtype": "float32"}),
    "full": (("shape", "value"), {"dtype": "float32"}),
    "randn": (("shape", "seed"), {}),
}


def signature_text(op: str) -> str:
    required, optional = SIGNATURES[op]
    parts = list(required) + [f"{k}={v!r}" for k, v in optional.items()]
    return f"{op}({', '.join(parts)})"


def bind(op: str, args: tuple, kwargs: dict) -> Tuple[List[object], Dict[str, object]]:
    """(positional args, keyword args) of a node for ``op`` called with ``args``/``kwargs``."""
    required, optional = SIGNATURES[op]
    names = list(required) + list(optional)
    if len(args) > len(names):
        raise TracingError(f"{op} takes at most {len(names)} arguments, got {len(args)}: "
                           f"{signature_text(op)}")
    given = dict(zip(names, args))
    for key, value in kwargs.items():
        if key not in names:
            raise TracingError(f"{op} has no argument '{key}': {signature_text(op)}")
        if key in given:
            raise TracingError(f"{op} got '{key}' twice: {signature_text(op)}")
        given[key] = value
    missing = [name for name in required if name not in given]
    if missing:
        raise TracingError(f"{op} needs {', '.join(missing)}: {signature_text(op)}")
    positional = [given[name] for name in required]
    keywords = {name: given[name] for name in optional if name in given}
    return positional, keywords
