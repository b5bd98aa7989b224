"""model.tokenizer: decoding from the vocabulary the catalogue carries, encoding by the
server, both against the Hugging Face `tokenizers` goldens in tests/fixtures/tokenizer/."""

import json

import numpy as np
import pytest

from conftest import ROOT

GOLDEN = json.loads((ROOT / "tests" / "fixtures" / "tokenizer" / "smollm2_golden.json").read_text())


@pytest.fixture(scope="module")
def tokenizer(smollm2):
    return smollm2.tokenizer


def test_vocabulary_and_special_tokens(tokenizer):
    assert tokenizer.vocab_size == GOLDEN["vocab_size"]
    assert tokenizer.bos_token_id == GOLDEN["bos_id"]
    assert tokenizer.eos_token_id == GOLDEN["eos_id"]
    assert tokenizer.convert_ids_to_tokens([7042]) == ["ĠParis"]
    assert tokenizer.decode([7042]) == " Paris"


def test_decode_matches_hugging_face_on_every_golden_case(tokenizer):
    single_bytes = {tokenizer.token_bytes(i) for i in range(tokenizer.vocab_size)}
    checked = 0
    for case in GOLDEN["cases"]:
        # Texts round-trip wherever the vocabulary has a token for each of their bytes.
        if any(bytes([b]) not in single_bytes for b in set(case["text"].encode("utf-8"))):
            continue
        checked += 1
        assert tokenizer.decode(case["ids"]) == case["text"], case["name"]
        assert tokenizer.decode(np.array([case["ids"]])) == case["text"]  # any shape
    assert checked > len(GOLDEN["cases"]) // 2


# Each encode asks the engine (through LocalBackend: a process per request), so a few cases.
@pytest.mark.parametrize("name", ["multilingual", "edge_0", "edge_1", "edge_5"])
def test_encode_on_the_server_matches_hugging_face(tokenizer, name):
    case = next(c for c in GOLDEN["cases"] if c["name"] == name)
    assert tokenizer.encode(case["text"]) == case["ids"]


def test_partial_characters_and_bad_ids(tokenizer):
    euro = tokenizer.encode("€")  # one character, possibly several byte tokens
    assert b"".join(tokenizer.token_bytes(i) for i in euro) == "€".encode()
    if len(euro) > 1:
        assert tokenizer.decode(euro[:1]).endswith("\ufffd")
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tokenizer.decode([GOLDEN["vocab_size"]])


def test_skip_special_tokens(tokenizer):
    ids = tokenizer.encode("<|im_start|>user\nHi<|im_end|>")
    assert tokenizer.decode(ids).startswith("<|im_start|>")
    assert tokenizer.decode(ids, skip_special_tokens=True) == "user\nHi"


def test_a_model_without_a_tokenizer_says_so(tiny_model):
    with pytest.raises(Exception, match="no tokenizer"):
        tiny_model.tokenizer


GEMMA_GOLDEN = json.loads((ROOT / "tests" / "fixtures" / "tokenizer" / "gemma3_golden.json").read_text())
GEMMA = ROOT / "models" / "gemma-3-270m-q4_k_m.gguf"


@pytest.fixture(scope="module")
def gemma_tokenizer(engine):
    """Gemma 3's SentencePiece-style tokenizer as a client gets it: the catalogue that
    `glassbox-engine info` prints (what a worker sends), decoded here."""
    import subprocess

    from glassbox.tokenizer import Tokenizer

    assert GEMMA.exists(), f"{GEMMA} is missing: run scripts/fetch_model.sh gemma3-270m"
    info = json.loads(subprocess.run([engine, "info", "--model", str(GEMMA)], check=True,
                                     capture_output=True, text=True).stdout)
    return Tokenizer(info["tokenizer"], run_request=None, model_name="gemma3-270m")


def test_sentencepiece_decode_matches_hugging_face_on_every_gemma_case(gemma_tokenizer):
    assert gemma_tokenizer.vocab_size == GEMMA_GOLDEN["vocab_size"]
    bos = GEMMA_GOLDEN["bos_id"]
    for case in GEMMA_GOLDEN["cases"]:
        # Hugging Face's decode of [BOS] + ids; "decoded" where it is not "<bos>" + the text.
        ids = case.get("ids_bos", [bos] + case["ids"])
        assert gemma_tokenizer.decode(ids) == case.get("decoded", "<bos>" + case["text"]), case["name"]
    assert gemma_tokenizer.convert_ids_to_tokens([GEMMA_GOLDEN["bos_id"]]) == ["<bos>"]
