"""The Python wire codec (client/glassbox/_wire.py) against the shared test vectors in
protocol/vectors/ and against hostile input, as tests/protocol/*_test.cc does for C++.

Run from the repository root: .venv/bin/python -m pytest tests/python -q
"""

import json
import math
import pathlib
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "client"))

from glassbox import wire  # noqa: E402

VECTORS = sorted((ROOT / "protocol" / "vectors").glob("*.json"))
CODECS = {
    "request": (wire.decode_request, wire.encode_request, wire.request_from_json,
                wire.request_to_json),
    "result": (wire.decode_result, wire.encode_result, wire.result_from_json,
               wire.result_to_json),
    "error": (wire.decode_error, wire.encode_error, wire.error_from_json, wire.error_to_json),
}


def canonical(obj) -> str:
    """JSON text with sorted keys: unlike ==, tells 3 from 3.0 and True from 1."""
    return json.dumps(obj, sort_keys=True, allow_nan=False)


def same(a, b) -> bool:
    """Structural equality for messages that may hold numpy arrays and NaNs."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.dtype == b.dtype
                and a.shape == b.shape and a.tobytes() == b.tobytes())
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if hasattr(a, "__dataclass_fields__"):
        return all(same(getattr(a, f), getattr(b, f)) for f in a.__dataclass_fields__)
    return a == b


def sample_request() -> wire.Request:
    return wire.Request(
        model="SmolLM2-135M-Instruct",
        traces=[
            wire.Trace(
                invokes=[wire.Invoke(prompt="The capital of France is"), wire.Invoke(ids=[1, 2])],
                nodes=[
                    wire.Node(1, "read", kwargs={"point": "model.layers.5.output"},
                              source="exp.py:3"),
                    wire.Node(2, "getitem", [wire.Ref(1), [..., slice(1, None, 2), None, -3]]),
                    wire.Node(3, "cat", [[True, False, -(2**63), 2**63 - 1, 3.0, -0.0, math.nan,
                                          -math.inf, "h\u00e9llo"]], {"dim": 0, "alpha": 0.5}),
                    wire.Node(4, "add", [
                        np.array([1.5, -2.0], dtype=np.float32),
                        np.array([1.0], dtype=np.float16),
                        wire.BFloat16Array(np.array([[0x3F80]], dtype=np.uint16)),
                        np.array(-5, dtype=np.int64),
                        np.zeros((0, 3), dtype=np.int32),
                        np.array([True, False, True]),
                        np.array([0, 255], dtype=np.uint8),
                    ]),
                ],
            ),
            wire.Trace(
                invokes=[wire.Invoke(prompt="Once upon a time")],
                generate=wire.GenerateOptions(max_new_tokens=5, temperature=0.7, top_k=40,
                                              top_p=0.9, seed=2**64 - 1, stop_ids=[2]),
                nodes=[wire.Node(5, "write", [wire.Ref(2)], {"point": "model.norm.output"}),
                       wire.Node(6, "save", [wire.Ref(5)], {"name": "out"})],
            ),
        ],
    )


def minimal_request() -> dict:
    return {"glassbox": 1, "type": "request", "body": {"model": "m", "scan": False, "traces": [{
        "invokes": [{"prompt": "x"}],
        "nodes": [{"id": 1, "op": "read", "args": [], "kwargs": {"point": "lm_head.output"}}],
    }]}}


def pack(obj) -> bytes:
    return wire.msgpack.packb(obj, use_bin_type=True)


def request_error(obj, limits=None) -> str:
    with pytest.raises(wire.WireError) as e:
        wire.decode_request(pack(obj), limits)
    return str(e.value)


# Vectors ---------------------------------------------------------------------------------


def test_there_are_vectors_of_every_kind():
    kinds = {json.loads(p.read_text())["kind"] for p in VECTORS}
    assert len(VECTORS) >= 8 and kinds == {"request", "result", "error"}


@pytest.mark.parametrize("path", VECTORS, ids=[p.stem for p in VECTORS])
def test_vector(path):
    vector = json.loads(path.read_text(encoding="utf-8"))
    decode, encode, from_json, to_json = CODECS[vector["kind"]]
    data = bytes.fromhex(vector["msgpack_hex"])
    if "error" in vector:
        with pytest.raises(wire.WireError) as e:
            decode(data)
        assert str(e.value) == vector["error"]
        with pytest.raises(wire.WireError) as e:
            from_json(vector["json"])
        assert str(e.value) == vector["error"]
        return
    decoded = decode(data)
    from_text = from_json(vector["json"])
    assert same(decoded, from_text)
    assert encode(decoded).hex() == vector["msgpack_hex"]
    assert encode(from_text).hex() == vector["msgpack_hex"]
    assert canonical(to_json(decoded)) == canonical(vector["json"])


@pytest.mark.parametrize("path", VECTORS, ids=[p.stem for p in VECTORS])
def test_every_truncation_of_a_vector_is_refused(path):
    data = bytes.fromhex(json.loads(path.read_text())["msgpack_hex"])
    for cut in range(len(data)):
        with pytest.raises(wire.WireError):
            wire.peek_envelope(data[:cut])


# Round trips -----------------------------------------------------------------------------


def test_request_round_trips_through_msgpack_and_json():
    request = sample_request()
    data = wire.encode_request(request)
    assert same(wire.decode_request(data), request)
    assert wire.encode_request(wire.decode_request(data)) == data
    as_json = json.loads(json.dumps(wire.request_to_json(request), allow_nan=False))
    assert same(wire.request_from_json(as_json), request)


def test_result_and_error_round_trip():
    result = wire.Result(
        saved=[wire.SavedValue("mlp5", 2, np.arange(6, dtype=np.float32).reshape(2, 3)),
               wire.SavedValue("count", 3, 42), wire.SavedValue("nothing", 4, None)],
        generated=[[504, 3717], []],
    )
    assert same(wire.decode_result(wire.encode_result(result)), result)
    error = wire.ErrorReport("NOT_FOUND", "no hook point", node=3, source="a.py:1")
    assert same(wire.decode_error(wire.encode_error(error)), error)
    assert same(wire.error_from_json(wire.error_to_json(error)), error)


def test_scan_shapes_round_trip_and_are_optional():
    result = wire.Result(shapes=[
        wire.NodeShape(1, "float32", [1, 6, 64]),
        wire.NodeShape(1, "float32", [1, None], step=1),
        wire.NodeShape(2, "float32", [], name="model.layers.0.output"),
        wire.NodeShape(3, "unknown", None),
    ])
    assert same(wire.decode_result(wire.encode_result(result)), result)
    assert same(wire.result_from_json(wire.result_to_json(result)), result)
    assert wire.decode_result(wire.encode_result(wire.Result())).shapes == []
    bad = wire.result_to_json(result)
    bad["body"]["shapes"][1]["shape"][0] = "one"
    with pytest.raises(wire.WireError) as e:
        wire.result_from_json(bad)
    assert str(e.value) == "body.shapes[1].shape[0]: expected an int, got string"


def test_decode_message_and_peek():
    assert isinstance(wire.decode_message(wire.encode_result(wire.Result())), wire.Result)
    error = wire.encode_error(wire.ErrorReport("INTERNAL", "boom", version=7))
    assert wire.peek_envelope(error) == wire.Envelope(7, "error")
    assert wire.decode_message(error).version == 7


def test_floats_stay_floats_and_keep_their_sign():
    data = wire.encode_result(wire.Result(saved=[wire.SavedValue("x", 1, [3.0, -0.0, 3])]))
    assert "93cb4008000000000000cb800000000000000003" in data.hex()
    value = wire.decode_result(data).saved[0].value
    assert type(value[0]) is float and math.copysign(1, value[1]) == -1 and type(value[2]) is int


def test_numpy_scalars_and_big_endian_arrays_encode():
    node = wire.Node(1, "full", [np.float32(0.5), np.int64(3), np.bool_(True),
                                 np.array([1, 2], dtype=">i4")])
    request = wire.Request("m", [wire.Trace([wire.Invoke(prompt="x")], [node])])
    args = wire.decode_request(wire.encode_request(request)).traces[0].nodes[0].args
    assert args[:3] == [0.5, 3, True] and type(args[1]) is int
    assert args[3].dtype == np.dtype("<i4") and args[3].tolist() == [1, 2]


def test_bfloat16_rounds_to_nearest_even():
    bits = wire.BFloat16Array.from_float32(np.array([0.1, 1, -2.5, 3.4e38, np.nan], np.float32))
    assert bits.bits.tolist() == [0x3DCD, 0x3F80, 0xC020, 0x7F80, 0x7FC0]
    assert bits.to_float32()[1] == 1.0


def test_json_float16_rounding_matches_the_cpp_codec():
    unit = 2.0**-24
    tensor = {"tensor": {"dtype": "float16", "shape": [11],
                         "data": [0.1, 1, 65504, 65519, 65520, -0.0, unit / 2, unit * 1.5,
                                  unit * 2.5, "nan", "-inf"]}}
    obj = minimal_request()
    obj["body"]["traces"][0]["nodes"][0]["args"] = [tensor]
    arg = wire.request_from_json(obj).traces[0].nodes[0].args[0]
    assert arg.view(np.uint16).tolist() == [0x2E66, 0x3C00, 0x7BFF, 0x7BFF, 0x7C00, 0x8000,
                                            0, 2, 2, 0x7E00, 0xFC00]


def test_json_base64_tensor_data():
    obj = minimal_request()
    obj["body"]["traces"][0]["nodes"][0]["args"] = [
        {"tensor": {"dtype": "float32", "shape": [2], "data_base64": "AADAPwAAAMA="}}]
    arg = wire.request_from_json(obj).traces[0].nodes[0].args[0]
    assert arg.tolist() == [1.5, -2.0]


# Hostile input ---------------------------------------------------------------------------


def test_every_truncation_is_refused():
    for data in (wire.encode_request(sample_request()),
                 wire.encode_error(wire.ErrorReport("INTERNAL", "x", node=1, source="y"))):
        for cut in range(len(data)):
            for decode in (wire.decode_request, wire.decode_result, wire.decode_error):
                with pytest.raises(wire.WireError):
                    decode(data[:cut])


def test_trailing_bytes_and_non_messages():
    with pytest.raises(wire.WireError, match="trailing bytes"):
        wire.decode_result(wire.encode_result(wire.Result()) + b"x")
    with pytest.raises(wire.WireError, match="invalid byte"):
        wire.decode_result(b"\xc1")
    assert request_error([1, 2]) == "message: not a Glassbox message: expected a map, got list"


@pytest.mark.parametrize("edit, message", [
    (lambda n: n.update(args=["x", {"tensor": "abc"}]),
     "body.traces[0].nodes[0].args[1].tensor: expected a tensor map, got string"),
    (lambda n: n.update(id="one"), "body.traces[0].nodes[0].id: expected an int, got string"),
    (lambda n: n.update(id=1.0), "body.traces[0].nodes[0].id: expected an int, got float"),
    (lambda n: n.update(id=2**64 - 1),
     "body.traces[0].nodes[0].id: integer 18446744073709551615 does not fit in int64"),
    (lambda n: n.update(args=[{"ellipsis": False}]),
     "body.traces[0].nodes[0].args[0].ellipsis: expected true"),
    (lambda n: n.update(args=[{"tensor": {"dtype": "float32", "shape": [2], "data": b"1234567"}}]),
     "body.traces[0].nodes[0].args[0].tensor.data: holds 7 bytes, but shape [2] of float32 "
     "needs 8"),
    (lambda n: n.update(args=[{"tensor": {"dtype": "bool", "shape": [3], "data": b"\1\0\2"}}]),
     "body.traces[0].nodes[0].args[0].tensor.data: bool element 2 is 2; bool elements must be "
     "0 or 1"),
    (lambda n: n.update(args=[{"tensor": {"dtype": "int32", "shape": [2, -1], "data": b""}}]),
     "body.traces[0].nodes[0].args[0].tensor.shape[1]: dimension -1 is negative"),
])
def test_wrong_types_name_their_position(edit, message):
    obj = minimal_request()
    edit(obj["body"]["traces"][0]["nodes"][0])
    assert request_error(obj) == message


def test_repeated_keys_and_unknown_keys():
    data = pack(minimal_request())
    op = b"\xa2op\xa4read"
    data = data.replace(op, b"\xa2id\x02\xa2op\xa0").replace(b"\x84\xa2id", b"\x85\xa2id", 1)
    with pytest.raises(wire.WireError, match=r'body.traces\[0\].nodes\[0\]: duplicate key "id"'):
        wire.decode_request(data)
    obj = minimal_request()
    obj["broker_hint"] = "x"
    obj["body"]["traces"][0]["nodes"][0]["future_field"] = {"deep": [1, 2]}
    assert wire.decode_request(pack(obj)).traces[0].nodes[0].op == "read"


def test_size_claims_the_bytes_cannot_back():
    wide = wire.DecodeLimits(max_list_length=2**32 - 1, max_string_bytes=2**32 - 1,
                             max_tensor_bytes=2**32 - 1, max_items=2**62)
    claims = [b"\xdd\x80\x00\x00\x00\x01\x02\x03\x04\x05", b"\xdf\xff\xff\xff\xff\xa1a\x01\x02\x03",
              b"\xdb\xff\xff\xff\xffabcde", b"\xc6\xff\xff\xff\xff\x01\x02\x03\x04\x05",
              b"\xdd\x80\x00\x00\x00" * 60]
    for data in claims:
        with pytest.raises(wire.WireError):
            wire.decode_request(data)
        with pytest.raises(wire.WireError, match="truncated"):
            wire.decode_request(data, wide)


def test_depth_bombs():
    with pytest.raises(wire.WireError, match="nested deeper than 64 levels") as e:
        wire.decode_request(b"\x91" * 100000 + b"\xc0")
    assert e.value.code == "RESOURCE_EXHAUSTED"
    for depth, ok in ((57, True), (58, False)):
        value = 1
        for _ in range(depth):
            value = [value]
        obj = minimal_request()
        obj["body"]["traces"][0]["nodes"][0]["args"] = [value]
        if ok:
            wire.decode_request(pack(obj))
            wire.request_from_json(obj)
        else:
            with pytest.raises(wire.WireError, match="nested deeper than 64 levels"):
                wire.decode_request(pack(obj))
            with pytest.raises(wire.WireError, match="nested deeper than 64 levels"):
                wire.request_from_json(obj)


def test_limits():
    data = wire.encode_request(sample_request())  # 6 nodes

    def refused(match, **limits):
        with pytest.raises(wire.WireError, match=match) as e:
            wire.decode_request(data, wire.DecodeLimits(**limits))
        assert e.value.code == "RESOURCE_EXHAUSTED"

    refused(r"body.traces\[1\].nodes\[1\]: more than 5 nodes", max_nodes=5)
    refused("more than 10 values", max_values=10)
    refused("more than 50 msgpack items", max_items=50)
    refused("a list of 9 elements is over the limit of 6", max_list_length=6)
    refused("a string of 21 bytes is over the limit of 20", max_string_bytes=20)
    refused("bytes is over the limit of", max_message_bytes=len(data) - 1)
    wire.decode_request(data, wire.DecodeLimits(max_message_bytes=len(data)))


def test_version_mismatch_texts():
    request = sample_request()
    request.version = 0
    with pytest.raises(wire.WireError) as e:
        wire.decode_request(wire.encode_request(request))
    assert str(e.value) == ("client speaks protocol 0, this server speaks protocol 1; upgrade "
                            "the client: pip install --upgrade glassbox")
    with pytest.raises(wire.WireError) as e:
        wire.decode_result(wire.encode_result(wire.Result(version=2)))
    assert str(e.value) == ("server speaks protocol 2, this client speaks protocol 1; upgrade "
                            "the client: pip install --upgrade glassbox")
    with pytest.raises(wire.WireError, match="expected a result message, got an error message"):
        wire.decode_result(wire.encode_error(wire.ErrorReport("INTERNAL", "x")))


def decode_everything(data: bytes) -> None:
    """Every decoder on `data` (as msgpack, and as JSON text if it is some): they may only
    raise WireError, and what decodes must survive a round trip."""
    encoders = {wire.Request: wire.encode_request, wire.Result: wire.encode_result,
                wire.ErrorReport: wire.encode_error}
    for decode in (wire.decode_request, wire.decode_result, wire.decode_error):
        try:
            decoded = decode(data)
        except wire.WireError:
            continue
        assert same(decode(encoders[type(decoded)](decoded)), decoded)
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError):
        return
    for from_json in (wire.request_from_json, wire.result_from_json, wire.error_from_json):
        try:
            from_json(obj)
        except wire.WireError:
            pass


def test_fuzz_corpus_replays():
    corpus = sorted((ROOT / "protocol" / "fuzz" / "corpus").iterdir())
    assert corpus
    for path in corpus:
        decode_everything(path.read_bytes())


def test_random_mutations_of_the_vectors():
    rng = np.random.default_rng(1234)
    seeds = [bytes.fromhex(json.loads(p.read_text())["msgpack_hex"]) for p in VECTORS]
    for _ in range(3000):
        data = bytearray(seeds[rng.integers(len(seeds))])
        for _ in range(rng.integers(1, 4)):
            at = int(rng.integers(len(data)))
            op = rng.integers(3)
            if op == 0:
                data[at] = int(rng.integers(256))
            elif op == 1:
                del data[at]
            else:
                data.insert(at, int(rng.choice([0x00, 0x7F, 0x80, 0xC0, 0xCB, 0xDD, 0xDF, 0xFF])))
        decode_everything(bytes(data))
