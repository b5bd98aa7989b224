#!/usr/bin/env python3
"""Writes seed inputs for the fuzz targets (protocol/fuzz, intervention/fuzz) into two
directories, to be merged into the committed corpora with libFuzzer's -merge=1 (see
scripts/fuzz/run.sh). Run from the repository root with the project's venv:
    .venv/bin/python scripts/fuzz/make_seeds.py DECODE_DIR VALIDATE_DIR

Decoder seeds: every message of protocol/vectors (msgpack and JSON) and every example graph
of examples/graphs (msgpack and JSON). Validator seeds: the requests among them made to fit
the fixture the validator fuzzer loads (tests/fixtures/tiny_llama: 3 layers, 128 token ids,
no tokenizer): prompts become token ids, layer numbers are taken modulo 3 and generation is
shortened, each as msgpack and as JSON.
"""
import glob
import hashlib
import json
import os
import re
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "client"))
from glassbox import _wire  # noqa: E402

TINY_LAYERS = 3
TINY_VOCAB = 128
MAX_NEW_TOKENS = 4


def write(directory, data):
    if isinstance(data, str):
        data = data.encode()
    name = hashlib.sha1(data).hexdigest()[:16]
    with open(os.path.join(directory, name), "wb") as f:
        f.write(data)


def for_tiny_llama(node):
    """The request with text prompts as ids, layer numbers modulo 3, generation shortened."""
    if isinstance(node, dict):
        if set(node) == {"prompt"}:
            return {"ids": [ord(c) % TINY_VOCAB for c in node["prompt"]][:16]}
        out = {k: for_tiny_llama(v) for k, v in node.items()}
        if "max_new_tokens" in out and isinstance(out["max_new_tokens"], int):
            out["max_new_tokens"] = min(out["max_new_tokens"], MAX_NEW_TOKENS)
        return out
    if isinstance(node, list):
        return [for_tiny_llama(v) for v in node]
    if isinstance(node, str):
        return re.sub(r"\b(layers|blocks|h)\.(\d+)\.",
                      lambda m: f"{m.group(1)}.{int(m.group(2)) % TINY_LAYERS}.", node)
    return node


def main(decode_dir, validate_dir):
    os.makedirs(decode_dir, exist_ok=True)
    os.makedirs(validate_dir, exist_ok=True)
    requests = []
    for path in sorted(glob.glob("protocol/vectors/*.json")):
        vector = json.load(open(path))
        write(decode_dir, bytes.fromhex(vector["msgpack_hex"]))
        write(decode_dir, json.dumps(vector["json"]))
        if vector["kind"] == "request":
            requests.append(vector["json"])
    for path in sorted(glob.glob("examples/graphs/*.json")):
        graph = json.load(open(path))
        write(decode_dir, json.dumps(graph))
        write(decode_dir, _wire.encode_request(_wire.request_from_json(graph)))
        requests.append(graph)
    for request in requests:
        tiny = for_tiny_llama(request)
        write(validate_dir, json.dumps(tiny))
        try:
            write(validate_dir, _wire.encode_request(_wire.request_from_json(tiny)))
        except _wire.WireError:
            pass  # a vector that is refused on purpose (e.g. another protocol version)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
