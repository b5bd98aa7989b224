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
import warnings
from typing import Optional, Sequence

from . import _wire as wire
from .backends import Backend
from .catalogue import Catalogue, ModuleSpec
from .errors import GlassboxError, TracingError
from .proxy import Proxy, client_device
from .results import resolve_array_type
from .tokenizer import Tokenizer
from .tracing import EditRecorder, Session, Tracer, WaitOptions, current_tracer

_MODULE_METHODS = ("skip", "next")

# nnsight names that cannot work here by design (client/README.md, "Where nnsight differs").
_NOT_HERE = {
    "source": "nnsight's .source reaches operations inside a module's Python forward, which "
              "runs on the service; read the module's hook points instead (model.catalogue "
              "lists them, e.g. self_attn.q / attn_pattern / z)",
    "pipe": "model.pipe(...) runs a task pipeline's Python code; use model.generate(...) and "
            "model.tokenizer.decode",
    "modules": "the modules are the catalogue's: iterate model.catalogue (or list "
               "model.model.layers)",
}


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
            value = self._tracer(name).read(spec.points[name])
            if name == "output" and self._returns_a_tuple():
                return AttentionOutput(self, value)
            return value
        if name == "inputs" and "input" in spec.points:
            # nnsight: (args, kwargs) of the module's call; its one tensor argument here.
            return (self._tracer(name).read(spec.points["input"]),), {}
        if name in spec.weights:
            return self._tracer(name).weight(spec.weights[name])
        if name in spec.children:
            return self._child(name)
        raise AttributeError(self._no_such(name))

    def __setattr__(self, name: str, value) -> None:
        if name in self._spec.weights:
            self._tracer(name).write_weight(self._spec.weights[name], value)
            return
        if name == "inputs" and "input" in self._spec.points:
            name, value = "input", self._first_input(value)
        if name not in self._spec.points:
            raise AttributeError(f"cannot set {name!r} on {self._spec.path or 'the model'}: "
                                 f"only its hook points ({', '.join(self._spec.points)}) can be "
                                 "assigned, inside a trace")
        if name == "output" and self._returns_a_tuple():
            value = AttentionOutput.first_of(self, value)
        self._tracer(name).write(self._spec.points[name], value)

    def _first_input(self, inputs):
        """The tensor of ``module.inputs = ((x,), {})`` (nnsight's (args, kwargs))."""
        args, kwargs = inputs if isinstance(inputs, tuple) and len(inputs) == 2 and \
            isinstance(inputs[1], dict) else (None, None)
        if args is None or len(args) + len(kwargs) != 1:
            raise TracingError(f"{self._spec.path}.inputs = (args, kwargs) takes the one tensor "
                               "the module is called with here: ((x,), {}); or write "
                               f"{self._spec.path}.input = x")
        return args[0] if args else next(iter(kwargs.values()))

    def _returns_a_tuple(self) -> bool:
        """Whether transformers' module returns (attn_output, attn_weights): the attention
        modules, whose output point TransformerLens calls hook_attn_out."""
        point = self._model._catalogue.points.get(self._spec.points.get("output", ""))
        return point is not None and point.name == f"{self._spec.path}.output" and any(
            alias.endswith(".hook_attn_out") for alias in point.aliases)

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
        if isinstance(value, (tuple, list)):  # nnsight: skip((hidden, None)), a module's tuple
            value = AttentionOutput.first_of(self, value) if self._returns_a_tuple() else \
                self._first_of_tuple(value)
        tracer.skip(module, value)

    def _first_of_tuple(self, value):
        if not value or any(v is not None for v in value[1:]):
            raise TracingError(f"{self._spec.path}.skip(value): the module's output here is "
                               f"one tensor; give it alone (or as (value, None))")
        return value[0]

    def next(self, step: int = 1) -> "Envoy":
        """Moves hook-point access ``step`` generation steps on (nnsight's
        ``module.next(step=1)``, an alias of ``tracer.next``)."""
        self._tracer("next()").next(step)
        return self

    def __dir__(self):
        return sorted(set(self._spec.children) | set(self._spec.points) |
                      set(self._spec.weights) | set(_MODULE_METHODS))

    def __repr__(self) -> str:
        parts = []
        if self._spec.points:
            parts.append("points: " + ", ".join(self._spec.points))
        if self._spec.weights:
            parts.append("weights: " + ", ".join(self._spec.weights))
        if self._spec.children:
            children = list(self._spec.children)
            shown = children if len(children) <= 8 else children[:3] + ["...", children[-1]]
            parts.append("modules: " + ", ".join(shown))
        module = self._model._catalogue.module_path(self._spec.path)
        same = f" ({module})" if module and module != self._spec.path else ""
        return f"<glassbox module {self._spec.path or self._model.name}{same}; {'; '.join(parts)}>"

    def _no_such(self, name: str) -> str:
        if name in _NOT_HERE:
            return f"{self._spec.path or self._model.name}.{name}: {_NOT_HERE[name]}"
        known = list(self._spec.children) + list(self._spec.points) + list(self._spec.weights)
        close = difflib.get_close_matches(name, known, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; it has {', '.join(known)}"
        return f"{self._spec.path or self._model.name} has no module or hook point {name!r}{hint}"


class AttentionOutput:
    """An attention module's ``.output`` as transformers returns it, a tuple
    ``(attn_output, attn_weights)`` (nnsight code indexes it: ``self_attn.output[0]``).
    ``[0]`` is the attention output (read and written like any hook value), ``[1]`` the
    attention pattern; anything else on the tuple says to index it first."""

    def __init__(self, module: Envoy, output: Proxy):
        self._module = module
        self._output = output

    def _describe(self) -> str:
        return (f"{self._module._spec.path}.output is a tuple (attn_output, attn_weights) "
                "as in transformers")

    def __getitem__(self, index):
        if isinstance(index, slice):  # output[1:], to rebuild the tuple as nnsight code does
            return tuple(self[i] for i in range(2)[index])
        if index in (0, -2):
            return self._output
        if index in (1, -1):
            pattern = f"{self._module._spec.path}.attn_pattern"
            return self._module._tracer("output[1]").read(pattern)
        raise TracingError(f"{self._describe()}: index it with [0] for the attention output "
                           f"([1]: the attention pattern), e.g. .output[0][:, -1]")

    def __len__(self) -> int:
        return 2

    def __iter__(self):
        return iter((self[0], self[1]))

    def save(self, name=None) -> "AttentionOutput":
        self._output.save(name)
        return self

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        raise TracingError(f"{self._describe()}, not a tensor: use .output[0].{name}")

    def __repr__(self) -> str:
        return f"<glassbox {self._describe()}>"

    @staticmethod
    def first_of(module: Envoy, value):
        """What ``self_attn.output = value`` writes: a tensor, or a tuple whose weights are
        the module's own (weights cannot be replaced through the output)."""
        if isinstance(value, AttentionOutput):
            return value._output
        if isinstance(value, (tuple, list)):
            if len(value) != 2 or not (value[1] is None or isinstance(value[1], Proxy) and
                                       value[1]._hook is not None and
                                       value[1]._hook.point.endswith(".attn_pattern")):
                raise TracingError(f"{module._spec.path}.output = (attn_output, attn_weights): "
                                   "the weights cannot be replaced this way; write "
                                   f"{module._spec.path}.attn_pattern instead")
            return value[0]
        return value


class Config(dict):
    """``model.config``: the model's configuration as a dict whose keys are attributes too
    (``model.config.hidden_size``), with Hugging Face's names for the common ones."""

    _HF_NAMES = {"num_hidden_layers": "num_layers", "n_layer": "num_layers",
                 "num_attention_heads": "num_heads", "n_head": "num_heads",
                 "num_key_value_heads": "num_kv_heads", "n_embd": "hidden_size",
                 "d_model": "hidden_size", "bos_token_id": "bos_id", "eos_token_id": "eos_id",
                 "model_type": "architecture", "n_layers": "num_layers",
                 "n_heads": "num_heads", "d_head": "head_dim", "d_vocab": "vocab_size",
                 "d_mlp": "intermediate_size", "n_positions": "max_position_embeddings"}

    def __getattr__(self, name: str):
        key = name if name in self else self._HF_NAMES.get(name)
        if key is not None and key in self:
            return self[key]
        close = difflib.get_close_matches(name, list(self) + list(self._HF_NAMES), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise AttributeError(f"the model's config has no {name!r}{hint} (it has "
                             f"{', '.join(sorted(self))})")


def _catalogue_of(backend, name: str) -> dict:
    """The backend's catalogue for ``name`` (duck-typed backends may offer only catalogue())."""
    model_catalogue = getattr(backend, "model_catalogue", None)
    return model_catalogue(name) if model_catalogue else backend.catalogue()


def _refuse_unknown(what: str, unknown: dict) -> None:
    if unknown:
        names = ", ".join(f"{k}=" for k in unknown)
        raise GlassboxError("INVALID_ARGUMENT", f"{what} does not take {names} (see "
                            f"help({what.replace('model.', 'glassbox.Model.')}))")


def _sampling(do_sample, temperature, top_k, top_p) -> tuple:
    """(temperature, top_k, top_p) for the wire from transformers' or Glassbox's spelling."""
    if do_sample is False:
        given = [n for n, v in (("temperature", temperature), ("top_k", top_k),
                                ("top_p", top_p)) if v is not None]
        if given:
            warnings.warn(f"do_sample=False is greedy: {', '.join(given)} ignored, as "
                          "transformers does", UserWarning, stacklevel=3)
        return 0.0, 0, 1.0
    if do_sample:
        temperature = 1.0 if temperature is None else float(temperature)
        if temperature <= 0:
            raise GlassboxError("INVALID_ARGUMENT", f"do_sample=True needs temperature > 0, "
                                f"not {temperature}")
        return temperature, 50 if top_k is None else int(top_k), \
            1.0 if top_p is None else float(top_p)
    return (0.0 if temperature is None else float(temperature), int(top_k or 0),
            1.0 if top_p is None else float(top_p))


def _wait_options(blocking: bool, timeout: Optional[float],
                  quiet: Optional[bool]) -> Optional[WaitOptions]:
    """None for the defaults (so traces inside a session can tell they were given none)."""
    if blocking and timeout is None and quiet is None:
        return None
    return WaitOptions(blocking, timeout, quiet)


class _ModelOutput:
    """``model.output`` as on Hugging Face models (nnsight's ``model.output``): ``.logits``
    (also ``[0]``) is the unembedding's output; ``.save()`` saves it and returns this
    object, whose ``.logits`` holds the value after the block."""

    def __init__(self, model: "Model"):
        self._model = model
        self._saved: Optional[Proxy] = None

    @property
    def logits(self) -> Proxy:
        if self._saved is not None:
            return self._saved
        point = self._model._catalogue.logits_point
        return current_tracer("output.logits").read(point)

    def __getitem__(self, index):
        if index in (0, "logits"):
            return self.logits
        raise TracingError("model.output holds the logits only: model.output[0] or "
                           "model.output.logits (hidden states: read the layers' outputs)")

    def save(self, name=None) -> "_ModelOutput":
        self._saved = self.logits.save(name)
        return self

    def __repr__(self) -> str:
        return f"<glassbox model output: logits {self._saved!r}>"


class _Generator:
    """``model.generator`` in a generation: ``.output`` is the whole sequence (prompt and
    new tokens) as nnsight gives it, known after the run (``.save()`` it)."""

    def __init__(self, model: "Model"):
        self._model = model

    @property
    def output(self) -> Proxy:
        return current_tracer("model.generator.output").generator_output()


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
              timeout: Optional[float] = None, quiet: Optional[bool] = None,
              remote=None, validate=None, **unknown) -> Tracer:
        """``with model.trace(prompt) as tr:`` records one forward pass over the prompts
        (strings or token-id lists, numpy arrays or torch tensors of ids; a list of them is
        a batch); runs when the block ends. ``blocking=False``: the block ends at once and
        ``tr.result(timeout)`` waits; ``timeout`` (seconds) bounds a blocking wait;
        ``quiet`` hides progress. nnsight's ``remote=`` and ``validate=`` are accepted: the
        model is always remote here, and every request is validated before it runs."""
        _refuse_unknown("model.trace", unknown)
        return Tracer(self, inputs, scan=scan, options=_wait_options(blocking, timeout, quiet))

    def generate(self, *inputs, max_new_tokens: int = 1, do_sample: Optional[bool] = None,
                 temperature: Optional[float] = None, top_k: Optional[int] = None,
                 top_p: Optional[float] = None, seed: int = 0, stop_ids: Sequence[int] = (),
                 stop_strings=None, tokenizer=None, scan: bool = False, blocking: bool = True,
                 timeout: Optional[float] = None, quiet: Optional[bool] = None, remote=None,
                 validate=None, **unknown) -> Tracer:
        """As trace, but generating: hook points are per step (tr.iter, tr.all(), tr.next());
        after the block, ``tr.generated`` holds each prompt's new token ids and
        ``model.generator.output`` (saved inside) the whole sequences.

        Sampling as in transformers' ``generate``: ``do_sample=False`` is greedy (then
        temperature, top_k and top_p are ignored, as transformers does, with a warning);
        ``do_sample=True`` samples with temperature 1.0, top_k 50 and top_p 1.0 unless
        given. Without ``do_sample`` (Glassbox's own spelling) ``temperature > 0`` samples
        and top_k 0 means no limit. ``seed`` makes sampling reproducible. ``stop_ids``
        stops a prompt at those tokens; ``stop_strings`` (a string or a list) ends each
        prompt's new tokens at the token that completes one of them (``tokenizer=`` is
        accepted and not needed)."""
        _refuse_unknown("model.generate", unknown)
        sampling = _sampling(do_sample, temperature, top_k, top_p)
        stops = [stop_strings] if isinstance(stop_strings, str) else list(stop_strings or ())
        options = wire.GenerateOptions(max_new_tokens, *sampling, seed,
                                       list(stop_ids) + self._single_token_stops(stops))
        tracer = Tracer(self, inputs, generate=options, scan=scan,
                        options=_wait_options(blocking, timeout, quiet))
        tracer._stop_strings = stops
        return tracer

    def _single_token_stops(self, stops: list) -> list:
        """The ids of stop strings that are one token (the service stops there itself)."""
        ids = []
        for text in stops:
            if not isinstance(text, str) or not text:
                raise GlassboxError("INVALID_ARGUMENT", f"stop_strings holds {text!r}: each "
                                    "stop string is a non-empty str")
            encoded = self.tokenizer.encode(text)
            if len(encoded) == 1:
                ids.append(int(encoded[0]))
        return ids

    def scan(self, *inputs, **kwargs) -> Tracer:
        """A dry run: ``.shape`` / ``.dtype`` of every traced value, no values, no weights.
        Inside the block, ``.shape`` of a hook-point value has the sizes the catalogue
        knows as Python ints (``h.shape[-1]``)."""
        return self.trace(*inputs, scan=True, **kwargs)

    def session(self, blocking: bool = True, timeout: Optional[float] = None,
                quiet: Optional[bool] = None) -> Session:
        """``with model.session():`` runs every trace inside as one request (waiting options
        as for trace)."""
        return Session(self, _wait_options(blocking, timeout, quiet))

    def edit(self, inplace: bool = False) -> EditRecorder:
        """``with model.edit() as edited:`` (nnsight 0.8: ``as (tracer, edited)``) records
        interventions that every later trace of ``edited`` carries, until clear_edits();
        ``with model.edit(inplace=True) as tracer:`` puts them on the model itself. In a
        generation an edit applies at the first step, or at every step where the edit says
        ``for _ in tracer.iter[:]:`` / ``with tracer.all():`` (as in nnsight 0.8)."""
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
    def generator(self) -> _Generator:
        return _Generator(self)

    @property
    def device(self):
        """Where values go on the client side (saved values arrive on the CPU; the model's
        own device is ``model.config.device``): usable in ``tokens.to(model.device)``."""
        return client_device()

    def run_with_cache(self, *inputs, names_filter=None, **kwargs):
        """TransformerLens's ``logits, cache = model.run_with_cache(tokens)``: one forward
        pass that saves the logits and every hook point ``names_filter`` lets through (a
        name, a list of names or a predicate on TransformerLens names; None: all), as an
        ``ActivationCache`` (``cache["resid_post", 3]``, ``accumulated_resid()``, ...)."""
        from .activation_cache import run_with_cache

        return run_with_cache(self, inputs, names_filter, kwargs)

    def __iter__(self):
        pair = self.__dict__.get("_edit_pair")
        if pair is not None:  # `with model.edit() as (tracer, edited):` (nnsight 0.8)
            return iter(pair)
        return super().__iter__()

    @property
    def catalogue(self) -> Catalogue:
        return self._catalogue

    @property
    def config(self) -> Config:
        return Config(self._catalogue.config)

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
               "catalogue", "config", "name", "tokenizer", "generator", "device",
               "run_with_cache")
        return sorted(set(super().__dir__()) | set(own))

    def __repr__(self) -> str:
        layers = self._catalogue.num_layers
        return (f"<glassbox.Model {self.name}: {layers} layers, "
                f"{len(self._catalogue.points)} hook points>")
