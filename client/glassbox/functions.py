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


def all(x, dim=None, keepdim=False):  # noqa: A001 - torch's name
    """torch.all: no false element (compiled onto logical_not, to, sum and eq)."""
    falses = current_tracer("glassbox.all").call("logical_not", (x,), {})
    return _count(falses, dim, keepdim) == 0


def any(x, dim=None, keepdim=False):  # noqa: A001 - torch's name
    """torch.any: a true element (compiled onto logical_not twice, to, sum and gt)."""
    trues = current_tracer("glassbox.any").call("logical_not", (
        current_tracer("glassbox.any").call("logical_not", (x,), {}),), {})
    return _count(trues, dim, keepdim) > 0


def _count(booleans, dim, keepdim):
    kwargs = {} if dim is None else {"dim": dim, "keepdim": keepdim}
    return booleans.to("int64").sum(**kwargs)


def normalize(input, p=2.0, dim=1, eps=1e-12):  # noqa: A002 - torch's name
    """torch.nn.functional.normalize: x / max(||x||_p, eps) along dim."""
    return input / input.norm(p=p, dim=dim, keepdim=True).clamp(min=eps)


def linear(input, weight, bias=None):  # noqa: A002 - torch's name
    """torch.nn.functional.linear: input @ weight.T (+ bias)."""
    out = input @ weight.transpose(0, 1) if hasattr(weight, "transpose") else input @ weight.T
    return out if bias is None else out + bias


def cosine_similarity(x1, x2, dim=1, eps=1e-8):
    """torch.nn.functional.cosine_similarity."""
    dot = (x1 * x2).sum(dim=dim)
    return dot / (x1.norm(dim=dim).clamp(min=eps) * x2.norm(dim=dim).clamp(min=eps))


def rearrange(tensor, pattern: str, **axes_lengths):
    """einops-style ``rearrange(x, "b s (h d) -> b h s d", h=4)`` on traced values,
    compiled onto reshape and permute: axes are split and merged by name, and at most one
    axis of a split may have an unknown size. ``...`` is not supported (name the axes)."""
    from ._einops import rearrange as compile_rearrange

    return compile_rearrange(tensor, pattern, axes_lengths)


def einsum(equation: str, *tensors):
    """Records einsum(equation, *tensors)."""
    if len(tensors) == 1 and isinstance(tensors[0], (list, tuple)):
        tensors = tuple(tensors[0])
    return current_tracer("glassbox.einsum").node("einsum", [equation, *tensors])


def arange(start, end=None, step=1):
    """Records arange(start_or_end, end=None, step=1): integers in [start, end)."""
    args = [start] if end is None and step == 1 else [start, end, step]
    return current_tracer("glassbox.arange").node("arange", args)


_norm_op = globals()["norm"]


def norm(input, p=2, dim=None, keepdim=False, **kwargs):  # noqa: A002 - torch's name
    """torch.norm / Tensor.norm: p="fro" (torch's default) is the 2-norm."""
    if kwargs:
        raise TypeError(f"norm has no argument {', '.join(kwargs)}")
    return _norm_op(input, p=2 if p in ("fro", None) else p, dim=dim, keepdim=keepdim)


__all__ = list(_NAMES) + ["einsum", "arange", "multiply", "subtract", "divide", "all", "any",
                          "normalize", "linear", "cosine_similarity", "rearrange"]
