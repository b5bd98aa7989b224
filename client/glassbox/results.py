"""Saved values as the user gets them: numpy arrays, or torch tensors when torch is there.

``arrays`` chooses: "numpy", "torch", or "auto" (torch if it can be imported, numpy
otherwise; the default). bfloat16 tensors arrive as float32 under numpy (numpy has no
bfloat16) and as bfloat16 under torch. Per-step values are lists; plain numbers stay numbers.
"""

from __future__ import annotations

import importlib.util

import numpy as np

from . import _wire as wire

ARRAY_TYPES = ("auto", "numpy", "torch")


def torch_available() -> bool:
    return importlib.util.find_spec("torch") is not None


def resolve_array_type(arrays: str) -> str:
    if arrays not in ARRAY_TYPES:
        raise ValueError(f"arrays must be one of {', '.join(ARRAY_TYPES)}, not {arrays!r}")
    if arrays == "auto":
        return "torch" if torch_available() else "numpy"
    return arrays


def to_user_value(value, arrays: str = "numpy"):
    """A decoded wire value as the user sees it (``arrays`` as resolve_array_type gives)."""
    if isinstance(value, list):
        return [to_user_value(v, arrays) for v in value]
    if isinstance(value, wire.BFloat16Array):
        return _bfloat16(value, arrays)
    if isinstance(value, np.ndarray) and arrays == "torch":
        import torch

        # np.ascontiguousarray would turn a 0-d array into shape (1,): keep ().
        contiguous = value if value.flags.c_contiguous and value.flags.writeable else value.copy()
        return torch.from_numpy(contiguous)
    return value


def _bfloat16(value: wire.BFloat16Array, arrays: str):
    floats = value.to_float32()
    if arrays != "torch":
        return floats
    import torch

    return torch.from_numpy(floats).to(torch.bfloat16)
