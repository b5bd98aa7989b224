"""model.tokenizer.apply_chat_template: the template the engine reads from the model's files,
rendered by the client, against transformers' renderings and ids in
tests/fixtures/chat_template/smollm2_golden.json (scripts/fixtures/make_chat_template_fixtures.py)."""

import json
import shutil

import jinja2
import pytest

import glassbox
from conftest import ROOT, TINY_LLAMA
from glassbox.errors import GlassboxError
from glassbox.tokenizer import Tokenizer

FIXTURES = ROOT / "tests" / "fixtures" / "chat_template"
GOLDEN = json.loads((FIXTURES / "smollm2_golden.json").read_text())
CASES = {(c["name"], c["add_generation_prompt"]): c for c in GOLDEN["cases"]}


@pytest.fixture(scope="module")
def tokenizer(smollm2):
    return smollm2.tokenizer


def test_the_catalogue_carries_the_gguf_template(tokenizer):
    assert tokenizer.chat_template == GOLDEN["chat_template"]
    assert (tokenizer.bos_token, tokenizer.eos_token) == (GOLDEN["bos_token"], GOLDEN["eos_token"])


@pytest.mark.parametrize("key", list(CASES), ids=[f"{n}-{g}" for n, g in CASES])
def test_text_matches_transformers(tokenizer, key):
    case = CASES[key]
    text = tokenizer.apply_chat_template(case["messages"], tokenize=False,
                                         add_generation_prompt=case["add_generation_prompt"])
    assert text == case["text"]


# Each new text is one engine run (LocalBackend: a process per request), so in one batch.
def test_ids_match_transformers(tokenizer):
    for add_generation_prompt in (False, True):
        cases = [c for c in GOLDEN["cases"] if c["add_generation_prompt"] == add_generation_prompt]
        ids = tokenizer.apply_chat_template([c["messages"] for c in cases],
                                            add_generation_prompt=add_generation_prompt)
        assert ids == [c["ids"] for c in cases]
    case = CASES[("user_only", True)]
    out = tokenizer.apply_chat_template(case["messages"], add_generation_prompt=True,
                                        return_dict=True)
    assert out == {"input_ids": case["ids"]}
    assert out["input_ids"][0] == tokenizer.bos_token_id  # from the template, not added again


@pytest.mark.parametrize("case", GOLDEN["feature_cases"],
                         ids=[f"{c['name']}-{c['add_generation_prompt']}"
                              for c in GOLDEN["feature_cases"]])
def test_transformers_environment(tokenizer, case):
    text = tokenizer.apply_chat_template(case["messages"], chat_template=GOLDEN["feature_template"],
                                         tokenize=False,
                                         add_generation_prompt=case["add_generation_prompt"],
                                         **case["kwargs"])
    assert text == case["text"]


def test_raise_exception_and_the_sandbox(tokenizer):
    with pytest.raises(jinja2.TemplateError, match="unknown role: robot"):
        tokenizer.apply_chat_template([{"role": "robot", "content": "beep"}],
                                      chat_template=GOLDEN["feature_template"], tokenize=False)
    with pytest.raises(jinja2.exceptions.SecurityError):  # immutable, as in transformers
        tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                      chat_template="{{ messages.append(1) }}")
    year = tokenizer.apply_chat_template([{"role": "user", "content": ""}], tokenize=False,
                                         chat_template="{{ strftime_now('%Y') }}")
    assert len(year) == 4 and year.isdigit()


def _tiny_with_tokenizer(tmp_path, tokenizer_config=None):
    """The tiny Llama checkpoint as a Hugging Face directory with a small tokenizer.json."""
    for name in ("config.json", "model.safetensors"):
        (tmp_path / name).symlink_to(TINY_LLAMA / name)
    shutil.copy(ROOT / "tests" / "fixtures" / "tokenizer" / "tiny_tokenizer.json",
                tmp_path / "tokenizer.json")
    if tokenizer_config is not None:
        (tmp_path / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    return tmp_path


def test_a_hugging_face_directory_template(engine, tmp_path):
    template = (FIXTURES / "jinja_file" / "chat_template.jinja").read_text()
    (tmp_path / "chat_template.jinja").write_text(template)
    path = _tiny_with_tokenizer(tmp_path, {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>",
                                           "chat_template": "ignored"})
    model = glassbox.Model("tiny-chat", backend=glassbox.LocalBackend(path, engine=engine))
    assert model.tokenizer.chat_template == template
    assert model.tokenizer.eos_token == "<|im_end|>"
    text = model.tokenizer.apply_chat_template([{"role": "user", "content": "hi"}],
                                               add_generation_prompt=True, tokenize=False)
    assert text == "<|user|>hi<|assistant|>"


def test_a_model_whose_files_carry_no_template_says_so(engine, tmp_path):
    model = glassbox.Model("tiny-plain", backend=glassbox.LocalBackend(_tiny_with_tokenizer(tmp_path),
                                                                       engine=engine))
    assert model.tokenizer.chat_template is None
    with pytest.raises(GlassboxError, match="model tiny-plain has no chat template: its files "
                                            "carry none"):
        model.tokenizer.apply_chat_template([{"role": "user", "content": "hi"}])


def test_no_template_without_a_server():
    tokenizer = Tokenizer({"tokens": ["a"]}, run_request=None, model_name="gemma-3-270m")
    with pytest.raises(GlassboxError, match="model gemma-3-270m has no chat template") as e:
        tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert e.value.code == "NOT_FOUND"


def test_through_a_live_service(smollm2_service):
    """The template also reaches clients of `glassbox up` (the worker's catalogue)."""
    from glassbox.service import ServiceBackend
    backend = ServiceBackend(smollm2_service.url, smollm2_service.api_key, quiet=True)
    try:
        tokenizer = glassbox.Model("smollm2-135m", backend=backend).tokenizer
        assert tokenizer.chat_template == GOLDEN["chat_template"]
        case = CASES[("system_user", True)]
        assert tokenizer.apply_chat_template(case["messages"], add_generation_prompt=True) == \
            case["ids"]
    finally:
        backend.close()


def test_gemma3_gguf_carries_no_template(engine):
    path = ROOT / "models" / "gemma-3-270m-q4_k_m.gguf"
    if not path.is_file():
        pytest.skip(f"no model at {path} (scripts/fetch_model.sh gemma3-270m)")
    model = glassbox.Model("gemma-3-270m", backend=glassbox.LocalBackend(path, engine=engine))
    with pytest.raises(GlassboxError, match="model gemma-3-270m has no chat template: its files "
                                            "carry none"):
        model.tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
