"""Hugging Face and TransformerLens habits (issue 15, item 4): model.generate with
transformers' sampling keywords and stop strings, and run_with_cache's ActivationCache,
checked against the transformers goldens of tests/fixtures/tiny_llama."""

import json
import warnings

import numpy as np
import pytest

import glassbox
from glassbox import GlassboxError

from conftest import TINY_LLAMA
from test_nnsight_idioms import IDS, close, golden

GREEDY = json.loads((TINY_LLAMA / "golden_generate.json").read_text())
N = GREEDY["max_new_tokens"]


def generated(model, **kwargs):
    with model.generate(GREEDY["prompt_ids"], max_new_tokens=N, **kwargs) as tracer:
        pass
    return tracer.generated[0]


def test_greedy_as_transformers(tiny_model):
    assert generated(tiny_model, do_sample=False) == GREEDY["generated_ids"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert generated(tiny_model, do_sample=False, temperature=0.7) == GREEDY["generated_ids"]
    assert "temperature ignored" in str(caught[0].message)
    # sampling from the single most likely token is greedy too
    assert generated(tiny_model, do_sample=True, top_k=1, temperature=0.8) == \
        GREEDY["generated_ids"]


def test_sampling_keywords_reach_the_request():
    from conftest import FakeBackend

    fake = FakeBackend()
    model = glassbox.Model("fake", backend=fake, arrays="numpy")
    with model.generate([1, 2], max_new_tokens=2, do_sample=True, top_p=0.9, seed=3):
        pass
    options = fake.last.traces[0].generate
    assert (options.temperature, options.top_k, options.top_p, options.seed) == (1.0, 50, 0.9, 3)
    with pytest.raises(GlassboxError, match=r"does not take max_length="):
        model.generate([1, 2], max_length=5)
    with pytest.raises(GlassboxError, match="temperature > 0"):
        model.generate([1, 2], do_sample=True, temperature=0)


def test_sampling_is_reproducible_and_differs_from_greedy(tiny_model):
    a = generated(tiny_model, do_sample=True, temperature=5.0, seed=11)
    assert a == generated(tiny_model, do_sample=True, temperature=5.0, seed=11)
    assert len(a) == N


def test_stop_strings_end_the_new_tokens(smollm2):
    prompt = "Paris is the capital of France. Rome is the capital of"
    with smollm2.generate(prompt, max_new_tokens=12) as tracer:
        pass
    text = smollm2.tokenizer.decode(tracer.generated[0])
    assert "." in text
    with smollm2.generate(prompt, max_new_tokens=12, stop_strings=["."]) as tracer:
        output = smollm2.generator.output.save()
    cut = smollm2.tokenizer.decode(tracer.generated[0])
    assert cut.endswith(".") and cut.count(".") == 1 and text.startswith(cut)
    assert np.asarray(output).shape[-1] < len(smollm2.tokenizer.encode(prompt)) + 12


def test_run_with_cache_and_activation_cache(tiny_model):
    logits, cache = tiny_model.run_with_cache(IDS)
    close(logits, golden("lm_head.output"))
    close(cache["resid_post", 2], golden("model.layers.2.output"))
    close(cache["pattern", 1], golden("model.layers.1.self_attn.attn_pattern"))
    close(cache["blocks.0.hook_resid_pre"], golden("model.layers.0.input"))
    close(cache["model.layers.1.mlp.output"], golden("model.layers.1.mlp.output"))
    with pytest.raises(KeyError, match="did you mean"):
        cache["blocks.0.hook_resid_pots"]

    stack, labels = cache.accumulated_resid(return_labels=True)
    assert labels == ["0_pre", "1_pre", "2_pre", "final_post"]
    for index in range(3):
        close(stack[index], golden(f"model.layers.{index}.input"))
    close(stack[3], golden("model.layers.2.output"))

    parts, labels = cache.decompose_resid(return_labels=True)
    assert labels == ["embed", "0_attn_out", "0_mlp_out", "1_attn_out", "1_mlp_out",
                      "2_attn_out", "2_mlp_out"]
    close(parts[0], golden("model.embed_tokens.output"))
    close(parts[3], golden("model.layers.1.self_attn.output"))
    close(np.asarray(parts).sum(0), golden("model.layers.2.output"))
    last = cache.accumulated_resid(layer=2, pos_slice=-1)
    close(last, np.stack([golden(f"model.layers.{i}.input")[:, -1:] for i in range(3)]))
    with pytest.raises(GlassboxError, match=r"apply_ln=True\) is not supported"):
        cache.accumulated_resid(apply_ln=True)


def test_run_with_cache_names_filter(tiny_model):
    _, cache = tiny_model.run_with_cache(IDS, names_filter=lambda n: n.endswith("resid_post"))
    assert sorted(cache.keys()) == [f"blocks.{i}.hook_resid_post" for i in range(3)]
