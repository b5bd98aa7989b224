"""A model's hook catalogue as the client sees it, and the module tree built from it.

A backend hands over the catalogue as the JSON that ``glassbox-engine info`` prints:
``{"hook_points": [{"name", "aliases", "dtype", "shape", "meaning", "layer"}, ...],
"model": {config}}``. Hook point names follow each family's Hugging Face module paths
(``model.layers.5.mlp.output``; GPT-2: ``transformer.h.5.mlp.output``); attention internals
hang off the attention module (``model.layers.5.self_attn.attn_pattern``,
``transformer.h.5.attn.z``); TransformerLens aliases
(``blocks.5.attn.hook_z``) name the same points, on every family.

``ModuleSpec`` is the tree both kinds of names spell out: each module path has children
(numbered ones for layer lists) and points (``output`` -> ``model.layers.5.mlp.output``,
``hook_z`` -> ``model.layers.5.self_attn.z``). A module spelled by TransformerLens names
(``blocks.5.mlp``, ``unembed``) stands for a Hugging Face module, which
``Catalogue.module_path`` finds from the aliases (see there).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Tuple


@dataclass(frozen=True)
class HookPoint:
    name: str
    aliases: Tuple[str, ...]
    dtype: str
    shape: Tuple[str, ...]  # sizes as strings; symbolic ones are "batch", "seq", "k_seq"
    meaning: str = ""
    layer: int = -1
    skippable: bool = False  # a module output whose module may be skipped
    last_position: bool = False  # while generating, only the last position is computed


@dataclass(frozen=True)
class WeightSpec:
    """One weight the model has: a Hugging Face parameter name (``lm_head.weight``) or a
    TransformerLens one (``blocks.3.attn.W_Q``), its shape, and for a linear layer's weight
    or bias how it acts (``out_in``: output = input·Wᵀ, ``in_out``: input·W (GPT-2's
    Conv1D), ``bias``), else None (norms, embeddings, a tied unembedding, TransformerLens
    names)."""

    name: str
    shape: Tuple[int, ...]
    linear: Optional[str] = None
    transformer_lens: bool = False  # computed on the service from the Hugging Face weights

    @property
    def module(self) -> str:
        return self.name.rpartition(".")[0]


@dataclass
class ModuleSpec:
    """One module of the tree: its dotted path, its submodules, its hook points and its
    weights."""

    path: str
    children: Dict[str, "ModuleSpec"] = field(default_factory=dict)
    points: Dict[str, str] = field(default_factory=dict)  # attribute -> canonical point name
    weights: Dict[str, str] = field(default_factory=dict)  # attribute -> weight name

    def is_list(self) -> bool:
        return bool(self.children) and all(key.isdigit() for key in self.children)

    def child(self, key: str) -> "ModuleSpec":
        if key not in self.children:
            path = f"{self.path}.{key}" if self.path else key
            self.children[key] = ModuleSpec(path)
        return self.children[key]


class Catalogue:
    """The hook points of one model and its configuration."""

    def __init__(self, info: dict):
        self.config: dict = dict(info.get("model", {}))
        self.tokenizer_info: Optional[dict] = info.get("tokenizer")  # vocabulary, if any
        self.points: Dict[str, HookPoint] = {}
        self._by_alias: Dict[str, str] = {}
        for entry in info.get("hook_points", []):
            point = HookPoint(
                name=entry["name"],
                aliases=tuple(entry.get("aliases", ())),
                dtype=entry.get("dtype", ""),
                shape=tuple(str(d) for d in entry.get("shape", ())),
                meaning=entry.get("meaning", ""),
                layer=int(entry.get("layer", -1)),
                skippable=bool(entry.get("skippable", False)),
                last_position=bool(entry.get("last_position", False)),
            )
            self.points[point.name] = point
            for alias in point.aliases:
                self._by_alias[alias] = point.name
        self.weights: Dict[str, WeightSpec] = {
            w["name"]: WeightSpec(w["name"], tuple(int(d) for d in w.get("shape", ())),
                                  w.get("linear"), bool(w.get("transformer_lens", False)))
            for w in info.get("weights", [])}
        self.tree = _build_tree(self.points.values())
        _add_weights(self.tree, self.weights)

    def find(self, name: str) -> Optional[HookPoint]:
        """The point called ``name`` or aliased so; None if there is none."""
        canonical = name if name in self.points else self._by_alias.get(name)
        return self.points.get(canonical) if canonical else None

    def module_spec(self, path: str) -> Optional[ModuleSpec]:
        """The module of the tree at dotted ``path`` ("" is the root); None if none is."""
        spec = self.tree
        for part in path.split(".") if path else []:
            spec = spec.children.get(part)
            if spec is None:
                return None
        return spec

    def names(self) -> List[str]:
        return list(self.points)

    def skippable_modules(self) -> List[str]:
        """Module paths that ``skip()`` accepts (their ``.output`` point is skippable)."""
        return [name[: -len(".output")] for name, p in self.points.items() if p.skippable]

    def module_path(self, path: str) -> Optional[str]:
        """The Hugging Face module that the module ``path`` of the tree is, or None.

        A Hugging Face path with an ``.input`` or ``.output`` point is itself. A
        TransformerLens name ``P`` is the module whose ``.input`` is aliased ``P.hook_input``
        (``unembed`` -> ``lm_head``, ``blocks.3.mlp`` -> ``transformer.h.3.mlp``), else whose
        ``.output`` is aliased ``P.hook_normalized`` (``blocks.3.ln2`` ->
        ``model.layers.3.post_attention_layernorm``), else whose ``.input`` is aliased
        ``P.hook_resid_pre`` (``blocks.3`` -> ``gpt_neox.layers.3``)."""
        if f"{path}.input" in self.points or f"{path}.output" in self.points:
            return path
        for hook, end in _MODULE_ALIASES:
            name = self._by_alias.get(f"{path}.{hook}", "")
            if name.endswith(end):
                return name[: -len(end)]
        return None

    def aliased_modules(self, hooks: Iterable[str] = ("hook_input", "hook_normalized",
                                                      "hook_resid_pre")) -> List[str]:
        """The TransformerLens module names that module_path resolves through an alias
        ``P.<hook>`` with a hook from ``hooks``, each layer's once (``blocks.N.mlp``), in
        forward order."""
        found: Dict[str, None] = {}
        ends = dict(_MODULE_ALIASES)
        for point in self.points.values():
            for alias in point.aliases:
                module, _, hook = alias.rpartition(".")
                if module and hook in hooks and point.name.endswith(ends[hook]):
                    found[re.sub(r"\.\d+(?=\.|$)", ".N", module)] = None
        return list(found)

    @property
    def logits_point(self) -> str:
        """The last point of the pass: the logits (``lm_head.output``, ``embed_out.output``)."""
        return list(self.points)[-1]

    @property
    def num_layers(self) -> int:
        return int(self.config.get("num_layers", 0))


# How a TransformerLens module name finds its Hugging Face module (see module_path).
_MODULE_ALIASES = (("hook_input", ".input"), ("hook_normalized", ".output"),
                   ("hook_resid_pre", ".input"))


def _add_weights(root: ModuleSpec, weights: Dict[str, WeightSpec]) -> None:
    """``lm_head.weight`` becomes attribute ``weight`` of module ``lm_head``; ``W_U`` an
    attribute of the model; ``blocks.3.attn.W_Q`` one of ``blocks.3.attn``."""
    for name in weights:
        *module_path, attribute = name.split(".")
        spec = root
        for part in module_path:
            spec = spec.child(part)
        spec.weights[attribute] = name


def _build_tree(points: Iterable[HookPoint]) -> ModuleSpec:
    root = ModuleSpec("")
    for point in points:
        for spelled in (point.name, *point.aliases):
            *module_path, attribute = spelled.split(".")
            spec = root
            for part in module_path:
                spec = spec.child(part)
            spec.points.setdefault(attribute, point.name)
    return root
