"""``glassbox.Model``: a model on the service, mirrored as a tree of modules.

The tree comes from the model's hook catalogue (see catalogue.py) and follows the family's
Hugging Face module paths: ``model.model.layers[5].mlp.output``, ``model.lm_head.input``,
``model.model.layers[3].self_attn.attn_pattern`` (GPT-2: ``model.transformer.h[3].attn``),
with TransformerLens names for the same points and modules on every family
(``model.blocks[3].attn.hook_pattern``, ``model.unembed``, ``model.ln_final``). Inside a
trace, reading a point gives a proxy, assigning one writes it, calling a module runs it on
any value (``model.unembed(model.ln_final(h))``) and ``module.skip(value)`` replaces it; a
module named the TransformerLens way runs (or skips) the family's own module. Outside a
trace these raise, saying so.

    model = glassbox.Model("smollm2-135m", backend=LocalBackend("models/SmolLM2.gguf"))
    with model.trace("The capital of France is"):
        logits = model.lm_head.output.save()
"""

from __future__ import annotations

import difflib
from typing import Optional, Sequence

from . import _wire as wire
from .backends import Backend
from .catalogue import Catalogue, ModuleSpec
from .errors import GlassboxError, TracingError
from .proxy import Proxy
from .results import resolve_array_type
from .tokenizer import Tokenizer
from .tracing import EditRecorder, Session, Tracer, WaitOptions, current_tracer

_MODULE_METHODS = ("skip", "next")


class Envoy:
    """One module of the mirrored tree (nnsight's name for it)."""

    def __init__(self, spec: ModuleSpec, model: "Model"):
        object.__setattr__(self, "_spec", spec)
        object.__setattr__(self, "_model", model)
        object.__setattr__(self, "_children", {})

    @property
    def _module_path(self) -> str:
        return self._spec.path

    def _tracer(self, what: str):
        tracer = current_tracer(f"{self._spec.path}.{what}" if self._spec.path else what)
        if tracer.model._catalogue is not self._model._catalogue:
            raise TracingError(f"{self._spec.path} belongs to model {self._model.name}, but the "
                               f"current trace is of {tracer.model.name}")
        return tracer

    def _child(self, key: str) -> "Envoy":
        if key not in self._children:
            self._children[key] = Envoy(self._spec.children[key], self._model)
        return self._children[key]

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        spec = self._spec
        if name in spec.points:
            return self._tracer(name).read(spec.points[name])
        if name in spec.children:
            return self._child(name)
        raise AttributeError(self._no_such(name))

    def __setattr__(self, name: str, value) -> None:
        if name not in self._spec.points:
            raise AttributeError(f"cannot set {name!r} on {self._spec.path or 'the model'}: "
                                 f"only its hook points ({', '.join(self._spec.points)}) can be "
                                 "assigned, inside a trace")
        self._tracer(name).write(self._spec.points[name], value)

    def __getitem__(self, index):
        if not self._spec.is_list():
            raise TypeError(f"{self._spec.path} is not a list of modules")
        keys = sorted(self._spec.children, key=int)
        if isinstance(index, slice):
            return [self._child(k) for k in keys[index]]
        try:
            return self._child(keys[index])
        except IndexError:
            raise IndexError(f"{self._spec.path} has {len(keys)} modules; "
                             f"index {index} is out of range") from None

    def __len__(self) -> int:
        return len(self._spec.children) if self._spec.is_list() else 0

    def __iter__(self):
        if not self._spec.is_list():
            raise TypeError(f"{self._spec.path} is not a list of modules")
        return (self[i] for i in range(len(self)))

    def __call__(self, value) -> Proxy:
        """Runs this module on any value (``module`` op), e.g. the logit lens. A module named
        the TransformerLens way (``model.unembed``) runs the family's own (``lm_head``)."""
        tracer = self._tracer("__call__")
        module = self._model._catalogue.module_path(self._spec.path)
        if module is None:
            raise TracingError(self._not_callable())
        return tracer.call_module(module, value)

    def _not_callable(self) -> str:
        catalogue = self._model._catalogue
        aliased = ", ".join(catalogue.aliased_modules(("hook_input", "hook_normalized")))
        example = catalogue.logits_point[: -len(".output")]
        return (f"{self._spec.path or 'the model'} is not a module that can be called: call a "
                f"Hugging Face module (e.g. {example}) or one of {aliased}")

    def skip(self, value) -> None:
        """This module does not run; ``value`` stands for its output (for the whole batch).
        Only a layer, its attention or its MLP can be skipped (the catalogue marks which),
        by Hugging Face path or TransformerLens name (``model.blocks[3].attn``)."""
        tracer = self._tracer("skip()")
        catalogue = self._model._catalogue
        skippable = catalogue.skippable_modules()
        module = catalogue.module_path(self._spec.path)
        if module not in skippable:
            examples = ", ".join(m for m in skippable if ".0." in m + ".")
            raise TracingError(f"{self._spec.path or 'the model'} cannot be skipped: only a "
                               f"layer, its attention or its MLP can ({examples}, ...; or "
                               "blocks.N, blocks.N.attn, blocks.N.mlp)")
        tracer.skip(module, value)

    def next(self, steps: int = 1) -> "Envoy":
        """Moves hook-point access to the next generation step (nnsight's module.next())."""
        self._tracer("next()").next(steps)
        return self

    def __dir__(self):
        return sorted(set(self._spec.children) | set(self._spec.points) | set(_MODULE_METHODS))

    def __repr__(self) -> str:
        parts = []
        if self._spec.points:
            parts.append("points: " + ", ".join(self._spec.points))
        if self._spec.children:
            children = list(self._spec.children)
            shown = children if len(children) <= 8 else children[:3] + ["...", children[-1]]
            parts.append("modules: " + ", ".join(shown))
        module = self._model._catalogue.module_path(self._spec.path)
        same = f" ({module})" if module and module != self._spec.path else ""
        return f"<glassbox module {self._spec.path or self._model.name}{same}; {'; '.join(parts)}>"

    def _no_such(self, name: str) -> str:
        known = list(self._spec.children) + list(self._spec.points)
        close = difflib.get_close_matches(name, known, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; it has {', '.join(known)}"
        return f"{self._spec.path or self._model.name} has no module or hook point {name!r}{hint}"


def _catalogue_of(backend, name: str) -> dict:
    """The backend's catalogue for ``name`` (duck-typed backends may offer only catalogue())."""
    model_catalogue = getattr(backend, "model_catalogue", None)
    return model_catalogue(name) if model_catalogue else backend.catalogue()


def _wait_options(blocking: bool, timeout: Optional[float],
                  quiet: Optional[bool]) -> Optional[WaitOptions]:
    """None for the defaults (so traces inside a session can tell they were given none)."""
    if blocking and timeout is None and quiet is None:
        return None
    return WaitOptions(blocking, timeout, quiet)


class _ModelOutput:
    """``model.output.logits`` (as on Hugging Face models): the unembedding's output."""

    def __init__(self, model: "Model"):
        self._model = model

    @property
    def logits(self) -> Proxy:
        point = self._model._catalogue.logits_point
        return current_tracer("output.logits").read(point)


class Model(Envoy):
    """A model served by a backend, mirrored as a module tree (see the module docstring).

    ``name`` is the service's name for the model; ``backend`` runs requests: by default a
    ``ServiceBackend`` for ``url`` and ``api_key`` (defaults: ``$GLASSBOX_URL`` or
    tcp://127.0.0.1:5555, ``$GLASSBOX_API_KEY``; ``server_key`` for an encrypting broker),
    or e.g. ``LocalBackend(path)``. ``timeout``
    and ``quiet`` are the service backend's defaults for waiting (see ServiceBackend).
    ``arrays`` chooses what saved values become: "auto" (torch tensors when torch is
    installed, else numpy), "numpy" or "torch".
    """

    def __init__(self, name: str, backend: Optional[Backend] = None, arrays: str = "auto", *,
                 url: Optional[str] = None, api_key: Optional[str] = None,
                 server_key: Optional[str] = None, timeout: Optional[float] = None,
                 quiet: Optional[bool] = None):
        if backend is not None and (url, api_key, server_key) != (None, None, None):
            raise GlassboxError("INVALID_ARGUMENT", "give either backend= or url=/api_key=")
        own_backend = backend is None
        if own_backend:
            from .service import ServiceBackend

            backend = ServiceBackend(url, api_key, timeout=timeout, quiet=quiet,
                                     server_key=server_key)
        try:
            catalogue = Catalogue(_catalogue_of(backend, name))
        except BaseException:
            if own_backend:
                backend.close()
            raise
        super().__init__(catalogue.tree, self)
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "_backend", backend)
        object.__setattr__(self, "_catalogue", catalogue)
        object.__setattr__(self, "_arrays", resolve_array_type(arrays))
        object.__setattr__(self, "_edits", [])

    # Experiments -------------------------------------------------------------------------

    def trace(self, *inputs, scan: bool = False, blocking: bool = True,
              timeout: Optional[float] = None, quiet: Optional[bool] = None) -> Tracer:
        """``with model.trace(prompt) as tr:`` records one forward pass over the prompts
        (strings or token-id lists; a list of them is a batch); runs when the block ends.
        ``blocking=False``: the block ends at once and ``tr.result(timeout)`` waits;
        ``timeout`` (seconds) bounds a blocking wait; ``quiet`` hides progress."""
        return Tracer(self, inputs, scan=scan, options=_wait_options(blocking, timeout, quiet))

    def generate(self, *inputs, max_new_tokens: int = 1, temperature: float = 0.0,
                 top_k: int = 0, top_p: float = 1.0, seed: int = 0,
                 stop_ids: Sequence[int] = (), blocking: bool = True,
                 timeout: Optional[float] = None, quiet: Optional[bool] = None) -> Tracer:
        """As trace, but generating: hook points are per step (tr.iter, tr.all(), tr.next());
        after the block, ``tr.generated`` holds each prompt's new token ids."""
        options = wire.GenerateOptions(max_new_tokens, float(temperature), top_k,
                                       float(top_p), seed, list(stop_ids))
        return Tracer(self, inputs, generate=options,
                      options=_wait_options(blocking, timeout, quiet))

    def scan(self, *inputs) -> Tracer:
        """A dry run: ``.shape`` / ``.dtype`` of every traced value, no values, no weights."""
        return Tracer(self, inputs, scan=True)

    def session(self, blocking: bool = True, timeout: Optional[float] = None,
                quiet: Optional[bool] = None) -> Session:
        """``with model.session():`` runs every trace inside as one request (waiting options
        as for trace)."""
        return Session(self, _wait_options(blocking, timeout, quiet))

    def edit(self, inplace: bool = False) -> EditRecorder:
        """``with model.edit() as edited:`` records interventions that every later trace of
        ``edited`` carries (of the model itself with inplace=True), until clear_edits()."""
        target = self if inplace else self._edited_copy()
        return EditRecorder(self, target)

    def clear_edits(self) -> None:
        self._edits.clear()

    def _edited_copy(self) -> "Model":
        copy = object.__new__(type(self))
        for key, value in self.__dict__.items():
            object.__setattr__(copy, key, value)
        object.__setattr__(copy, "_children", {})
        object.__setattr__(copy, "_model", copy)
        object.__setattr__(copy, "_edits", list(self._edits))
        return copy

    # Description -------------------------------------------------------------------------

    @property
    def output(self) -> _ModelOutput:
        return _ModelOutput(self)

    @property
    def catalogue(self) -> Catalogue:
        return self._catalogue

    @property
    def config(self) -> dict:
        return dict(self._catalogue.config)

    @property
    def tokenizer(self) -> Tokenizer:
        """Encodes and decodes exactly as the server does (see glassbox.tokenizer)."""
        if self.__dict__.get("_tokenizer") is None:
            info = self._catalogue.tokenizer_info
            if info is None:
                raise GlassboxError("NOT_FOUND", f"model {self.name} has no tokenizer: send "
                                    "token ids instead of text")
            tokenize = getattr(self._backend, "tokenize", None)  # the service's: no queue
            encode_text = (lambda text: tokenize(self.name, text)) if tokenize else None
            object.__setattr__(self, "_tokenizer",
                               Tokenizer(info, self._backend.run, self.name, encode_text))
        return self.__dict__["_tokenizer"]

    def __dir__(self):
        own = ("trace", "generate", "scan", "session", "edit", "clear_edits", "output",
               "catalogue", "config", "name", "tokenizer")
        return sorted(set(super().__dir__()) | set(own))

    def __repr__(self) -> str:
        layers = self._catalogue.num_layers
        return (f"<glassbox.Model {self.name}: {layers} layers, "
                f"{len(self._catalogue.points)} hook points>")
