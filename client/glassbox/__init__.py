"""Glassbox: run intervention graphs on language models that live on a shared service.

    import glassbox
    model = glassbox.Model("smollm2-135m")  # the service at $GLASSBOX_URL or 127.0.0.1:5555
    with model.trace("The capital of France is"):
        logits = model.lm_head.output.save()
    logits.value  # a numpy array (a torch tensor when torch is installed)

``glassbox.wire`` is the wire format (protocol/SPEC.md); ``glassbox.functions`` the graph
operations as torch-like functions (the common ones are re-exported here).
"""

import builtins

from . import _wire as wire
from . import functions
from .backends import Backend, LocalBackend
from .batch import run_all
from .catalogue import Catalogue, HookPoint
from .errors import GlassboxError, TracingError
from .functions import (arange, cat, einsum, full, full_like, log_softmax, ones, ones_like,
                        randn, softmax, stack, where, zeros, zeros_like)
from .model import AttentionOutput, Envoy, Model, _ModelOutput
from .proxy import Proxy
from .service import JobFuture, JobTimeoutError, ServiceBackend
from .tracing import Cache, SavedDict, SavedList, StopTracing
from .activation_cache import ActivationCache
from .functions import rearrange


def list(*items) -> SavedList:  # noqa: A001 - nnsight's name (nnsight.list())
    """nnsight's ``nnsight.list()``: append traced values inside a trace (one per step
    inside ``tracer.all()``); after the run the list holds their values."""
    return SavedList(items)


def save(value):
    """nnsight's ``nnsight.save(x)``, the same as ``x.save()``: marks a traced value (or
    ``model.output``, an attention module's output tuple, a tuple of traced values) to come
    back after the block and returns it. A plain list becomes a ``glassbox.list()`` holding
    its items (append to what it returns), a plain dict a dict whose traced values come
    back (``norms = glassbox.save({})``, then ``norms[layer] = h.norm()``). Other values (numbers, sizes) come back as
    they are."""
    if isinstance(value, (SavedList, SavedDict)):
        return value
    if type(value) is builtins.list:
        return SavedList(value).save_items()
    if type(value) is builtins.dict:
        saved = SavedDict()
        for key, item in value.items():
            saved[key] = save(item)
        return saved
    if isinstance(value, tuple):
        return tuple(save(v) for v in value)
    if isinstance(value, (Proxy, AttentionOutput, _ModelOutput)):
        return value.save()
    return value


__version__ = "0.1.0"
PROTOCOL_VERSION = wire.PROTOCOL_VERSION

__all__ = [
    "wire", "functions", "PROTOCOL_VERSION", "__version__",
    "Model", "Envoy", "Proxy", "Cache", "Catalogue", "HookPoint",
    "Backend", "LocalBackend", "ServiceBackend", "JobFuture", "JobTimeoutError", "run_all",
    "GlassboxError", "TracingError", "ActivationCache", "SavedDict", "SavedList", "StopTracing",
    "rearrange",
    "arange", "cat", "einsum", "full", "full_like", "log_softmax", "ones", "ones_like",
    "randn", "softmax", "stack", "where", "zeros", "zeros_like",
]
