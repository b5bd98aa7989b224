"""The broker messages of protocol/SPEC.md §9 in Python: the twin of protocol/broker_messages.cc.

Clients, the broker and engine workers exchange these in the envelope of every Glassbox
message, ``{"glassbox": 1, "type": <type>, "body": {...}}``; requests and results travel
inside them as opaque ``bytes`` (already-encoded messages of §6 and §7).

One table (``FIELDS``) lists, per message type, the body keys in encoding order and which
are required; the encoder and the decoder both read it, as in the C++ codec. A
``BrokerMessage`` carries every type: absent optional fields are ``""``, ``None`` or empty
and are not encoded. Decoding is strict like ``_wire``: it reuses that module's bounds
check, envelope reader and scalar readers, and raises ``WireError`` naming the key
(``body.job: expected a string, got int``); ``code`` is "RESOURCE_EXHAUSTED" over a limit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from . import _wire as wire
from ._wire import WireError

# type -> ((key, required), ...) in encoding order (SPEC.md §9.2).
FIELDS: Dict[str, Tuple[Tuple[str, bool], ...]] = {
    "submit": (("api_key", False), ("ref", False), ("request", True)),
    "query": (("api_key", False), ("ref", False), ("job", True)),
    "fetch": (("api_key", False), ("ref", False), ("job", True), ("index", True)),
    "cancel": (("api_key", False), ("ref", False), ("job", True), ("reason", False)),
    "list_models": (("api_key", False), ("ref", False)),
    "tokenize": (("api_key", False), ("ref", False), ("model", True), ("text", True)),
    "ack": (("ref", False), ("job", True), ("time_ms", True)),
    "status": (("ref", False), ("job", True), ("state", True), ("time_ms", True),
               ("position", False), ("code", False), ("message", False), ("count", False),
               ("total_bytes", False), ("batch", False)),
    "result_chunk": (("ref", False), ("job", True), ("index", True), ("count", True),
                     ("total_bytes", True), ("data", True)),
    "models": (("ref", False), ("models", True)),
    "tokens": (("ref", False), ("data", True)),
    "error": (("code", True), ("message", True), ("ref", False), ("job", False)),
    "heartbeat": (),
    "disconnect": (("reason", False),),
    "ready": (("model", True), ("catalogue", True), ("heartbeat_ms", False), ("job", False),
              ("group", False)),
    "job_result": (("job", True), ("index", True), ("count", True), ("data", True),
                   ("code", False), ("message", False)),
    "job": (("job", True), ("request", True), ("time_limit_ms", True), ("attempts", False)),
    "running": (("job", True), ("batch", True)),
}  # fmt: skip

STRING_KEYS = ("api_key", "ref", "job", "model", "catalogue", "code", "message", "reason",
               "text", "group")
INT_KEYS = ("time_ms", "position", "index", "count", "total_bytes", "heartbeat_ms",
            "time_limit_ms", "batch", "attempts")
PAYLOAD_KEYS = ("request", "data")  # both are BrokerMessage.payload

JOB_STATES = ("RECEIVED", "QUEUED", "RUNNING", "COMPLETED", "ERROR", "CANCELLED", "EXPIRED")
TERMINAL_STATES = frozenset(("COMPLETED", "ERROR", "CANCELLED", "EXPIRED"))


def is_terminal(state: Optional[str]) -> bool:
    """COMPLETED, ERROR, CANCELLED and EXPIRED: the job will not change again."""
    return state in TERMINAL_STATES


@dataclass
class ModelInfo:
    """One served model in a ``models`` reply; ``catalogue`` is the hook catalogue's JSON text."""

    name: str
    workers: int = 0  # worker processes
    queued: int = 0
    catalogue: str = ""
    running: int = 0  # jobs its workers run now
    slots: int = 0  # jobs its workers can take at once (their batch slots)


@dataclass
class BrokerMessage:
    """Any §9 message; each type uses the fields FIELDS lists for it (see the module docs)."""

    type: str
    api_key: str = ""
    ref: str = ""
    job: str = ""
    model: str = ""
    catalogue: str = ""
    state: Optional[str] = None
    code: str = ""
    message: str = ""
    reason: str = ""
    text: str = ""  # tokenize: the text to encode, as a trace's prompt is encoded
    group: str = ""  # ready: the worker process this connection is a batch slot of
    payload: bytes = b""  # "request" of submit / job, "data" of result_chunk / job_result / tokens
    time_ms: Optional[int] = None
    position: Optional[int] = None
    index: Optional[int] = None
    count: Optional[int] = None
    total_bytes: Optional[int] = None
    heartbeat_ms: Optional[int] = None
    time_limit_ms: Optional[int] = None
    batch: Optional[int] = None  # running; status: jobs sharing the job's engine pass
    attempts: Optional[int] = None  # job: earlier runs of it lost to dead workers
    models: List[ModelInfo] = field(default_factory=list)
    version: int = wire.PROTOCOL_VERSION


@dataclass
class BrokerDecodeLimits:
    """The C++ BrokerDecodeLimits: over one of them is RESOURCE_EXHAUSTED."""

    max_message_bytes: int = 320 << 20
    max_string_bytes: int = 16 << 20
    max_models: int = 10000


# --------------------------------------------------------------------------------------------
# Encoding.


def encode_broker_message(message: BrokerMessage) -> bytes:
    """The message's bytes, keys in SPEC.md §9 order. Required keys are always written (an
    empty string as itself, as the C++ encoder does); raises WireError for an unknown type or
    a required int that is not set (the C++ encoder asserts)."""
    if message.type not in FIELDS:
        raise WireError(f"cannot encode unknown broker message type {message.type!r}")
    body = {}
    for key, required in FIELDS[message.type]:
        value = _field_value(message, key)
        if required and key in INT_KEYS and not _present(key, value):
            raise WireError(f"a {message.type} message needs {key!r}")
        if required or _present(key, value):
            body[key] = value
    return wire._pack(message.version, message.type, body)


def _field_value(message: BrokerMessage, key: str):
    if key in PAYLOAD_KEYS:
        return bytes(message.payload)
    if key == "models":
        return [{"name": m.name, "workers": m.workers, "slots": m.slots, "running": m.running,
                 "queued": m.queued, "catalogue": m.catalogue} for m in message.models]
    return getattr(message, key)


def _present(key: str, value) -> bool:
    if key in PAYLOAD_KEYS or key == "models":
        return True  # written whenever the type has them, even empty
    if key in INT_KEYS:
        return value is not None and value >= 0
    return bool(value)


# --------------------------------------------------------------------------------------------
# Decoding.


def decode_broker_message(data: bytes,
                          limits: Optional[BrokerDecodeLimits] = None) -> BrokerMessage:
    """Decodes one broker message. Refused (WireError): bytes that are not one msgpack map,
    another protocol version (except ``error``, readable from any version), an unknown type,
    a known key of the wrong kind or a negative int, a missing required key. Unknown keys
    are skipped."""
    limits = limits or BrokerDecodeLimits()
    wire_limits = wire.DecodeLimits(
        max_message_bytes=limits.max_message_bytes, max_depth=4,
        max_list_length=limits.max_models, max_string_bytes=limits.max_string_bytes,
        max_tensor_bytes=limits.max_message_bytes)
    reader = wire._Reader(wire_limits, json=False)
    version, type_name, body = reader.open(wire._unpack(data, wire_limits))
    if type_name != "error" and version != wire.PROTOCOL_VERSION:
        raise WireError(f"peer speaks protocol {version}, this one speaks protocol "
                        f"{wire.PROTOCOL_VERSION}; upgrade the older side (client: pip install "
                        "--upgrade glassbox)")
    if type_name not in FIELDS:
        raise WireError(f"type: unknown message type {wire._quote(type_name)}")
    if body is wire._MISSING:
        raise WireError('message: missing key "body"')
    message = BrokerMessage(type=type_name, version=version)
    _read_body(reader, body, message)
    return message


def _read_body(reader, body, message: BrokerMessage) -> None:
    spec = FIELDS[message.type]
    path = reader.root / "body"
    found = reader.fields(body, path, "a map", tuple(key for key, _ in spec))
    for key, required in spec:
        value = found[key]
        if value is wire._MISSING:
            if required:
                raise WireError(f'body: missing key "{key}" (required in a {message.type} '
                                "message)")
            continue
        _read_field(reader, key, value, path / key, message)


def _read_field(reader, key: str, value, path, message: BrokerMessage) -> None:
    if key in STRING_KEYS:
        setattr(message, key, reader.string(value, path))
    elif key in INT_KEYS:
        setattr(message, key, _non_negative(value, path))
    elif key in PAYLOAD_KEYS:
        if not isinstance(value, (bytes, bytearray)):
            raise WireError(f"{path}: expected binary data, got {wire._kind(value)}")
        message.payload = bytes(value)
    elif key == "state":
        state = reader.string(value, path)
        if state not in JOB_STATES:
            raise WireError(f"{path}: unknown job state {wire._quote(state)}")
        message.state = state
    else:  # models
        items = reader.list(value, path, "a list of models")
        message.models = [_read_model(reader, item, path / i) for i, item in enumerate(items)]


def _non_negative(value, path) -> int:
    kind = wire._kind(value)
    if kind == "int" and value < 0:
        raise WireError(f"{path}: must not be negative, got {value}")
    if kind != "int":
        raise WireError(f"{path}: expected a non-negative int, got {kind}")
    if value > wire._INT64_MAX:
        raise WireError(f"{path}: integer does not fit in int64")
    return value


def _read_model(reader, item, path) -> ModelInfo:
    found = reader.fields(item, path, "a model map",
                          ("name", "workers", "slots", "running", "queued", "catalogue"))
    reader.require(found, path, "name")
    model = ModelInfo(name=reader.string(found["name"], path / "name"))
    for key in ("workers", "slots", "running", "queued"):
        if found[key] is not wire._MISSING:
            setattr(model, key, _non_negative(found[key], path / key))
    if found["catalogue"] is not wire._MISSING:
        model.catalogue = reader.string(found["catalogue"], path / "catalogue")
    return model
