"""The Python codec of the broker messages (protocol/SPEC.md §9, client/glassbox/_broker.py):
every type round-trips, encoding is deterministic and in the table's key order, and
malformed input is refused with an error naming the key (as protocol/broker_messages.cc)."""

import msgpack
import pytest

from glassbox import _broker as broker
from glassbox._broker import BrokerMessage, ModelInfo, WireError

JOB = "0123456789abcdef0123456789abcdef"

EXAMPLES = [
    BrokerMessage("submit", api_key="gbk_x", ref="r1", payload=b"\x81\xa1a\x01"),
    BrokerMessage("submit", payload=b""),
    BrokerMessage("query", api_key="k", job=JOB),
    BrokerMessage("fetch", ref="r", job=JOB, index=0),
    BrokerMessage("cancel", job=JOB, reason="because"),
    BrokerMessage("list_models", api_key="k", ref="r"),
    BrokerMessage("tokenize", api_key="k", ref="r", model="smollm2", text="The capital of"),
    BrokerMessage("tokens", ref="r", payload=(504).to_bytes(8, "little") * 2),
    BrokerMessage("ack", ref="r", job=JOB, time_ms=1795590391604),
    BrokerMessage("status", job=JOB, state="QUEUED", time_ms=5, position=0),
    BrokerMessage("status", ref="r", job=JOB, state="COMPLETED", time_ms=2**40, count=3,
                  total_bytes=3 << 20),
    BrokerMessage("status", job=JOB, state="ERROR", time_ms=1, code="INVALID_ARGUMENT",
                  message="node 3: no"),
    BrokerMessage("result_chunk", job=JOB, index=2, count=3, total_bytes=10,
                  payload=b"\x00" * 10),
    BrokerMessage("models", models=[ModelInfo("tiny", 2, 7, '{"hook_points": []}', running=1, slots=8),
                                    ModelInfo("empty")]),
    BrokerMessage("error", code="UNAUTHENTICATED", message="no API key", ref="r", job=JOB),
    BrokerMessage("heartbeat"),
    BrokerMessage("disconnect", reason="bye"),
    BrokerMessage("ready", model="tiny", catalogue="{}", heartbeat_ms=200),
    BrokerMessage("ready", model="tiny", catalogue="{}", group="node7:4242:0123456789abcdef"),
    BrokerMessage("job_result", job=JOB, index=0, count=1, payload=b"x", code="CANCELLED",
                  message="time limit"),
    BrokerMessage("job", job=JOB, payload=b"req", time_limit_ms=60000),
    BrokerMessage("running", job=JOB, batch=4),
    BrokerMessage("job", job=JOB, payload=b"req", time_limit_ms=1000, attempts=1),
    BrokerMessage("status", job=JOB, state="RUNNING", time_ms=9, batch=4),
]


@pytest.mark.parametrize("message", EXAMPLES, ids=lambda m: m.type)
def test_every_type_round_trips_byte_for_byte(message):
    data = broker.encode_broker_message(message)
    decoded = broker.decode_broker_message(data)
    assert decoded == message
    assert broker.encode_broker_message(decoded) == data


def test_keys_follow_the_table_and_absent_fields_are_left_out():
    data = broker.encode_broker_message(
        BrokerMessage("status", job=JOB, state="RUNNING", time_ms=7, code="", position=None))
    envelope = msgpack.unpackb(data)
    assert list(envelope) == ["glassbox", "type", "body"]
    assert list(envelope["body"]) == ["job", "state", "time_ms"]
    assert envelope["glassbox"] == 1 and envelope["type"] == "status"
    # smallest integer forms, as the C++ packer writes them
    assert data.endswith(b"\xa7time_ms\x07")


def test_required_strings_are_written_even_when_empty():
    body = msgpack.unpackb(broker.encode_broker_message(BrokerMessage("error", code="X")))["body"]
    assert body == {"code": "X", "message": ""}


def test_the_encoder_refuses_what_it_cannot_write():
    with pytest.raises(WireError, match="needs 'index'"):
        broker.encode_broker_message(BrokerMessage("fetch", job=JOB))
    with pytest.raises(WireError, match="unknown broker message type"):
        broker.encode_broker_message(BrokerMessage("gossip"))


def packed(type_name, body, version=1):
    return msgpack.packb({"glassbox": version, "type": type_name, "body": body},
                         use_bin_type=True)


@pytest.mark.parametrize("data, error", [
    (packed("fetch", {"job": JOB}), 'body: missing key "index" (required in a fetch message)'),
    (packed("query", {"job": 7}), "body.job: expected a string, got int"),
    (packed("fetch", {"job": JOB, "index": -1}), "body.index: must not be negative, got -1"),
    (packed("fetch", {"job": JOB, "index": 1.0}),
     "body.index: expected a non-negative int, got float"),
    (packed("submit", {"request": "text"}), "body.request: expected binary data, got string"),
    (packed("status", {"job": JOB, "state": "DONE", "time_ms": 1}),
     'body.state: unknown job state "DONE"'),
    (packed("models", {"models": [{"workers": 1}]}), 'body.models[0]: missing key "name"'),
    (packed("models", {"models": "tiny"}), "body.models: expected a list of models, got string"),
    (packed("gossip", {}), 'type: unknown message type "gossip"'),
    (packed("ack", {"job": JOB, "time_ms": 1}, version=2),
     "peer speaks protocol 2, this one speaks protocol 1"),
    (msgpack.packb({"glassbox": 1, "type": "heartbeat"}), 'message: missing key "body"'),
    (msgpack.packb([1, 2]), "not a Glassbox message: expected a map, got list"),
    (packed("heartbeat", {}) + b"\x00", "trailing bytes"),
    (packed("ack", {"job": JOB, "time_ms": 1})[:-3], "truncated message"),
    (b"", "empty message"),
    (b"\xc1", "invalid byte"),
])
def test_malformed_messages_are_refused_naming_the_key(data, error):
    with pytest.raises(WireError) as caught:
        broker.decode_broker_message(data)
    assert error in str(caught.value)
    assert caught.value.code == "INVALID_ARGUMENT"


def test_duplicate_keys_are_refused():
    body = b"\x82\xa3job\xa1a\xa3job\xa1b"  # {"job": "a", "job": "b"}
    data = b"\x83\xa8glassbox\x01\xa4type\xa5query\xa4body" + body
    with pytest.raises(WireError, match='body: duplicate key "job"'):
        broker.decode_broker_message(data)


def test_unknown_keys_are_skipped_and_errors_decode_from_any_version():
    message = broker.decode_broker_message(
        packed("query", {"job": JOB, "future_key": [1, 2]}))
    assert message.job == JOB
    error = broker.decode_broker_message(packed("error", {"code": "X", "message": "m"}, 9))
    assert (error.version, error.code) == (9, "X")


@pytest.mark.parametrize("data, limits", [
    (packed("submit", {"request": b"x" * 100}), broker.BrokerDecodeLimits(max_message_bytes=64)),
    (packed("models", {"models": [{"name": "a"}] * 3}), broker.BrokerDecodeLimits(max_models=2)),
    (packed("models", {"models": [{"name": "a", "catalogue": [[1]]}]}), None),  # depth 5
    (packed("ready", {"model": "m", "catalogue": "x" * 100}),
     broker.BrokerDecodeLimits(max_string_bytes=10)),
])
def test_limits_are_resource_exhausted(data, limits):
    with pytest.raises(WireError) as caught:
        broker.decode_broker_message(data, limits)
    assert caught.value.code == "RESOURCE_EXHAUSTED", str(caught.value)


def test_job_states():
    assert broker.is_terminal("EXPIRED") and not broker.is_terminal("RUNNING")
    assert broker.JOB_STATES[0] == "RECEIVED"
