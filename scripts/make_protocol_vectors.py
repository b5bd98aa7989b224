#!/usr/bin/env python3
"""Writes the wire-format test vectors in protocol/vectors/ with the Python codec.

Each vector is {"meaning", "kind", "json", "msgpack_hex"} and, for messages that must be
refused, "error": the exact text both decoders give. The C++ tests
(tests/protocol/vectors_test.cc) check on their own that their encoder produces the same
bytes and their decoders the same structures; tests/python/test_wire.py does the same here.

Run from the repository root after a deliberate change of the format (and bump
kProtocolVersion if old peers cannot read the new bytes):
    .venv/bin/python scripts/make_protocol_vectors.py
"""

import json
import math
import pathlib
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "client"))
from glassbox import wire  # noqa: E402
BFloat16Array, ErrorReport, GenerateOptions = wire.BFloat16Array, wire.ErrorReport, wire.GenerateOptions
Invoke, Node, Ref, Request = wire.Invoke, wire.Node, wire.Ref, wire.Request
Result, SavedValue, Trace = wire.Result, wire.SavedValue, wire.Trace
NodeShape = wire.NodeShape

MODEL = "SmolLM2-135M-Instruct"
VECTORS = ROOT / "protocol" / "vectors"


def read(node_id, point, **kwargs):
    return Node(node_id, "read", kwargs={"point": point, **kwargs})


def save(node_id, x, name):
    return Node(node_id, "save", args=[Ref(x)], kwargs={"name": name})


def request(*traces, scan=False, version=wire.PROTOCOL_VERSION):
    return Request(model=MODEL, traces=list(traces), scan=scan, version=version)


def prompt(text):
    return Invoke(prompt=text)


def vectors():
    yield "01_read_and_save", "A single forward pass that reads one hook point and saves it.", request(
        Trace(
            invokes=[prompt("The capital of France is")],
            nodes=[
                read(1, "model.layers.5.mlp.output"),
                Node(2, "save", [Ref(1)], {"name": "mlp5"}, source="experiment.py:12"),
            ],
        )
    )

    ints = [0, 1, 127, 128, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**63 - 1,
            -1, -32, -33, -128, -129, -32768, -32769, -(2**31), -(2**31) - 1, -(2**63)]
    floats = [0.0, -0.0, 1.5, 3.0, 0.1, 1e-300, 5e-324, 1.7976931348623157e308, -2.5e10]
    strings = ["", "model.layers.0.output", "h\u00e9llo \u2603 \U0001d53e", "x" * 40, "y" * 300]
    yield "02_value_scalars", (
        "Scalar values: null, bools, ints at every msgpack width (fixint, uint8..64, "
        "int8..64), floats (always float64; 3.0 stays a float), strings (fixstr, str8, str16, "
        "UTF-8), nested lists."
    ), request(
        Trace(
            invokes=[prompt("x")],
            nodes=[
                Node(1, "full", [[2, 3], 0.5], {"dtype": "float32"}),
                Node(2, "size", [Ref(1)], {"dim": None}),
                Node(3, "cat", [[True, False, None]]),
                Node(4, "cat", [ints]),
                Node(5, "cat", [floats]),
                Node(6, "cat", [strings]),
                Node(7, "cat", [[[1, [2.0, ["three", [None]]]], []]]),
            ],
        )
    )

    yield "03_value_indexing", (
        "Indexing values: refs, slices with and without parts, ellipsis, None, as getitem "
        "and setitem index tuples."
    ), request(
        Trace(
            invokes=[prompt("The capital of France is")],
            nodes=[
                read(1, "model.layers.2.self_attn.z"),
                Node(2, "getitem", [Ref(1), [Ellipsis, slice(None, None, None), slice(1, -1, 2),
                                             None, 3]]),
                Node(3, "getitem", [Ref(1), slice(None, 5, None)]),
                Node(4, "setitem", [Ref(1), [slice(None), slice(None), 3], 0.0]),
                Node(5, "write", [Ref(4)], {"point": "model.layers.2.self_attn.z"}),
            ],
        )
    )

    yield "04_value_nonfinite", (
        "Non-finite float values: msgpack float64 NaN and infinities; in JSON, "
        '{"float": "nan" | "inf" | "-inf"}.'
    ), request(
        Trace(
            invokes=[prompt("x")],
            nodes=[Node(1, "clamp", [Ref(0)], {"min": -math.inf, "max": math.inf}),
                   Node(2, "full", [[1], math.nan])],
        )
    )

    f32 = np.array([[1.0, -2.5, 0.1], [np.inf, -np.inf, np.nan]], dtype=np.float32)
    f16 = np.array([65504.0, 2.0**-24, -0.0, np.inf, np.nan, 1 / 3, -1.5, 6.1e-5],
                   dtype=np.float16).reshape(2, 4)
    bf16 = BFloat16Array.from_float32(
        np.array([1.0, -2.5, 3.140625, np.inf, np.nan, 1e-40], dtype=np.float32).reshape(3, 2))
    yield "05_tensors_float", (
        "Float tensors: float32 [2, 3] with non-finite elements, float16 [2, 4] with its "
        "extremes (max, smallest subnormal, -0, inf, nan), bfloat16 [3, 2] (raw bits on the "
        "wire), a float32 scalar (shape []) and an empty float32 [0, 4]."
    ), request(
        Trace(
            invokes=[prompt("x")],
            nodes=[
                Node(1, "add", [f32, f16]),
                Node(2, "add", [bf16, np.array(2.5, dtype=np.float32)]),
                Node(3, "cat", [[np.zeros((0, 4), dtype=np.float32)]]),
            ],
        )
    )

    yield "06_tensors_int_bool", (
        "Integer and bool tensors: int64 and int32 with their extremes, bool, uint8."
    ), request(
        Trace(
            invokes=[prompt("x")],
            nodes=[
                Node(1, "add", [np.array([-(2**63), -1, 0, 2**63 - 1], dtype=np.int64),
                                np.array([[-(2**31), 2**31 - 1], [7, -7]], dtype=np.int32)]),
                Node(2, "where", [np.array([[True, False, True]]), np.array([0, 128, 255],
                                                                             dtype=np.uint8), 1]),
            ],
        )
    )

    yield "07_session_two_traces", (
        "A session of two traces: the second patches in a value the first computed (node ids "
        "are unique across the request, so refs cross traces). The second trace batches a "
        "text prompt with token ids."
    ), request(
        Trace(
            invokes=[prompt("The Eiffel Tower is in")],
            nodes=[
                read(1, "model.layers.3.output"),
                Node(2, "mean", [Ref(1)], {"dim": 1, "keepdim": True}),
                save(3, 2, "clean_mean"),
            ],
        ),
        Trace(
            invokes=[prompt("The Colosseum is in"), Invoke(ids=[504, 3717, 314, 7042, 282])],
            nodes=[
                read(4, "model.layers.3.output", invoke=0),
                Node(5, "add", [Ref(4), Ref(2)]),
                Node(6, "write", [Ref(5)], {"point": "model.layers.3.output", "invoke": 0}),
                read(7, "lm_head.output"),
                Node(8, "argmax", [Ref(7)], {"dim": -1}),
                save(9, 8, "patched_tokens"),
            ],
        ),
    )

    yield "08_generate", (
        "Generation with every option set (the seed is the largest uint64), reading a hook "
        "point at every step."
    ), request(
        Trace(
            invokes=[prompt("Once upon a time")],
            generate=GenerateOptions(max_new_tokens=20, temperature=0.8, top_k=50, top_p=0.95,
                                     seed=2**64 - 1, stop_ids=[2, 0]),
            nodes=[read(1, "model.norm.output", step="all"), save(2, 1, "norm_all_steps")],
        )
    )

    yield "09_scan", "A scan (dry run: shapes and dtypes only) with default generate options.", \
        request(
            Trace(
                invokes=[Invoke(ids=[1, 2, 3])],
                generate=GenerateOptions(),
                nodes=[read(1, "model.layers.0.self_attn.attn_pattern"), save(2, 1, "pattern")],
            ),
            scan=True,
        )

    yield "10_result_tensors", (
        "A result: saved tensors (float32, bfloat16, int64), plain values (an int, a float, a "
        "list from size(), null) and the generated token ids per invoke."
    ), Result(
        saved=[
            SavedValue("mlp5", 2, np.arange(6, dtype=np.float32).reshape(1, 2, 3) / 4),
            SavedValue("logits_bf16", 3, BFloat16Array.from_float32(
                np.array([[0.5, -1.25]], dtype=np.float32))),
            SavedValue("top", 4, np.array([[3681, 12]], dtype=np.int64)),
            SavedValue("count", 5, 42),
            SavedValue("loss", 6, 2.75),
            SavedValue("shape", 7, [1, 6, 576]),
            SavedValue("node_8", 8, None),
        ],
        generated=[[504, 3717, 314], [2]],
    )

    yield "11_result_empty", "A result with nothing saved and no generation.", Result()

    yield "12_error_report", (
        "An error report naming the node and where the client built it."
    ), ErrorReport(
        code="INVALID_ARGUMENT",
        message='node 7: unknown op "frobnicate"; did you mean "flatten"?',
        node=7,
        source="experiment.py:31",
    )

    yield "13_error_other_version", (
        "An error report from a peer of protocol 9: error reports decode whatever the "
        "version (their body never changes incompatibly)."
    ), ErrorReport(code="UNAVAILABLE", message="no worker serves this model", version=9)

    yield "14_version_mismatch_request", (
        "A request from a client speaking protocol 2: a protocol 1 server refuses it, naming "
        "both versions."
    ), request(Trace(invokes=[prompt("x")], nodes=[]), version=2)

    yield "15_version_mismatch_result", (
        "A result from a server speaking protocol 0: a protocol 1 client refuses it, naming "
        "both versions."
    ), Result(generated=[[1]], version=0)

    yield "16_result_scan", (
        "A scan's result: nothing saved, the dtype and shape of every node, per generation "
        "step (a sequence of 3 at step 0, 1 after), a cache entry named after its point, a "
        "plain int, a value only a real run can tell (unknown) and a size it cannot tell (null)."
    ), Result(
        shapes=[
            NodeShape(1, "float32", [1, 3, 576]),
            NodeShape(1, "float32", [1, 1, 576], step=1),
            NodeShape(2, "int64", [1, 3]),
            NodeShape(3, "float32", [1, 3, 576], name="model.layers.0.output"),
            NodeShape(4, "int", None),
            NodeShape(5, "unknown", None),
            NodeShape(6, "float32", [None, 576]),
        ],
    )


def encode(message):
    if isinstance(message, Request):
        return "request", wire.request_to_json(message), wire.encode_request(message)
    if isinstance(message, Result):
        return "result", wire.result_to_json(message), wire.encode_result(message)
    return "error", wire.error_to_json(message), wire.encode_error(message)


def main():
    VECTORS.mkdir(parents=True, exist_ok=True)
    for old in VECTORS.glob("*.json"):
        old.unlink()
    decoders = {"request": wire.decode_request, "result": wire.decode_result,
                "error": wire.decode_error}
    for name, meaning, message in vectors():
        kind, as_json, data = encode(message)
        vector = {"meaning": meaning, "kind": kind, "json": as_json, "msgpack_hex": data.hex()}
        try:
            decoders[kind](data)
        except wire.WireError as e:
            vector["error"] = str(e)
        text = json.dumps(vector, indent=2, ensure_ascii=False, allow_nan=False)
        (VECTORS / f"{name}.json").write_text(text + "\n", encoding="utf-8")
        print(f"{name}: {len(data)} bytes" + (f", refused: {vector['error']}"
                                               if "error" in vector else ""))


if __name__ == "__main__":
    main()
