"""TransformerLens's ``run_with_cache`` and ``ActivationCache`` on Glassbox.

    logits, cache = model.run_with_cache("The capital of France is")
    cache["resid_post", 3]            # blocks.3.hook_resid_post, as utils.get_act_name spells it
    cache["blocks.3.attn.hook_pattern"], cache["model.layers.3.output"]
    cache.accumulated_resid()         # [layers + 1, batch, pos, d_model]
    cache.decompose_resid()           # [components, batch, pos, d_model]

One forward pass on the service saves the logits and the hook points asked for; the stacks
are computed here, on the saved values (torch tensors, or numpy arrays without torch).
Keys are TransformerLens names where the point has one, Hugging Face names otherwise; both
spellings (and TransformerLens's short ``(name, layer)`` form) find a value.
"""

from __future__ import annotations

import difflib
from typing import Dict, List, Optional

import numpy as np

from .errors import GlassboxError

# utils.get_act_name's short names: where in a block the hook sits.
_BLOCK_HOOKS = {"resid_pre": "hook_resid_pre", "resid_mid": "hook_resid_mid",
                "resid_post": "hook_resid_post", "attn_out": "hook_attn_out",
                "mlp_out": "hook_mlp_out"}
_ATTN_HOOKS = {"q": "hook_q", "k": "hook_k", "v": "hook_v", "z": "hook_z",
               "pattern": "hook_pattern", "attn": "hook_pattern", "attn_scores":
               "hook_attn_scores", "scores": "hook_attn_scores", "rot_q": "hook_rot_q",
               "rot_k": "hook_rot_k", "result": "hook_result"}
_MLP_HOOKS = {"pre": "hook_pre", "post": "hook_post", "mlp_pre": "hook_pre",
              "mlp_post": "hook_post"}
_GLOBAL_HOOKS = {"embed": "hook_embed", "pos_embed": "hook_pos_embed"}


def act_name(name: str, layer: Optional[int] = None, layer_type: Optional[str] = None) -> str:
    """TransformerLens's ``utils.get_act_name``: ``("resid_post", 3)`` -> blocks.3.hook_resid_post."""
    if name in _GLOBAL_HOOKS:
        return _GLOBAL_HOOKS[name]
    if layer is None:
        return name
    if name in ("normalized", "scale"):
        return f"blocks.{layer}.{layer_type or 'ln1'}.hook_{name}"
    for table, prefix in ((_BLOCK_HOOKS, ""), (_ATTN_HOOKS, "attn."), (_MLP_HOOKS, "mlp.")):
        if name in table:
            return f"blocks.{layer}.{prefix}{table[name]}"
    return f"blocks.{layer}.{name}"


class ActivationCache:
    """What ``model.run_with_cache`` returns next to the logits (see the module docstring)."""

    def __init__(self, values: Dict[str, object], catalogue):
        self._catalogue = catalogue
        self._values: Dict[str, object] = {}
        for point_name, value in values.items():
            point = catalogue.points[point_name]
            self._values[point.aliases[0] if point.aliases else point_name] = value

    # Mapping -------------------------------------------------------------------------------

    def __getitem__(self, key):
        name = act_name(*key) if isinstance(key, tuple) else _GLOBAL_HOOKS.get(key, key)
        if name in self._values:
            return self._values[name]
        point = self._catalogue.find(name)
        if point is not None:
            for spelled in (*point.aliases, point.name):
                if spelled in self._values:
                    return self._values[spelled]
        close = difflib.get_close_matches(name, list(self._values), n=3)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise KeyError(f"{key!r} ({name}) is not in this cache{hint}")

    def __contains__(self, key) -> bool:
        try:
            self[key]
        except KeyError:
            return False
        return True

    def keys(self):
        return self._values.keys()

    def values(self):
        return self._values.values()

    def items(self):
        return self._values.items()

    def __iter__(self):
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"<glassbox.ActivationCache of {len(self._values)} hook points>"

    # Residual stream ---------------------------------------------------------------------

    @property
    def n_layers(self) -> int:
        return self._catalogue.num_layers

    def accumulated_resid(self, layer: Optional[int] = None, incl_mid: bool = False,
                          apply_ln: bool = False, pos_slice=None, mlp_input: bool = False,
                          return_labels: bool = False):
        """The residual stream before each layer up to ``layer`` (None: every layer, then the
        last layer's output, labelled final_post), stacked on a new first dim, as
        TransformerLens gives it. ``incl_mid`` adds each layer's resid_mid; ``mlp_input``
        adds resid_mid of ``layer`` itself. ``apply_ln`` is refused (it needs the folded
        final norm TransformerLens computes; call model.ln_final(...) in a trace)."""
        _refuse_ln(apply_ln, "accumulated_resid")
        layer = self.n_layers if layer is None or layer == -1 else layer
        parts, labels = [], []
        for index in range(layer + 1):
            if index == self.n_layers:
                parts.append(self["resid_post", self.n_layers - 1])
                labels.append("final_post")
                continue
            parts.append(self["resid_pre", index])
            labels.append(f"{index}_pre")
            if (incl_mid and index < layer) or (mlp_input and index == layer):
                parts.append(self["resid_mid", index])
                labels.append(f"{index}_mid")
        return self._stacked(parts, labels, pos_slice, return_labels)

    def decompose_resid(self, layer: Optional[int] = None, mlp_input: bool = False,
                        mode: str = "all", apply_ln: bool = False, pos_slice=None,
                        incl_embeds: bool = True, return_labels: bool = False):
        """The residual stream before ``layer`` (None: after the last) as the sum of its
        parts, stacked on a new first dim as TransformerLens gives them: the embedding
        (and positional embedding where the family has one), then each layer's attention
        and MLP outputs (``mode`` "attn" or "mlp" keeps one kind); ``mlp_input`` adds
        ``layer``'s attention output. ``apply_ln`` is refused (see accumulated_resid)."""
        _refuse_ln(apply_ln, "decompose_resid")
        if mode not in ("all", "attn", "mlp"):
            raise GlassboxError("INVALID_ARGUMENT", f"mode is all, attn or mlp, not {mode!r}")
        layer = self.n_layers if layer is None or layer == -1 else layer
        parts, labels = [], []
        if incl_embeds:
            for name in ("embed", "pos_embed"):
                if name in self:
                    parts.append(self[name])
                    labels.append(name)
        for index in range(layer):
            if mode in ("all", "attn"):
                parts.append(self["attn_out", index])
                labels.append(f"{index}_attn_out")
            if mode in ("all", "mlp"):
                parts.append(self["mlp_out", index])
                labels.append(f"{index}_mlp_out")
        if mlp_input and mode in ("all", "attn") and layer < self.n_layers:
            parts.append(self["attn_out", layer])
            labels.append(f"{layer}_attn_out")
        return self._stacked(parts, labels, pos_slice, return_labels)

    @staticmethod
    def _stacked(parts: List, labels: List[str], pos_slice, return_labels: bool):
        if not parts:
            raise GlassboxError("INVALID_ARGUMENT", "nothing to stack: no component selected")
        if pos_slice is not None:
            index = pos_slice if isinstance(pos_slice, slice) else slice(pos_slice, pos_slice + 1 or None)
            parts = [p[..., index, :] for p in parts]
        stacked = _stack(parts)
        return (stacked, labels) if return_labels else stacked


def _refuse_ln(apply_ln: bool, what: str) -> None:
    if apply_ln:
        raise GlassboxError("INVALID_ARGUMENT", f"{what}(apply_ln=True) is not supported: "
                            "TransformerLens divides by the final norm's scale cached at "
                            "the last layer; run model.ln_final(...) on the stack in a trace "
                            "instead")


def _stack(parts: List):
    if type(parts[0]).__module__.startswith("torch"):
        import torch

        return torch.stack(parts)
    return np.stack([np.asarray(p) for p in parts])


def run_with_cache(model, inputs: tuple, names_filter, kwargs: dict):
    """``model.run_with_cache``: (logits, ActivationCache) of one forward pass."""
    for key in ("remove_batch_dim", "device", "return_type", "incl_bwd"):
        if kwargs.get(key):
            raise GlassboxError("INVALID_ARGUMENT", f"run_with_cache does not take {key}=")
        kwargs.pop(key, None)
    catalogue = model._catalogue
    points = [p for p in catalogue.points.values() if _wanted(p, names_filter)]
    if not points:
        raise GlassboxError("INVALID_ARGUMENT", f"names_filter {names_filter!r} lets no hook "
                            "point through")
    with model.trace(*inputs, **kwargs) as tracer:
        logits = tracer.read(catalogue.logits_point).save()
        saved = {p.name: tracer.read(p.name).save() for p in points}
    values = {name: proxy.value for name, proxy in saved.items()}
    return logits.value, ActivationCache(values, catalogue)


def _wanted(point, names_filter) -> bool:
    names = (*point.aliases, point.name)
    if names_filter is None:
        return True
    if callable(names_filter):
        return any(names_filter(n) for n in names)
    wanted = [names_filter] if isinstance(names_filter, str) else list(names_filter)
    return any(n in wanted for n in names)
