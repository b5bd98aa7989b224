"""A model's hook catalogue as the client sees it, and the module tree built from it.

A backend hands over the catalogue as the JSON that ``glassbox-engine info`` prints:
``{"hook_points": [{"name", "aliases", "dtype", "shape", "meaning", "layer"}, ...],
"model": {config}}``. Hook point names follow the Hugging Face module paths
(``model.layers.5.mlp.output``); attention internals hang off ``self_attn``
(``model.layers.5.self_attn.attn_pattern``); TransformerLens aliases
(``blocks.5.attn.hook_z``) name the same points.

``ModuleSpec`` is the tree both kinds of names spell out: each module path has children
(numbered ones for layer lists) and points (``output`` -> ``model.layers.5.mlp.output``,
``hook_z`` -> ``model.layers.5.self_attn.z``).
"""

from __future__ import annotations

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


@dataclass
class ModuleSpec:
    """One module of the tree: its dotted path, its submodules and its hook points."""

    path: str
    children: Dict[str, "ModuleSpec"] = field(default_factory=dict)
    points: Dict[str, str] = field(default_factory=dict)  # attribute -> canonical point name

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
            )
            self.points[point.name] = point
            for alias in point.aliases:
                self._by_alias[alias] = point.name
        self.tree = _build_tree(self.points.values())

    def find(self, name: str) -> Optional[HookPoint]:
        """The point called ``name`` or aliased so; None if there is none."""
        canonical = name if name in self.points else self._by_alias.get(name)
        return self.points.get(canonical) if canonical else None

    def names(self) -> List[str]:
        return list(self.points)

    @property
    def num_layers(self) -> int:
        return int(self.config.get("num_layers", 0))


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
