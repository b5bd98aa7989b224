"""einops-style ``rearrange`` compiled onto the whitelisted ``reshape`` and ``permute``.

``rearrange(x, "b s (h d) -> b h s d", h=4)``: the left side names x's axes, parentheses
group axes that are one dimension of x; the right side orders and groups them anew. Sizes
come from the keyword arguments, from x's own dimensions (an ungrouped axis, as a traced
``size``), or as the one ``-1`` of a reshape; a group on the right whose axes' sizes are
not all known is merged with ``flatten``.
"""

from __future__ import annotations

import re
from typing import Dict, List

from .errors import TracingError


def parse_side(side: str, pattern: str) -> List[List[str]]:
    """``"b s (h d)"`` -> [["b"], ["s"], ["h", "d"]]."""
    groups, current = [], None
    for token in re.findall(r"\(|\)|[A-Za-z_][A-Za-z0-9_]*|\S", side):
        if token == "(":
            if current is not None:
                raise TracingError(f"rearrange {pattern!r}: nested parentheses")
            current = []
        elif token == ")":
            if current is None:
                raise TracingError(f"rearrange {pattern!r}: unbalanced parentheses")
            groups.append(current)
            current = None
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", token):
            if current is not None:
                current.append(token)
            else:
                groups.append([token])
        else:
            raise TracingError(f"rearrange {pattern!r}: {token!r} is not supported here (axes "
                               "are names, grouped by parentheses; no '...' or numbers)")
    if current is not None:
        raise TracingError(f"rearrange {pattern!r}: unbalanced parentheses")
    return groups


def rearrange(x, pattern: str, lengths: Dict[str, int]):
    if "->" not in pattern:
        raise TracingError(f"rearrange {pattern!r}: a pattern is 'left -> right'")
    left_text, right_text = pattern.split("->")
    left, right = parse_side(left_text, pattern), parse_side(right_text, pattern)
    names = [a for g in left for a in g]
    if sorted(names) != sorted(a for g in right for a in g) or len(set(names)) != len(names):
        raise TracingError(f"rearrange {pattern!r}: both sides must name the same axes once")
    unknown = [k for k in lengths if k not in names]
    if unknown:
        raise TracingError(f"rearrange {pattern!r}: sizes given for axes it does not name: "
                           f"{', '.join(unknown)}")
    sizes = dict(lengths)
    elementary = x
    if any(len(g) > 1 for g in left):
        elementary = x.reshape(_split_shape(x, left, sizes, pattern))
    order = [names.index(a) for g in right for a in g]
    if order != list(range(len(names))):
        elementary = elementary.permute(*order)
    if all(len(g) == 1 for g in right):
        return elementary
    return _merge(elementary, right)


def _split_shape(x, left: List[List[str]], sizes: Dict[str, int], pattern: str) -> list:
    shape, free = [], 0
    for dim, group in enumerate(left):
        if len(group) == 1:
            name = group[0]
            shape.append(sizes[name] if name in sizes else x.size(dim))
            continue
        missing = [a for a in group if a not in sizes]
        if len(missing) > 1:
            raise TracingError(f"rearrange {pattern!r}: give the sizes of all but one of "
                               f"{', '.join(group)}")
        free += len(missing)
        shape.extend(-1 if a in missing else sizes[a] for a in group)
    if free > 1:
        raise TracingError(f"rearrange {pattern!r}: only one split axis may have an unknown "
                           "size; give the others as keywords")
    return shape


def _merge(x, right: List[List[str]]):
    """Merges each group on the right with flatten, from the last one back (so earlier
    dimension numbers stay valid)."""
    starts, position = [], 0
    for group in right:
        starts.append((position, position + len(group) - 1))
        position += len(group)
    for start, end in reversed(starts):
        if end > start:
            x = x.flatten(start, end)
    return x
