"""Weights as values in a graph, through LocalBackend and the real engine.

Every value is compared with tests/fixtures/weights/*.npz (scripts/fixtures/
make_weight_goldens.py): transformers' own parameters of the tiny fixtures, gguf-py's
dequantization of SmolLM2, and TransformerLens-shaped weights rearranged from those by the
script (torch, TransformerLens' conversion patterns), never with the engine's earlier output.
Edits are checked against numpy computations on the reference weights. Skipped when
build/bin/glassbox-engine (or $GLASSBOX_ENGINE) or SmolLM2 is missing.
"""

import re

import numpy as np
import pytest

import glassbox
from glassbox.errors import GlassboxError, TracingError

from conftest import ROOT, SMOLLM2

FIXTURES = ROOT / "tests" / "fixtures"
TINY = ["tiny_llama", "tiny_qwen2", "tiny_gpt2", "tiny_neox", "tiny_gemma3"]
PROMPT = [1, 5, 9, 3]
STACKED = {"W_Q": "attn", "W_K": "attn", "W_V": "attn", "W_O": "attn", "b_Q": "attn",
           "b_K": "attn", "b_V": "attn", "b_O": "attn", "W_in": "mlp", "W_out": "mlp",
           "b_in": "mlp", "b_out": "mlp"}


def goldens(name: str) -> dict:
    with np.load(FIXTURES / "weights" / f"{name}.npz") as data:
        return {key: data[key] for key in data.files}


def is_tl(name: str) -> bool:
    return name.split(".")[0] in ("blocks", "ln_final") or name.split("[")[0] in STACKED or \
        name.startswith(("W_", "b_U"))


def attribute(model, name: str):
    """model.<name> spelled as attribute access: "blocks.0.attn.W_Q" -> model.blocks[0].attn.W_Q."""
    node = model
    for part in name.split("."):
        node = node[int(part)] if part.isdigit() else getattr(node, part)
    return node


def sliced(model, key: str):
    """The proxy for a golden key, "name[a:b, :, c:d]" sliced as written."""
    match = re.fullmatch(r"([^\[]+)(?:\[(.*)\])?", key)
    value = attribute(model, match.group(1))
    if match.group(2):
        index = tuple(slice(*(int(x) if x else None for x in part.strip().split(":")))
                      for part in match.group(2).split(","))
        value = value[index]
    return value


def read_all(model, keys, prompt=PROMPT):
    with model.trace(prompt):
        proxies = {key: sliced(model, key).save() for key in keys}
    return {key: np.asarray(p.value) for key, p in proxies.items()}


@pytest.fixture(scope="module", params=TINY)
def tiny(request, engine):
    path = FIXTURES / request.param
    model = glassbox.Model(request.param, backend=glassbox.LocalBackend(path, engine=engine),
                           arrays="numpy")
    return model, goldens(request.param)


def test_catalogue_lists_exactly_transformers_parameters(tiny):
    model, gold = tiny
    hf = {n for n, w in model.catalogue.weights.items() if not w.transformer_lens}
    assert hf == {k for k in gold if not is_tl(k)}
    tl = {n for n, w in model.catalogue.weights.items() if w.transformer_lens}
    assert {k for k in gold if is_tl(k)} <= tl
    for name, spec in model.catalogue.weights.items():
        if name in gold:
            assert spec.shape == gold[name].shape, name


def test_hugging_face_weights_equal_transformers_parameters(tiny):
    model, gold = tiny
    keys = [k for k in gold if not is_tl(k)]
    values = read_all(model, keys)
    for key in keys:
        assert values[key].shape == gold[key].shape, key
        assert np.array_equal(values[key], gold[key]), key


def test_transformerlens_weights_equal_an_independent_rearrangement(tiny):
    model, gold = tiny
    keys = [k for k in gold if is_tl(k)]
    values = read_all(model, keys + list(STACKED))
    for key in keys:
        assert values[key].shape == gold[key].shape, key
        assert np.array_equal(values[key], gold[key]), key
    layers = model.config["num_layers"]
    for name, module in STACKED.items():
        expected = np.stack([gold[f"blocks.{i}.{module}.{name}"] for i in range(layers)])
        assert np.array_equal(values[name], expected), name


def test_smollm2_weights_equal_gguf_py_dequantization(smollm2):
    gold = goldens("smollm2")
    values = read_all(smollm2, list(gold), smollm2.tokenizer.encode("Hello"))
    for key, expected in gold.items():
        assert values[key].shape == expected.shape, key
        assert np.array_equal(values[key], expected), key


def test_scan_knows_weight_shapes_and_unknown_names_are_refused(tiny_model):
    model = tiny_model
    with model.scan(PROMPT):
        w_q = model.blocks[1].attn.W_Q
        head = model.lm_head.weight
    assert tuple(w_q.shape) == (4, 64, 16) and tuple(head.shape) == (128, 64)
    with pytest.raises(AttributeError, match=r"o_proj has no module or hook point 'weigth'.*"
                                             r"did you mean weight"):
        model.model.layers[0].self_attn.o_proj.weigth
    wire = glassbox.wire
    request = wire.Request(model="tiny-llama", traces=[wire.Trace(
        invokes=[wire.Invoke(ids=PROMPT)],
        nodes=[wire.Node(1, "weight", [], {"name": "model.layers.0.self_attn.o_proj.wieght"}),
               wire.Node(2, "save", [wire.Ref(1)], {})])])
    with pytest.raises(GlassboxError, match=r"node 1: the model has no weight "
                                            r"'model.layers.0.self_attn.o_proj.wieght'; did you "
                                            r"mean: model.layers.0.self_attn.o_proj.weight"):
        model._backend.run(request)


def test_direct_logit_attribution_from_weights_adds_up(tiny_model):
    """The logits are the final norm's output times W_U: the unembedding read as a weight
    reproduces them, and the heads' z times W_O reproduce the attention output."""
    model = tiny_model
    with model.trace(PROMPT):
        normed = model.ln_final.hook_normalized[0]
        by_weight = (normed @ model.W_U + model.b_U).save()
        logits = model.unembed.hook_logits[0].save()
        z = model.blocks[2].attn.hook_z[0]  # [seq, heads, d_head]
        per_head = (z.unsqueeze(-1) * model.blocks[2].attn.W_O).sum(-2)  # [seq, heads, d]
        heads = per_head.sum(1).save()
        attn_out = model.blocks[2].hook_attn_out[0].save()
    assert np.allclose(by_weight.value, logits.value, atol=1e-5)
    assert np.allclose(heads.value, attn_out.value, atol=1e-5)


def test_ov_and_qk_circuits_are_expressible(tiny):
    """A head's OV circuit W_V[h] @ W_O[h] and QK circuit W_Q[h] @ W_K[h].T, computed on the
    service, equal numpy's on the reference weights."""
    model, gold = tiny
    with model.trace(PROMPT):
        attn = model.blocks[1].attn
        ov = (attn.W_V[1] @ attn.W_O[1]).save()
        qk = (attn.W_Q[1] @ attn.W_K[1].transpose(0, 1)).save()
        full_ov = (model.W_E[:5] @ attn.W_V[1] @ attn.W_O[1] @ model.W_U).save()
    g = {k: gold[f"blocks.1.attn.{k}"][1] for k in ("W_Q", "W_K", "W_V", "W_O")}
    assert np.allclose(ov.value, g["W_V"] @ g["W_O"], atol=1e-5)
    assert np.allclose(qk.value, g["W_Q"] @ g["W_K"].T, atol=1e-5)
    expected = gold["W_E"][:5] @ g["W_V"] @ g["W_O"] @ gold["W_U"]
    assert np.allclose(full_ov.value, expected, atol=1e-4)


def test_weight_edits_change_the_edited_model_only(tiny_model):
    model = tiny_model
    gold = goldens("tiny_llama")
    o_name = "model.layers.1.self_attn.o_proj.weight"
    with model.trace(PROMPT):
        clean = model.lm_head.output.save()
    with model.edit() as edited:
        edited.model.layers[1].self_attn.o_proj.weight = np.zeros((64, 64), np.float32)
        w = edited.model.layers[2].mlp.down_proj.weight
        w[:, :8] = 0
    with edited.trace(PROMPT):
        o_weight = edited.model.layers[1].self_attn.o_proj.weight.save()
        attn = edited.model.layers[1].self_attn.output[0].save()
        down_in = edited.model.layers[2].mlp.down_proj.input.save()
        down_out = edited.model.layers[2].mlp.output.save()
        edited_logits = edited.lm_head.output.save()
    assert not np.any(o_weight.value) and not np.any(attn.value)
    expected_down = gold["model.layers.2.mlp.down_proj.weight"].copy()
    expected_down[:, :8] = 0
    assert np.allclose(down_out.value, down_in.value @ expected_down.T, atol=1e-5)
    assert not np.allclose(edited_logits.value, clean.value, atol=1e-3)
    # The served model, and traces of `model`, never saw the edit.
    with model.trace(PROMPT):
        shared_o = model.model.layers[1].self_attn.o_proj.weight.save()
        shared_down = model.model.layers[2].mlp.down_proj.weight.save()
        again = model.lm_head.output.save()
    assert np.array_equal(shared_o.value, gold[o_name])
    assert np.array_equal(shared_down.value, gold["model.layers.2.mlp.down_proj.weight"])
    assert np.array_equal(again.value, clean.value)


def test_an_edited_unembedding_is_used_by_module_calls_and_generation(tiny_model):
    model = tiny_model
    with model.edit() as edited:
        edited.lm_head.weight = edited.lm_head.weight * 2
    with edited.trace(PROMPT):
        normed = edited.model.norm.output
        lens = edited.lm_head(normed).save()
        logits = edited.lm_head.output.save()
    with model.trace(PROMPT):
        clean = model.lm_head.output.save()
    assert np.allclose(logits.value, 2 * clean.value, atol=1e-5)
    assert np.allclose(lens.value, logits.value, atol=1e-6)
    with edited.generate(PROMPT, max_new_tokens=3) as tr:  # doubled logits: same tokens
        with tr.iter[2]:
            step_logits = edited.lm_head.output.save()
    with model.generate(PROMPT, max_new_tokens=3) as tr:
        with tr.iter[2]:
            clean_step = model.lm_head.output.save()
    assert np.allclose(step_logits.value, 2 * clean_step.value, atol=1e-5)


def test_weight_writes_outside_edits_and_of_other_weights_are_refused(tiny_model, engine):
    model = tiny_model
    with pytest.raises(TracingError, match=r"weights are changed only inside `with model.edit\(\)"):
        with model.trace(PROMPT):
            model.lm_head.weight = 0
    with pytest.raises(TracingError, match=r"model.norm.weight cannot be edited: only the weights "
                                           r"and biases of linear layers"):
        with model.edit():
            model.model.norm.weight = 0
    with pytest.raises(TracingError, match=r"blocks.0.attn.W_Q cannot be edited"):
        with model.edit():
            model.blocks[0].attn.W_Q = 0
    with model.edit() as edited:
        edited.model.layers[0].self_attn.q_proj.weight = 0 * edited.model.layers[0].self_attn.q_proj.weight
    with pytest.raises(TracingError, match=r"blocks.0.attn.W_Q is computed on the service from the "
                                           r"served weights and does not see this model's weight "
                                           r"edits"):
        with edited.trace(PROMPT):
            edited.blocks[0].attn.W_Q.save()
    gpt2 = glassbox.Model("tiny-gpt2", backend=glassbox.LocalBackend(FIXTURES / "tiny_gpt2", engine=engine))
    with pytest.raises(TracingError, match=r"lm_head.weight cannot be edited"):  # tied
        with gpt2.edit():
            gpt2.lm_head.weight = 0


def test_gpt2_conv1d_weight_edits_act_as_transformers_would(engine):
    """GPT-2's Conv1D holds [in, out]: output = input @ W + b."""
    model = glassbox.Model("tiny-gpt2", backend=glassbox.LocalBackend(FIXTURES / "tiny_gpt2", engine=engine),
                           arrays="numpy")
    gold = goldens("tiny_gpt2")
    new_bias = np.arange(60, dtype=np.float32) / 60
    with model.edit() as edited:
        edited.transformer.h[1].mlp.c_proj.bias = new_bias
        weight = edited.transformer.h[1].mlp.c_proj.weight
        weight *= 0.5
    with edited.trace(PROMPT):
        x = edited.transformer.h[1].mlp.c_proj.input.save()
        y = edited.transformer.h[1].mlp.c_proj.output.save()
    expected = x.value @ (0.5 * gold["transformer.h.1.mlp.c_proj.weight"]) + new_bias
    assert np.allclose(y.value, expected, atol=1e-5)
