"""The Glassbox wire format in Python: the twin of protocol/codec.cc and protocol/json.cc.

protocol/SPEC.md is the specification; protocol/vectors/ holds byte samples that this module
and the C++ codec must both reproduce exactly. Dependencies: msgpack and numpy only.

Messages are dataclasses mirroring protocol/graph.h. A Value (a node argument or a saved
value) is one of: None, bool, int, float, str, list (tuples encode as lists), Ref(node_id),
a builtin ``slice``, ``Ellipsis``, a numpy array (float32, float16, int64, int32, bool, uint8)
or a BFloat16Array (numpy has no bfloat16: the raw bits travel as uint16).

Encoding is deterministic (map keys in SPEC.md order). Decoding checks sizes against
DecodeLimits before unpacking anything, checks every type, and raises WireError naming the
position of the problem ("body.traces[0].nodes[3].args[1]: expected ...").
"""

from __future__ import annotations

import base64
import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, NamedTuple, Optional, Union

import msgpack
import numpy as np

PROTOCOL_VERSION = 1

# Wire dtype name -> numpy dtype of the element bytes (little-endian).
DTYPES: Dict[str, np.dtype] = {
    "float32": np.dtype("<f4"),
    "float16": np.dtype("<f2"),
    "bfloat16": np.dtype("<u2"),  # raw bits, see BFloat16Array
    "int64": np.dtype("<i8"),
    "int32": np.dtype("<i4"),
    "bool": np.dtype("bool"),
    "uint8": np.dtype("u1"),
}
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


class WireError(ValueError):
    """A message that cannot be decoded (or a structure that cannot be encoded).

    ``code`` is "INVALID_ARGUMENT" (malformed, mistyped, another protocol version) or
    "RESOURCE_EXHAUSTED" (over a DecodeLimits limit), as in the C++ codec.
    """

    def __init__(self, message: str, code: str = "INVALID_ARGUMENT"):
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Ref:
    """A reference to the value of an earlier node (by id) of the same request."""

    id: int


@dataclass
class BFloat16Array:
    """A bfloat16 tensor: ``bits`` holds each element's 16 bits as uint16."""

    bits: np.ndarray

    @property
    def shape(self):
        return self.bits.shape

    def to_float32(self) -> np.ndarray:
        return (self.bits.astype(np.uint32) << 16).view(np.float32)

    @classmethod
    def from_float32(cls, values) -> "BFloat16Array":
        """Rounds to nearest even, as the C++ codec does; NaN stays NaN."""
        f = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
        rounded = ((f.astype(np.uint64) + 0x7FFF + ((f >> 16) & 1)) >> 16).astype(np.uint16)
        nan = (f & 0x7FFFFFFF) > 0x7F800000
        rounded[nan] = ((f[nan] >> 16) | 0x40).astype(np.uint16)
        return cls(rounded)


Value = Any  # see the module docstring


@dataclass
class Node:
    id: int
    op: str
    args: List[Value] = field(default_factory=list)
    kwargs: Dict[str, Value] = field(default_factory=dict)
    source: str = ""


@dataclass
class Invoke:
    """One prompt of a batch: text or token ids (exactly one)."""

    prompt: Optional[str] = None
    ids: Optional[List[int]] = None


@dataclass
class GenerateOptions:
    max_new_tokens: int = 1
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0
    stop_ids: List[int] = field(default_factory=list)


@dataclass
class Trace:
    invokes: List[Invoke] = field(default_factory=list)
    nodes: List[Node] = field(default_factory=list)
    generate: Optional[GenerateOptions] = None  # None: one forward pass


@dataclass
class Request:
    model: str
    traces: List[Trace] = field(default_factory=list)
    scan: bool = False
    version: int = PROTOCOL_VERSION


@dataclass
class SavedValue:
    name: str
    node: int
    value: Value = None


@dataclass
class NodeShape:
    """A node's dtype and shape as a scan (dry run) found them; see SPEC.md section 7."""

    node: int
    dtype: str  # a tensor dtype, a plain value's kind ("int", "list", ...) or "unknown"
    shape: Optional[List[Optional[int]]] = None  # tensors only; None entries: unknown sizes
    step: int = 0
    name: str = ""  # cache nodes: the saved name of one cached point


@dataclass
class Result:
    saved: List[SavedValue] = field(default_factory=list)
    generated: List[List[int]] = field(default_factory=list)
    version: int = PROTOCOL_VERSION
    shapes: List[NodeShape] = field(default_factory=list)


@dataclass
class ErrorReport:
    code: str
    message: str
    node: Optional[int] = None
    source: str = ""
    version: int = PROTOCOL_VERSION


@dataclass
class DecodeLimits:
    """What a decoder accepts; the same names and defaults as the C++ DecodeLimits."""

    max_message_bytes: int = 256 << 20
    max_depth: int = 64
    max_items: int = 8 << 20
    max_nodes: int = 100000
    max_values: int = 1 << 20
    max_list_length: int = 1 << 20
    max_string_bytes: int = 1 << 20
    max_tensor_bytes: int = 256 << 20


class Envelope(NamedTuple):
    version: int
    type: str  # "request", "result" or "error"


Message = Union[Request, Result, ErrorReport]

# --------------------------------------------------------------------------------------------
# Encoding: plain Python structures in SPEC.md key order, then msgpack.packb.


def encode_request(request: Request) -> bytes:
    return _pack(request.version, "request", _request_body(request, _Msgpack))


def encode_result(result: Result) -> bytes:
    return _pack(result.version, "result", _result_body(result, _Msgpack))


def encode_error(error: ErrorReport) -> bytes:
    return _pack(error.version, "error", _error_body(error))


def _pack(version: int, kind: str, body: Any) -> bytes:
    return msgpack.packb({"glassbox": version, "type": kind, "body": body}, use_bin_type=True)


def _request_body(request: Request, form) -> dict:
    return {
        "model": _str(request.model),
        "traces": [_trace(t, form) for t in request.traces],
        "scan": bool(request.scan),
    }


def _result_body(result: Result, form) -> dict:
    body = {
        "saved": [
            {"name": _str(s.name), "node": _int(s.node), "value": form.value(s.value)}
            for s in result.saved
        ],
        "generated": [[_int(i) for i in ids] for ids in result.generated],
    }
    if result.shapes:
        body["shapes"] = [_node_shape(s) for s in result.shapes]
    return body


def _node_shape(shape: NodeShape) -> dict:
    out = {"node": _int(shape.node), "step": _int(shape.step)}
    if shape.name:
        out["name"] = _str(shape.name)
    out["dtype"] = _str(shape.dtype)
    out["shape"] = None if shape.shape is None else [
        None if d is None else _int(d) for d in shape.shape
    ]
    return out


def _error_body(error: ErrorReport) -> dict:
    body = {"code": _str(error.code), "message": _str(error.message)}
    if error.node is not None:
        body["node"] = _int(error.node)
    if error.source:
        body["source"] = _str(error.source)
    return body


def _trace(trace: Trace, form) -> dict:
    out: Dict[str, Any] = {"invokes": [_invoke(i) for i in trace.invokes]}
    if trace.generate is not None:
        g = trace.generate
        out["generate"] = {
            "max_new_tokens": _int(g.max_new_tokens),
            "temperature": float(g.temperature),
            "top_k": _int(g.top_k),
            "top_p": float(g.top_p),
            "seed": _uint(g.seed),
            "stop_ids": [_int(i) for i in g.stop_ids],
        }
    out["nodes"] = [_node(n, form) for n in trace.nodes]
    return out


def _invoke(invoke: Invoke) -> dict:
    out: Dict[str, Any] = {}
    if invoke.prompt is not None:
        out["prompt"] = _str(invoke.prompt)
    if invoke.ids is not None:
        out["ids"] = [_int(i) for i in invoke.ids]
    return out


def _node(node: Node, form) -> dict:
    out = {
        "id": _int(node.id),
        "op": _str(node.op),
        "args": [form.value(a) for a in node.args],
        # Sorted by UTF-8 bytes, as C++'s std::map orders them.
        "kwargs": {
            _str(k): form.value(node.kwargs[k])
            for k in sorted(node.kwargs, key=lambda k: k.encode("utf-8"))
        },
    }
    if node.source:
        out["source"] = _str(node.source)
    return out


def _int(v) -> int:
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
        raise WireError(f"expected an int, got {type(v).__name__}")
    v = int(v)
    if not _INT64_MIN <= v <= _INT64_MAX:
        raise WireError(f"integer {v} does not fit in int64")
    return v


def _uint(v) -> int:
    v = int(v)
    if not 0 <= v < 2**64:
        raise WireError(f"integer {v} does not fit in uint64")
    return v


def _str(v) -> str:
    if not isinstance(v, str):
        raise WireError(f"expected a string, got {type(v).__name__}")
    return v


def _scalar(v) -> Any:
    """numpy scalars travel as the Python scalars they stand for."""
    if isinstance(v, np.bool_):
        return bool(v)
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, np.floating):
        return float(v)
    return v


def _tensor_parts(v) -> tuple:
    """(dtype name, shape, little-endian row-major bytes) of a numpy array or BFloat16Array."""
    if isinstance(v, BFloat16Array):
        name, array = "bfloat16", np.asarray(v.bits, dtype=np.uint16)
    else:
        dtype = v.dtype.newbyteorder("<") if v.dtype.byteorder == ">" else v.dtype
        name = next((n for n, d in DTYPES.items() if n != "bfloat16" and dtype == d), None)
        if name is None:
            raise WireError(
                f"unsupported tensor dtype {v.dtype} (float32, float16, bfloat16 via "
                "BFloat16Array, int64, int32, bool, uint8)"
            )
        array = v
    data = np.ascontiguousarray(array, dtype=DTYPES[name]).tobytes()
    return name, [int(d) for d in array.shape], data


class _Msgpack:
    """Value encoding for msgpack."""

    @staticmethod
    def value(v) -> Any:
        v = _scalar(v)
        if v is None or isinstance(v, (bool, float, str)):
            return v
        if isinstance(v, int):
            return _int(v)
        if isinstance(v, (list, tuple)):
            return [_Msgpack.value(x) for x in v]
        if isinstance(v, Ref):
            return {"ref": _int(v.id)}
        if isinstance(v, slice):
            return {"slice": [None if p is None else _int(p) for p in (v.start, v.stop, v.step)]}
        if v is Ellipsis:
            return {"ellipsis": True}
        if isinstance(v, (np.ndarray, BFloat16Array)):
            name, shape, data = _tensor_parts(v)
            return {"tensor": {"dtype": name, "shape": shape, "data": data}}
        raise WireError(f"cannot encode a {type(v).__name__} as a Glassbox value")


# --------------------------------------------------------------------------------------------
# Decoding.


def decode_request(data: bytes, limits: Optional[DecodeLimits] = None) -> Request:
    reader = _Reader(limits, json=False)
    return reader.request(_unpack(data, reader.limits))


def decode_result(data: bytes, limits: Optional[DecodeLimits] = None) -> Result:
    reader = _Reader(limits, json=False)
    return reader.result(_unpack(data, reader.limits))


def decode_error(data: bytes, limits: Optional[DecodeLimits] = None) -> ErrorReport:
    """Decodes an error report of any protocol version."""
    reader = _Reader(limits, json=False)
    return reader.error(_unpack(data, reader.limits))


def peek_envelope(data: bytes, limits: Optional[DecodeLimits] = None) -> Envelope:
    """The version and type of a well-formed message; the version is not judged."""
    reader = _Reader(limits, json=False)
    version, type_name, _ = reader.open(_unpack(data, reader.limits))
    reader.check_known_type(version, type_name)
    return Envelope(version, type_name)


def decode_message(data: bytes, limits: Optional[DecodeLimits] = None) -> Message:
    """A request, result or error report, whichever the message is."""
    kind = peek_envelope(data, limits).type
    decode = {"request": decode_request, "result": decode_result, "error": decode_error}[kind]
    return decode(data, limits)


class _Map(list):
    """A msgpack map as its list of (key, value) pairs, so repeated keys can be caught."""


def _unpack(data: bytes, limits: DecodeLimits) -> Any:
    data = bytes(data)
    _check_bounds(data, limits)  # after this, every size claim is backed by real bytes
    try:
        return msgpack.unpackb(
            data,
            raw=False,
            use_list=True,
            strict_map_key=False,
            object_pairs_hook=_Map,
            max_str_len=limits.max_string_bytes,
            max_bin_len=limits.max_tensor_bytes,
            max_array_len=limits.max_list_length,
            max_map_len=limits.max_list_length,
            max_ext_len=0,
        )
    except UnicodeDecodeError:
        raise WireError("a string is not valid UTF-8") from None
    except Exception as e:  # msgpack raises several types; none may escape as-is
        raise WireError(f"malformed msgpack: {e}") from None


# Header byte -> (kind, size of the length or value field) for the non-fix formats.
_HEADERS = {
    0xC0: ("scalar", 0), 0xC2: ("scalar", 0), 0xC3: ("scalar", 0),
    0xC4: ("bin", 1), 0xC5: ("bin", 2), 0xC6: ("bin", 4),
    0xC7: ("ext", 1), 0xC8: ("ext", 2), 0xC9: ("ext", 4),
    0xCA: ("scalar", 4), 0xCB: ("scalar", 8),
    0xCC: ("scalar", 1), 0xCD: ("scalar", 2), 0xCE: ("scalar", 4), 0xCF: ("scalar", 8),
    0xD0: ("scalar", 1), 0xD1: ("scalar", 2), 0xD2: ("scalar", 4), 0xD3: ("scalar", 8),
    0xD4: ("ext", 0), 0xD5: ("ext", 0), 0xD6: ("ext", 0), 0xD7: ("ext", 0), 0xD8: ("ext", 0),
    0xD9: ("str", 1), 0xDA: ("str", 2), 0xDB: ("str", 4),
    0xDC: ("array", 2), 0xDD: ("array", 4), 0xDE: ("map", 2), 0xDF: ("map", 4),
}  # fmt: skip


def _check_bounds(data: bytes, limits: DecodeLimits) -> None:
    """Walks the msgpack headers without building anything: one complete item, within limits.

    msgpack.unpackb allocates a list of the claimed size before reading its elements; this
    walk makes sure every claim is backed by bytes that are really there.
    """
    if len(data) > limits.max_message_bytes:
        raise WireError(
            f"message of {len(data)} bytes is over the limit of {limits.max_message_bytes}",
            "RESOURCE_EXHAUSTED",
        )
    if not data:
        raise WireError("empty message")
    pos, items, remaining = 0, 0, [1]  # remaining: items still due in each open container
    while remaining:
        if remaining[-1] == 0:
            remaining.pop()
            continue
        remaining[-1] -= 1
        if pos >= len(data):
            raise WireError("truncated message (it ends inside an item)")
        b = data[pos]
        pos += 1
        items += 1
        if items > limits.max_items:
            raise WireError(
                f"more than {limits.max_items} msgpack items in one message (the limit)",
                "RESOURCE_EXHAUSTED",
            )
        if b <= 0x7F or b >= 0xE0:
            continue
        if 0x80 <= b <= 0x9F:
            kind, size = ("map" if b <= 0x8F else "array"), b & 0x0F
        elif 0xA0 <= b <= 0xBF:
            kind, size = "str", b & 0x1F
        elif b in _HEADERS:
            kind, width = _HEADERS[b]
            if pos + width > len(data):
                raise WireError("truncated message (it ends inside an item)")
            if kind == "ext":
                raise WireError("msgpack ext types are not part of the protocol")
            size = int.from_bytes(data[pos : pos + width], "big")
            pos += width
            if kind == "scalar":
                continue
        else:
            raise WireError(f"malformed msgpack: invalid byte at offset {pos - 1}")
        if kind in ("str", "bin"):
            limit = limits.max_string_bytes if kind == "str" else limits.max_tensor_bytes
            if size > limit:
                what = "a string" if kind == "str" else "binary data"
                raise WireError(
                    f"{what} of {size} bytes is over the limit of {limit}", "RESOURCE_EXHAUSTED"
                )
            pos += size
            continue
        if len(remaining) > limits.max_depth:
            raise WireError(
                f"nested deeper than {limits.max_depth} levels (the limit)", "RESOURCE_EXHAUSTED"
            )
        if size > limits.max_list_length:
            noun = "a map of {} entries" if kind == "map" else "a list of {} elements"
            raise WireError(
                noun.format(size) + f" is over the limit of {limits.max_list_length}",
                "RESOURCE_EXHAUSTED",
            )
        remaining.append(size * 2 if kind == "map" else size)
    if pos > len(data):
        raise WireError("truncated message (it ends inside an item)")
    if pos != len(data):
        raise WireError(f"trailing bytes: the message ends at offset {pos} of {len(data)}")


def _version_mismatch(expected: str, theirs: int) -> str:
    """The text every Glassbox peer gives for a request or result of another version."""
    server = expected == "request"
    peer, self_ = ("client", "server") if server else ("server", "client")
    text = (
        f"{peer} speaks protocol {theirs}, this {self_} speaks protocol {PROTOCOL_VERSION}; "
    )
    upgrade_client = theirs < PROTOCOL_VERSION if server else theirs > PROTOCOL_VERSION
    if upgrade_client:
        return text + "upgrade the client: pip install --upgrade glassbox"
    client_version = PROTOCOL_VERSION if server else theirs
    return (
        text + f"upgrade the server, or install a glassbox client that speaks protocol "
        f"{client_version}"
    )


class _Path:
    """A position in a message, spelled like the C++ decoder's paths."""

    __slots__ = ("parent", "part", "depth")

    def __init__(self, parent: Optional["_Path"] = None, part: Any = None):
        self.parent, self.part = parent, part
        self.depth = 0 if parent is None else parent.depth + 1

    def __truediv__(self, part) -> "_Path":
        return _Path(self, part)

    def __str__(self) -> str:
        parts, p = [], self
        while p.parent is not None:
            parts.append(p.part)
            p = p.parent
        out = ""
        for part in reversed(parts):
            if isinstance(part, int):
                out += f"[{part}]"
            else:
                part = part if len(part) <= 64 else part[:64] + "..."
                out += ("." if out else "") + part
        return out or "message"


def _kind(v) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int):
        return "int"
    if isinstance(v, float):
        return "float"
    if isinstance(v, str):
        return "string"
    if isinstance(v, (bytes, bytearray)):
        return "binary"
    if isinstance(v, (_Map, dict)):
        return "map"
    if isinstance(v, list):
        return "list"
    return "ext"


def _quote(s: str) -> str:
    return '"' + (s if len(s) <= 64 else s[:64] + "...") + '"'


class _Reader:
    """Reads one message from its unpacked msgpack form or its JSON form (``json=True``)."""

    def __init__(self, limits: Optional[DecodeLimits], json: bool):
        self.limits = limits or DecodeLimits()
        self.json = json
        self.nodes = 0
        self.values = 0
        self.root = _Path()

    # Envelope ---------------------------------------------------------------------------

    def open(self, root) -> tuple:
        if not isinstance(root, (_Map, dict)):
            raise WireError(f"message: not a Glassbox message: expected a map, got {_kind(root)}")
        f = self.fields(root, self.root, "a map", ("glassbox", "type", "body"))
        if f["glassbox"] is _MISSING:
            raise WireError('message: not a Glassbox message: no "glassbox" version key')
        self.require(f, self.root, "type")
        version = self.int(f["glassbox"], self.root / "glassbox")
        type_name = self.string(f["type"], self.root / "type")
        return version, type_name, f["body"]

    def check_known_type(self, version: int, type_name: str) -> None:
        if type_name not in ("request", "result", "error"):
            raise WireError(
                f"type: unknown message type {_quote(type_name)} (protocol {version})"
            )

    def expect(self, root, expected: str):
        version, type_name, body = self.open(root)
        if type_name != "error" and version != PROTOCOL_VERSION:
            raise WireError(_version_mismatch(expected, version))
        self.check_known_type(version, type_name)
        if type_name != expected:
            self.wrong_type(expected, type_name)
        if body is _MISSING:
            raise WireError('message: missing key "body"')
        return body

    @staticmethod
    def wrong_type(expected: str, got: str):
        def spell(t):
            return ("an " if t == "error" else "a ") + t + " message"

        raise WireError(f"type: expected {spell(expected)}, got {spell(got)}")

    # Messages ---------------------------------------------------------------------------

    def request(self, root) -> Request:
        body = self.expect(root, "request")
        path = self.root / "body"
        f = self.fields(body, path, "a request body map", ("model", "traces", "scan"))
        self.require(f, path, "model", "traces")
        request = Request(model=self.string(f["model"], path / "model"))
        request.traces = [
            self.trace(t, path / "traces" / i)
            for i, t in enumerate(self.list(f["traces"], path / "traces", "a list of traces"))
        ]
        if f["scan"] is not _MISSING:
            request.scan = self.bool(f["scan"], path / "scan")
        return request

    def result(self, root) -> Result:
        body = self.expect(root, "result")
        path = self.root / "body"
        f = self.fields(body, path, "a result body map", ("saved", "generated", "shapes"))
        self.require(f, path, "saved", "generated")
        saved = self.list(f["saved"], path / "saved", "a list of saved values")
        generated = self.list(f["generated"], path / "generated", "a list of token id lists")
        result = Result(
            saved=[self.saved(s, path / "saved" / i) for i, s in enumerate(saved)],
            generated=[self.int_list(g, path / "generated" / i) for i, g in enumerate(generated)],
        )
        if f["shapes"] is not _MISSING:
            shapes = self.list(f["shapes"], path / "shapes", "a list of node shapes")
            result.shapes = [self.node_shape(s, path / "shapes" / i) for i, s in enumerate(shapes)]
        return result

    def error(self, root) -> ErrorReport:
        version, type_name, body = self.open(root)
        self.check_known_type(version, type_name)
        if type_name != "error":
            self.wrong_type("error", type_name)
        if body is _MISSING:
            raise WireError('message: missing key "body"')
        path = self.root / "body"
        f = self.fields(body, path, "an error body map", ("code", "message", "node", "source"))
        self.require(f, path, "code", "message")
        error = ErrorReport(
            code=self.string(f["code"], path / "code"),
            message=self.string(f["message"], path / "message"),
            version=version,
        )
        if f["node"] is not _MISSING and f["node"] is not None:
            error.node = self.int(f["node"], path / "node")
        if f["source"] is not _MISSING:
            error.source = self.string(f["source"], path / "source")
        return error

    # Structures -------------------------------------------------------------------------

    def trace(self, item, path: _Path) -> Trace:
        f = self.fields(item, path, "a trace map", ("invokes", "generate", "nodes"))
        self.require(f, path, "invokes", "nodes")
        invokes = self.list(f["invokes"], path / "invokes", "a list of invokes")
        trace = Trace(invokes=[self.invoke(x, path / "invokes" / i) for i, x in enumerate(invokes)])
        if f["generate"] is not _MISSING and f["generate"] is not None:
            trace.generate = self.generate(f["generate"], path / "generate")
        for i, x in enumerate(self.list(f["nodes"], path / "nodes", "a list of nodes")):
            self.nodes += 1
            if self.nodes > self.limits.max_nodes:
                raise WireError(
                    f"{path / 'nodes' / i}: more than {self.limits.max_nodes} nodes in one "
                    "request (the limit)",
                    "RESOURCE_EXHAUSTED",
                )
            trace.nodes.append(self.node(x, path / "nodes" / i))
        return trace

    def invoke(self, item, path: _Path) -> Invoke:
        f = self.fields(item, path, "an invoke map", ("prompt", "ids"))
        if (f["prompt"] is _MISSING) == (f["ids"] is _MISSING):
            raise WireError(f'{path}: an invoke needs exactly one of "prompt" or "ids"')
        invoke = Invoke()
        if f["prompt"] is not _MISSING:
            invoke.prompt = self.string(f["prompt"], path / "prompt")
        if f["ids"] is not _MISSING:
            invoke.ids = self.int_list(f["ids"], path / "ids")
        return invoke

    def generate(self, item, path: _Path) -> GenerateOptions:
        names = ("max_new_tokens", "temperature", "top_k", "top_p", "seed", "stop_ids")
        f = self.fields(item, path, "a generate options map", names)
        g = GenerateOptions()
        read = {
            "max_new_tokens": self.int,
            "temperature": self.float,
            "top_k": self.int,
            "top_p": self.float,
            "seed": self.uint,
            "stop_ids": self.int_list,
        }
        for name in names:
            if f[name] is not _MISSING:
                setattr(g, name, read[name](f[name], path / name))
        return g

    def node(self, item, path: _Path) -> Node:
        f = self.fields(item, path, "a node map", ("id", "op", "args", "kwargs", "source"))
        self.require(f, path, "id", "op")
        node = Node(id=self.int(f["id"], path / "id"), op=self.string(f["op"], path / "op"))
        if f["args"] is not _MISSING:
            args = self.list(f["args"], path / "args", "a list of arguments")
            node.args = [self.value(a, path / "args" / i) for i, a in enumerate(args)]
        if f["kwargs"] is not _MISSING:
            node.kwargs = self.kwargs(f["kwargs"], path / "kwargs")
        if f["source"] is not _MISSING:
            node.source = self.string(f["source"], path / "source")
        return node

    def kwargs(self, item, path: _Path) -> dict:
        if not isinstance(item, (_Map, dict)):
            raise WireError(f"{path}: expected a map of keyword arguments, got {_kind(item)}")
        self.check_length(len(item), path, "a map of {} entries")
        out: Dict[str, Value] = {}
        for key, value in self.pairs(item, path):
            v = self.value(value, path / key)
            if key in out:
                raise WireError(f"{path}: duplicate keyword {_quote(key)}")
            out[key] = v
        return out

    def saved(self, item, path: _Path) -> SavedValue:
        f = self.fields(item, path, "a saved value map", ("name", "node", "value"))
        self.require(f, path, "name", "node", "value")
        return SavedValue(
            name=self.string(f["name"], path / "name"),
            node=self.int(f["node"], path / "node"),
            value=self.value(f["value"], path / "value"),
        )

    def node_shape(self, item, path: _Path) -> NodeShape:
        f = self.fields(item, path, "a node shape map", ("node", "step", "name", "dtype", "shape"))
        self.require(f, path, "node", "dtype")
        shape = NodeShape(node=self.int(f["node"], path / "node"),
                          dtype=self.string(f["dtype"], path / "dtype"))
        if f["step"] is not _MISSING:
            shape.step = self.int(f["step"], path / "step")
        if f["name"] is not _MISSING:
            shape.name = self.string(f["name"], path / "name")
        if f["shape"] is not _MISSING and f["shape"] is not None:
            sizes = self.list(f["shape"], path / "shape", "a list of sizes")
            shape.shape = [
                None if d is None else self.int(d, path / "shape" / i) for i, d in enumerate(sizes)
            ]
        return shape

    # Values -----------------------------------------------------------------------------

    def value(self, item, path: _Path) -> Value:
        self.values += 1
        if self.values > self.limits.max_values:
            raise WireError(
                f"{path}: more than {self.limits.max_values} values in one message (the limit)",
                "RESOURCE_EXHAUSTED",
            )
        kind = self.kind(item)
        if kind in ("list", "map") and path.depth + 1 > self.limits.max_depth:
            raise WireError(
                f"{path}: nested deeper than {self.limits.max_depth} levels (the limit)",
                "RESOURCE_EXHAUSTED",
            )
        if kind in ("null", "bool"):
            return item
        if kind == "float":
            return _to_float(item)
        if kind == "int":
            return self.int(item, path)
        if kind == "string":
            return self.string(item, path)
        if kind == "list":
            self.list(item, path, "a list")
            return [self.value(x, path / i) for i, x in enumerate(item)]
        if kind == "map":
            return self.tagged(item, path)
        raise WireError(
            f"{path}: expected a value (null, bool, int, float, string, list, or a map tagged "
            f'"ref", "slice", "ellipsis" or "tensor"), got {kind}'
        )

    def tagged(self, item, path: _Path) -> Value:
        if len(item) != 1:
            raise WireError(
                f'{path}: expected a value map with one key ("ref", "slice", "ellipsis" or '
                f'"tensor"), got a map with {len(item)} keys'
            )
        ((tag, inner),) = self.pairs(item, path)
        inner_path = path / tag
        if tag == "ref":
            return Ref(self.int(inner, inner_path))
        if tag == "slice":
            if not isinstance(inner, list) or isinstance(inner, _Map) or len(inner) != 3:
                raise WireError(
                    f"{inner_path}: expected a list [start, stop, step] of ints or nulls, "
                    f"got {_kind(inner)}"
                )
            parts = [None if p is None else self.int(p, inner_path / i) for i, p in enumerate(inner)]
            return slice(*parts)
        if tag == "ellipsis":
            if inner is not True:
                raise WireError(f"{inner_path}: expected true")
            return Ellipsis
        if tag == "tensor":
            return self.tensor(inner, inner_path)
        if self.json and tag == "float":
            special = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}
            if not isinstance(inner, str) or inner not in special:
                raise WireError(f'{inner_path}: expected "nan", "inf" or "-inf"')
            return special[inner]
        raise WireError(
            f'{path}: unknown value kind {_quote(tag)} (expected "ref", "slice", "ellipsis" '
            'or "tensor")'
        )

    def tensor(self, item, path: _Path):
        names = ("dtype", "shape", "data", "data_base64")
        f = self.fields(item, path, "a tensor map", names)
        self.require(f, path, "dtype", "shape")
        name = self.string(f["dtype"], path / "dtype")
        if name not in DTYPES:
            raise WireError(
                f"{path / 'dtype'}: unknown dtype {_quote(name)} (expected float32, float16, "
                "bfloat16, int64, int32, bool or uint8)"
            )
        shape = self.int_list(f["shape"], path / "shape")
        numel = 1
        for i, d in enumerate(shape):
            if d < 0:
                raise WireError(f"{path / 'shape' / i}: dimension {d} is negative")
            numel *= d
        itemsize = DTYPES[name].itemsize
        if numel > _INT64_MAX or numel * itemsize > min(self.limits.max_tensor_bytes, _INT64_MAX):
            raise WireError(
                f"{path / 'shape'}: a tensor of shape {_shape_str(shape)} of {name} is over "
                f"the limit of {self.limits.max_tensor_bytes} bytes",
                "RESOURCE_EXHAUSTED",
            )
        data = self.tensor_bytes(f, name, numel, path)
        if len(data) != numel * itemsize:
            raise WireError(
                f"{path / 'data'}: holds {len(data)} bytes, but shape {_shape_str(shape)} of "
                f"{name} needs {numel * itemsize}"
            )
        if name == "bool" and data:
            raw = np.frombuffer(data, np.uint8)
            bad = np.flatnonzero(raw > 1)
            if bad.size:
                i = int(bad[0])
                raise WireError(
                    f"{path / 'data'}: bool element {i} is {raw[i]}; bool elements must be 0 or 1"
                )
        array = np.frombuffer(data, DTYPES[name]).reshape(shape).copy()
        return BFloat16Array(array) if name == "bfloat16" else array

    def tensor_bytes(self, f, name: str, numel: int, path: _Path) -> bytes:
        if not self.json:
            if f["data"] is _MISSING:
                raise WireError(f'{path}: missing key "data"')
            if not isinstance(f["data"], bytes):
                raise WireError(f"{path / 'data'}: expected binary data, got {_kind(f['data'])}")
            return f["data"]
        if (f["data"] is _MISSING) == (f["data_base64"] is _MISSING):
            raise WireError(f'{path}: a tensor needs exactly one of "data" or "data_base64"')
        if f["data_base64"] is not _MISSING:
            text = f["data_base64"]
            if not isinstance(text, str):
                raise WireError(f"{path / 'data_base64'}: expected a base64 string")
            try:
                if len(text) % 4:
                    raise ValueError
                return base64.b64decode(text, validate=True)
            except ValueError:
                raise WireError(
                    f"{path / 'data_base64'}: not valid base64 (standard alphabet, padded)"
                ) from None
        return _json_elements(f["data"], name, numel, path / "data")

    # Scalars and containers -------------------------------------------------------------

    def fields(self, item, path: _Path, what: str, names: tuple) -> dict:
        """The entries of a map a structure knows; unknown keys are skipped."""
        if not isinstance(item, (_Map, dict)):
            raise WireError(f"{path}: expected {what}, got {_kind(item)}")
        found = dict.fromkeys(names, _MISSING)
        for key, value in self.pairs(item, path):
            if key in found:
                if found[key] is not _MISSING:
                    raise WireError(f"{path}: duplicate key {_quote(key)}")
                found[key] = value
        return found

    @staticmethod
    def pairs(item, path: _Path):
        pairs = item if isinstance(item, _Map) else item.items()
        for key, value in pairs:
            if not isinstance(key, str):
                raise WireError(f"{path}: map keys must be strings, got {_kind(key)}")
            yield key, value

    @staticmethod
    def require(f: dict, path: _Path, *names: str) -> None:
        for name in names:
            if f[name] is _MISSING:
                raise WireError(f'{path}: missing key "{name}"')

    def check_length(self, n: int, path: _Path, noun: str) -> None:
        if n > self.limits.max_list_length:
            raise WireError(
                f"{path}: {noun.format(n)} is over the limit of {self.limits.max_list_length}",
                "RESOURCE_EXHAUSTED",
            )

    def list(self, item, path: _Path, what: str) -> list:
        if not isinstance(item, list) or isinstance(item, _Map):
            raise WireError(f"{path}: expected {what}, got {_kind(item)}")
        self.check_length(len(item), path, "a list of {} elements")
        return item

    def kind(self, item) -> str:
        """As _kind; but JSON integers beyond int64 and uint64 are floats, as nlohmann reads
        them, so that both implementations accept the same documents."""
        kind = _kind(item)
        if self.json and kind == "int" and not _INT64_MIN <= item < 2**64:
            return "float"
        return kind

    def int(self, item, path: _Path) -> int:
        if self.kind(item) != "int":
            raise WireError(f"{path}: expected an int, got {self.kind(item)}")
        if not _INT64_MIN <= item <= _INT64_MAX:
            raise WireError(f"{path}: integer {item} does not fit in int64")
        return item

    def uint(self, item, path: _Path) -> int:
        if self.kind(item) != "int":
            raise WireError(f"{path}: expected a non-negative int, got {self.kind(item)}")
        if item < 0:
            raise WireError(f"{path}: expected a non-negative int, got a negative one")
        return item

    def float(self, item, path: _Path) -> float:
        if _kind(item) not in ("int", "float"):
            raise WireError(f"{path}: expected a float, got {_kind(item)}")
        return _to_float(item)

    def bool(self, item, path: _Path) -> bool:
        if not isinstance(item, bool):
            raise WireError(f"{path}: expected a bool, got {_kind(item)}")
        return item

    def string(self, item, path: _Path) -> str:
        if not isinstance(item, str):
            raise WireError(f"{path}: expected a string, got {_kind(item)}")
        n = len(item.encode("utf-8", "surrogatepass"))
        if n > self.limits.max_string_bytes:
            raise WireError(
                f"{path}: a string of {n} bytes is over the limit of "
                f"{self.limits.max_string_bytes}",
                "RESOURCE_EXHAUSTED",
            )
        try:
            item.encode("utf-8")
        except UnicodeEncodeError:
            raise WireError(f"{path}: string is not valid UTF-8") from None
        return item

    def int_list(self, item, path: _Path) -> List[int]:
        return [self.int(x, path / i) for i, x in enumerate(self.list(item, path, "a list of ints"))]


_MISSING = object()


def _to_float(x) -> float:
    """A JSON number as a double; integers too large for one become infinities, as in C++."""
    try:
        return float(x)
    except OverflowError:
        return math.copysign(math.inf, x)


def _shape_str(shape) -> str:
    dims = [str(d) for d in shape[:8]] + (["..."] if len(shape) > 8 else [])
    return "[" + ", ".join(dims) + "]"


# --------------------------------------------------------------------------------------------
# The JSON mirror: the same envelope and structure as dicts and lists for the json module.
# Tensors carry a flat row-major list of numbers ("nan", "inf", "-inf" strings for non-finite
# floats, true/false for bool); a non-finite float value is {"float": "nan" | "inf" | "-inf"}.


def request_to_json(request: Request) -> dict:
    return _envelope(request.version, "request", _request_body(request, _Json))


def result_to_json(result: Result) -> dict:
    return _envelope(result.version, "result", _result_body(result, _Json))


def error_to_json(error: ErrorReport) -> dict:
    return _envelope(error.version, "error", _error_body(error))


def request_from_json(obj, limits: Optional[DecodeLimits] = None) -> Request:
    return _Reader(limits, json=True).request(obj)


def result_from_json(obj, limits: Optional[DecodeLimits] = None) -> Result:
    return _Reader(limits, json=True).result(obj)


def error_from_json(obj, limits: Optional[DecodeLimits] = None) -> ErrorReport:
    return _Reader(limits, json=True).error(obj)


def _envelope(version: int, kind: str, body: Any) -> dict:
    return {"glassbox": version, "type": kind, "body": body}


def _json_float(x: float):
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return x


class _Json:
    """Value encoding for JSON."""

    @staticmethod
    def value(v) -> Any:
        v = _scalar(v)
        if isinstance(v, float):
            return v if math.isfinite(v) else {"float": _json_float(v)}
        if isinstance(v, (list, tuple)):
            return [_Json.value(x) for x in v]
        if isinstance(v, (np.ndarray, BFloat16Array)):
            name, shape, _ = _tensor_parts(v)
            return {"tensor": {"dtype": name, "shape": shape, "data": _to_json_elements(v, name)}}
        return _Msgpack.value(v)


def _to_json_elements(v, name: str) -> list:
    if name == "bfloat16":
        return [_json_float(x) for x in v.to_float32().astype(np.float64).ravel().tolist()]
    flat = np.asarray(v).ravel()
    if name in ("float32", "float16"):
        return [_json_float(x) for x in flat.astype(np.float64).tolist()]
    return flat.tolist()  # ints, or bools for bool


def _json_elements(data, name: str, numel: int, path: _Path) -> bytes:
    """Element bytes from a JSON list. Numbers reach float16 and bfloat16 through float32,
    rounding to nearest even at each step, exactly as the C++ codec does."""
    if not isinstance(data, list):
        raise WireError(f"{path}: expected a list of numbers")
    if len(data) != numel:
        raise WireError(f"{path}: has {len(data)} elements, but the shape needs {numel}")
    if name in ("float32", "float16", "bfloat16"):
        special = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}
        values = []
        for i, e in enumerate(data):
            if _kind(e) in ("int", "float"):
                values.append(_to_float(e))
            elif isinstance(e, str) and e in special:
                values.append(special[e])
            else:
                raise WireError(f'{path / i}: expected a number (or "nan", "inf", "-inf")')
        with np.errstate(over="ignore", invalid="ignore"):  # too large: infinity, as in C++
            f32 = np.array(values, dtype=np.float64).astype(np.float32)
            if name == "bfloat16":
                return BFloat16Array.from_float32(f32).bits.astype("<u2").tobytes()
            return f32.astype(DTYPES[name]).tobytes()
    if name == "bool":
        for i, e in enumerate(data):
            if not isinstance(e, bool):
                raise WireError(f"{path / i}: expected true or false")
        return np.array(data, dtype=bool).tobytes()
    bounds = {"int64": (_INT64_MIN, _INT64_MAX), "int32": (-(2**31), 2**31 - 1), "uint8": (0, 255)}
    low, high = bounds[name]
    for i, e in enumerate(data):
        if _kind(e) != "int":
            raise WireError(f"{path / i}: expected an int")
        if not low <= e <= high:
            raise WireError(f"{path / i}: integer does not fit in {name}")
    return np.array(data, dtype=DTYPES[name]).tobytes()
